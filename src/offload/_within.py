"""``within``: several sync operations on a facade's object, in one hop.

Each call through a facade is a round trip: the loop hands the call to a
worker thread, the worker runs it, the loop is woken with the outcome. A unit
of work made of several calls (a transaction's statements, a handler's four
redis commands) pays that round trip once per call, and the task waits for
each before it sends the next. ``within`` sends one function that makes all
of those calls directly on the sync object, so the unit of work costs one
round trip, and nothing else can run on the connection in between.

The function goes where the facade's calls go now (see ``Facade._send``): on
the thread a task holds inside ``async with facade`` on a pool, else on the
facade's executor; if it is given up while it runs, the facade's
``on_cancel`` interrupts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._facade import Facade
from ._iterate import running_loop

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")


def within(
    facade: Facade[S],
    fn: Callable[Concatenate[S, P], R],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> asyncio.Future[R]:
    """Run ``fn(facade.__wrapped__, *args, **kwargs)`` where the facade's calls run.

    One hop for a unit of work: ``fn`` receives the sync object and may make
    as many calls on it as it likes, at the sync API's own speed, on the
    facade's thread (the thread a task holds inside ``async with facade``,
    else the facade's executor). The returned Future gives ``fn``'s result as
    ``fn`` returned it: sync objects in it are not wrapped in facades.

    If the Future is cancelled or times out while ``fn`` runs, the facade's
    ``on_cancel`` is called, as for any call through the facade.

    Raises:
        TypeError: ``facade`` is not a facade instance, or ``fn`` is not callable.
        RuntimeError: no event loop is running in this thread.

    Examples:
        A transfer between two rows, as one transaction and one hop:

        >>> import asyncio, sqlite3, offload
        >>> AsyncConnection = offload.facade(sqlite3.Connection, run=["execute"])
        >>> def transfer(conn, amount):
        ...     with conn:  # BEGIN ... COMMIT, or ROLLBACK if anything raises
        ...         conn.execute("UPDATE account SET balance = balance - ? WHERE id = 1", (amount,))
        ...         conn.execute("UPDATE account SET balance = balance + ? WHERE id = 2", (amount,))
        ...     return conn.execute("SELECT balance FROM account ORDER BY id").fetchall()
        >>> async def main():
        ...     thread = offload.AffineThread()
        ...     connect = offload.offload(sqlite3.connect, executor=thread)
        ...     conn = AsyncConnection(await connect(":memory:"), executor=thread)
        ...     await conn.execute("CREATE TABLE account (id INTEGER PRIMARY KEY, balance INT)")
        ...     await conn.execute("INSERT INTO account VALUES (1, 100), (2, 0)")
        ...     balances = await offload.within(conn, transfer, 30)
        ...     await offload.within(conn, sqlite3.Connection.close)
        ...     thread.shutdown()
        ...     return balances
        >>> asyncio.run(main())
        [(70,), (30,)]
    """
    if not isinstance(facade, Facade):
        raise TypeError(
            f"within() takes a facade instance first, got {facade!r}; for a plain object, "
            "offload a function that takes it: offload.offload(fn)(obj)"
        )
    if not callable(fn):
        raise TypeError(
            f"within() takes a function of the sync object second, got {fn!r}; "
            "for example offload.within(conn, lambda c: c.execute(...))"
        )
    loop = running_loop(within)
    wrapped: Any = facade.__wrapped__
    return facade._send(loop, fn, (wrapped, *args), kwargs)
