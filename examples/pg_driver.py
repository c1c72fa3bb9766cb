"""A Tornado-friendly PostgreSQL driver: declarations over psycopg 3's sync ``Connection``.

    pool = await open_pool("host=localhost dbname=app", size=4)
    async with pool.connection() as conn:
        async with conn.transaction():                      # BEGIN ... COMMIT/ROLLBACK
            await conn.execute("UPDATE t SET n = n + 1 WHERE id = %s", (1,))
        cursor = await conn.execute("SELECT id, n FROM t")
        rows = await cursor.fetchall()
        async with conn.transaction(), conn.cursor("scan") as big:   # server-side cursor
            await big.execute("SELECT * FROM huge")
            async for row in big:                           # fetched itersize rows at a time
                ...
    await pool.close()

**One thread per connection.** Every connection of the pool has an ``offload.AffineThread``
of its own, as the sqlite3 example's connections do, though psycopg's connections are
thread-safe. A connection runs one statement at a time anyway (psycopg holds a lock per
connection): on a shared pool, a second call for a busy connection would take a thread only
to wait on that lock, and calls sent without awaiting could run out of order. On the
connection's own thread they queue, in order, and cost no thread while they wait. It also
lets a server-side cursor's ``async for`` give the thread back between batches, so other
statements on the same connection run in between. ``connect(executor=...)`` shares an
executor instead (psycopg_pool is a separate package; this small pool is enough here).

**A connection the server drops** (a restart, ``pg_terminate_backend``, a network cut) makes
the statement running on it, or the next one sent, raise ``psycopg.OperationalError``. The
driver does not retry the statement: it cannot know whether it is safe to run twice. psycopg
marks the connection closed, and the pool replaces it with a new one the next time it is
borrowed, so each dropped connection fails one request, and the ones after it succeed.

**Cancellation.** A task cancelled while it awaits a statement stops waiting at once, but
the statement runs on to its end on the connection's thread (later calls queue behind it).
``await conn.cancel()`` asks the server to interrupt it; it runs on the ``"io"`` pool, not on
the connection's thread, where it would queue behind the very statement it should cancel.

What psycopg offers beyond plain methods, and how each is declared, is in ``examples/glue.py``.
``LEFT_OUT`` lists what the facades do not offer, with the reason.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any

import psycopg

import offload
from examples.glue import by_result_type, copy_classes, elsewhere, entering, iterating

#: The executor name the facades use when a connection has no thread of its own.
EXECUTOR = "pg_driver.io"

# A library default for connect(executor=EXECUTOR): one shared thread, so that connections
# made on it keep their calls in order. An application's own registration replaces it.
offload.register(EXECUTOR, lambda: offload.AffineThread(name=EXECUTOR), default=True)

_thread_numbers = itertools.count(1)


def _present(wraps: type, names: list[str]) -> list[str]:
    # Names some psycopg releases lack (cancel_safe came in 3.2): declare only what exists.
    return [name for name in names if hasattr(wraps, name)]


#: Public names the facades leave out on purpose; the parity test ignores exactly these.
LEFT_OUT = {
    "connect": "a class method: use pg_driver.connect(), which makes the thread as well",
    "pipeline": "pipeline mode: its Pipeline object's sync() blocks and needs a facade of its own",
    "copy": "COPY: the Copy object's read() and write() block and need a facade of their own",
}

#: Cursor calls that talk to the server (a client cursor's fetches are local, but cheap to
#: send to its thread, and a server cursor's are round trips).
CURSOR_RUN = [
    "close",
    "execute",
    "executemany",
    "fetchall",
    "fetchmany",
    "fetchone",
    "nextset",
    "scroll",
]
CURSOR_SYNC = _present(psycopg.Cursor, ["setinputsizes", "setoutputsize", "set_result"])


class AsyncCursor(
    offload.Facade[psycopg.Cursor[Any]],
    wraps=psycopg.Cursor,
    executor=EXECUTOR,
    run=CURSOR_RUN,
    sync=CURSOR_SYNC,
):
    """A client-side cursor: the whole result comes with ``execute``, then fetches are local.

    ``async for row in cursor`` works (on the connection's thread), as does ``async with``.
    """

    stream = iterating(psycopg.Cursor, "stream")
    if hasattr(psycopg.Cursor, "results"):  # psycopg 3.3: one result set per query
        results = iterating(psycopg.Cursor, "results")


class AsyncServerCursor(
    AsyncCursor,
    wraps=psycopg.ServerCursor,
    run=CURSOR_RUN,
    sync=CURSOR_SYNC,
):
    """A server-side (named) cursor: ``async for`` fetches ``itersize`` rows per round trip.

    It must live inside ``async with conn.transaction()`` (or be made ``withhold=True``).
    """


CONNECTION_RUN = [
    "commit",
    "rollback",
    "execute",
    "set_autocommit",
    "set_deferrable",
    "set_isolation_level",
    "set_read_only",
    "wait",
    "tpc_begin",
    "tpc_commit",
    "tpc_prepare",
    "tpc_recover",
    "tpc_rollback",
]
#: Calls that do no I/O: handlers are lists on the connection, xid() builds a value.
CONNECTION_SYNC = [
    "add_notice_handler",
    "add_notify_handler",
    "remove_notice_handler",
    "remove_notify_handler",
    "fileno",
    "xid",
]


class AsyncConnection(
    offload.Facade[psycopg.Connection[Any]],
    wraps=psycopg.Connection,
    executor=EXECUTOR,
    run=_present(psycopg.Connection, CONNECTION_RUN),
    sync=CONNECTION_SYNC,
    wrap={"execute": AsyncCursor},
):
    """A psycopg connection whose statements run on its own thread."""

    _own_thread: offload.AffineThread | None = None  # set by connect() when it made one

    cursor = by_result_type(
        psycopg.Connection,
        "cursor",
        {psycopg.ServerCursor: AsyncServerCursor, psycopg.Cursor: AsyncCursor},
    )
    transaction = entering(psycopg.Connection, "transaction")
    notifies = iterating(psycopg.Connection, "notifies")
    cancel = elsewhere(psycopg.Connection, "cancel", "io")
    if hasattr(psycopg.Connection, "cancel_safe"):  # psycopg 3.2
        cancel_safe = elsewhere(psycopg.Connection, "cancel_safe", "io")

    async def close(self) -> None:
        """Close the connection on its thread, then end the thread if it was its own."""
        await self._run(self.__wrapped__.close)
        if self._own_thread is not None:
            self._own_thread.shutdown(wait=False)


# The classes psycopg hangs on its classes: the DB-API exceptions (conn.Error, ...) and,
# before psycopg 3.2, status enums (Connection.ConnStatus, Cursor.ExecStatus).
copy_classes(AsyncConnection, psycopg.Connection)
copy_classes(AsyncCursor, psycopg.Cursor)
copy_classes(AsyncServerCursor, psycopg.ServerCursor)


async def connect(
    conninfo: str = "", *, executor: Executor | str | None = None, **kwargs: Any
) -> AsyncConnection:
    """Open a connection, by default in autocommit mode, on a new thread of its own.

    Transactions are explicit: ``async with conn.transaction():``. ``kwargs`` go to
    ``psycopg.Connection.connect``. Pass ``executor`` (an executor or a registered name,
    such as ``EXECUTOR``) to share it instead of making a thread.
    """
    kwargs.setdefault("autocommit", True)
    own: offload.AffineThread | None = None
    if executor is None:
        executor = own = offload.AffineThread(name=f"pg-conn-{next(_thread_numbers)}")
    try:
        sync_conn = await offload.offload(psycopg.Connection.connect, executor=executor)(
            conninfo, **kwargs
        )
    except BaseException:
        if own is not None:
            own.shutdown(wait=False)
        raise
    conn = AsyncConnection(sync_conn, executor=executor)
    conn._own_thread = own
    return conn


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
        """Borrow a connection for the block; a closed one is reopened on its thread first.

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
        # On the dead one's thread; if the server is still away this raises, and the dead
        # connection goes back to the queue for the next borrower to try again.
        await dead._run(dead.__wrapped__.close)  # frees what psycopg still holds for it
        fresh = await connect(self.conninfo, executor=dead._executor, **self._kwargs)
        fresh._own_thread = dead._own_thread
        self.connections[self.connections.index(dead)] = fresh
        return fresh

    async def close(self) -> None:
        """Close every connection and end their threads."""
        await asyncio.gather(*(conn.close() for conn in self.connections))


async def open_pool(
    conninfo: str, *, size: int = 4, executor: Executor | str | None = None, **kwargs: Any
) -> Pool:
    """Open ``size`` connections to ``conninfo``; ``executor`` and ``kwargs`` go to ``connect``."""
    opened = [await connect(conninfo, executor=executor, **kwargs) for _ in range(size)]
    return Pool(conninfo, opened, **kwargs)
