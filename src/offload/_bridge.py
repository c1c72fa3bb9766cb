"""From a worker thread back to the event loop: ``run_on_loop``.

An offloaded call runs on a worker thread; sometimes it needs one async thing
done on the loop that made it (publish a message, read a cache through an
async client). ``run_on_loop`` schedules that on the caller's loop, blocks the
worker until it is done, and hands back its outcome.

How the two sides meet:

- The worker copies its current context, schedules ``_start`` on the loop with
  ``call_soon_threadsafe`` and waits on a ``_Rendezvous`` (an Event and an
  outcome), which only the loop side completes.
- ``_start`` runs on the loop. If the call was given up already, nothing runs.
  Otherwise it calls ``fn`` in the copied context; a plain result is handed
  back at once, an awaitable is awaited in a task that runs in the same copy.
- While the task runs, a done-callback on the call's own Future (the one its
  caller awaits) cancels the task when the caller gives up. The worker is told
  once the task has ended, so nothing ``run_on_loop`` started is still running
  on the loop when it raises ``CancelledError``.

A loop that closes while the worker waits runs nothing more: the callback or
the task is dropped and the rendezvous is never completed. There is no hook on
``close``, so the worker waits in slices of ``_POLL`` seconds and checks
``loop.is_closed()`` between them. Once it reads true no callback of that loop
can run any more, so an outcome not set by then never will be.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from ._call import FUTURE, REMOTE, _running

P = ParamSpec("P")
R = TypeVar("R")

#: How often a waiting worker checks whether the loop was closed, in seconds.
_POLL = 0.1

_GAVE_UP = "the caller of this offloaded call gave up"


class _Rendezvous:
    """Where the loop side leaves the outcome and wakes the waiting worker."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def succeed(self, result: Any) -> None:
        self.result = result
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


@overload
def run_on_loop(fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
@overload
def run_on_loop(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
def run_on_loop(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """In an offloaded call on a thread: run ``fn(*args, **kwargs)`` on the caller's loop.

    The worker blocks until it is done and gets its result, or its exception
    (the same object, with its traceback). ``fn`` is called on the loop's
    thread; if it returns an awaitable (a coroutine function does), that is
    awaited in a task on the loop. The loop-side code runs in a copy of the
    worker's context: it sees the caller's contextvars and the worker's own
    changes, and what it sets does not leak back.

    If the caller gives up on the offloaded call (cancels its Future, or its
    ``timeout=`` expires) while the worker waits, the task is cancelled and,
    once it has ended, the worker gets ``asyncio.CancelledError``. A call given
    up before ``run_on_loop`` is entered raises it at once, running nothing.

    The worker's thread stays busy while it waits: a coroutine that awaits
    another call on the same single-thread executor (an ``AffineThread``) or
    on a pool with every thread busy waits for a thread that cannot come.

    Args:
        fn: A coroutine function, or any callable; a result that is awaitable
            is awaited on the loop.
        *args: Positional arguments for ``fn``.
        **kwargs: Keyword arguments for ``fn``.

    Returns:
        What ``fn`` returned, or what its awaitable gave.

    Raises:
        RuntimeError: called on an event loop's thread, outside an offloaded
            call, in a worker process, or when the loop is closed or closes
            while the worker waits.
        TypeError: ``fn`` is not callable (or is a coroutine object).
        asyncio.CancelledError: the caller gave up on the offloaded call.

    Examples:
        >>> import asyncio, offload
        >>> async def lookup(key):
        ...     await asyncio.sleep(0)
        ...     return {"answer": 42}[key]
        >>> @offload.offload
        ... def blocking_report(key):
        ...     value = offload.run_on_loop(lookup, key)  # one async call, from the thread
        ...     return f"{key} = {value}"
        >>> async def main():
        ...     return await blocking_report("answer")
        >>> asyncio.run(main())
        'answer = 42'
    """
    if not callable(fn):
        if inspect.iscoroutine(fn):
            fn.close()  # never awaited: closed here, so no warning follows the error
            raise TypeError(
                "run_on_loop() takes the coroutine function and its arguments, "
                "run_on_loop(client.get, key), not a coroutine object: one made on the "
                "worker thread could be awaited on no loop but its own"
            )
        raise TypeError(f"run_on_loop() needs a callable to run on the loop, got {fn!r}")
    future = _caller_future()
    if future.done():
        raise asyncio.CancelledError(_GAVE_UP)
    loop = future.get_loop()
    context = contextvars.copy_context()
    rendezvous = _Rendezvous()
    try:
        loop.call_soon_threadsafe(_start, loop, future, rendezvous, context, fn, args, kwargs)
    except RuntimeError:
        if not loop.is_closed():
            raise
        raise RuntimeError(
            "run_on_loop(): the event loop that made this offloaded call is closed, so "
            "nothing can run on it any more"
        ) from None
    # An exception raised here keeps this frame in its traceback, and may fail
    # the call's Future: drop the Future, or the three would form a cycle.
    del future, context, args, kwargs
    return _wait(loop, rendezvous, fn)


def _wait(loop: asyncio.AbstractEventLoop, rendezvous: _Rendezvous, fn: Callable[..., Any]) -> Any:
    """On the worker: wait for the loop side's outcome, watching for the loop to close."""
    done = rendezvous.done
    while not done.wait(_POLL):
        if loop.is_closed() and not done.is_set():
            raise RuntimeError(
                "run_on_loop(): the event loop that made this offloaded call was closed "
                f"before {_describe(fn)} finished on it"
            )
    error = rendezvous.error
    if error is not None:
        rendezvous.error = None  # the rendezvous is in the traceback's frames: no cycle
        try:
            raise error
        finally:
            del error
    return rendezvous.result


def _caller_future() -> asyncio.Future[Any]:
    """The Future of the offloaded call this thread runs, or a RuntimeError saying why not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "run_on_loop() was called on an event loop's thread; it would block the loop "
            "it waits for. Await the coroutine function directly (or call the plain "
            "function) here."
        )
    call = _running.call
    if call is None:
        raise RuntimeError(
            "run_on_loop() runs a function on the event loop that made the current "
            "offloaded call, so it only works inside a function running through offload "
            "on a thread; here no offloaded call is running (a thread of your own, or "
            "one started by the call, has none). Hand that thread the loop and use "
            "asyncio.run_coroutine_threadsafe(coro, loop) instead."
        )
    if call is REMOTE:
        raise RuntimeError(
            "run_on_loop() cannot reach the caller's event loop from a worker process: "
            "the loop is in another process. Do the async part on the loop before or "
            "after the offloaded call, or offload this function to a thread executor."
        )
    future: asyncio.Future[Any] = call[FUTURE]
    return future


def _describe(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None)
    return f"{name}()" if isinstance(name, str) else repr(fn)


def _start(  # noqa: PLR0917 - what the worker hands over, in one callback
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    rendezvous: _Rendezvous,
    context: contextvars.Context,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """On the loop: run ``fn`` in the worker's context copy, unless the call was given up."""
    if future.done():  # given up while this callback was queued
        rendezvous.fail(asyncio.CancelledError(_GAVE_UP))
        return
    try:
        result = context.run(fn, *args, **kwargs)
    except BaseException as exc:
        rendezvous.fail(exc)
        # fn's frame in the traceback links back to this one: drop the locals
        # that would tie the exception, the call's Future and this frame into
        # a cycle once the exception fails the call.
        del loop, future, rendezvous
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise  # as a task does: the loop stops too
        return
    if not inspect.isawaitable(result):
        rendezvous.succeed(result)
        return
    coro = result if asyncio.iscoroutine(result) else _await(result)
    _watch(future, loop.create_task(coro, context=context), rendezvous)


def _watch(future: asyncio.Future[Any], task: asyncio.Task[Any], rendezvous: _Rendezvous) -> None:
    """On the loop: cancel ``task`` if the call is given up; once it ends, tell the worker."""

    def given_up(_: asyncio.Future[Any]) -> None:
        task.cancel(_GAVE_UP)

    def ended(_: asyncio.Task[Any]) -> None:
        future.remove_done_callback(given_up)
        if future.done():
            # Given up: whatever the task made of its cancellation, the worker
            # is told so; an error raised while it stopped is kept as the cause.
            gave_up = asyncio.CancelledError(_GAVE_UP)
            if not task.cancelled():
                gave_up.__cause__ = task.exception()
            rendezvous.fail(gave_up)
            return
        if task.cancelled():
            # A fresh CancelledError, with the task's message: raising the one
            # task.result() makes would put this frame (and the Future) in it.
            rendezvous.fail(_cancelled_error(task))
            return
        error = task.exception()  # the object itself, without raising it here
        if error is None:
            rendezvous.succeed(task.result())
        else:
            rendezvous.fail(error)

    future.add_done_callback(given_up)
    task.add_done_callback(ended)


def _cancelled_error(task: asyncio.Task[Any]) -> asyncio.CancelledError:
    """The CancelledError a cancelled task raises, made without raising it in this frame."""
    try:
        task.result()
    except asyncio.CancelledError as exc:
        return asyncio.CancelledError(*exc.args)
    return asyncio.CancelledError()  # not reached: the task is cancelled


async def _await(awaitable: Awaitable[R]) -> R:
    return await awaitable
