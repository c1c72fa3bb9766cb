"""Interrupts: a call given up, or an iteration closed early, ends its blocked work."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import pytest

import offload
from tests.conftest import WAIT
from tests.promise_targets import Foreign

#: Rows of a query that would run for minutes if nothing stopped it.
ENDLESS = 10**9

COUNT = """
WITH RECURSIVE c(x) AS (SELECT started() UNION ALL SELECT x + 1 FROM c WHERE x < ?)
SELECT count(*) FROM c
"""
# Two rows at once, the third after about 10**9 steps. sqlite3 steps to the next
# row before it returns one, so row 1 comes at once and row 2 waits for row 3.
SPARSE = """
WITH RECURSIVE c(x) AS (SELECT started() UNION ALL SELECT x + 1 FROM c WHERE x < ?)
SELECT x FROM c WHERE x <= 2 OR x = ?
"""


class Connection(sqlite3.Connection):
    """A connection that says when a statement started, and records how count_to ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running = threading.Event()
        self.ended = threading.Event()
        self.outcome: BaseException | int | None = None
        self.create_function("started", 0, self._started)

    def _started(self) -> int:
        self.running.set()
        return 1

    def count_to(self, n: int) -> int:
        """Count to ``n`` in SQL: a long statement."""
        try:
            (count,) = self.execute(COUNT, (n,)).fetchone()
        except BaseException as exc:
            self.outcome = exc
            raise
        else:
            self.outcome = count
            return int(count)
        finally:
            self.ended.set()


AsyncCursor = offload.facade(sqlite3.Cursor, run=["fetchall", "fetchone", "close"])


def interrupt_connection(conn: Connection) -> None:
    """on_cancel as a callable: what the method name does."""
    conn.interrupt()


def connection_facade(on_cancel: str | Callable[[Connection], object]) -> Any:
    """A facade over Connection that interrupts its blocked calls."""
    return offload.facade(
        Connection,
        run=["count_to", "execute"],
        wrap={"execute": AsyncCursor},
        on_cancel=on_cancel,
    )


@pytest.fixture(params=["affine-thread", "offload-pool"])
def db_executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """The connection's own thread, and a pool (with the thread check off)."""
    executor: Executor = (
        offload.AffineThread(name="db")
        if request.param == "affine-thread"
        else offload.ThreadPool(2, name="db")
    )
    yield executor
    while _opened:  # close, on their thread, the connections the test opened
        conn = _opened.pop()
        executor.submit(conn.close).result(WAIT)
    executor.shutdown(wait=True, cancel_futures=True)


#: Connections the running test opened, closed when it ends.
_opened: list[Connection] = []


async def _connect(executor: Executor, on_cancel: Any = "interrupt") -> Any:
    def connect() -> Connection:
        return sqlite3.connect(":memory:", factory=Connection, check_same_thread=False)

    sync_conn = await offload.offload(connect, executor=executor)()
    _opened.append(sync_conn)
    return connection_facade(on_cancel)(sync_conn, executor=executor)


@pytest.mark.parametrize("on_cancel", ["interrupt", interrupt_connection])
async def test_a_cancelled_query_is_interrupted(db_executor: Executor, on_cancel: Any) -> None:
    """Cancelling a long sqlite3 query ends it with 'interrupted'; the connection works after."""
    conn = await _connect(db_executor, on_cancel)
    sync_conn: Connection = conn.__wrapped__
    query = conn.count_to(ENDLESS)
    assert await asyncio.to_thread(sync_conn.running.wait, WAIT)
    query.cancel()
    assert await asyncio.to_thread(sync_conn.ended.wait, WAIT)
    assert isinstance(sync_conn.outcome, sqlite3.OperationalError)
    assert "interrupted" in str(sync_conn.outcome)
    cursor = await conn.execute("SELECT 6 * 7")
    assert await cursor.fetchone() == (42,)


async def test_a_query_past_its_deadline_is_interrupted(db_executor: Executor) -> None:
    """asyncio.wait_for's deadline interrupts the query, as a cancel does."""
    conn = await _connect(db_executor)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.count_to(ENDLESS), 0.2)
    assert await asyncio.to_thread(conn.__wrapped__.ended.wait, WAIT)
    assert "interrupted" in str(conn.__wrapped__.outcome)
    assert await conn.count_to(10) == 10


async def test_a_finished_call_is_not_interrupted(db_executor: Executor) -> None:
    """Calls that end on their own never call on_cancel."""
    calls: list[object] = []
    conn = await _connect(db_executor, on_cancel=calls.append)
    assert [await conn.count_to(n) for n in range(1, 6)] == [1, 2, 3, 4, 5]
    assert calls == []


async def test_closing_a_cursor_loop_early_interrupts_the_fetch(db_executor: Executor) -> None:
    """aclose() while the next rows are being fetched interrupts it: the connection is free."""
    conn = await _connect(db_executor)
    cursor = await conn.execute(SPARSE, (ENDLESS, ENDLESS))
    async with aiter(cursor) as rows:  # the cursor's facade interrupts through its connection
        assert await anext(rows) == (1,)
    # sqlite keeps a connection interrupted while the interrupted statement is open.
    await cursor.close()
    assert await conn.count_to(3) == 3


async def test_break_out_of_a_cursor_loop_interrupts_the_fetch() -> None:
    """On the connection's own thread, ``break`` alone is enough: the next call waits its turn."""
    worker = offload.AffineThread(name="db")
    try:
        conn = await _connect(worker)
        cursor = await conn.execute(SPARSE, (ENDLESS, ENDLESS))
        async for row in cursor:
            assert row == (1,)
            break
        await cursor.close()  # queued behind the interrupted fetch
        assert await conn.count_to(3) == 3
        _opened.remove(conn.__wrapped__)
        await offload.offload(conn.__wrapped__.close, executor=worker)()
    finally:
        worker.shutdown()


async def test_an_interrupt_that_raises_is_logged_and_the_cancel_holds(
    db_executor: Executor, caplog: pytest.LogCaptureFixture
) -> None:
    """An error from on_cancel goes to the offload logger; the call is still cancelled."""

    def broken(conn: Connection) -> None:
        conn.interrupt()
        raise OSError("interrupt failed")

    conn = await _connect(db_executor, on_cancel=broken)
    query = conn.count_to(ENDLESS)
    assert await asyncio.to_thread(conn.__wrapped__.running.wait, WAIT)
    with caplog.at_level(logging.ERROR, logger="offload"):
        query.cancel()
        with pytest.raises(asyncio.CancelledError):
            await query
        assert await asyncio.to_thread(conn.__wrapped__.ended.wait, WAIT)
        assert await conn.count_to(2) == 2
        for _ in range(int(WAIT * 100)):  # logged on the interrupt's own thread
            if caplog.records:
                break
            await asyncio.sleep(0.01)
    (record,) = [r for r in caplog.records if r.name == "offload"]
    assert "interrupt failed" in str(record.exc_info[1] if record.exc_info else None)


def test_on_cancel_is_checked_when_the_class_is_made() -> None:
    """An on_cancel naming no method, or neither a name nor a callable, fails at once."""
    with pytest.raises(TypeError, match="no method"):
        offload.facade(Connection, run=["execute"], on_cancel="interupt")
    with pytest.raises(TypeError, match="callable"):
        offload.facade(Connection, run=["execute"], on_cancel=3)  # type: ignore[arg-type]


# -- Iterators ------------------------------------------------------------------------


@pytest.fixture(params=["offload-pool", "stdlib-pool", "affine-thread", "foreign"])
def any_executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """Each test that takes it runs on every kind of thread executor."""
    executor: Executor
    if request.param == "offload-pool":
        executor = offload.ThreadPool(2, name="interrupt-test")
    elif request.param == "stdlib-pool":
        executor = ThreadPoolExecutor(2)
    elif request.param == "affine-thread":
        executor = offload.AffineThread(name="interrupt-test")
    else:
        executor = Foreign(2)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


class Stuck:
    """One item, then a ``next()`` that blocks until its Event is set."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.blocked = threading.Event()
        self.closed = threading.Event()
        self.interrupted = False

    def __iter__(self) -> Iterator[str]:
        try:
            yield "first"
            self.blocked.set()
            self.interrupted = self.stop.wait(WAIT)
            yield "after the interrupt"
        finally:
            self.closed.set()


async def test_aclose_interrupts_a_source_blocked_in_next(any_executor: Executor) -> None:
    """aclose() calls interrupt while the producer is blocked in next(), then returns."""
    source = Stuck()
    items = offload.aiterate(iter(source), executor=any_executor, interrupt=source.stop.set)
    assert await anext(items) == "first"
    assert await asyncio.to_thread(source.blocked.wait, WAIT)
    await asyncio.wait_for(items.aclose(), WAIT / 2)
    assert source.interrupted
    assert source.closed.is_set()


async def test_break_interrupts_a_source_blocked_in_next(any_executor: Executor) -> None:
    """Leaving ``async for`` early interrupts a blocked source and closes it."""
    source = Stuck()
    async for item in offload.aiterate(
        iter(source), executor=any_executor, interrupt=source.stop.set
    ):
        assert item == "first"
        assert await asyncio.to_thread(source.blocked.wait, WAIT)
        break
    gc.collect()
    assert await asyncio.to_thread(source.closed.wait, WAIT)
    assert source.interrupted


async def test_a_paused_producer_is_not_interrupted(any_executor: Executor) -> None:
    """A producer waiting for room is not inside the source: closing it calls no interrupt."""
    calls: list[str] = []
    done = threading.Event()

    def numbers() -> Iterator[int]:
        try:
            yield from range(1000)
        finally:
            done.set()

    items = offload.aiterate(
        numbers(), executor=any_executor, prefetch=2, interrupt=lambda: calls.append("x")
    )
    assert await anext(items) == 0
    for _ in range(int(WAIT * 100)):  # until it paused: two ahead
        if len(items._pump.items) >= 2 and items._pump.paused:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    await items.aclose()
    assert done.is_set()
    assert calls == []


async def test_an_interrupt_error_is_logged_and_aclose_returns(
    any_executor: Executor, caplog: pytest.LogCaptureFixture
) -> None:
    """An interrupt that raises (after doing its job) is logged; aclose() still returns."""
    source = Stuck()

    def interrupt() -> None:
        source.stop.set()
        raise OSError("interrupt failed")

    items = offload.aiterate(iter(source), executor=any_executor, interrupt=interrupt)
    assert await anext(items) == "first"
    assert await asyncio.to_thread(source.blocked.wait, WAIT)
    with caplog.at_level(logging.ERROR, logger="offload"):
        await asyncio.wait_for(items.aclose(), WAIT / 2)
    assert source.closed.is_set()
    assert "interrupt failed" in caplog.text


def test_an_interrupt_must_be_callable() -> None:
    """aiterate refuses an interrupt that cannot be called."""
    with pytest.raises(TypeError, match="interrupt"):
        offload.aiterate([], interrupt="stop")  # type: ignore[arg-type]
