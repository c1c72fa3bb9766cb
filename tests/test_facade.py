"""Facades: an async class made from a blocking class and a short declaration."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
import traceback
from collections.abc import Iterator
from typing import Any, Self

import pytest

import offload
from tests.conftest import WAIT


class Cursor:
    """A blocking cursor over some rows."""

    def __init__(self, rows: list[int]) -> None:
        self._rows = rows

    def fetchall(self) -> list[int]:
        """Return every row."""
        return list(self._rows)

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    @property
    def rowcount(self) -> int:
        """How many rows there are."""
        return len(self._rows)


class Connection:
    """A blocking connection."""

    def __init__(self) -> None:
        self._timeout = 5.0
        self.events: list[tuple[str, object]] = []

    def query(self, sql: str, *params: int, limit: int = 10) -> Cursor:
        """Run ``sql`` and return a cursor over its rows."""
        return Cursor([len(sql), *params][:limit])

    def where(self) -> int:
        """The thread this runs on."""
        return threading.get_ident()

    def begin(self) -> Connection:
        """Start a transaction; returns the connection itself."""
        self.events.append(("begin", None))
        return self

    def fail(self) -> None:
        """Raise a driver error from deep inside."""
        raise LookupError("no such table")

    def describe(self) -> str:
        """A cheap description, computed on the caller's thread."""
        return f"connection on {threading.get_ident()}"

    @property
    def timeout(self) -> float:
        """Seconds to wait for a lock."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = value

    def __enter__(self) -> Self:
        self.events.append(("enter", threading.get_ident()))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.events.append(("exit", exc_info[0]))


class AsyncCursor(offload.Facade[Cursor], wraps=Cursor, executor="io", run=["fetchall"]):
    """The async face of Cursor."""


class AsyncConnection(
    offload.Facade[Connection],
    wraps=Connection,
    executor="io",
    run=["query", "where", "begin", "fail"],
    sync=["describe"],
    wrap={"query": AsyncCursor},
):
    """The async face of Connection."""


async def test_run_methods_return_futures_that_run_on_the_executor() -> None:
    """A method listed in run= returns a Future; the sync method runs off the loop thread."""
    conn = AsyncConnection(Connection())
    future = conn.where()
    assert isinstance(future, asyncio.Future)
    assert await future != threading.get_ident()


async def test_sync_methods_and_properties_pass_through() -> None:
    """sync= methods and properties run on the caller's thread; setters reach the sync object."""
    sync_conn = Connection()
    conn = AsyncConnection(sync_conn)
    assert conn.describe() == f"connection on {threading.get_ident()}"
    assert conn.timeout == 5.0
    conn.timeout = 1.5
    assert sync_conn.timeout == 1.5
    assert AsyncConnection.timeout.__doc__ == "Seconds to wait for a lock."


async def test_declared_results_come_back_in_their_facade() -> None:
    """A result listed in wrap= is wrapped in its facade, on the parent's executor."""
    pool = offload.ThreadPool(1, name="per-connection")
    try:
        conn = AsyncConnection(Connection(), executor=pool)
        cursor = await conn.query("abc", 7)
        assert isinstance(cursor, AsyncCursor)
        assert cursor._executor is pool
        assert cursor.rowcount == 2
        assert await cursor.fetchall() == [3, 7]
    finally:
        pool.shutdown()


async def test_a_method_returning_its_object_returns_the_facade() -> None:
    """A sync method that returns its own object gives back the facade itself."""
    conn = AsyncConnection(Connection())
    assert await conn.begin() is conn


async def test_exceptions_keep_their_type_and_traceback() -> None:
    """An exception from the sync method is raised as is, with the sync frames in its traceback."""
    conn = AsyncConnection(Connection())
    with pytest.raises(LookupError, match="no such table") as caught:
        await conn.fail()
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "fail"


def test_signatures_and_docstrings_come_from_the_sync_class() -> None:
    """Generated methods carry the sync method's name, signature and docstring."""
    method = AsyncConnection.query
    assert method.__name__ == "query"
    assert method.__qualname__ == "AsyncConnection.query"
    assert method.__doc__ == Connection.query.__doc__
    sync_params = inspect.signature(Connection.query).parameters
    assert inspect.signature(method).parameters == sync_params
    assert "Future[Cursor]" in str(inspect.signature(method))
    assert AsyncConnection.describe.__doc__ == Connection.describe.__doc__


async def test_iteration_and_context_protocols_become_async() -> None:
    """__iter__ gives ``async for``; __enter__/__exit__ give ``async with`` on the executor."""
    sync_conn = Connection()
    conn = AsyncConnection(sync_conn)
    cursor = await conn.query("ab", 1, 2)
    assert [row async for row in cursor] == [2, 1, 2]
    async with conn as entered:
        assert entered is conn
    (entered_how, entered_on), exited = sync_conn.events
    assert entered_how == "enter"
    assert entered_on != threading.get_ident()
    assert exited == ("exit", None)


async def test_breaking_out_of_a_facade_loop_leaves_the_object_open() -> None:
    """``break`` closes the iteration, not the sync object behind it."""
    closed: list[bool] = []

    class Closable(Cursor):
        def close(self) -> None:
            closed.append(True)

    closable_facade = offload.facade(Closable, executor="io", run=["fetchall", "close"])
    cursor = closable_facade(Closable([1, 2, 3]))
    async for _ in cursor:
        break
    assert await cursor.fetchall() == [1, 2, 3]
    assert closed == []


async def test_the_instance_executor_overrides_the_class_one() -> None:
    """An executor given to one instance is used for it instead of the declared one."""
    worker = offload.AffineThread(name="mine")
    try:
        conn = AsyncConnection(Connection(), executor=worker)
        mine = await conn.where()
        assert mine == await offload.offload(threading.get_ident, executor=worker)()
    finally:
        worker.shutdown()


async def test_the_executor_name_is_resolved_at_call_time() -> None:
    """A facade declared with a name may be built before that name is registered."""
    late_facade = offload.facade(Connection, executor="tests.facade.late", run=["where"])
    conn = late_facade(Connection())
    with pytest.raises(offload.UnknownExecutorError):
        conn.where()
    worker = offload.AffineThread(name="late")
    offload.register("tests.facade.late", worker, replace=True)
    try:
        assert await conn.where() == await offload.offload(threading.get_ident, executor=worker)()
    finally:
        worker.shutdown()


def test_generated_classes_are_cached() -> None:
    """The same declaration gives back the same class; a different one, another."""
    first = offload.facade(Cursor, executor="io", run=["fetchall"])
    assert offload.facade(Cursor, executor="io", run=("fetchall",)) is first
    assert offload.facade(Cursor, executor="default", run=["fetchall"]) is not first
    assert first.__name__ == "AsyncCursor"
    assert first.__module__ == __name__


def test_parity_reports_what_the_facade_lacks() -> None:
    """assert_parity names the sync attributes the facade forgot."""
    partial_facade = offload.facade(Connection, run=["query"])
    with pytest.raises(AssertionError) as caught:
        offload.assert_parity(partial_facade)
    message = str(caught.value)
    for name in ("'begin'", "'describe'", "'fail'", "'where'"):
        assert name in message
    for covered in ("'query'", "'timeout'", "'__enter__'"):  # declared, property, async protocol
        assert covered not in message


def test_parity_passes_for_a_complete_facade_and_checks_ignores() -> None:
    """A full declaration passes; an ignore= entry the sync class lacks fails."""
    offload.assert_parity(AsyncConnection)
    offload.assert_parity(AsyncCursor)
    with pytest.raises(AssertionError, match="does not have"):
        offload.assert_parity(AsyncCursor, ignore=["fetchmany"])


class TenMethods:
    """A sync class with ten methods, the size the driver guide quotes."""

    def a(self) -> int:
        return 1

    def b(self) -> int:
        return 2

    def c(self) -> int:
        return 3

    def d(self) -> int:
        return 4

    def e(self) -> int:
        return 5

    def f(self) -> int:
        return 6

    def g(self) -> int:
        return 7

    def h(self) -> int:
        return 8

    def i(self) -> int:
        return 9

    def j(self) -> int:
        return 10


async def test_ten_methods_take_one_declaration() -> None:
    """Wrapping a ten-method class is one facade() call, and it passes the parity check."""
    ten_facade = offload.facade(TenMethods, executor="io", run="abcdefghij")
    offload.assert_parity(ten_facade)
    ten = ten_facade(TenMethods())
    assert await asyncio.gather(*(getattr(ten, name)() for name in "abcdefghij")) == list(
        range(1, 11)
    )


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"run": ["nope"]}, "no attributes"),
        ({"run": ["where"], "sync": ["where"]}, "both"),
        ({"run": ["where"], "wrap": {"query": AsyncCursor}}, "neither"),
        ({"run": ["query"], "wrap": {"query": Cursor}}, "Facade subclasses"),
        ({"executor": 3}, "executor"),
    ],
)
def test_bad_declarations_fail_when_the_class_is_made(
    keywords: dict[str, Any], message: str
) -> None:
    """Typos and contradictions in a declaration are reported at once."""
    with pytest.raises(TypeError, match=message):
        offload.facade(Connection, **keywords)


def test_wrapping_the_wrong_type_is_refused() -> None:
    """A facade instance must wrap an instance of its sync class."""
    with pytest.raises(TypeError, match="wraps Connection objects"):
        AsyncConnection(Cursor([]))  # type: ignore[arg-type]


def test_calling_without_a_running_loop_explains_itself() -> None:
    """A run method called outside the loop raises and points to __wrapped__."""
    conn = AsyncConnection(Connection())
    with pytest.raises(RuntimeError, match="no running event loop"):
        conn.where()
    assert conn.__wrapped__.where() == threading.get_ident()


async def test_the_class_body_wins_over_the_declaration() -> None:
    """A method the subclass defines itself is kept, and may use _run for its own jobs."""

    class Custom(
        offload.Facade[Connection], wraps=Connection, executor="io", run=["where", "describe"]
    ):
        def describe(self) -> asyncio.Future[str]:
            return self._run(lambda: "custom " + self.__wrapped__.describe())

    conn = Custom(Connection())
    description = await conn.describe()
    assert description.startswith("custom connection on")
    assert str(threading.get_ident()) not in description


def test_repr_names_the_wrapped_object() -> None:
    """The repr shows the facade class and the sync object."""
    sync_conn = Connection()
    assert repr(AsyncConnection(sync_conn)) == f"<AsyncConnection wrapping {sync_conn!r}>"


async def test_calls_from_many_tasks_run_concurrently() -> None:
    """Facade calls on a pool run side by side: five calls all wait on one gate at once."""
    gate = threading.Event()

    class Gate:
        def wait(self) -> bool:
            return gate.wait(WAIT)

    gate_facade = offload.facade(Gate, executor="io", run=["wait"])
    waiting = [gate_facade(Gate()).wait() for _ in range(5)]
    gate.set()
    assert await asyncio.gather(*waiting) == [True] * 5


# -- Facades over context managers, on a pool --------------------------------------


class TokenLock:
    """A lock that keeps its token in a threading.local, as redis-py's Lock does."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.inner = threading.RLock()

    def __enter__(self) -> Self:
        self.inner.acquire()
        self.local.token = getattr(self.local, "token", 0) + 1
        return self

    def extend(self) -> int:
        """Fails, as redis-py's does, on a thread that did not acquire the lock."""
        token = getattr(self.local, "token", None)
        if token is None:
            raise RuntimeError("cannot extend an unlocked lock")
        return int(token)

    def __exit__(self, *exc_info: object) -> None:
        token = self.extend() - 1
        if token:
            self.local.token = token
        else:
            del self.local.token
        self.inner.release()


AsyncTokenLock = offload.facade(TokenLock, run=["extend"])


@pytest.fixture
def pool() -> Iterator[offload.ThreadPool]:
    """A pool of four threads of its own."""
    executor = offload.ThreadPool(4, name="facade-pool")
    yield executor
    executor.shutdown()


async def test_calls_inside_a_block_run_on_the_thread_that_entered(
    pool: offload.ThreadPool,
) -> None:
    """Inside ``async with facade`` on a pool, the task's calls on it find the entering thread."""
    lock = AsyncTokenLock(TokenLock(), executor=pool)
    async with lock as entered:
        assert entered is lock
        assert [await lock.extend() for _ in range(5)] == [1] * 5
    with pytest.raises(RuntimeError, match="unlocked"):
        await lock.extend()  # outside the block: any thread, and no token there


async def test_a_nested_block_enters_again_on_the_held_thread(pool: offload.ThreadPool) -> None:
    """A re-entrant lock entered twice by one task is entered and left on one thread."""
    lock = AsyncTokenLock(TokenLock(), executor=pool)
    async with lock:
        async with lock:
            assert await lock.extend() == 2
        assert await lock.extend() == 1


async def test_tasks_entering_one_facade_each_hold_their_own_thread(
    pool: offload.ThreadPool,
) -> None:
    """Two tasks taking one lock through one facade take turns; neither deadlocks."""
    lock = AsyncTokenLock(TokenLock(), executor=pool)
    order: list[str] = []

    async def use(name: str) -> None:
        async with lock:
            order.append(f"{name} in")
            assert await lock.extend() == 1
            await asyncio.sleep(0)
            order.append(f"{name} out")

    await asyncio.wait_for(asyncio.gather(use("a"), use("b")), WAIT)
    assert sorted(order) == ["a in", "a out", "b in", "b out"]
    assert order.index("a out") == order.index("a in") + 1  # one at a time
    assert order.index("b out") == order.index("b in") + 1


# -- Facades over DB-API cursors ------------------------------------------------------


class BatchCursor:
    """A DB-API-like cursor that records the sizes asked of fetchmany; __iter__ is unused."""

    def __init__(self, rows: int, fail_after: int | None = None) -> None:
        self.rows = list(range(rows))
        self.fail_after = fail_after
        self.sizes: list[int] = []
        self.served = 0

    def fetchmany(self, size: int) -> list[int]:
        """Up to ``size`` rows; an error once ``fail_after`` rows were served."""
        self.sizes.append(size)
        if self.fail_after is not None and self.served >= self.fail_after:
            raise LookupError("connection lost")
        chunk = self.rows[self.served : self.served + size]
        self.served += len(chunk)
        return chunk

    def __iter__(self) -> Iterator[int]:
        raise AssertionError("a cursor with fetchmany is read through fetchmany")


AsyncBatchCursor = offload.facade(BatchCursor, executor="io", prefetch=8)


async def test_a_cursor_is_read_a_burst_of_rows_per_fetchmany() -> None:
    """A facade over a cursor with fetchmany reads through it, never more than prefetch a call."""
    cursor = BatchCursor(100)
    assert [row async for row in AsyncBatchCursor(cursor)] == list(range(100))
    assert max(cursor.sizes) <= 8
    assert len(cursor.sizes) < 100 // 2
    assert cursor.sizes[:2] == [1, 2]  # the first row as soon as it exists


async def test_a_scan_read_slowly_keeps_asking_for_full_chunks() -> None:
    """A producer that gave its thread back for lack of room goes on with the size it reached.

    On a connection's own thread the producer returns when the buffer is full, so that other
    calls can run; started again, it must not go back to fetching one row at a time (a round
    trip each, on a server cursor).
    """
    worker = offload.AffineThread(name="slow-scan")
    try:
        cursor = BatchCursor(200)
        got: list[int] = []
        async for row in AsyncBatchCursor(cursor, executor=worker):
            got.append(row)
            if row % 8 == 0:  # the producer fills the buffer and returns, again and again
                await asyncio.sleep(0.001)
    finally:
        worker.shutdown()
    assert got == list(range(200))
    # Chunks of at least half of prefetch (4) after the first: 200 // 4 fetches at most,
    # plus the growth and the empty one at the end. Starting again at 1 took about 100.
    assert len(cursor.sizes) <= 200 // 4 + 4, cursor.sizes


async def test_a_fetchmany_error_arrives_after_the_rows_before_it() -> None:
    """Rows fetched before fetchmany raised arrive first; then its error."""
    cursor = BatchCursor(100, fail_after=20)
    rows = AsyncBatchCursor(cursor)
    got: list[int] = []

    async def drain() -> None:
        async for row in rows:
            got.append(row)  # noqa: PERF401 - the rows before the error are the point

    with pytest.raises(LookupError, match="connection lost"):
        await drain()
    assert got == list(range(cursor.served))
    assert cursor.served >= 20


async def test_sqlite_rows_come_through_a_facade() -> None:
    """A facade over an sqlite3 cursor yields every row, in order."""
    worker = offload.AffineThread(name="sqlite-rows")
    try:
        cursor_facade = offload.facade(sqlite3.Cursor, run=["execute"])

        def query() -> sqlite3.Cursor:
            conn = sqlite3.connect(":memory:")
            return conn.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500)"
                " SELECT x FROM c"
            )

        cursor = cursor_facade(await offload.offload(query, executor=worker)(), executor=worker)
        assert [x async for (x,) in cursor] == list(range(1, 501))
        await offload.offload(cursor.__wrapped__.connection.close, executor=worker)()
    finally:
        worker.shutdown()
