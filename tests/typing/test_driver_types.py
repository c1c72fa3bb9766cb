"""Static checks for the driver toolkit: mypy --strict and pyright accept these."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import assert_type

import offload


def test_aiterate_takes_an_interrupt() -> None:
    stop = threading.Event()

    def lines() -> Iterator[str]:
        yield "a"

    rows = offload.aiterate(lines(), executor="io", prefetch=4, interrupt=stop.set)

    async def drain() -> None:  # type-checked, not run
        async for line in rows:
            assert_type(line, str)

    assert callable(drain)


def test_on_cancel_is_a_method_name_or_a_callable_on_the_sync_object() -> None:
    by_name = offload.facade(sqlite3.Connection, run=["execute"], on_cancel="interrupt")
    by_callable = offload.facade(
        sqlite3.Connection, run=["execute"], on_cancel=sqlite3.Connection.interrupt
    )
    assert_type(by_name, type[offload.Facade[sqlite3.Connection]])
    assert_type(by_callable, type[offload.Facade[sqlite3.Connection]])


def test_acontext_keeps_the_managers_type() -> None:
    lock = threading.RLock()
    assert_type(offload.acontext(lock, executor="io"), AbstractAsyncContextManager[bool])


def misuse_is_rejected() -> None:
    """Never called: each line is a type error, and ``warn_unused_ignores`` proves it."""
    offload.aiterate([1], interrupt="stop")  # type: ignore[arg-type]
    offload.facade(sqlite3.Connection, on_cancel=3)  # type: ignore[arg-type]


def test_within_passes_the_sync_object_and_keeps_the_result_type() -> None:
    connection_facade = offload.facade(sqlite3.Connection, run=["execute"])

    def count(conn: sqlite3.Connection, table: str) -> int:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(row[0])

    async def use(conn: offload.Facade[sqlite3.Connection]) -> None:  # type-checked, not run
        assert_type(await offload.within(conn, count, "t"), int)
        assert_type(await offload.within(conn, lambda c: c.total_changes), int)

    assert callable(use)
    assert callable(connection_facade)


def within_misuse_is_rejected(conn: offload.Facade[sqlite3.Connection]) -> None:
    """Never called: each line is a type error, and ``warn_unused_ignores`` proves it."""

    def takes_text(text: str) -> int:
        return len(text)

    offload.within(conn, takes_text)  # type: ignore[misc]  # takes text, not the connection
    offload.within(sqlite3.connect(":memory:"), len)  # type: ignore[arg-type]


def test_a_lane_handle_is_an_executor_for_every_entry_point() -> None:
    registry = offload.Registry()
    registry.register("kv", lambda: offload.Lanes(2, name="kv"))
    lane = registry.lane("kv")
    assert_type(lane, offload.Lane)
    assert_type(offload.lane("kv"), offload.Lane)
    assert_type(offload.Lanes(2).threads, tuple[offload.AffineThread, ...])

    def double(n: int) -> int:
        return 2 * n

    doubled: Callable[[int], asyncio.Future[int]] = registry.offload(double, executor=lane)
    assert callable(doubled)
    lock = threading.RLock()
    assert_type(offload.acontext(lock, executor=lane), AbstractAsyncContextManager[bool])
    rows = offload.aiterate([1], executor=lane)

    async def drain() -> None:  # type-checked, not run
        async for row in rows:
            assert_type(row, int)

    assert callable(drain)
    registry.shutdown()


def lane_misuse_is_rejected() -> None:
    """Never called: each line is a type error, and ``warn_unused_ignores`` proves it."""
    offload.lane(3)  # type: ignore[arg-type]
    offload.Lanes("2")  # type: ignore[arg-type]
