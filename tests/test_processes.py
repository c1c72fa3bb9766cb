"""Offloaded calls in worker processes: every binding kind, every start method, clear errors."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures import wait as wait_all
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

import offload
from offload import _pickling
from offload._pool import usable_cpus
from tests import process_targets as targets
from tests.process_targets import Shape, Triangle

# Python 3.12+ warns when a multi-threaded process forks; the fork case is
# tested on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:This process .*multi-threaded:DeprecationWarning")

START_METHODS = ["fork", "spawn", "forkserver"]


def _warm(pool: offload.ProcessPool) -> None:
    # Two calls that overlap start both workers, so later calls do not wait
    # for a process to start.
    wait_all([pool.submit(time.sleep, 0.2) for _ in range(pool.max_workers)])


@pytest.fixture(scope="module", params=START_METHODS)
def pool(request: pytest.FixtureRequest) -> Iterator[offload.ProcessPool]:
    """One pool per start method, shared by the module's tests."""
    method: str = request.param
    pool = offload.ProcessPool(2, start_method=method, name=f"test-{method}", terminate_timeout=0.2)
    _warm(pool)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def procs(pool: offload.ProcessPool) -> offload.ProcessPool:
    """The tests' registry points ``"procs"`` at the pool under test."""
    targets.registry.register("procs", pool, replace=True)
    return pool


#: Every kind of process pool offload sends calls to, under each start method
#: it supports: its own pool, and a standard ProcessPoolExecutor.
ANY_POOLS = [f"offload-{method}" for method in START_METHODS] + [
    "stdlib-spawn",
    "stdlib-forkserver",
]


@pytest.fixture(scope="module", params=ANY_POOLS)
def any_pool(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """One pool per kind and start method, shared by the module's tests."""
    kind, method = request.param.split("-")
    pool: Executor
    if kind == "offload":
        pool = offload.ProcessPool(2, start_method=method, name=f"any-{method}")
    else:
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method))
    wait_all([pool.submit(time.sleep, 0.2) for _ in range(2)])  # both workers started
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def any_procs(any_pool: Executor) -> Executor:
    """The tests' registry points ``"procs"`` at the pool under test."""
    targets.registry.register("procs", any_pool, replace=True)
    return any_pool


#: kind -> (callable, arguments, expected result); results ending in "pid" carry
#: the worker's pid last, which must not be this process's.
CASES: dict[str, tuple[Any, tuple[Any, ...], Any]] = {
    "function": (targets.power, (3,), 9),
    "function-with-keywords": (lambda: targets.power(2, exponent=10), (), 1024),
    "instance-method": (Shape(3).area, (), ("Shape", 9, "pid")),
    "subclass-override": (Triangle(4).area, (), ("Triangle", 8, "pid")),
    "method-through-class": (lambda: Shape.area(Triangle(3)), (), ("Triangle", 9, "pid")),
    "classmethod-on-class": (Shape.describe, ("a ",), ("a Shape", 0)),
    "classmethod-on-instance": (Triangle(1).describe, ("b ",), ("b Triangle", 3)),
    "classmethod-on-subclass": (Triangle.describe, ("c ",), ("c Triangle", 3)),
    "staticmethod-on-class": (Shape.double, (4,), (8, "pid")),
    "staticmethod-on-instance": (Triangle(2).double, (5,), (10, "pid")),
}


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_each_binding_kind_runs_its_original_body_in_a_worker(
    any_procs: Executor, kind: str
) -> None:
    """The child runs the body (a wrapper there would find no loop), bound as in the caller."""
    fn, args, expected = CASES[kind]
    result = await fn(*args)
    if isinstance(expected, tuple) and expected[-1] == "pid":
        *result, pid = result
        assert pid != os.getpid()
        expected = list(expected[:-1])
    assert result == expected


async def test_repeated_calls_reuse_the_workers(any_procs: Executor) -> None:
    """Many calls run in at most two processes (the pool's size), none of them this one."""
    first = {await targets.where() for _ in range(10)}
    again = set(await asyncio.gather(*(targets.where() for _ in range(10))))
    pids = first | again
    assert os.getpid() not in pids
    assert len(pids) <= 2  # the pools' size


async def test_a_worker_is_never_cancelled_cooperatively(any_procs: Executor) -> None:
    """In a worker process ``offload.cancelled()`` is false: the worker is stopped instead."""
    assert await targets.ask_cancelled() is False


@pytest.mark.parametrize(
    ("death", "exitcode"),
    [
        (lambda: targets.exit_with(3), 3),
        (lambda: targets.kill_self(signal.SIGKILL), -signal.SIGKILL),
        (targets.crash, -signal.SIGSEGV),
    ],
    ids=["os-exit", "killed", "crash"],
)
async def test_a_dying_worker_fails_its_call_and_is_replaced(
    procs: offload.ProcessPool, death: Any, exitcode: int
) -> None:
    """WorkerDiedError carries the exit code or signal; the next call runs on a new worker."""
    with pytest.raises(offload.WorkerDiedError, match="died") as info:
        await death()
    assert info.value.exitcode == exitcode
    if exitcode < 0:
        assert info.value.signal == signal.Signals(-exitcode)
    assert await targets.power(5) == 25


async def test_an_unpicklable_argument_fails_the_call_and_the_pool_carries_on(
    any_procs: Executor,
) -> None:
    """The Future fails with NotPicklableError naming the arguments; the next call works."""
    with pytest.raises(offload.NotPicklableError, match="arguments of identity") as info:
        await targets.identity(threading.Lock())
    assert isinstance(info.value.__cause__, TypeError)
    assert await targets.power(4) == 16


async def test_an_unpicklable_result_fails_the_call_and_the_pool_carries_on(
    any_procs: Executor,
) -> None:
    """The Future fails with NotPicklableError naming the result; the next call works."""
    with pytest.raises(offload.NotPicklableError, match="result of make_lock"):
        await targets.make_lock()
    assert await targets.power(4) == 16


async def test_an_exception_comes_back_with_its_remote_traceback(
    any_procs: Executor,
) -> None:
    """The worker's exception is raised here, its traceback text chained as the cause."""
    with pytest.raises(ValueError, match="boom") as info:
        await targets.fail("boom")
    assert "in fail" in str(info.value.__cause__)


async def test_a_function_its_name_does_not_lead_to_fails_each_call_clearly(
    any_procs: Executor,
) -> None:
    """Wrapped again on top of offload, the original cannot be pickled: each call says so."""
    for _ in range(2):  # not remembered as sendable after the first failure
        with pytest.raises(offload.NotPicklableError, match="buried itself cannot be") as info:
            await targets.buried(1)
        assert "apply offload last (outermost)" in str(info.value)
    assert await targets.power(3) == 9


async def test_a_function_a_worker_does_not_see_offloaded_fails_with_what_to_do(
    any_procs: Executor, request: pytest.FixtureRequest
) -> None:
    """A worker that imports the module afresh finds no offloaded function under that name.

    Under fork the worker starts as a copy of this process, so it finds one.
    """
    caller_only: Any = targets.caller_only  # offloaded in this process only
    if request.node.callspec.params["any_pool"].endswith("-fork"):
        assert await caller_only(4) == 4
        return
    for _ in range(2):  # the first call per worker, and a worker that tried before
        with pytest.raises(offload.NotPicklableError, match="could not load caller_only") as info:
            await caller_only(4)
        assert "is not an offloaded function in this process" in str(info.value)
    assert await targets.power(3) == 9


async def test_what_is_kept_per_function_stays_bounded(
    any_procs: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each function's pickled reference is kept for its next call, but only so many."""
    monkeypatch.setattr(_pickling, "_SHIPPED_MAX", 2)
    _pickling._shipped.clear()
    for _ in range(2):
        assert await targets.power(3) == 9
        assert await targets.identity("x") == "x"
        assert await targets.where() != os.getpid()
        assert len(_pickling._shipped) <= 2  # the bound set above


def test_a_function_offloaded_later_is_sent_as_offloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """What is remembered for a function follows its name: offloaded later, it goes by Ref."""
    before, _ = _pickling.ship(targets.plain_double, str)
    assert pickle.loads(before) is targets.plain_double  # noqa: S301 - our own bytes
    plain = targets.plain_double
    monkeypatch.setattr(targets, "plain_double", targets.registry.offload("procs")(plain))
    after, _ = _pickling.ship(plain, str)
    assert isinstance(pickle.loads(after), _pickling.Ref)  # noqa: S301 - our own bytes


async def test_a_remembered_function_never_sends_what_its_name_now_leads_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rebound to another function (a reload), the old one fails; it never runs the new one."""
    stdlib = _stdlib_pool()
    targets.registry.register("procs", stdlib, replace=True)
    old = targets.power
    try:
        assert await old(3) == 9  # remembered now

        def power(x: int, *, exponent: int = 2) -> int:
            return -1

        power.__module__, power.__qualname__ = targets.__name__, "power"
        monkeypatch.setattr(targets, "power", targets.registry.offload("procs")(power))
        with pytest.raises(offload.NotPicklableError, match="power itself cannot be pickled"):
            await old(3)
        monkeypatch.undo()
        assert await old(3) == 9
    finally:
        stdlib.shutdown()


@pytest.mark.parametrize(
    "spec",
    ["cpu", "pool-instance", "stdlib-instance", "stdlib-class-factory"],
)
def test_a_lambda_or_nested_function_fails_at_decoration(
    registry: offload.Registry, spec: str
) -> None:
    """Where the executor is known to be a process pool, decorating fails with what to do."""
    executors: dict[str, str | Executor] = {
        "cpu": "cpu",
        "pool-instance": offload.ProcessPool(1),
        "stdlib-instance": ProcessPoolExecutor(1),
        "stdlib-class-factory": "procs",
    }
    registry.register("procs", ProcessPoolExecutor)
    executor = executors[spec]
    with pytest.raises(TypeError, match=r"a lambda has none.*Define it at module level"):
        registry.offload(lambda: 1, executor=executor)
    if isinstance(executor, str):
        with pytest.raises(TypeError, match=f"cannot run on the process pool named '{executor}': "):
            registry.offload(lambda: 1, executor=executor)
    with pytest.raises(TypeError, match="defined inside another function"):

        @registry.offload(executor)
        def inner() -> None: ...

    if isinstance(executor, Executor):
        executor.shutdown()


async def test_a_lambda_fails_at_call_time_when_the_name_was_unknown(
    registry: offload.Registry,
) -> None:
    """A name pointed at a process pool after decoration fails at the call, synchronously."""
    square = registry.offload(lambda x: x * x, executor="later")
    registry.register("later", offload.ProcessPool(1, name="later"))
    with pytest.raises(TypeError, match="cannot run on the process pool 'later'"):
        square(3)


async def test_an_unknown_name_still_runs_lambdas_on_threads(registry: offload.Registry) -> None:
    """Only process pools need functions by reference; threads take lambdas."""
    assert await registry.offload(lambda: 5, executor="io")() == 5


# -- The built-in "cpu" name ---------------------------------------------------


def test_cpu_is_a_process_pool_sized_to_the_usable_cpus_made_lazily() -> None:
    """``"cpu"`` is a ProcessPool with a worker per CPU this process may use, made on first use."""
    registry = offload.Registry()
    assert registry._entries["cpu"].executor is None
    cpu = registry.get_executor("cpu")
    assert isinstance(cpu, offload.ProcessPool)
    assert cpu.max_workers == usable_cpus()
    assert cpu.start_method == offload.ProcessPool(1).start_method
    registry.shutdown()


def test_cpu_start_method_and_size_follow_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OFFLOAD_CPU_START_METHOD and OFFLOAD_CPU_WORKERS configure the ``"cpu"`` pool."""
    monkeypatch.setenv("OFFLOAD_CPU_START_METHOD", "spawn")
    monkeypatch.setenv("OFFLOAD_CPU_WORKERS", "3")
    registry = offload.Registry()
    cpu = registry.get_executor("cpu")
    assert isinstance(cpu, offload.ProcessPool)
    assert (cpu.start_method, cpu.max_workers) == ("spawn", 3)
    registry.shutdown()


def test_a_bad_start_method_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown start method in the environment is a clear error on first use."""
    monkeypatch.setenv("OFFLOAD_CPU_START_METHOD", "teleport")
    registry = offload.Registry()
    with pytest.raises(ValueError, match="OFFLOAD_CPU_START_METHOD: start_method must be"):
        registry.get_executor("cpu")
    registry.shutdown()


async def test_a_call_through_the_builtin_cpu_name_runs_in_a_worker() -> None:
    """A function decorated with ``"cpu"`` runs on the built-in pool."""
    value, pid = await targets.on_cpu(14)
    assert (value, pid != os.getpid()) == (42, True)


def test_process_pool_arguments_are_checked() -> None:
    """Bad sizes, start methods and grace periods fail at construction."""
    with pytest.raises(ValueError, match="max_workers"):
        offload.ProcessPool(0)
    with pytest.raises(ValueError, match="start_method"):
        offload.ProcessPool(1, start_method="teleport")
    with pytest.raises(ValueError, match="terminate_timeout"):
        offload.ProcessPool(1, terminate_timeout=-1)


def test_submit_makes_it_a_full_executor(pool: offload.ProcessPool) -> None:
    """``submit`` runs plain picklable callables and returns a concurrent Future."""
    assert pool.submit(pow, 2, 8).result(timeout=10) == 256


async def test_a_shut_down_pool_refuses_calls_and_cancels_queued_ones() -> None:
    """After shutdown, calls raise ExecutorShutdownError; cancel_futures cancels the queue."""
    pool = offload.ProcessPool(1, start_method="fork")
    futures = [pool.submit(time.sleep, 0.2), pool.submit(time.sleep, 0.2)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert futures[1].cancelled()
    with pytest.raises(offload.ExecutorShutdownError):
        pool.submit(pow, 2, 2)


# -- A standard ProcessPoolExecutor, registered by name ------------------------


def _stdlib_pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))


async def test_a_broken_stdlib_pool_from_a_factory_is_replaced() -> None:
    """The dead worker fails the call with WorkerDiedError; the next call gets a new pool."""
    registry = targets.registry
    registry.register("procs", _stdlib_pool, replace=True)
    first = registry.get_executor("procs")
    with pytest.raises(offload.WorkerDiedError, match="replaces it from its factory") as info:
        await targets.exit_with(7)
    assert info.value.exitcode in {7, None}  # the stdlib pool may not say
    assert await targets.power(6) == 36
    assert registry.get_executor("procs") is not first
    registry.get_executor("procs").shutdown()


async def test_a_broken_stdlib_pool_given_as_an_instance_says_to_use_a_factory() -> None:
    """offload cannot replace an instance, and says how to let it."""
    stdlib = _stdlib_pool()
    targets.registry.register("procs", stdlib, replace=True)
    with pytest.raises(offload.WorkerDiedError, match="register a factory instead"):
        await targets.exit_with(7)
    stdlib.shutdown()


def test_worker_died_error_is_a_broken_process_pool() -> None:
    """Existing ``except BrokenProcessPool`` handlers still catch it."""
    err = offload.WorkerDiedError("gone", exitcode=-15)
    assert isinstance(err, BrokenProcessPool)
    assert err.signal == signal.SIGTERM
    assert offload.WorkerDiedError("gone", exitcode=1).signal is None


def test_process_pool_repr_names_its_settings() -> None:
    """The repr shows name, size, start method and state."""
    pool = offload.ProcessPool(3, start_method="spawn", name="reprs")
    assert repr(pool) == (
        "<offload.ProcessPool 'reprs' max_workers=3 start_method='spawn' 0 processes>"
    )
    pool.shutdown()
    assert repr(pool).endswith("shut down>")


def test_a_forked_child_gets_a_fresh_pool() -> None:
    """In a child forked from a process using the pool, the pool starts its own workers."""
    pool = offload.ProcessPool(1, start_method="fork")
    assert pool.submit(pow, 2, 2).result(timeout=targets.WAIT) == 4
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    child = context.Process(target=_use_pool_in_child, args=(pool, results))
    child.start()
    child.join(targets.WAIT)
    pool.shutdown()
    assert child.exitcode == 0
    assert results.get() == 81


def _use_pool_in_child(pool: offload.ProcessPool, results: Any) -> None:
    results.put(pool.submit(pow, 3, 4).result(timeout=targets.WAIT))
