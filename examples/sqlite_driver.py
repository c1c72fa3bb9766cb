"""A Tornado-friendly sqlite3 driver, built only from offload's driver toolkit.

One code base gives both APIs. The sync part is plain sqlite3 plus a
``Connection`` subclass with a ``transaction()`` context manager; use it as is
from threads. The async part is a handful of declarations over it: facades for
the connection, its cursors and its transactions, each connection pinned to a
thread of its own (sqlite3 objects refuse any thread but their creator's).

    pool = await open_pool("notes.sqlite3", size=4)
    async with pool.connection() as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO notes (title) VALUES (?)", ("hi",))
        async for row in await conn.execute("SELECT id, title FROM notes"):
            print(row)
    await pool.close()
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import sys
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import offload

#: The executor name the driver's facades use when no connection thread is given.
EXECUTOR = "sqlite_driver.io"

# A library default: one shared thread. An application's own
# offload.register(EXECUTOR, ...) replaces it, whenever it runs.
offload.register(EXECUTOR, lambda: offload.AffineThread(name=EXECUTOR), default=True)

_thread_numbers = itertools.count(1)


# --- The sync API: sqlite3 with transactions as context managers. -------------


class Transaction:
    """``with conn.transaction():`` BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on error."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> Self:
        self.connection.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.connection.execute("COMMIT" if exc_type is None else "ROLLBACK")


class Connection(sqlite3.Connection):
    """An sqlite3 connection with ``transaction()``; the sync API."""

    def transaction(self) -> Transaction:
        """A context manager around one transaction."""
        return Transaction(self)


def connect_sync(database: str, **kwargs: Any) -> Connection:
    """Open a sync connection in autocommit mode: transactions are explicit."""
    kwargs.setdefault("isolation_level", None)
    conn = sqlite3.connect(database, factory=Connection, **kwargs)
    conn.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
    return conn


# --- The async API: declarations over the sync one. ---------------------------

# Python 3.12 gave sqlite3.Connection getconfig/setconfig (sqlite3_db_config). Like
# getlimit/setlimit they read and change a setting of this connection, so they are
# declared in run= and run on the connection's thread (sqlite3 refuses any other).
# Only where sqlite3 has them: run= rejects names the class lacks, and assert_parity
# requires every name the class has.
_CONFIG_METHODS = ["getconfig", "setconfig"] if sys.version_info >= (3, 12) else []


class AsyncCursor(
    offload.Facade[sqlite3.Cursor],
    wraps=sqlite3.Cursor,
    executor=EXECUTOR,
    run=["execute", "executemany", "executescript", "fetchone", "fetchmany", "fetchall", "close"],
    sync=["setinputsizes", "setoutputsize"],
):
    """An sqlite3 cursor; ``async for row in cursor`` fetches on the connection's thread."""


class AsyncTransaction(offload.Facade[Transaction], wraps=Transaction, executor=EXECUTOR):
    """``async with conn.transaction():`` BEGIN and COMMIT/ROLLBACK on the connection's thread."""


class AsyncConnection(
    offload.Facade[Connection],
    wraps=Connection,
    executor=EXECUTOR,
    run=[
        "execute",
        "executemany",
        "executescript",
        "cursor",
        "commit",
        "rollback",
        "create_function",
        "create_aggregate",
        "create_collation",
        "create_window_function",
        "backup",
        "blobopen",
        "interrupt",
        "serialize",
        "deserialize",
        "set_authorizer",
        "set_progress_handler",
        "set_trace_callback",
        "getlimit",
        "setlimit",
        *_CONFIG_METHODS,
    ],
    sync=["transaction"],
    iterate=["iterdump"],  # a generator of SQL text, each step a query on the connection
    wrap={
        "execute": AsyncCursor,
        "executemany": AsyncCursor,
        "executescript": AsyncCursor,
        "cursor": AsyncCursor,
        "transaction": AsyncTransaction,
    },
):
    """An sqlite3 connection whose calls run on its own thread."""

    _own_thread: offload.AffineThread | None = None  # set by connect() when it made one

    async def close(self) -> None:
        """Close the connection on its thread, then end the thread if it was its own."""
        await self._run(self.__wrapped__.close)
        if self._own_thread is not None:
            self._own_thread.shutdown(wait=False)


async def connect(
    database: str, *, executor: Executor | str | None = None, **kwargs: Any
) -> AsyncConnection:
    """Open a connection: by default on a new thread of its own.

    Pass ``executor=EXECUTOR`` (or any registered name or Executor) to share a
    thread instead: the driver's default, or whatever the application
    registered under that name. sqlite3 connections must stay on one thread, so
    a shared executor must be an AffineThread (or another one-thread executor).
    """
    own: offload.AffineThread | None = None
    if executor is None:
        executor = own = offload.AffineThread(name=f"sqlite-conn-{next(_thread_numbers)}")
    chosen = executor
    sync_conn = await offload.offload(connect_sync, executor=chosen)(database, **kwargs)
    conn = AsyncConnection(sync_conn, executor=chosen)
    conn._own_thread = own
    return conn


class Pool:
    """A fixed set of connections, each on its own thread; one task uses one at a time."""

    def __init__(self, connections: list[AsyncConnection]) -> None:
        self.connections = connections
        self._idle: asyncio.Queue[AsyncConnection] = asyncio.Queue()
        for conn in connections:
            self._idle.put_nowait(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """Borrow a connection for the block; it goes back afterwards."""
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        """Close every connection and end their threads."""
        await asyncio.gather(*(conn.close() for conn in self.connections))


async def open_pool(database: str, *, size: int = 4, **kwargs: Any) -> Pool:
    """Open ``size`` connections to ``database``."""
    return Pool([await connect(database, **kwargs) for _ in range(size)])
