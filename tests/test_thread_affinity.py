"""AffineThread: every job on one dedicated thread, and a clear error instead of a deadlock."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from collections.abc import Iterator

import pytest

import offload
from tests.conftest import WAIT


@pytest.fixture
def affine() -> Iterator[offload.AffineThread]:
    """An AffineThread of its own, shut down when the test ends."""
    worker = offload.AffineThread(name="affine-test")
    yield worker
    worker.shutdown(cancel_futures=True)


def test_every_job_runs_on_one_named_thread(affine: offload.AffineThread) -> None:
    """All jobs run on the same thread, which carries the executor's name."""
    threads = [affine.submit(threading.current_thread).result(WAIT) for _ in range(5)]
    assert len(set(threads)) == 1
    assert threads[0].name == "affine-test"
    assert threads[0] is not threading.current_thread()


def test_jobs_run_in_submission_order(affine: offload.AffineThread) -> None:
    """Jobs run one at a time, in the order they were submitted."""
    seen: list[int] = []
    futures = [affine.submit(seen.append, n) for n in range(20)]
    futures[-1].result(WAIT)
    assert seen == list(range(20))


def test_waiting_on_the_own_thread_raises_deadlock_error(affine: offload.AffineThread) -> None:
    """A job that waits for another job on its thread gets DeadlockError, not a hang."""

    def nested() -> int:
        return affine.submit(int, "7").result()

    with pytest.raises(offload.DeadlockError, match="affine-test"):
        affine.submit(nested).result(WAIT)


def test_waiting_for_the_exception_is_refused_too(affine: offload.AffineThread) -> None:
    """Future.exception() from the own thread is refused like result()."""
    with pytest.raises(offload.DeadlockError):
        affine.submit(lambda: affine.submit(int).exception(timeout=1.0)).result(WAIT)


def test_submitting_without_waiting_is_allowed(affine: offload.AffineThread) -> None:
    """A job may queue a follow-up job on its own thread; it runs after the job returns."""
    seen: list[str] = []

    def first() -> object:
        follow_up = affine.submit(seen.append, "second")
        seen.append("first")
        return follow_up

    follow_up = affine.submit(first).result(WAIT)
    follow_up.result(WAIT)  # type: ignore[attr-defined]
    assert seen == ["first", "second"]


def test_a_finished_future_may_be_read_on_the_own_thread(affine: offload.AffineThread) -> None:
    """Reading a Future that is already done cannot deadlock, so it is allowed."""
    done = affine.submit(int, "5")
    assert done.result(WAIT) == 5
    assert affine.submit(done.result).result(WAIT) == 5


async def test_sqlite_objects_stay_on_their_thread(affine: offload.AffineThread) -> None:
    """A sqlite3 connection made on the thread works across awaits, with the thread check on."""
    conn = await offload.offload(sqlite3.connect, executor=affine)(":memory:")
    run = offload.offload(conn.execute, executor=affine)
    await run("CREATE TABLE t (x)")
    await run("INSERT INTO t VALUES (1), (2)")
    cursor = await run("SELECT sum(x) FROM t")
    assert await offload.offload(cursor.fetchone, executor=affine)() == (3,)
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")  # the loop thread is not the connection's thread
    await offload.offload(conn.close, executor=affine)()


async def test_one_thread_per_connection() -> None:
    """Each AffineThread has its own thread: one blocked connection does not stall another."""
    first, second = offload.AffineThread(name="conn-1"), offload.AffineThread(name="conn-2")
    release = threading.Event()
    try:
        blocked = offload.offload(release.wait, executor=first)(WAIT)
        other = await offload.offload(threading.current_thread, executor=second)()
        assert other.name == "conn-2"
        assert not blocked.done()
        release.set()
        assert await blocked is True
    finally:
        release.set()
        first.shutdown()
        second.shutdown()


async def test_a_registered_default_yields_to_the_application(registry: offload.Registry) -> None:
    """A library's default AffineThread under a name is replaced by the application's."""
    registry.register("mydriver.io", lambda: offload.AffineThread(name="library"), default=True)
    registry.register("mydriver.io", lambda: offload.AffineThread(name="application"))
    where = registry.offload("mydriver.io")(lambda: threading.current_thread().name)
    assert await where() == "application"


def _signal_then_wait(started: threading.Event, release: threading.Event) -> bool:
    started.set()
    return release.wait(WAIT)


def test_shutdown_cancels_queued_jobs_on_request() -> None:
    """shutdown(cancel_futures=True) cancels what has not started, and later submits fail."""
    worker = offload.AffineThread()
    started, release = threading.Event(), threading.Event()
    running = worker.submit(_signal_then_wait, started, release)
    assert started.wait(WAIT)
    queued = worker.submit(int)
    worker.shutdown(wait=False, cancel_futures=True)
    release.set()
    running.result(WAIT)
    assert queued.cancelled()
    with pytest.raises(offload.ExecutorShutdownError):
        worker.submit(int)
    worker.shutdown()


async def test_shutdown_cancels_offloaded_futures() -> None:
    """An offloaded call queued on a shut-down AffineThread is cancelled, not left pending."""
    worker = offload.AffineThread()
    started, release = threading.Event(), threading.Event()
    running = offload.offload(_signal_then_wait, executor=worker)(started, release)
    assert await asyncio.to_thread(started.wait, WAIT)
    queued = offload.offload(int, executor=worker)()
    worker.shutdown(wait=False, cancel_futures=True)
    release.set()
    await running
    with pytest.raises(asyncio.CancelledError):
        await queued
    worker.shutdown()


def test_the_thread_ends_when_the_executor_is_dropped() -> None:
    """An AffineThread nobody refers to any more lets its thread end."""
    worker = offload.AffineThread()
    thread = worker.submit(threading.current_thread).result(WAIT)
    del worker
    gc.collect()
    thread.join(WAIT)
    assert not thread.is_alive()


def test_repr_shows_name_and_state() -> None:
    """The repr names the thread and says whether it runs."""
    worker = offload.AffineThread(name="db")
    assert repr(worker) == "<offload.AffineThread 'db' not started>"
    worker.submit(int).result(WAIT)
    assert repr(worker) == "<offload.AffineThread 'db' running>"
    worker.shutdown()
    assert repr(worker) == "<offload.AffineThread 'db' shut down>"
