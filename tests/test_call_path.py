"""The parts of the call path that no single executor kind shows: counters, threads, imports."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import offload
from offload import _stats

from . import process_targets as targets
from .conftest import WAIT


def test_counts_of_a_thread_that_ended_are_kept() -> None:
    """A row of counters outlives its thread: it is folded into the totals once the thread ends."""
    stats = _stats.Stats("x")

    def count() -> None:
        for _ in range(100):
            stats.add(_stats.COMPLETED)

    thread = threading.Thread(target=count)
    thread.start()
    thread.join(WAIT)
    stats.add(_stats.COMPLETED)
    assert stats.totals()[_stats.COMPLETED] == 101
    assert len(stats.rows) == 1  # the ended thread's row was folded away
    assert stats.totals()[_stats.COMPLETED] == 101  # and counted once


def test_counters_lose_nothing_under_forced_interleavings() -> None:
    """Eight threads counting at once, switching every microsecond, add up exactly."""
    stats = _stats.Stats("x")
    start = threading.Event()

    def count() -> None:
        start.wait(WAIT)
        for _ in range(20_000):
            stats.add(_stats.SUBMITTED)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=count) for _ in range(8)]
        for thread in threads:
            thread.start()
        start.set()
        for thread in threads:
            thread.join(WAIT)
    finally:
        sys.setswitchinterval(interval)
    assert stats.totals()[_stats.SUBMITTED] == 160_000


def test_cancelled_is_answered_deep_inside_the_call() -> None:
    """``offload.cancelled()`` works from any depth of the call, with no frame walking."""

    def deep(n: int) -> bool:
        return offload.cancelled() if n == 0 else deep(n - 1)

    async def main() -> bool:
        return await offload.offload(deep, executor="io")(200)

    assert asyncio.run(main()) is False


def test_cancelled_outside_a_call_says_why() -> None:
    """On a plain thread, or on the loop, ``offload.cancelled()`` raises RuntimeError."""
    with pytest.raises(RuntimeError, match="only works inside a function running through"):
        offload.cancelled()
    outcome: list[BaseException] = []

    def on_a_thread() -> None:
        try:
            offload.cancelled()
        except RuntimeError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=on_a_thread)
    thread.start()
    thread.join(WAIT)
    assert len(outcome) == 1


def test_a_refused_thread_leaves_the_pool_working(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the OS refuses a new thread, the pool carries on with the threads it has."""
    pool = offload.ThreadPool(4, name="refused")
    real_start = threading.Thread.start
    started = 0

    def start(self: threading.Thread) -> None:
        nonlocal started
        if self.name.startswith("refused_") and started >= 1:
            raise RuntimeError("can't start new thread")
        started += 1
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)

    async def main() -> list[int]:
        return await asyncio.gather(*(offload.offload(abs, executor=pool)(-i) for i in range(20)))

    try:
        assert asyncio.run(main()) == list(range(20))
    finally:
        monkeypatch.undo()
        pool.shutdown(wait=True)  # joins the one thread it has; never a thread it lost
    assert started == 1


def test_a_pool_with_no_thread_refuses_the_call_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no thread at all, the call raises the OS's refusal instead of waiting forever."""
    pool = offload.ThreadPool(2, name="none")

    def start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def main() -> None:
        monkeypatch.setattr(threading.Thread, "start", start)
        try:
            with pytest.raises(RuntimeError, match="can't start new thread"):
                offload.offload(abs, executor=pool)(-1)
        finally:
            monkeypatch.undo()
        assert await offload.offload(abs, executor=pool)(-2) == 2  # it grows once it can

    asyncio.run(main())
    pool.shutdown(wait=True)


def test_a_call_racing_shutdown_runs_or_fails_but_never_hangs() -> None:
    """Calls made while another thread shuts the pool down each end: run, or refused."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(50):
            pool = offload.ThreadPool(2)
            fn = offload.offload(abs, executor=pool)

            async def main(pool: offload.ThreadPool = pool, fn: Any = fn) -> None:
                futures = [fn(-1) for _ in range(4)]  # the threads are started
                stopper = threading.Thread(target=pool.shutdown, kwargs={"wait": False})
                stopper.start()
                for _ in range(200):
                    try:
                        futures.append(fn(-1))
                    except offload.ExecutorShutdownError:
                        break
                stopper.join(WAIT)
                done, pending = await asyncio.wait(futures, timeout=WAIT)
                assert not pending
                for future in done:
                    assert (
                        future.cancelled()
                        or future.exception() is None
                        or isinstance(future.exception(), offload.ExecutorShutdownError)
                    )

            asyncio.run(main())
            pool.shutdown(wait=True)
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.timeout(60)
def test_import_works_where_there_is_no_fork() -> None:
    """On a platform without ``os.register_at_fork`` (Windows), ``import offload`` works."""
    # The standard library's own modules guard nothing; they are imported first.
    code = (
        "import asyncio, concurrent.futures.process, logging, multiprocessing.util, os, "
        "random, socket, tornado.web, wrapt\n"
        "del os.register_at_fork\n"
        "import offload\n"
        "async def main():\n"
        "    return await offload.offload(abs)(-3)\n"
        "print(asyncio.run(main()))\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, with our own code
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "3"), done.stderr


def _fates(stats: offload.ExecutorStats) -> int:
    return sum(stats[k] for k in ("completed", "failed", "cancelled", "timed_out", "rejected"))


@pytest.mark.parametrize("kind", ["stdlib-threads", "affine"])
def test_a_refused_call_ends_once_and_gives_its_slot_back_once(kind: str) -> None:
    """A shut-down thread executor refuses a bounded call: one failure, the bound intact."""
    registry = offload.Registry()
    pool = ThreadPoolExecutor(2) if kind == "stdlib-threads" else offload.AffineThread()
    registry.register("t", pool, max_pending=1)
    pool.shutdown()

    async def main() -> None:
        with pytest.raises(RuntimeError):
            registry.offload("t")(abs)(-1)
        gc.collect()  # the refusal's traceback, and anything it kept, are gone
        await asyncio.sleep(0)

    asyncio.run(main())
    stats = registry.stats()["t"]
    assert (stats["submitted"], stats["failed"], stats["cancelled"]) == (1, 1, 0)
    running = threading.Semaphore(0)
    gate = threading.Event()
    registry.register("t", ThreadPoolExecutor(4), replace=True, max_pending=1)

    def work() -> None:
        running.release()
        gate.wait(WAIT)

    async def bounded() -> None:
        calls = [registry.offload("t")(work)() for _ in range(3)]
        assert running.acquire(timeout=WAIT)  # one call runs ...
        assert not running.acquire(timeout=0.2)  # ... and only one: the slot came back once
        gate.set()
        await asyncio.gather(*calls)

    asyncio.run(bounded())
    stats = registry.stats()["t"]
    assert stats["submitted"] == _fates(stats) == 4
    registry.shutdown()


def test_a_cancelled_call_a_shutdown_gives_up_on_is_counted_once() -> None:
    """Cancelled while it runs, then given up by a shutdown that times out: one cancel."""
    registry = offload.Registry()
    registry.register("t", offload.ThreadPool(1))
    started, release = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        release.wait(WAIT)

    async def main() -> None:
        call = registry.offload("t")(work)()
        assert await asyncio.to_thread(started.wait, WAIT)
        call.cancel()
        with pytest.warns(RuntimeWarning, match="gave up"):
            await asyncio.to_thread(registry.shutdown, wait=True, timeout=0.05)
        await asyncio.sleep(0)  # the shutdown's outcome is drained
        release.set()
        assert await asyncio.to_thread(_wait_until, lambda: registry.stats()["t"]["running"] == 0)

    asyncio.run(main())
    stats = registry.stats()["t"]
    assert (stats["submitted"], stats["cancelled"], _fates(stats)) == (1, 1, 1)


def _wait_until(condition: Any) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.timeout(60)
def test_a_slot_handed_to_a_loop_that_closes_comes_back(tmp_path: Path) -> None:
    """A waiting call handed over to its stopped loop, which then closes, gives its slot back."""
    registry = offload.Registry()
    registry.register("p", offload.ProcessPool(1, start_method="fork"), max_pending=1)
    hold: Any = registry.offload("p")(getattr(targets.hold, "__wrapped__"))  # noqa: B009
    echo: Any = registry.offload("p")(getattr(targets.identity, "__wrapped__"))  # noqa: B009
    loop = asyncio.new_event_loop()

    async def start() -> None:
        first = hold(tmp_path / "held", tmp_path / "release")
        echo(1)  # waits for the slot
        await targets.started(tmp_path / "held")
        assert not first.done()

    loop.run_until_complete(start())
    (tmp_path / "release").touch()  # the first call ends with the loop stopped ...
    assert _wait_until(lambda: registry.stats()["p"]["running"] == 0)
    loop.close()  # ... and the hand-over of the second is dropped unrun
    gc.collect()

    async def later() -> int:
        return int(await asyncio.wait_for(echo(2), WAIT))

    assert asyncio.run(later()) == 2  # the name is not stuck
    registry.shutdown(cancel_futures=True)


@pytest.mark.timeout(60)
def test_a_worker_dying_under_a_bounded_stdlib_process_pool_never_deadlocks() -> None:
    """Python 3.12+ reports a broken pool under its own lock: the waiting call is not sent there."""
    registry = offload.Registry()
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    registry.register("p", pool, max_pending=1)
    die: Any = registry.offload("p")(getattr(targets.exit_with, "__wrapped__"))  # noqa: B009
    echo: Any = registry.offload("p")(getattr(targets.identity, "__wrapped__"))  # noqa: B009

    async def main() -> list[BaseException | int]:
        calls = [die(3), echo(2)]  # the second waits for the slot
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WAIT * 2)

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[0], offload.WorkerDiedError)
    assert isinstance(outcomes[1], BaseException)  # sent to the broken pool, it fails clearly
    registry.shutdown()


_EXIT_WHILE_STARTING = """
import asyncio, time, offload

async def main():
    pool = offload.ProcessPool(1, start_method="spawn")
    hang = offload.offload(time.sleep, executor=pool)
    calls = [hang(3600) for _ in range(5)]  # the manager is starting the worker now
    await asyncio.sleep(0)
    return calls

asyncio.run(main())
print("exiting")
"""


@pytest.mark.timeout(120)
def test_the_interpreter_exits_while_a_process_pool_starts_a_worker_for_a_hanging_call() -> None:
    """Exit never hangs on a ProcessPool, even holding a call between its queue and a worker."""
    for _ in range(3):
        done = subprocess.run(  # noqa: S603 - this interpreter, with our own code
            [sys.executable, "-c", _EXIT_WHILE_STARTING],
            capture_output=True,
            text=True,
            timeout=WAIT * 3,
            check=False,
        )
        assert (done.returncode, done.stdout.strip()) == (0, "exiting"), done.stderr
