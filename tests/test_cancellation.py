"""Cancelling a Future: before the start the call never runs; after, its outcome is dropped."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import pytest

import offload
from tests.conftest import WAIT, hold


def _single_worker(kind: str) -> Executor:
    if kind == "offload-pool":
        return offload.ThreadPool(1, name="one")
    return ThreadPoolExecutor(1)


@pytest.fixture(params=["offload-pool", "stdlib-pool"])
def one_worker(request: pytest.FixtureRequest) -> Any:
    pool = _single_worker(request.param)
    yield pool
    pool.shutdown(wait=True)


def _record_loop_errors() -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    return errors


async def test_cancelled_before_start_never_runs(one_worker: Executor) -> None:
    """A call cancelled while queued behind a busy worker is never run."""
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []
    block = offload.offload(hold(started, release), executor=one_worker)
    record = offload.offload(ran.append, executor=one_worker)

    blocker = block()
    assert await asyncio.to_thread(started.wait, WAIT)
    queued = record(1)
    queued.cancel()
    release.set()
    await blocker
    await record(2)  # the single worker has now passed the cancelled call
    assert ran == [2]
    assert queued.cancelled()


@pytest.mark.parametrize("outcome", ["result", "exception"])
async def test_cancelled_while_running_drops_the_late_outcome(
    one_worker: Executor, outcome: str
) -> None:
    """The Future is cancelled at once; the thread finishes and nothing is logged."""
    errors = _record_loop_errors()
    started, release = threading.Event(), threading.Event()

    def body() -> str:
        started.set()
        release.wait(WAIT)
        if outcome == "exception":
            raise ValueError("late failure")
        return "late result"

    future = offload.offload(body, executor=one_worker)()
    assert await asyncio.to_thread(started.wait, WAIT)
    assert future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    release.set()
    assert await offload.offload(lambda: "after", executor=one_worker)() == "after"
    await asyncio.sleep(0)
    gc.collect()
    assert errors == []
    assert future.cancelled()


async def test_pool_cancelling_queued_calls_cancels_their_futures() -> None:
    """Shutting a foreign pool down with cancel_futures cancels our queued Futures too."""
    pool = ThreadPoolExecutor(1)
    started, release = threading.Event(), threading.Event()
    block = offload.offload(hold(started, release), executor=pool)
    noop = offload.offload(lambda: None, executor=pool)
    blocker = block()
    assert await asyncio.to_thread(started.wait, WAIT)
    queued = noop()
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(queued, WAIT)
    assert queued.cancelled()


async def test_own_pool_shutdown_with_cancel_cancels_queued_futures() -> None:
    """offload's pool cancels the Futures of calls it drops at shutdown."""
    pool = offload.ThreadPool(1, name="drop")
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []
    block = offload.offload(hold(started, release), executor=pool)
    record = offload.offload(ran.append, executor=pool)
    blocker = block()
    assert await asyncio.to_thread(started.wait, WAIT)
    queued = [record(i) for i in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    await blocker
    results = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), WAIT)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert ran == []


def test_no_exception_was_never_retrieved_log(caplog: pytest.LogCaptureFixture) -> None:
    """A cancelled call whose body later fails leaves no asyncio error in the log."""
    pool = offload.ThreadPool(1, name="quiet")
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def body() -> None:
        started.set()
        release.wait(WAIT)
        finished.set()
        raise RuntimeError("nobody is listening")

    async def main() -> None:
        future = offload.offload(body, executor=pool)()
        assert await asyncio.to_thread(started.wait, WAIT)
        future.cancel()
        release.set()
        assert await asyncio.to_thread(finished.wait, WAIT)
        await offload.offload(lambda: None, executor=pool)()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio.run(main())
        gc.collect()
    pool.shutdown()
    assert [r for r in caplog.records if r.name == "asyncio"] == []
