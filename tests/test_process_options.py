"""ProcessPool's initializer, initargs and max_tasks_per_child, under every start method."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

import offload
from offload._pickling import RemoteTraceback
from offload._pool import usable_cpus
from tests import process_targets as targets

# Python 3.12+ warns when a multi-threaded process forks; the fork case is
# tested on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:This process .*multi-threaded:DeprecationWarning")

START_METHODS = ["fork", "spawn", "forkserver"]
WAIT = targets.WAIT
#: The name the tests' registry gives the pool under test.
NAME = "opts"


@pytest.fixture(params=START_METHODS)
def method(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs under every start method."""
    value: str = request.param
    return value


@pytest.fixture
def make_pool(method: str) -> Iterator[Callable[..., offload.ProcessPool]]:
    """Make pools started with ``method``; each is shut down when the test ends."""
    made: list[offload.ProcessPool] = []

    def make(max_workers: int = 1, **options: Any) -> offload.ProcessPool:
        pool = offload.ProcessPool(
            max_workers, start_method=method, name=f"opts-{method}", terminate_timeout=0.2,
            **options,
        )  # fmt: skip
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.shutdown(wait=True, cancel_futures=True)


def _results(futures: list[ConcurrentFuture[Any]]) -> list[Any]:
    return [future.result(timeout=WAIT) for future in futures]


def _pid_in(path: Path) -> int:
    """Wait until a held call has written its pid to ``path``; return the pid."""
    assert targets._wait_for(path), f"the call never started: {path} was not written"
    return int(path.read_text())


def _error(future: ConcurrentFuture[Any]) -> BaseException:
    error = future.exception(timeout=WAIT)
    assert error is not None, f"the call returned {future.result()!r}"
    return error


# -- initializer and initargs ----------------------------------------------------


def test_the_initializer_runs_once_in_each_worker_before_its_calls(
    make_pool: Callable[..., offload.ProcessPool], tmp_path: Path
) -> None:
    """Every call sees what the initializer set, with initargs; it ran once per worker."""
    pool = make_pool(2, initializer=targets.remember_start, initargs=("db", 3))
    release = tmp_path / "release"
    # Two held calls start both workers; later calls reuse them.
    held = [pool.submit(targets.hold_plain, tmp_path / f"started{i}", release) for i in range(2)]
    workers = {_pid_in(tmp_path / f"started{i}") for i in range(2)}
    release.touch()
    assert set(_results(held)) == workers
    seen = _results([pool.submit(targets.read_start) for _ in range(6)])
    assert {runs for _, runs, _ in seen} == {1}
    assert {args for _, _, args in seen} == {("db", 3)}
    assert {pid for pid, _, _ in seen} <= workers
    assert os.getpid() not in workers
    assert targets.initializer_runs == 0  # never in this process


def test_a_lambda_initializer_runs_under_fork() -> None:
    """A forked worker is a copy of this process: a lambda needs no pickling there."""
    pool = offload.ProcessPool(
        1, start_method="fork", initializer=lambda: targets.remember_start("lambda")
    )
    try:
        _, runs, args = pool.submit(targets.read_start).result(timeout=WAIT)
    finally:
        pool.shutdown()
    assert (runs, args) == (1, ("lambda",))


async def test_offloaded_calls_see_what_the_initializer_set(
    make_pool: Callable[..., offload.ProcessPool], registry: offload.Registry
) -> None:
    """A decorated call runs after the initializer too, and is counted as usual."""
    registry.register(NAME, make_pool(initializer=targets.remember_start, initargs=(7,)))
    read = registry.offload(targets.read_start, executor=NAME)
    _, runs, args = await read()
    assert (runs, args) == (1, (7,))
    stats = registry.stats()[NAME]
    assert (stats["submitted"], stats["completed"], stats["failed"]) == (1, 1, 0)


# -- max_tasks_per_child ---------------------------------------------------------


def test_one_task_per_child_gives_each_call_a_fresh_initialized_worker(
    make_pool: Callable[..., offload.ProcessPool],
) -> None:
    """Each call runs in a new process, whose initializer ran once; the old ones exit."""
    pool = make_pool(max_tasks_per_child=1, initializer=targets.remember_start, initargs=("x",))
    seen = [pool.submit(targets.read_start).result(timeout=WAIT) for _ in range(3)]
    pids = [pid for pid, _, _ in seen]
    assert len(set(pids)) == 3, pids
    assert [(runs, args) for _, runs, args in seen] == [(1, ("x",))] * 3
    pool.shutdown(wait=True)
    assert all(targets._exited(pid) for pid in pids)


def test_two_tasks_per_child_gives_each_worker_two_calls(
    make_pool: Callable[..., offload.ProcessPool],
) -> None:
    """Queued together on one worker, the calls run in pairs, each pair in a new process."""
    pool = make_pool(max_tasks_per_child=2)
    pids = _results([pool.submit(os.getpid) for _ in range(6)])
    assert pids[0::2] == pids[1::2], pids
    assert len(set(pids)) == 3, pids
    assert os.getpid() not in pids


async def test_a_recycled_worker_is_gone_before_its_replacement_starts(
    make_pool: Callable[..., offload.ProcessPool], tmp_path: Path
) -> None:
    """Never more than max_workers processes: the next call waits for the old worker to exit."""
    pool = make_pool(max_tasks_per_child=1)
    first = pool.submit(targets.hold_plain, tmp_path / "first", tmp_path / "release-first")
    second = pool.submit(targets.hold_plain, tmp_path / "second", tmp_path / "release-second")
    old = await targets.started(tmp_path / "first")
    (tmp_path / "release-first").touch()
    new = await targets.started(tmp_path / "second")
    assert new != old
    assert targets._exited(old), "the replacement started while the recycled worker lived"
    (tmp_path / "release-second").touch()
    assert _results([first, second]) == [old, new]


def test_a_call_that_never_reaches_a_worker_is_not_counted_against_it(
    make_pool: Callable[..., offload.ProcessPool],
) -> None:
    """An argument that cannot be pickled fails alone; the worker's count is of calls it ran."""
    pool = make_pool(max_tasks_per_child=2)
    first = pool.submit(os.getpid).result(timeout=WAIT)
    with pytest.raises(offload.NotPicklableError):
        pool.submit(id, threading.Lock()).result(timeout=WAIT)
    assert pool.submit(os.getpid).result(timeout=WAIT) == first
    assert pool.submit(os.getpid).result(timeout=WAIT) != first


async def test_a_recycled_pool_still_terminates_a_timed_out_call(
    make_pool: Callable[..., offload.ProcessPool], registry: offload.Registry, tmp_path: Path
) -> None:
    """A call that times out on a recycling pool has its worker terminated and replaced."""
    pool = make_pool(max_tasks_per_child=2, initializer=targets.remember_start)
    registry.register(NAME, pool)
    read = registry.offload(targets.read_start, executor=NAME)
    hold = registry.offload(targets.hold_plain, executor=NAME, timeout=0.5)
    before, _, _ = await read()  # the worker's first call; the held one is its last
    call = hold(tmp_path / "started")
    pid = await targets.started(tmp_path / "started")
    assert pid == before
    with pytest.raises(TimeoutError):
        await call
    assert await targets.gone(pid), f"the worker {pid} of the timed-out call still runs"
    after, runs, _ = await read()
    assert (after != pid, runs) == (True, 1)
    assert await targets.eventually(lambda: registry.stats()[NAME]["running"] == 0)
    stats = registry.stats()[NAME]
    assert (stats["completed"], stats["timed_out"], stats["failed"]) == (2, 1, 0)


async def test_a_recycled_pool_honours_max_pending(
    make_pool: Callable[..., offload.ProcessPool], registry: offload.Registry, tmp_path: Path
) -> None:
    """A full name refuses the next call while its calls wait for a recycled worker."""
    registry.register(NAME, make_pool(max_tasks_per_child=1), max_pending=2, when_full="fail")
    hold = registry.offload(targets.hold_plain, executor=NAME)
    release = tmp_path / "release"
    first = hold(tmp_path / "first", release)
    second = hold(tmp_path / "second", release)
    await targets.started(tmp_path / "first")
    with pytest.raises(offload.OverloadedError):
        hold(tmp_path / "third", release)
    release.touch()
    pids = await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert pids[0] != pids[1]  # the second ran on the first one's replacement
    assert not (tmp_path / "third").exists()
    assert await asyncio.wait_for(hold(tmp_path / "fourth", release), WAIT) not in pids
    stats = registry.stats()[NAME]
    assert (stats["completed"], stats["rejected"], stats["running"]) == (3, 1, 0)


def test_shutdown_waits_for_workers_that_are_being_recycled(
    make_pool: Callable[..., offload.ProcessPool],
) -> None:
    """A shutdown with calls queued on a recycling pool runs them all, then every worker exits."""
    pool = make_pool(max_tasks_per_child=1)
    futures = [pool.submit(os.getpid) for _ in range(3)]
    pool.shutdown(wait=True)
    pids = _results(futures)
    assert len(set(pids)) == 3
    assert all(targets._exited(pid) for pid in pids)
    assert not pool._workers
    assert not pool._dying


# -- An initializer that fails -----------------------------------------------------


def test_a_failing_initializer_fails_the_call_with_its_exception_as_the_cause(
    make_pool: Callable[..., offload.ProcessPool],
) -> None:
    """InitializerError names the initializer, the call and the pid; the cause is its exception."""
    pool = make_pool(initializer=targets.refuse_start, initargs=("no database",))
    error = _error(pool.submit(targets.read_start))
    assert isinstance(error, offload.InitializerError)
    assert isinstance(error, BrokenProcessPool)
    message = str(error)
    assert "the initializer refuse_start" in message
    assert "raised LookupError: no database in the worker process" in message
    assert "read_start did not run" in message
    assert error.pid is not None
    assert error.pid != os.getpid()
    assert str(error.pid) in message
    assert isinstance(error.__cause__, LookupError)
    assert error.__cause__.args == ("no database",)
    assert isinstance(error.__cause__.__cause__, RemoteTraceback)
    assert "in refuse_start" in str(error.__cause__.__cause__)


def test_every_call_routed_to_a_failing_initializer_fails_and_none_hangs(
    make_pool: Callable[..., offload.ProcessPool],
) -> None:
    """Queued together, each call gets a new worker whose initializer fails: each fails alone."""
    pool = make_pool(initializer=targets.refuse_start, initargs=("down",))
    errors = [_error(f) for f in [pool.submit(targets.read_start) for _ in range(3)]]
    assert all(isinstance(error, offload.InitializerError) for error in errors), errors
    pids = [error.pid for error in errors]  # type: ignore[attr-defined]
    assert len(set(pids)) == 3, pids
    pool.shutdown(wait=True)
    assert all(targets._exited(pid) for pid in pids)


def test_the_pool_stays_usable_once_its_initializer_succeeds(
    make_pool: Callable[..., offload.ProcessPool], tmp_path: Path
) -> None:
    """An initializer that fails for a while fails those calls; later workers run calls."""
    flag = tmp_path / "service-down"
    flag.touch()
    pool = make_pool(initializer=targets.refuse_start_while, initargs=(flag,))
    error = _error(pool.submit(targets.read_start))
    assert isinstance(error, offload.InitializerError)
    assert isinstance(error.__cause__, ConnectionRefusedError)
    flag.unlink()
    _, runs, args = pool.submit(targets.read_start).result(timeout=WAIT)
    assert (runs, args) == (1, ("service-down",))


async def test_a_failed_initializer_is_counted_as_a_failed_call(
    make_pool: Callable[..., offload.ProcessPool], registry: offload.Registry
) -> None:
    """The offloaded call's Future fails with InitializerError; the name's stats say failed."""
    registry.register(NAME, make_pool(initializer=targets.refuse_start, initargs=("no",)))
    with pytest.raises(offload.InitializerError, match="the initializer refuse_start"):
        await registry.offload(targets.read_start, executor=NAME)()
    assert await targets.eventually(lambda: registry.stats()[NAME]["running"] == 0)
    stats = registry.stats()[NAME]
    assert (stats["submitted"], stats["failed"], stats["completed"]) == (1, 1, 0)


def test_an_initializer_that_ends_its_worker_fails_the_call_with_worker_died(
    make_pool: Callable[..., offload.ProcessPool],
) -> None:
    """A worker that exits in its initializer died: WorkerDiedError says so, naming it."""
    pool = make_pool(initializer=targets.exit_at_start, initargs=(4,))
    error = _error(pool.submit(targets.read_start))
    assert isinstance(error, offload.WorkerDiedError)
    assert error.exitcode == 4
    assert error.pid is not None
    assert (
        f"the worker process {error.pid} started for read_start died (exit code 4) in its "
        "initializer exit_at_start, before the call ran"
    ) in str(error)


def test_an_initializer_a_worker_cannot_load_fails_the_call_clearly(
    make_pool: Callable[..., offload.ProcessPool], method: str
) -> None:
    """Under spawn and forkserver the worker imports the initializer: a failure says so."""
    pool = make_pool(initializer=targets.parent_only_start)
    future = pool.submit(targets.read_start)
    if method == "fork":  # a forked worker has it already
        assert future.result(timeout=WAIT)[1] == 0
        return
    error = _error(future)
    assert isinstance(error, offload.InitializerError)
    assert isinstance(error.__cause__, offload.NotPicklableError)
    assert "could not load the initializer parent_only_start" in str(error.__cause__)


def test_initializer_error_pickles_with_its_pid() -> None:
    """Sent between processes, InitializerError keeps its message and pid."""
    error = offload.InitializerError("it failed", pid=123)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (type(copy), str(copy), copy.pid) == (offload.InitializerError, "it failed", 123)


# -- WorkerDiedError names the worker ------------------------------------------


@pytest.mark.parametrize("options", ["no-options", "initializer-and-recycling"])
async def test_worker_died_error_carries_the_pid_of_the_killed_worker(
    make_pool: Callable[..., offload.ProcessPool],
    registry: offload.Registry,
    tmp_path: Path,
    options: str,
) -> None:
    """Killed from outside while it runs a call, the worker's pid is in the error and its text."""
    extra: dict[str, Any] = {}
    if options != "no-options":
        extra = {"initializer": targets.remember_start, "max_tasks_per_child": 2}
    registry.register(NAME, make_pool(**extra))
    hold = registry.offload(targets.hold_plain, executor=NAME)
    call = hold(tmp_path / "started")
    pid = await targets.started(tmp_path / "started")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(offload.WorkerDiedError) as info:
        await asyncio.wait_for(call, WAIT)
    assert info.value.pid == pid
    assert f"the worker process {pid} running hold_plain died (killed by SIGKILL)" in str(
        info.value
    )
    assert info.value.exitcode == -signal.SIGKILL
    assert await registry.offload(os.getpid, executor=NAME)() != pid


# -- Arguments checked at construction ---------------------------------------------


def _nested() -> Callable[[], None]:
    def nested() -> None: ...

    return nested


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be a positive int"),
        ({"max_tasks_per_child": -2}, ValueError, "max_tasks_per_child must be a positive int"),
        ({"max_tasks_per_child": 1.5}, TypeError, "max_tasks_per_child must be a positive int"),
        ({"max_tasks_per_child": True}, TypeError, "max_tasks_per_child must be a positive int"),
        ({"max_tasks_per_child": "2"}, TypeError, r"or None, got '2'"),
        ({"initializer": 42}, TypeError, r"initializer must be a callable.*got 42 \(a int\)"),
        ({"initializer": print, "initargs": [1]}, TypeError, r"initargs must be a tuple.*\(v"),
        ({"initargs": (1,)}, TypeError, r"initargs=\(1,\) was given without an initializer"),
        (
            {"initializer": lambda: None, "start_method": "spawn"},
            TypeError,
            (
                r"<lambda> cannot run on the process pool 'bad' as its initializer.*"
                r"define it at module level, or start workers with start_method='fork'"
            ),
        ),
        (
            {"initializer": _nested(), "start_method": "forkserver"},
            TypeError,
            "a function defined inside another function",
        ),
        (
            {"initializer": print, "initargs": (threading.Lock(),), "start_method": "spawn"},
            offload.NotPicklableError,
            r"the initializer print or its initargs cannot be pickled .* 'spawn'",
        ),
    ],
    ids=[
        "tasks-zero", "tasks-negative", "tasks-float", "tasks-bool", "tasks-str",
        "initializer-not-callable", "initargs-list", "initargs-alone", "lambda-spawn",
        "nested-forkserver", "initargs-unpicklable",
    ],
)  # fmt: skip
def test_bad_options_are_refused_at_construction(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Each bad option fails when the pool is made, saying what was wrong and what to do."""
    with pytest.raises(error, match=match):
        offload.ProcessPool(1, name="bad", **options)


def test_max_tasks_per_child_is_allowed_with_fork() -> None:
    """Unlike ProcessPoolExecutor, fork takes max_tasks_per_child: every worker starts alike."""
    pool = offload.ProcessPool(1, start_method="fork", max_tasks_per_child=3, name="forks")
    assert pool.max_tasks_per_child == 3
    assert repr(pool) == (
        "<offload.ProcessPool 'forks' max_workers=1 start_method='fork' "
        "max_tasks_per_child=3 0 processes>"
    )
    pool.shutdown()


# -- Sizing --------------------------------------------------------------------


def test_the_default_size_is_the_cpus_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no max_workers, ProcessPool and the "cpu" pool size from the usable CPUs."""
    monkeypatch.setattr(os, "process_cpu_count", lambda: 3, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cpus() == 3
    pool = offload.ProcessPool()
    assert pool.max_workers == 3
    pool.shutdown()
    registry = offload.Registry()
    cpu = registry.get_executor("cpu")
    assert isinstance(cpu, offload.ProcessPool)
    assert cpu.max_workers == 3
    registry.shutdown()
