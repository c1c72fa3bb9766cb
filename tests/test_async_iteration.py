"""Blocking iterators and generators used with ``async for``: one thread, backpressure, closing."""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import pytest
from tornado import gen

import offload
from tests.conftest import WAIT


@pytest.fixture(params=["offload-pool", "stdlib-pool", "affine-thread"])
def any_executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """Each test that takes it runs on a pool, a stdlib pool and an AffineThread."""
    pool: Executor
    if request.param == "offload-pool":
        pool = offload.ThreadPool(4, name="iter-test")
    elif request.param == "stdlib-pool":
        pool = ThreadPoolExecutor(4)
    else:
        pool = offload.AffineThread(name="iter-test")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


class Source:
    """A generator that records where and how far it ran."""

    def __init__(self, limit: int | None = None, fail_at: int | None = None) -> None:
        self.limit, self.fail_at = limit, fail_at
        self.produced = 0
        self.threads: set[int] = set()
        self.closed_on: int | None = None
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[int]:
        try:
            while self.limit is None or self.produced < self.limit:
                self.threads.add(threading.get_ident())
                if self.produced == self.fail_at:
                    raise ValueError(f"bad item {self.produced}")
                self.produced += 1
                yield self.produced
        finally:
            self.closed_on = threading.get_ident()
            self.closed.set()


async def _until(condition: Any) -> None:
    for _ in range(int(WAIT * 1000)):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("timed out")


def _producer_is_waiting(thread_id: int) -> bool:
    frame = sys._current_frames().get(thread_id)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return len(names) > 1 and names[0] == "wait" and "produce" in names


async def _producer_stopped(executor: Executor, source: Source, at_least: int) -> None:
    """Return once the producer made ``at_least`` items and then stopped for want of credit."""
    await _until(lambda: source.produced >= at_least)
    if isinstance(executor, offload.AffineThread):
        await offload.offload(int, executor=executor)()  # queued behind the producer's batch
    else:
        await _until(lambda: source.threads and _producer_is_waiting(next(iter(source.threads))))


async def test_items_arrive_in_order(any_executor: Executor) -> None:
    """Every item arrives, in order, and the iteration ends."""
    rows = offload.aiterate(iter(Source(limit=50)), executor=any_executor, prefetch=4)
    assert [n async for n in rows] == list(range(1, 51))


async def test_every_item_is_produced_on_one_thread(any_executor: Executor) -> None:
    """A multi-thread pool still produces all items of one iterator on one thread."""
    source = Source(limit=40)
    busy = offload.offload(lambda: None, executor=any_executor)
    async for _ in offload.aiterate(iter(source), executor=any_executor, prefetch=2):
        await busy()  # other jobs on the same executor in between
    assert len(source.threads) == 1
    assert source.threads != {threading.get_ident()}


async def test_a_slow_consumer_holds_the_producer_back(any_executor: Executor) -> None:
    """The producer stops ``prefetch`` items ahead and goes on once half of them are consumed."""
    source = Source()  # endless
    async with offload.aiterate(iter(source), executor=any_executor, prefetch=4) as rows:
        consumed = 1
        assert await anext(rows) == 1
        await _producer_stopped(any_executor, source, at_least=consumed + 3)
        # Four ahead, or three if item 1 was taken just as the fourth was made.
        assert source.produced - consumed in {3, 4}
        while source.produced - consumed > 3:
            consumed += 1
            assert await anext(rows) == consumed
        await _producer_stopped(any_executor, source, at_least=consumed + 3)
        assert source.produced == consumed + 3  # three ahead: more than half, still stopped
        consumed += 1
        assert await anext(rows) == consumed  # two ahead: half, so it goes on
        await _producer_stopped(any_executor, source, at_least=consumed + 4)
        assert source.produced == consumed + 4


async def test_buffered_items_are_handed_out_without_waiting(any_executor: Executor) -> None:
    """Once items are buffered, __anext__ returns one without suspending: no hop per item."""
    source = Source()
    async with offload.aiterate(iter(source), executor=any_executor, prefetch=8) as rows:
        assert await anext(rows) == 1
        await _producer_stopped(any_executor, source, at_least=1 + 7)
        for expected in range(2, 6):
            step = rows.__anext__()
            with pytest.raises(StopIteration) as returned:
                step.send(None)  # runs the coroutine to its first suspension or its end
            assert returned.value.value == expected


async def test_an_exception_arrives_after_the_items_before_it(any_executor: Executor) -> None:
    """Items made before the error arrive first; the error keeps its type and traceback."""
    rows = offload.aiterate(iter(Source(fail_at=3)), executor=any_executor)
    assert [await anext(rows) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="bad item 3") as caught:
        await anext(rows)
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "__iter__" in frames
    with pytest.raises(StopAsyncIteration):
        await anext(rows)


@pytest.mark.parametrize("kind", ["offload-pool", "stdlib-pool", "affine-thread"])
async def test_break_closes_the_source_and_frees_the_thread(kind: str) -> None:
    """Leaving ``async for`` early runs the source's finally on its thread and frees it."""
    makers: dict[str, Callable[[], Executor]] = {
        "offload-pool": lambda: offload.ThreadPool(1, name="single"),
        "stdlib-pool": lambda: ThreadPoolExecutor(1),
        "affine-thread": lambda: offload.AffineThread(name="single"),
    }
    pool = makers[kind]()
    source = Source()
    try:
        async for n in offload.aiterate(iter(source), executor=pool, prefetch=2):
            if n == 2:
                break
        assert await asyncio.to_thread(source.closed.wait, WAIT)
        assert source.closed_on in source.threads
        assert await offload.offload(lambda: "free", executor=pool)() == "free"
    finally:
        pool.shutdown()


async def test_aclose_returns_after_the_source_is_closed(any_executor: Executor) -> None:
    """aclose() waits until the source's finally has run."""
    source = Source()
    rows = offload.aiterate(iter(source), executor=any_executor, prefetch=2)
    await anext(rows)
    await rows.aclose()
    assert source.closed.is_set()
    assert source.closed_on in source.threads
    with pytest.raises(StopAsyncIteration):
        await anext(rows)


async def test_async_with_closes_the_source(any_executor: Executor) -> None:
    """Leaving ``async with`` closes the iterator like aclose()."""
    source = Source()
    async with offload.aiterate(iter(source), executor=any_executor) as rows:
        assert await anext(rows) == 1
    assert source.closed.is_set()


async def test_aclose_raises_what_closing_raised(any_executor: Executor) -> None:
    """An exception from the source's finally surfaces from aclose()."""

    def failing_cleanup() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            raise OSError("cleanup failed")

    rows = offload.aiterate(failing_cleanup(), executor=any_executor, prefetch=1)
    await anext(rows)
    with pytest.raises(OSError, match="cleanup failed"):
        await rows.aclose()


async def test_other_jobs_run_between_batches_on_an_affine_thread() -> None:
    """On an AffineThread the iterator frees the thread between batches: no self-deadlock."""
    worker = offload.AffineThread()
    try:
        rows = offload.aiterate(iter(Source(limit=10)), executor=worker, prefetch=2)
        seen = []
        async for n in rows:
            seen.append(n)
            assert await offload.offload(lambda: "other", executor=worker)() == "other"
        assert seen == list(range(1, 11))
    finally:
        worker.shutdown()


@pytest.mark.parametrize("form", ["bare", "positional", "keyword"])
async def test_agenerator_decorates_a_generator_function(form: str) -> None:
    """@agenerator in each form gives an async iterator; its body runs off the loop thread."""

    def numbers(n: int) -> Iterator[tuple[int, int]]:
        for i in range(n):
            yield i, threading.get_ident()

    decorated = {
        "bare": offload.agenerator(numbers),
        "positional": offload.agenerator("io")(numbers),
        "keyword": offload.agenerator(executor="io", prefetch=1)(numbers),
    }[form]
    items = [item async for item in decorated(3)]
    assert [i for i, _ in items] == [0, 1, 2]
    assert threading.get_ident() not in {thread for _, thread in items}
    assert decorated.__wrapped__ is numbers  # type: ignore[attr-defined]
    assert decorated.__name__ == "numbers"


async def test_usable_from_gen_coroutine() -> None:
    """@gen.coroutine code yields anext(it, sentinel) until the sentinel comes back."""

    @gen.coroutine
    def total(path: Iterator[int]) -> Any:
        rows = offload.aiterate(path, executor="io")
        result = 0
        while True:
            n = yield anext(rows, None)
            if n is None:
                return result
            result += n

    assert await total(iter(range(5))) == 10


def test_prefetch_must_be_positive() -> None:
    """A prefetch below one is refused at once."""
    with pytest.raises(ValueError, match="prefetch"):
        offload.aiterate([], prefetch=0)


def test_executor_given_twice_is_refused() -> None:
    """agenerator('io', executor='io') is ambiguous and refused."""
    with pytest.raises(TypeError, match="once"):
        offload.agenerator("io", executor="io")  # type: ignore[call-overload]
