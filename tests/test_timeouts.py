"""Timeouts and giving up: processes are stopped, threads are told, Futures fail on time."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures import wait as wait_all
from pathlib import Path

import pytest

import offload
from tests import process_targets as targets
from tests.conftest import WAIT

pytestmark = pytest.mark.filterwarnings("ignore:This process .*multi-threaded:DeprecationWarning")


@pytest.fixture(scope="module", params=["fork", "spawn", "forkserver"])
def pool(request: pytest.FixtureRequest) -> Iterator[offload.ProcessPool]:
    """One warm two-worker pool per start method, with a short SIGTERM grace."""
    pool = offload.ProcessPool(2, start_method=request.param, terminate_timeout=0.2)
    wait_all([pool.submit(time.sleep, 0.2) for _ in range(2)])
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def procs(pool: offload.ProcessPool) -> offload.ProcessPool:
    targets.registry.register("procs", pool, replace=True)
    return pool


# -- Processes that offload manages ---------------------------------------------


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["obeys", "ignores-sigterm"])
async def test_a_timed_out_call_has_its_worker_terminated_and_others_carry_on(
    procs: offload.ProcessPool, tmp_path: Path, ignore_sigterm: bool
) -> None:
    """TimeoutError on time; the worker dies (SIGKILL if SIGTERM is ignored); others return."""
    other = targets.hold(tmp_path / "other", tmp_path / "release")
    other_pid = await targets.started(tmp_path / "other")
    start = time.monotonic()
    doomed = targets.hold_with_deadline(tmp_path / "doomed", ignore_sigterm)
    doomed_pid = await targets.started(tmp_path / "doomed")
    with pytest.raises(TimeoutError, match=r"within 1\.0s; its worker process was terminated"):
        await doomed
    assert time.monotonic() - start < WAIT / 2
    assert await targets.gone(doomed_pid)
    (tmp_path / "release").touch()
    assert await other == other_pid
    assert await targets.power(3) == 9  # a new worker took the place of the dead one


async def test_cancelling_a_running_call_terminates_its_worker(
    procs: offload.ProcessPool, tmp_path: Path
) -> None:
    """The worker running a cancelled call is stopped and replaced."""
    held = targets.hold(tmp_path / "held")
    pid = await targets.started(tmp_path / "held")
    held.cancel()
    assert await targets.gone(pid)
    assert await targets.power(4) == 16


async def test_a_call_cancelled_while_queued_never_runs(
    procs: offload.ProcessPool, tmp_path: Path
) -> None:
    """With both workers busy, a cancelled queued call is dropped, not run."""
    busy = [targets.hold(tmp_path / f"busy{i}", tmp_path / "release") for i in range(2)]
    try:
        for i in range(2):
            await targets.started(tmp_path / f"busy{i}")
        queued = targets.hold(tmp_path / "queued", tmp_path / "release")
        queued.cancel()
    finally:  # the workers are freed even if this test fails, so the next tests are not held
        (tmp_path / "release").touch()
    await asyncio.gather(*busy)
    await targets.where()  # the workers have passed the point where it would have run
    assert not (tmp_path / "queued").exists()


async def test_a_call_that_finishes_in_time_is_not_disturbed(procs: offload.ProcessPool) -> None:
    """A deadline that does not expire changes nothing, then or later."""
    original: Callable[[int], int] = targets.power.__wrapped__  # type: ignore[attr-defined]
    quick = offload.offload(original, executor=procs, timeout=5.0)
    assert await quick(7) == 49


# -- A foreign process pool ---------------------------------------------------


async def test_a_foreign_pool_times_out_on_time_but_runs_on(tmp_path: Path) -> None:
    """A standard ProcessPoolExecutor cannot stop a job: the Future fails, the job carries on."""
    stdlib = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
    targets.registry.register("procs", stdlib, replace=True)
    original: Callable[[Path, Path], int] = targets.hold.__wrapped__  # type: ignore[attr-defined]
    held = offload.offload(original, executor=stdlib, timeout=0.3)
    try:
        running = held(tmp_path / "held", tmp_path / "release")
        pid = await targets.started(tmp_path / "held")
        with pytest.raises(TimeoutError, match="offload cannot stop"):
            await running
        (tmp_path / "release").touch()
        assert await targets.where() == pid  # the same worker, still alive
    finally:
        stdlib.shutdown()


# -- Threads ----------------------------------------------------------------------


async def test_a_thread_times_out_on_time_and_is_told_to_stop(executor: Executor) -> None:
    """The Future fails after the deadline; the thread runs on and sees cancelled() turn true."""
    started, stopped = threading.Event(), threading.Event()
    seen: list[bool] = []

    def spin() -> None:
        seen.append(offload.cancelled())
        started.set()
        while not offload.cancelled():
            time.sleep(0.005)
        seen.append(offload.cancelled())
        stopped.set()

    begin = time.monotonic()
    with pytest.raises(TimeoutError, match="a thread cannot be killed"):
        await offload.offload(spin, executor=executor, timeout=0.1)()
    assert time.monotonic() - begin >= 0.1
    assert started.is_set()
    assert await asyncio.to_thread(stopped.wait, WAIT)
    assert seen == [False, True]


async def test_check_cancelled_stops_a_cancelled_thread(executor: Executor) -> None:
    """check_cancelled() raises CancelledError in the thread once its Future is cancelled."""
    started, unwound = threading.Event(), threading.Event()
    raised: list[BaseException] = []

    def loop_forever() -> None:
        started.set()
        try:
            while True:
                offload.check_cancelled()
                time.sleep(0.005)
        except BaseException as exc:
            raised.append(exc)
            raise
        finally:
            unwound.set()

    future = offload.offload(loop_forever, executor=executor)()
    assert await asyncio.to_thread(started.wait, WAIT)
    future.cancel()
    assert await asyncio.to_thread(unwound.wait, WAIT)
    assert isinstance(raised[0], asyncio.CancelledError)
    assert future.cancelled()


async def test_a_call_is_not_cancelled_while_its_caller_waits(executor: Executor) -> None:
    """cancelled() is false, and check_cancelled() silent, in a call nobody gave up on."""

    def ask() -> bool:
        offload.check_cancelled()
        return offload.cancelled()

    assert await offload.offload(ask, executor=executor)() is False


async def test_asking_outside_an_offloaded_call_is_a_clear_error() -> None:
    """On the loop, or on a thread offload did not start the call on, asking raises."""
    with pytest.raises(RuntimeError, match=r"only works inside a function running through"):
        offload.cancelled()
    with pytest.raises(RuntimeError, match="no offloaded call is running"):
        await asyncio.to_thread(offload.check_cancelled)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(0, ValueError), (-1.0, ValueError), ("1", TypeError), (True, TypeError)],
)
def test_a_bad_timeout_fails_at_decoration(timeout: object, error: type[Exception]) -> None:
    """Timeouts are positive numbers of seconds."""
    with pytest.raises(error, match="timeout"):
        offload.offload(time.sleep, timeout=timeout)  # type: ignore[call-overload]


async def test_every_decorator_form_takes_a_timeout(registry: offload.Registry) -> None:
    """``@offload("io", timeout=...)``, ``@offload(timeout=...)`` and the plain call."""

    release = threading.Event()

    def nap() -> None:
        release.wait(WAIT)

    for wrapped in (
        registry.offload("io", timeout=0.05)(nap),
        registry.offload(timeout=0.05)(nap),
        registry.offload(nap, executor="io", timeout=0.05),
    ):
        with pytest.raises(TimeoutError):
            await wrapped()
    release.set()
