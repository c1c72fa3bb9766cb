"""``run_on_loop``: from an offloaded call on a thread, back to the loop that made it."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import gc
import inspect
import random
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import pytest
from tornado import gen

import offload
from tests import process_targets as targets
from tests.conftest import WAIT
from tests.promise_targets import Foreign

THREAD_KINDS = ("offload-pool", "stdlib-pool", "affine", "foreign")
#: Long enough that a call started on an idle worker is running when it expires.
RUNNING_TIMEOUT = 0.3

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def _make(kind: str) -> Executor:
    if kind == "offload-pool":
        return offload.ThreadPool(3, name="bridge")
    if kind == "stdlib-pool":
        return ThreadPoolExecutor(3, thread_name_prefix="bridge")
    if kind == "affine":
        return offload.AffineThread(name="bridge")
    assert kind == "foreign", kind
    return Foreign(3, name="bridge")


@dataclasses.dataclass
class Bridge:
    """An executor under test, and how the test offloads a function to it."""

    kind: str
    executor: Executor
    registry: offload.Registry
    named: bool

    def offload(self, fn: Callable[..., Any], **options: Any) -> Any:
        """``fn`` offloaded to the executor: by name, or passed directly."""
        if self.named:
            return self.registry.offload(fn, executor="bridged", **options)
        return offload.offload(fn, executor=self.executor, **options)


@pytest.fixture(params=THREAD_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["unnamed", "named"])
def bridge(
    request: pytest.FixtureRequest, kind: str, registry: offload.Registry
) -> Iterator[Bridge]:
    executor = _make(kind)
    named = request.param == "named"
    if named:
        registry.register("bridged", executor)
    yield Bridge(kind, executor, registry, named)
    executor.shutdown(wait=True)


@pytest.fixture
def pool() -> Iterator[offload.ThreadPool]:
    pool = offload.ThreadPool(2, name="plain")
    yield pool
    pool.shutdown(wait=True)


class Report:
    """What a worker got from ``run_on_loop``, told across threads once it is known."""

    def __init__(self) -> None:
        self.entered = False
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``run_on_loop(fn, *args)`` on this thread, its outcome recorded, then passed on."""
        self.entered = True
        try:
            self.result = offload.run_on_loop(fn, *args)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.done.set()
        return self.result

    async def wait(self) -> None:
        """From the loop: wait until the worker has its outcome."""
        assert await asyncio.to_thread(self.done.wait, WAIT)


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


# -- Results and exceptions -------------------------------------------------------


async def test_a_coroutine_functions_result_comes_back_to_the_worker(bridge: Bridge) -> None:
    """The worker gets what the coroutine function returned on the loop."""

    def body(x: int) -> int:
        return offload.run_on_loop(_double, x) + 1

    assert await bridge.offload(body)(20) == 41


async def test_a_plain_functions_result_comes_back_to_the_worker(bridge: Bridge) -> None:
    """A plain callable runs on the loop and the worker gets its return value."""

    def body(items: list[int]) -> int:
        return offload.run_on_loop(sum, items, start=100)

    assert await bridge.offload(body)([1, 2, 3]) == 106


@pytest.mark.parametrize("form", ["coroutine", "plain"])
async def test_loop_side_code_runs_on_the_callers_loop_and_thread(
    bridge: Bridge, form: str
) -> None:
    """The loop-side code runs on the loop's thread and sees that loop running."""
    loop = asyncio.get_running_loop()
    here = threading.get_ident()

    def where() -> tuple[int, asyncio.AbstractEventLoop]:
        return threading.get_ident(), asyncio.get_running_loop()

    async def where_async() -> tuple[int, asyncio.AbstractEventLoop]:
        return where()

    def body() -> tuple[int, int, asyncio.AbstractEventLoop]:
        if form == "coroutine":
            ident, seen = offload.run_on_loop(where_async)
        else:
            ident, seen = offload.run_on_loop(where)
        return threading.get_ident(), ident, seen

    worker, ident, seen = await bridge.offload(body)()
    assert worker != here
    assert (ident, seen) == (here, loop)


@pytest.mark.parametrize("form", ["coroutine", "plain"])
async def test_the_loop_sides_exception_reaches_the_worker_as_the_same_object(
    bridge: Bridge, form: str
) -> None:
    """The worker catches the very exception raised on the loop, its traceback intact."""
    raised: list[BaseException] = []

    def failing_on_the_loop() -> None:
        error = LookupError("no such key")
        raised.append(error)
        raise error

    async def failing_coroutine() -> None:
        await asyncio.sleep(0)
        failing_on_the_loop()

    def body() -> BaseException:
        try:
            offload.run_on_loop(failing_coroutine if form == "coroutine" else failing_on_the_loop)
        except LookupError as exc:
            return exc
        raise AssertionError("no exception")

    caught = await bridge.offload(body)()
    assert caught is raised[0]
    names = [frame.name for frame in traceback.extract_tb(caught.__traceback__)]
    assert "failing_on_the_loop" in names
    assert "body" in names


async def test_an_exception_raised_on_the_loop_fails_the_offloaded_call(bridge: Bridge) -> None:
    """Uncaught in the worker, the loop side's exception is what the caller's await raises."""

    async def refuse() -> None:
        raise PermissionError("denied on the loop")

    def body() -> None:
        offload.run_on_loop(refuse)

    with pytest.raises(PermissionError, match="denied on the loop"):
        await bridge.offload(body)()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: functools.partial(_double, 5), id="partial-of-coroutine-function"),
        pytest.param(lambda: lambda: _double(5), id="lambda-returning-a-coroutine"),
        pytest.param(lambda: gen.coroutine(lambda: 10), id="tornado-coroutine"),
    ],
)
async def test_an_awaitable_returned_by_a_callable_is_awaited_on_the_loop(
    pool: offload.ThreadPool, make: Callable[[], Callable[[], Any]]
) -> None:
    """Whatever ``fn`` returns that is awaitable is awaited, not handed back."""
    fn = make()

    def body() -> Any:
        return offload.run_on_loop(fn)

    assert await offload.offload(body, executor=pool)() == 10


@pytest.mark.parametrize("form", ["coroutine", "plain"])
def test_an_exception_through_run_on_loop_leaves_no_reference_cycle(
    pool: offload.ThreadPool, saved_garbage: list[Any], form: str
) -> None:
    """A loop-side exception that fails the call leaves no cycle holding its Future or frames."""

    def refuse_plain(x: int) -> None:
        raise ValueError(x)

    async def refuse(x: int) -> None:
        await asyncio.sleep(0)
        raise ValueError(x)

    def body(x: int) -> None:
        offload.run_on_loop(refuse if form == "coroutine" else refuse_plain, x)

    async def cancels_itself() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    def cancelled_body() -> None:
        offload.run_on_loop(cancels_itself)

    async def main() -> None:
        for x in range(20):
            with contextlib.suppress(ValueError):
                await offload.offload(body, executor=pool)(x)
        with contextlib.suppress(asyncio.CancelledError):
            await offload.offload(cancelled_body, executor=pool)()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    gc.collect()
    bridge_code = {
        value.__code__ for value in vars(offload._bridge).values() if inspect.isfunction(value)
    }
    ours = [
        obj
        for obj in saved_garbage
        if (isinstance(obj, asyncio.Future) and obj.get_loop() is loop)
        or (isinstance(obj, types.FrameType) and obj.f_code in bridge_code)
    ]
    assert ours == []


# -- Contextvars ------------------------------------------------------------------


@pytest.mark.parametrize("form", ["coroutine", "plain"])
async def test_loop_side_code_sees_the_callers_and_the_workers_contextvars(
    bridge: Bridge, form: str
) -> None:
    """The caller's values, and what the worker set before calling, are seen on the loop."""
    user: contextvars.ContextVar[str] = contextvars.ContextVar("user")
    user.set("alice")

    def read() -> tuple[str, str]:
        return user.get(), request_id.get()

    async def read_async() -> tuple[str, str]:
        return read()

    def body() -> tuple[str, str]:
        request_id.set("req-7")
        if form == "coroutine":
            return offload.run_on_loop(read_async)
        return offload.run_on_loop(read)

    assert await bridge.offload(body)() == ("alice", "req-7")


@pytest.mark.parametrize("form", ["coroutine", "plain"])
async def test_loop_side_changes_to_contextvars_do_not_leak_back(bridge: Bridge, form: str) -> None:
    """What the loop-side code sets stays in its copy: neither the worker nor the caller sees it."""
    request_id.set("caller")

    def change() -> str:
        request_id.set("loop-side")
        return request_id.get()

    async def change_async() -> str:
        await asyncio.sleep(0)
        return change()

    def body() -> tuple[str, str]:
        if form == "coroutine":
            seen = offload.run_on_loop(change_async)
        else:
            seen = offload.run_on_loop(change)
        return seen, request_id.get()

    assert await bridge.offload(body)() == ("loop-side", "caller")
    assert request_id.get() == "caller"


# -- Cancellation and timeouts ----------------------------------------------------


def _cancellable(started: asyncio.Event, cancelled: threading.Event) -> Callable[[], Any]:
    async def waits_forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return waits_forever


async def test_cancelling_the_call_cancels_the_loop_side_task_and_the_worker(
    bridge: Bridge,
) -> None:
    """The caller cancels: the task on the loop is cancelled, the worker gets CancelledError."""
    started, cancelled, report = asyncio.Event(), threading.Event(), Report()
    loop_side = _cancellable(started, cancelled)
    outer = bridge.offload(report.run)(loop_side)
    await asyncio.wait_for(started.wait(), WAIT)
    assert outer.cancel()
    await report.wait()
    assert cancelled.is_set()
    assert isinstance(report.error, asyncio.CancelledError)


async def test_an_expired_timeout_cancels_the_loop_side_task_and_the_worker(
    bridge: Bridge,
) -> None:
    """``timeout=`` expires while the worker waits: the same as a cancel, and the call times out."""
    started, cancelled, report = asyncio.Event(), threading.Event(), Report()
    loop_side = _cancellable(started, cancelled)
    outer = bridge.offload(report.run, timeout=RUNNING_TIMEOUT)(loop_side)
    with pytest.raises(TimeoutError):
        await outer
    await report.wait()
    assert started.is_set()
    assert cancelled.is_set()
    assert isinstance(report.error, asyncio.CancelledError)


async def test_the_worker_is_told_once_the_tasks_cancellation_handling_ended(
    pool: offload.ThreadPool,
) -> None:
    """The task may clean up after its cancel; the worker wakes after that, not before."""
    started, report = asyncio.Event(), Report()
    cleaned: list[bool] = []

    async def cleans_up() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            for _ in range(3):
                await asyncio.sleep(0)
            cleaned.append(not report.done.is_set())

    def body() -> None:
        report.run(cleans_up)

    outer = offload.offload(body, executor=pool)()
    await asyncio.wait_for(started.wait(), WAIT)
    outer.cancel()
    await report.wait()
    assert cleaned == [True]
    assert isinstance(report.error, asyncio.CancelledError)


async def test_an_error_while_the_task_stops_is_the_cause_of_the_workers_cancelled_error(
    pool: offload.ThreadPool,
) -> None:
    """A task that fails as it is cancelled: the worker still gets CancelledError, caused by it."""
    started, report = asyncio.Event(), Report()

    async def fails_on_cancel() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise OSError("cleanup failed") from None

    outer = offload.offload(report.run, executor=pool)(fails_on_cancel)
    await asyncio.wait_for(started.wait(), WAIT)
    outer.cancel()
    await report.wait()
    assert isinstance(report.error, asyncio.CancelledError)
    assert isinstance(report.error.__cause__, OSError)


@pytest.mark.parametrize("form", ["coroutine", "plain"])
async def test_a_call_given_up_before_run_on_loop_raises_at_once_and_runs_nothing(
    bridge: Bridge, form: str
) -> None:
    """Entered after its caller gave up, run_on_loop schedules nothing and raises CancelledError."""
    running, go, report = threading.Event(), threading.Event(), Report()
    ran: list[str] = []

    async def record_async() -> None:
        ran.append("coroutine")

    def body() -> None:
        running.set()
        assert go.wait(WAIT)
        report.run(record_async if form == "coroutine" else ran.append, "plain")

    outer = bridge.offload(body)()
    assert await asyncio.to_thread(running.wait, WAIT)
    outer.cancel()
    go.set()
    await report.wait()
    assert isinstance(report.error, asyncio.CancelledError)
    await asyncio.sleep(0)  # anything wrongly scheduled would have run by now
    assert ran == []


async def test_a_task_cancelled_on_the_loop_gives_the_worker_its_cancelled_error(
    pool: offload.ThreadPool,
) -> None:
    """A task cancelled on the loop by other code: its CancelledError reaches the worker."""

    async def cancels_itself() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel("stop here")
        await asyncio.sleep(0)

    def body() -> str:
        try:
            offload.run_on_loop(cancels_itself)
        except asyncio.CancelledError as exc:
            return str(exc)
        return "not cancelled"

    assert await offload.offload(body, executor=pool)() == "stop here"


@pytest.mark.parametrize("form", ["coroutine", "plain"])
async def test_cancellation_races_never_leave_a_worker_waiting(form: str) -> None:
    """Calls cancelled at every moment: each worker returns or gets CancelledError, none hangs."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    pool = offload.ThreadPool(4, name="race")
    rng = random.Random(1234)  # noqa: S311 - a fixed seed, for a race that replays
    tasks: list[asyncio.Task[Any]] = []
    try:

        async def step(x: int) -> int:
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            await asyncio.sleep(0)
            return x

        reports = [Report() for _ in range(200)]
        loop_side = step if form == "coroutine" else (lambda x: x)
        outers = [
            offload.offload(report.run, executor=pool)(loop_side, i)
            for i, report in enumerate(reports)
        ]
        for outer in outers:
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            outer.cancel()
        # Every call has run, or was dropped unrun, once the pool has shut down.
        await asyncio.wait_for(asyncio.to_thread(pool.shutdown, wait=True), WAIT)
        assert any(report.entered for report in reports)
        for i, (outer, report) in enumerate(zip(outers, reports, strict=True)):
            if not report.entered:
                assert outer.cancelled()
                continue
            assert report.done.is_set()
            assert report.error is None or isinstance(report.error, asyncio.CancelledError)
            if report.error is None:
                assert report.result == i
            if not outer.cancelled():
                assert await outer == i
        assert all(task.done() for task in tasks)
    finally:
        pool.shutdown(wait=True)
        sys.setswitchinterval(previous)


# -- Where it refuses to run ------------------------------------------------------


async def test_on_the_loops_thread_it_raises_runtime_error() -> None:
    """Called from a coroutine, run_on_loop refuses at once instead of blocking the loop."""
    with pytest.raises(RuntimeError, match=r"on an event loop's thread.*Await the coroutine"):
        offload.run_on_loop(_double, 1)


async def test_in_a_loop_callback_it_raises_runtime_error() -> None:
    """Called from a plain loop callback, run_on_loop refuses at once too."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[BaseException] = loop.create_future()

    def callback() -> None:
        try:
            offload.run_on_loop(len, "abc")
        except RuntimeError as exc:
            outcome.set_result(exc)

    loop.call_soon(callback)
    assert "event loop's thread" in str(await asyncio.wait_for(outcome, WAIT))


def test_on_a_thread_without_an_offloaded_call_it_raises_runtime_error() -> None:
    """A thread of its own (no loop, no offloaded call) gets a RuntimeError saying what to use."""
    with ThreadPoolExecutor(1) as plain:
        future = plain.submit(offload.run_on_loop, len, "abc")
        with pytest.raises(RuntimeError, match=r"no offloaded call is running.*run_coroutine_thr"):
            future.result(WAIT)


async def test_on_a_thread_started_by_an_offloaded_call_it_raises_runtime_error(
    pool: offload.ThreadPool,
) -> None:
    """A thread the call starts is not running the call: RuntimeError, not a wait."""
    errors: list[BaseException] = []

    def in_a_thread() -> None:
        try:
            offload.run_on_loop(len, "abc")
        except RuntimeError as exc:
            errors.append(exc)

    def body() -> None:
        thread = threading.Thread(target=in_a_thread)
        thread.start()
        thread.join(WAIT)

    await offload.offload(body, executor=pool)()
    assert len(errors) == 1
    assert "no offloaded call is running" in str(errors[0])


@pytest.mark.filterwarnings("ignore:This process .*multi-threaded:DeprecationWarning")
async def test_in_a_process_pool_worker_it_raises_runtime_error() -> None:
    """In a worker process there is no caller's loop: the RuntimeError comes back to the caller."""
    procs = offload.ProcessPool(1, start_method="fork", name="bridge-procs")
    targets.registry.register("procs", procs, replace=True)
    try:
        with pytest.raises(RuntimeError, match="from a worker process"):
            await asyncio.wait_for(targets.back_to_the_loop(), WAIT)
    finally:
        procs.shutdown(wait=True)


def test_a_non_callable_is_refused_with_a_type_error() -> None:
    """``run_on_loop(42)`` is a TypeError before anything else is checked."""
    with pytest.raises(TypeError, match="needs a callable"):
        offload.run_on_loop(42)  # type: ignore[call-overload]


def test_a_coroutine_object_is_refused_with_a_type_error_that_shows_the_right_form() -> None:
    """A coroutine object instead of the function is refused, and closed so nothing warns."""
    coro = _double(1)
    with pytest.raises(TypeError, match=r"run_on_loop\(client.get, key\)"):
        offload.run_on_loop(coro)  # type: ignore[call-overload]
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


# -- A closed loop ----------------------------------------------------------------


class _TellingLoop(asyncio.SelectorEventLoop):
    """A loop that tells when a callback was queued on it from another thread."""

    def __init__(self) -> None:
        super().__init__()
        self.queued = threading.Event()

    def call_soon_threadsafe(  # type: ignore[override]  # passes everything through
        self, *args: Any, **kwargs: Any
    ) -> asyncio.Handle:
        handle = super().call_soon_threadsafe(*args, **kwargs)
        self.queued.set()
        return handle


def _new_loop() -> _TellingLoop:
    loop = _TellingLoop()
    # The loop-side task of a call left waiting is dropped with the loop: quiet.
    loop.set_exception_handler(lambda _loop, _context: None)
    return loop


def test_on_a_closed_loop_it_raises_runtime_error(pool: offload.ThreadPool) -> None:
    """The caller's loop closed before the worker asked: RuntimeError saying so, at once."""
    running, go, report = threading.Event(), threading.Event(), Report()

    def body() -> None:
        running.set()
        assert go.wait(WAIT)
        report.run(len, "abc")

    async def main() -> None:
        offload.offload(body, executor=pool)()
        assert await asyncio.to_thread(running.wait, WAIT)

    loop = _new_loop()
    loop.run_until_complete(main())
    loop.close()
    go.set()
    assert report.done.wait(WAIT)
    assert isinstance(report.error, RuntimeError)
    assert "is closed" in str(report.error)


def test_a_loop_closing_with_the_callback_queued_raises_runtime_error(
    pool: offload.ThreadPool,
) -> None:
    """Queued on a stopped loop that is then closed, the callback never runs: RuntimeError."""
    running, go, report = threading.Event(), threading.Event(), Report()

    def body() -> None:
        running.set()
        assert go.wait(WAIT)
        report.run(len, "abc")

    async def main() -> None:
        offload.offload(body, executor=pool)()
        assert await asyncio.to_thread(running.wait, WAIT)

    loop = _new_loop()
    loop.run_until_complete(main())
    loop.queued.clear()
    go.set()
    assert loop.queued.wait(WAIT)  # queued on the stopped loop ...
    loop.close()  # ... and dropped unrun
    assert report.done.wait(WAIT)
    assert isinstance(report.error, RuntimeError)
    assert "was closed before len() finished" in str(report.error)


def test_a_loop_closing_while_the_task_runs_raises_runtime_error(
    pool: offload.ThreadPool,
) -> None:
    """The loop closes with the loop-side task unfinished: the worker gets RuntimeError."""
    report = Report()
    started = asyncio.Event()

    async def never_ends() -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        offload.offload(report.run, executor=pool)(never_ends)
        await asyncio.wait_for(started.wait(), WAIT)

    loop = _new_loop()
    loop.run_until_complete(main())
    loop.close()
    assert report.done.wait(WAIT)
    assert isinstance(report.error, RuntimeError)
    assert "was closed before" in str(report.error)
    assert "never_ends() finished" in str(report.error)


# -- Nested use, facades ----------------------------------------------------------


async def test_a_loop_side_coroutine_can_await_another_offloaded_call_that_bridges_back(
    bridge: Bridge,
) -> None:
    """Worker → loop → another offloaded call → loop again: each level gets its result."""
    inner_pool = offload.ThreadPool(2, name="inner")
    # An AffineThread has one thread, busy waiting here: the inner call goes elsewhere.
    inner_executor = inner_pool if bridge.kind == "affine" else bridge.executor
    try:

        @offload.offload(executor=inner_executor)
        def inner(x: int) -> int:
            return offload.run_on_loop(_double, x) + 1

        async def loop_side(x: int) -> int:
            return await inner(x) * 10

        def body(x: int) -> int:
            return offload.run_on_loop(loop_side, x)

        assert await bridge.offload(body)(3) == 70
    finally:
        inner_pool.shutdown(wait=True)


class Cache:
    """A blocking client whose one method needs an async call on the loop."""

    def __init__(self) -> None:
        self.values = {"k": "v"}

    async def _fetch(self, key: str) -> str:
        await asyncio.sleep(0)
        return self.values[key]

    def get(self, key: str) -> str:
        return offload.run_on_loop(self._fetch, key).upper()


async def test_a_facade_method_can_bridge_back_to_the_loop(kind: str) -> None:
    """A facade's method runs on its executor and may use run_on_loop, as any offloaded call."""
    executor = _make(kind)
    try:
        async_cache = offload.facade(Cache, executor=executor, run=["get"])(Cache())
        assert await async_cache.get("k") == "V"
    finally:
        executor.shutdown(wait=True)
