"""A Tornado-friendly PostgreSQL driver: declarations over psycopg 3's sync ``Connection``.

    pool = await open_pool("host=localhost dbname=app", size=4)
    async with pool.connection() as conn:
        async with conn.transaction():                      # BEGIN ... COMMIT/ROLLBACK
            await conn.execute("UPDATE t SET n = n + 1 WHERE id = %s", (1,))
        cursor = await conn.execute("SELECT id, n FROM t")
        rows = await cursor.fetchall()
        async with conn.transaction(), conn.cursor("scan") as big:   # server-side cursor
            await big.execute("SELECT * FROM huge")
            async for row in big:                           # fetched up to 256 rows at a time
                ...
    await pool.close()

**One lane per connection.** Every connection runs its calls on a lane of its own: a
handle from ``offload.lane(CONNECTIONS)``, pinned to one thread of the ``offload.Lanes``
registered under ``CONNECTIONS``. A connection runs one statement at a time anyway (psycopg
holds a lock per connection, though its connections are thread-safe): on a shared pool, a
second call for a busy connection would take a thread only to wait on that lock, and calls
sent without awaiting could run out of order. On the connection's lane they queue, in
order, and cost no thread while they wait. It also lets a server-side cursor's ``async
for`` give the thread back between batches, so other statements on the same connection run
in between. The threads belong to the name, not to the connections: they show in
``offload.stats()["pg_driver.connections"]``, are bounded by its ``max_pending``, and an
application re-points them (``offload.register(CONNECTIONS, offload.Lanes(32), ...)``).
``connect(executor=...)`` uses another executor instead (psycopg_pool is a separate package;
this small pool is enough here).

**A connection the server drops** (a restart, ``pg_terminate_backend``, a network cut) makes
the statement running on it, or the next one sent, raise ``psycopg.OperationalError``. The
driver does not retry the statement: it cannot know whether it is safe to run twice. psycopg
marks the connection closed, and the pool replaces it with a new one the next time it is
borrowed, so each dropped connection fails one request, and the ones after it succeed.

**Cancellation.** A task cancelled while it awaits a statement stops waiting at once, but
the statement runs on to its end on the connection's thread (later calls queue behind it).
``await conn.cancel()`` asks the server to interrupt it; it runs on the ``"io"`` pool, not on
the connection's thread, where it would queue behind the very statement it should cancel.

What is declared how: plain methods run on the connection's lane (``run=["*"]``), the
few that do no I/O are called on the caller's (``sync=``); ``stream()``, ``results()`` and
``notifies()`` are generators, stepped on the connection's thread (``iterate=``);
``transaction()``, ``pipeline()`` and ``cursor.copy()`` are ``@contextmanager`` methods
(``contexts=``), so ``async with conn.transaction():`` runs BEGIN and COMMIT there;
``cursor()`` gives a client-side or a server-side cursor facade by the type of what psycopg
returns, as ``copy()`` gives an ``AsyncCopy`` (``wrap=``); the DB-API exception classes
psycopg hangs on its classes (``conn.Error``) and instance attributes such as ``pgconn``
pass through (``attrs=``). ``LEFT_OUT`` lists what the facades do not offer, with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any

import psycopg

import offload

#: The name whose lanes the connections run on: each connection holds a lane of its own.
CONNECTIONS = "pg_driver.connections"

# A library default, replaced by an application's own registration. Eight lanes: twice the
# pool's default size, so a pool of 4 and a few connections of its own (a LISTEN, a
# migration) each get a thread to themselves. A lane's thread starts on its first call, so
# the lanes no connection uses cost nothing. Past eight live connections, lanes are shared
# (a connection then waits for the other's statement): register more for a bigger pool.
offload.register(CONNECTIONS, lambda: offload.Lanes(8, name="pg-conn"), default=True)

#: Public names the facades leave out on purpose (``omit=``), and why.
LEFT_OUT = {
    "connect": "a class method: use pg_driver.connect(), which gives the connection its lane",
}


class AsyncCopy(
    offload.Facade[psycopg.Copy],
    wraps=psycopg.Copy,
    executor=CONNECTIONS,
    run=["*"],  # read, read_row, write, write_row, finish: on the connection's thread
    sync=["set_types"],
    iterate=["rows"],
):
    """``async with cursor.copy("COPY ...") as copy:``: COPY FROM STDIN or TO STDOUT.

    ``await copy.write_row(row)``, ``await copy.read_row()``, ``async for row in
    copy.rows()``, and ``async for block in copy``, all on the connection's thread.
    """


class AsyncCursor(
    offload.Facade[psycopg.Cursor[Any]],
    wraps=psycopg.Cursor,
    executor=CONNECTIONS,
    run=["*"],  # execute, fetch*, scroll, ...: a server cursor's fetches are round trips
    sync=["set*"],  # setinputsizes, setoutputsize, set_result (psycopg 3.3): no I/O
    iterate=["*"],  # stream, results (psycopg 3.3)
    contexts=["copy"],
    attrs=["*"],  # classes psycopg hangs on its classes (Cursor.ExecStatus before 3.2)
    wrap=[AsyncCopy],
    # Rows an ``async for`` reads ahead, and so at most a fetch asks for: a server cursor's
    # fetch is a round trip, so a scan should cross in big chunks (the first fetch asks for
    # one row, and each next for twice as many). psycopg's own itersize is 100.
    prefetch=256,
):
    """A client-side cursor: the whole result comes with ``execute``, then fetches are local.

    ``async for row in cursor`` works (on the connection's thread), as does ``async with``.
    """


class AsyncServerCursor(AsyncCursor, wraps=psycopg.ServerCursor):
    """A server-side (named) cursor: ``async for`` fetches up to 256 rows per round trip.

    It must live inside ``async with conn.transaction()`` (or be made ``withhold=True``).
    Its methods are the client cursor's facade's, calling the server cursor's own.
    """


class AsyncPipeline(
    offload.Facade[psycopg.Pipeline],
    wraps=psycopg.Pipeline,
    executor=CONNECTIONS,
    run=["sync"],
    omit=["is_supported"],  # a class method: psycopg.Pipeline.is_supported()
):
    """Pipeline mode: ``async with conn.pipeline() as pipeline:``, ``await pipeline.sync()``."""


class AsyncConnection(
    offload.Facade[psycopg.Connection[Any]],
    wraps=psycopg.Connection,
    executor=CONNECTIONS,
    run=["*"],
    # Calls that do no I/O: cursor() builds an object, handlers are lists on the connection,
    # xid() builds a value.
    sync=[
        "cursor",
        "add_notice_handler",
        "add_notify_handler",
        "remove_notice_handler",
        "remove_notify_handler",
        "fileno",
        "xid",
    ],
    iterate=["notifies"],
    contexts=["transaction", "pipeline"],
    # The DB-API exceptions (conn.Error, ...), and attributes psycopg sets on the instance.
    attrs=["*", "pgconn", "row_factory", "cursor_factory", "server_cursor_factory"],
    wrap=[AsyncCursor, AsyncServerCursor, AsyncPipeline],
    omit=list(LEFT_OUT),
):
    """A psycopg connection whose statements run on its lane (or the executor it was given).

    Made by hand without ``executor=``, it sends its calls through ``CONNECTIONS`` itself:
    to the least loaded lane, in no set order. ``connect()`` gives it a lane of its own.
    """

    def cancel(self) -> asyncio.Future[None]:
        """Ask the server to cancel the running statement; on the ``"io"`` pool, beside it."""
        return offload.offload(self.__wrapped__.cancel, executor="io")()

    if hasattr(psycopg.Connection, "cancel_safe"):  # psycopg 3.2

        def cancel_safe(self, *, timeout: float = 30.0) -> asyncio.Future[None]:
            """As ``cancel``, through libpq 17's cancellation, waiting at most ``timeout``."""
            return offload.offload(self.__wrapped__.cancel_safe, executor="io")(timeout=timeout)


async def connect(
    conninfo: str = "", *, executor: Executor | str | None = None, **kwargs: Any
) -> AsyncConnection:
    """Open a connection, by default in autocommit mode, on a lane of ``CONNECTIONS``.

    Transactions are explicit: ``async with conn.transaction():``. ``kwargs`` go to
    ``psycopg.Connection.connect``. Pass ``executor`` (an executor, a registered name or a
    lane handle) to run the connection's calls there instead. ``await conn.close()`` closes
    the connection; its lane goes back to the name once the facade is dropped.
    """
    kwargs.setdefault("autocommit", True)
    if executor is None:
        executor = offload.lane(CONNECTIONS)
    sync_conn = await offload.offload(psycopg.Connection.connect, executor=executor)(
        conninfo, **kwargs
    )
    return AsyncConnection(sync_conn, executor=executor)


class Pool:
    """A fixed number of connections; a task borrows one at a time; dropped ones are replaced."""

    def __init__(self, conninfo: str, connections: list[AsyncConnection], **kwargs: Any) -> None:
        self.conninfo = conninfo
        self.connections = connections
        self._kwargs = kwargs
        self._idle: asyncio.Queue[AsyncConnection] = asyncio.Queue()
        for conn in connections:
            self._idle.put_nowait(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """Borrow a connection for the block; a closed one is reopened on its lane first.

        Connections are lent in the order they came back, oldest first.
        """
        conn = await self._idle.get()
        try:
            if conn.closed:
                conn = await self._reopen(conn)
            yield conn
        finally:
            self._idle.put_nowait(conn)

    async def _reopen(self, dead: AsyncConnection) -> AsyncConnection:
        # On the dead one's lane, which the fresh one keeps; if the server is still away this
        # raises, and the dead connection goes back to the queue for the next borrower.
        await dead.close()  # frees what psycopg still holds for it
        fresh = await connect(self.conninfo, executor=dead._executor, **self._kwargs)
        self.connections[self.connections.index(dead)] = fresh
        return fresh

    async def close(self) -> None:
        """Close every connection; their lanes stay with the name, for the next ones."""
        await asyncio.gather(*(conn.close() for conn in self.connections))


async def open_pool(
    conninfo: str, *, size: int = 4, executor: Executor | str | None = None, **kwargs: Any
) -> Pool:
    """Open ``size`` connections to ``conninfo``; ``executor`` and ``kwargs`` go to ``connect``."""
    opened = [await connect(conninfo, executor=executor, **kwargs) for _ in range(size)]
    return Pool(conninfo, opened, **kwargs)
