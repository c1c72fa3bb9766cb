"""``offload(..., coroutine=True)``: an ``async def`` function, and ``cancel="wait"``.

The promises every executor kind keeps under ``cancel="wait"`` are in
``test_promises.py`` (section 9); this module checks the form itself: what
frameworks see, binding, the two cancel policies on threads ordered with
Events, how they compose with ``timeout=``, ``asyncio.timeout`` and task
groups, and the errors for options that do not fit.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import inspect
import os
import sys
import threading
import types
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import pytest

import offload
from tests import process_targets as targets
from tests.conftest import WAIT, garbage_saved

pytestmark = pytest.mark.timeout(60)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Gate:
    """A blocking body that says when it started and waits to be released; it records how
    it ended and whether its caller had given up by then (``offload.cancelled()``)."""

    def __init__(self) -> None:
        self.started, self.release, self.returned = (threading.Event() for _ in range(3))
        self.saw_cancelled: bool | None = None

    def __call__(self, value: object = None) -> object:
        self.started.set()
        self.release.wait(WAIT)
        self.saw_cancelled = offload.cancelled()
        self.returned.set()
        return value


async def started(gate: Gate) -> None:
    assert await asyncio.to_thread(gate.started.wait, WAIT), "the call never started"


# -- What code and frameworks see ---------------------------------------------------


def plain(x: int, *, scale: int = 1) -> int:
    """Multiply."""
    return x * scale


class Widget:
    label = "widget"

    def __init__(self, size: int) -> None:
        self.size = size

    @offload.offload("io", coroutine=True)
    def grow(self, by: int) -> int:
        return self.size + by

    @offload.offload(coroutine=True, cancel="wait")
    @classmethod
    def named(cls, suffix: str) -> str:
        return cls.label + suffix

    @offload.offload("io", coroutine=True)
    @staticmethod
    def twice(x: int) -> int:
        return 2 * x


def test_the_coroutine_form_is_a_coroutine_function_with_the_originals_signature() -> None:
    """``inspect.iscoroutinefunction`` is true for every binding kind, and the name,
    docstring, signature and ``__wrapped__`` are the original's."""
    form = offload.offload(plain, coroutine=True)
    assert inspect.iscoroutinefunction(form)
    assert inspect.iscoroutinefunction(offload.offload("io", coroutine=True, cancel="wait")(plain))
    assert inspect.iscoroutinefunction(Widget.grow)
    assert inspect.iscoroutinefunction(Widget(1).grow)
    assert inspect.iscoroutinefunction(Widget.named)
    assert inspect.iscoroutinefunction(Widget.twice)
    assert form.__name__ == "plain"
    assert form.__doc__ == "Multiply."
    assert form.__wrapped__ is plain  # type: ignore[attr-defined]
    assert str(inspect.signature(form)) == "(x: 'int', *, scale: 'int' = 1) -> 'int'"


async def test_calls_are_coroutines_for_task_groups_and_create_task() -> None:
    """Each call is a coroutine: ``TaskGroup.create_task`` and ``asyncio.create_task`` take it,
    and every binding kind runs on the executor with its arguments."""
    form = offload.offload(plain, coroutine=True)
    call = form(3, scale=2)
    assert inspect.iscoroutine(call)
    async with asyncio.TaskGroup() as group:
        grouped = group.create_task(call)
        grown = group.create_task(Widget(5).grow(2))
        named = group.create_task(Widget.named("-x"))
        twice = group.create_task(Widget(0).twice(21))
    assert (grouped.result(), grown.result(), named.result(), twice.result()) == (
        6,
        7,
        "widget-x",
        42,
    )
    assert await asyncio.create_task(form(4)) == 4


async def test_the_call_raises_the_workers_own_exception() -> None:
    """An exception raised on the worker is raised by the coroutine, the same object."""
    raised: list[BaseException] = []

    def fail() -> None:
        error = LookupError("no such row")
        raised.append(error)
        raise error

    policies: tuple[Literal["abandon", "wait"], ...] = ("abandon", "wait")
    for cancel in policies:
        form = offload.offload(fail, coroutine=True, cancel=cancel)
        with pytest.raises(LookupError) as caught:
            await form()
        assert caught.value is raised[-1]


async def test_the_worker_sees_the_callers_contextvars() -> None:
    """The coroutine form copies the caller's contextvars into the worker, as the Future form."""
    form = offload.offload(request_id.get, coroutine=True, cancel="wait")
    request_id.set("r-42")
    assert await form() == "r-42"


async def test_calls_through_a_name_are_counted_in_its_statistics(
    registry: offload.Registry,
) -> None:
    """Each call of the coroutine form through a name is submitted and completed once."""
    registry.register("counted", offload.ThreadPool(1))
    form = registry.offload(plain, executor="counted", coroutine=True, cancel="wait")
    assert [await form(i) for i in range(3)] == [0, 1, 2]
    stats = registry.stats()["counted"]
    assert (stats["submitted"], stats["completed"], stats["cancelled"]) == (3, 3, 0)


# -- cancel="abandon" (the default) and cancel="wait" on threads ---------------------


@pytest.fixture
def gate() -> Iterator[Gate]:
    body = Gate()
    yield body
    body.release.set()


async def test_abandon_raises_at_once_while_the_thread_runs_on(gate: Gate) -> None:
    """By default a cancelled call raises ``CancelledError`` at once; the thread runs on,
    and ``offload.cancelled()`` tells it that its caller gave up."""
    task = asyncio.create_task(offload.offload(gate, coroutine=True)())
    await started(gate)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not gate.returned.is_set()
    gate.release.set()
    assert await asyncio.to_thread(gate.returned.wait, WAIT)
    assert gate.saw_cancelled is True


async def test_wait_raises_only_once_the_thread_has_returned(gate: Gate) -> None:
    """With cancel="wait", the task stays unfinished while the thread runs, however often
    it is cancelled, and ends cancelled once the thread has returned."""
    task = asyncio.create_task(offload.offload(gate, coroutine=True, cancel="wait")())
    await started(gate)
    for _ in range(3):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.05)
        assert not done, "the cancelled call ended while its thread still ran"
    gate.release.set()
    done, _ = await asyncio.wait({task}, timeout=WAIT)
    assert done
    assert task.cancelled()
    assert gate.returned.is_set()
    assert gate.saw_cancelled is True  # the body could have ended early by asking


async def test_wait_in_a_task_group_holds_the_group_until_the_work_is_over(gate: Gate) -> None:
    """A sibling's failure cancels the call; the group exits only once the thread returned,
    with the sibling's error."""
    form = offload.offload(gate, coroutine=True, cancel="wait")
    finished_before_exit: list[bool] = []

    async def fail_once_started() -> None:
        await started(gate)
        # Released from a thread after a moment, as work that ends on its own.
        threading.Timer(0.1, gate.release.set).start()
        raise ValueError("sibling failed")

    async def both() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(form())
            group.create_task(fail_once_started())

    with pytest.raises(ExceptionGroup) as caught:
        await both()
    finished_before_exit.append(gate.returned.is_set())
    assert finished_before_exit == [True]
    assert caught.group_contains(ValueError)


async def test_wait_under_asyncio_timeout_raises_timeout_error_once_the_work_is_over(
    gate: Gate,
) -> None:
    """Inside ``asyncio.timeout``, an expired deadline cancels the call; ``TimeoutError``
    comes once the thread has returned."""
    form = offload.offload(gate, coroutine=True, cancel="wait")

    async def run() -> None:
        async with asyncio.timeout(0.1):
            await form()

    task = asyncio.create_task(run())
    await started(gate)
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done, "the timeout ended the call while its thread still ran"
    gate.release.set()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task, WAIT)
    assert gate.returned.is_set()


async def test_wait_with_timeout_option_raises_timeout_error_once_the_work_is_over(
    gate: Gate,
) -> None:
    """With ``timeout=``, the call's own deadline raises ``TimeoutError`` only once the thread
    has returned; the thread sees ``offload.cancelled()``."""
    form = offload.offload(gate, timeout=0.1, coroutine=True, cancel="wait")
    task = asyncio.create_task(form())
    await started(gate)
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done, "the timeout ended the call while its thread still ran"
    gate.release.set()
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.1s"):
        await asyncio.wait_for(task, WAIT)
    assert gate.returned.is_set()
    assert gate.saw_cancelled is True


async def test_a_shutdown_that_gives_up_ends_a_waiting_call_only_once_the_thread_returned(
    registry: offload.Registry, gate: Gate
) -> None:
    """A registry shutdown that gives up fails the call; with cancel="wait", that error
    reaches the caller once the thread has returned."""
    registry.register("stopping", offload.ThreadPool(1))
    form = registry.offload(gate, executor="stopping", coroutine=True, cancel="wait")
    task = asyncio.create_task(form())
    await started(gate)
    with pytest.warns(RuntimeWarning):
        await asyncio.to_thread(registry.shutdown, wait=True, timeout=0.05)
    done, _ = await asyncio.wait({task}, timeout=0.1)
    assert not done, "the shutdown's error came while the thread still ran"
    gate.release.set()
    with pytest.raises(offload.ExecutorShutdownError):
        await asyncio.wait_for(task, WAIT)
    assert gate.returned.is_set()


# -- On a process pool ------------------------------------------------------------


@pytest.fixture
def procs() -> Iterator[offload.ProcessPool]:
    pool = offload.ProcessPool(2, start_method="spawn", name="coroutine-forms")
    targets.registry.register("procs", pool, replace=True)
    yield pool
    pool.shutdown()


async def test_coroutine_forms_travel_to_worker_processes_by_name(
    procs: offload.ProcessPool,
) -> None:
    """A function, method, classmethod and staticmethod in the coroutine form run in a
    worker process, found there by name."""
    power, power_pid = await targets.power_coroutine(3, exponent=3)
    volume, volume_pid = await targets.Solid(2).volume()
    described = await targets.Solid.describe("a ")
    tripled, tripled_pid = await targets.Solid.triple(5)
    assert (power, volume, described, tripled) == (27, 8, ("a Solid", 6), 15)
    assert os.getpid() not in {power_pid, volume_pid, tripled_pid}


# -- Options that do not fit ---------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"cancel": "wait"}, ValueError, "cancel='wait' needs coroutine=True"),
        ({"coroutine": True, "cancel": "later"}, ValueError, "cancel must be 'abandon' or"),
        ({"coroutine": "yes"}, TypeError, "coroutine must be True or False"),
    ],
)
@pytest.mark.parametrize("form", ["options", "plain-call", "registry"])
def test_options_that_do_not_fit_are_refused_at_decoration(
    options: dict[str, object], error: type[Exception], match: str, form: str
) -> None:
    """A cancel policy without the coroutine form, an unknown policy, or a coroutine flag
    that is not a bool fails where the decorator is applied, saying what to write."""

    def decorate() -> object:
        if form == "options":
            return offload.offload("io", **options)  # type: ignore[call-overload]
        if form == "plain-call":
            return offload.offload(plain, **options)  # type: ignore[call-overload]
        return offload.Registry().offload(executor="io", **options)  # type: ignore[call-overload]

    with pytest.raises(error, match=match):
        decorate()


# -- Under forced interleavings -----------------------------------------------------


@pytest.mark.parametrize("kind", ["threadpool", "stdlib-threads"])
def test_cancels_racing_the_start_never_end_a_call_whose_body_still_runs(kind: str) -> None:
    """Hundreds of calls cancelled at every moment, switching threads every microsecond:
    no caller hears while its call's body runs, and no body starts once its caller heard."""
    pool = offload.ThreadPool(64) if kind == "threadpool" else ThreadPoolExecutor(64)
    release = threading.Event()
    lock = threading.Lock()
    running: dict[int, bool] = {}  # call number -> inside the body now
    heard: set[int] = set()
    violations: list[str] = []

    def body(n: int) -> int:
        with lock:
            if n in heard:
                violations.append(f"call {n} started after its caller heard")
            running[n] = True
        release.wait(WAIT)  # held until every call was cancelled
        with lock:
            running[n] = False
        return n

    def on_done(n: int, _task: object) -> None:
        with lock:
            heard.add(n)
            if running.get(n):
                violations.append(f"call {n} was reported over while its body ran")

    form = offload.offload(body, executor=pool, coroutine=True, cancel="wait")

    async def main() -> None:
        tasks = []
        for n in range(400):
            task = asyncio.ensure_future(form(n))
            task.add_done_callback(functools.partial(on_done, n))
            tasks.append(task)
        for n, task in enumerate(tasks):
            for _ in range(n % 4):  # cancel at a different moment each time
                await asyncio.sleep(0)
            task.cancel()
        release.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, (int, asyncio.CancelledError)) for o in outcomes)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        asyncio.run(main())
    finally:
        sys.setswitchinterval(interval)
        release.set()
        pool.shutdown(wait=True)
    assert violations == []
    assert heard == set(range(400))


# -- Found by review -------------------------------------------------------------


def test_a_watched_call_the_executor_drops_unrun_ends_at_once_and_is_forgotten(
    tmp_path: Path,
) -> None:
    """Queued calls that their executor drops (``shutdown(cancel_futures=True)``) end their
    waiting callers at once, cancelled, and leave nothing watched."""
    pool = offload.ProcessPool(1, start_method="fork")
    targets.registry.register("procs", pool, replace=True)
    started, release = tmp_path / "started", tmp_path / "release"

    async def main() -> None:
        busy = targets.hold(started, release)  # the only worker, held
        assert await asyncio.to_thread(targets._wait_for, started)
        queued = [asyncio.ensure_future(targets.Solid(2).volume()) for _ in range(3)]
        await asyncio.sleep(0)  # each task has sent its call: they wait in the pool's queue
        pool.shutdown(wait=False, cancel_futures=True)
        done, _ = await asyncio.wait(queued, timeout=WAIT)
        assert len(done) == 3, "a call dropped unrun kept its caller waiting"
        assert all(task.cancelled() for task in queued)
        release.touch()
        await busy

    try:
        asyncio.run(main())
    finally:
        release.touch()
        pool.shutdown(wait=True)
    assert offload._watch.watched == {}


async def test_failed_calls_in_the_wait_form_leave_no_reference_cycles() -> None:
    """With cancel="wait", a call that raises leaves no cycle of Future, exception and frame."""

    def fails(n: int) -> None:
        raise ValueError(n)

    form = offload.offload(fails, executor="io", coroutine=True, cancel="wait")
    loop = asyncio.get_running_loop()
    with garbage_saved() as garbage:
        for n in range(20):
            with pytest.raises(ValueError):
                await form(n)
        gc.collect()
        ours = [
            o
            for o in garbage
            if (isinstance(o, asyncio.Future) and o.get_loop() is loop)
            or (isinstance(o, types.FrameType) and o.f_code.co_name == "to_the_end")
        ]
    assert ours == []


def test_a_closed_loop_with_a_watched_call_running_is_freed() -> None:
    """A loop closed while a watched call runs is not kept alive by the watch."""
    started, release = threading.Event(), threading.Event()

    def body() -> None:
        started.set()
        release.wait(WAIT)

    form = offload.offload(body, executor="io", coroutine=True, cancel="wait")
    loop = asyncio.new_event_loop()
    task = loop.create_task(form())
    loop.run_until_complete(loop.run_in_executor(None, started.wait, WAIT))
    loop.run_until_complete(loop.shutdown_default_executor())
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # dropped on purpose
    loop.close()
    ref = weakref.ref(loop)
    del loop, task
    release.set()
    assert offload.get_executor("io").submit(int).result(WAIT) == 0  # the body has returned
    for _ in range(100):
        gc.collect()
        if ref() is None and not offload._watch.watched:
            break
        threading.Event().wait(0.01)
    assert ref() is None
    assert offload._watch.watched == {}
