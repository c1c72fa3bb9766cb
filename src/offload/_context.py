"""Blocking context managers, used with ``async with``: both halves on one thread.

Many context managers must be left on the thread that entered them: a
``threading.RLock`` refuses to be released elsewhere, and redis-py's ``Lock``
keeps its token in a ``threading.local``. So on a pool, the context holds one
thread for its whole block, as an iterator's producer does: one job runs
``__enter__``, reports the value to the loop, then serves the jobs sent to that
thread (a ``HeldThread``) until the block ends, then runs ``__exit__`` and
returns its result. On a one-thread executor (an ``AffineThread``, or a thread
another context holds) the thread is fixed already, so ``__enter__`` and
``__exit__`` are two jobs and other work runs between them.

Every path ends with ``__exit__`` run, or with ``__enter__`` never run:

- the block ends (``__aexit__``): ``__exit__`` gets its exception;
- the task is cancelled before ``__enter__`` starts: neither runs;
- it is cancelled while ``__enter__`` runs: ``__aenter__`` waits for it, runs
  ``__exit__`` with the ``CancelledError``, then raises it;
- the context is dropped inside its block (entered by hand, never exited): a
  finalizer runs ``__exit__`` with ``GeneratorExit``, as for an abandoned
  generator, and logs a warning, so a held thread is never kept forever.

Once asked for, ``__exit__`` is waited for even if the task is cancelled again
meanwhile; the cancellation is raised after it.

``_Entry`` is what the loop and the thread share. It refers to the manager,
never to the context object, so that a dropped context can be collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

from ._affinity import HeldThread
from ._decorator import ExecutorSpec, check_spec
from ._errors import ExecutorShutdownError
from ._iterate import one_thread, resolve, route, running_loop
from ._route import Route, route_to

T = TypeVar("T")

logger = logging.getLogger("offload")

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]

#: What ``_Entry.exit`` says about the ``__exit__`` it was asked for.
_NONE, _IN_JOB, _SEND = "none", "in the entering job", "send a job"


class _Entry:
    """One entry into a context manager: what its job on a thread and the loop share."""

    def __init__(
        self,
        manager: AbstractContextManager[Any],
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        hold: bool,
    ) -> None:
        self.manager = manager
        self.loop = loop
        self.executor = executor
        self.thread = HeldThread(f"{type(manager).__qualname__} context") if hold else None
        self.entered: asyncio.Future[Any] = loop.create_future()
        self.lock = threading.Lock()
        self.started = False  # the job began; from here __enter__ runs
        self.abandoned = False  # given up before it started: neither half runs
        self.enter_failed = False  # __enter__ raised: __exit__ is not called
        self.returned = False  # not holding: the job returned after __enter__
        self.exit_args: ExcInfo | tuple[()] | None = None  # asked for, then () once taken

    def serve(self) -> Any:
        """The job: ``__enter__``; if holding, the jobs of the block, then ``__exit__``."""
        with self.lock:
            if self.abandoned:
                return False
            self.started = True
        try:
            value = self.manager.__enter__()
        except BaseException as exc:
            with self.lock:
                self.enter_failed = True
            self._report(None, exc)
            del exc
            return False
        if not self._report(value, None):  # the loop is closed: nobody will exit
            self.exit(_abandoned())
        del value
        with self.lock:
            exiting = self.exit_args is not None
            if not exiting and self.thread is None:
                self.returned = True
        if exiting:  # asked for while __enter__ ran
            return self.run_exit()
        if self.thread is None:
            return None
        self.thread.serve()
        return self.run_exit()

    def _report(self, value: Any, exc: BaseException | None) -> bool:
        try:
            self.loop.call_soon_threadsafe(_settle, self.entered, value, exc)
        except RuntimeError:
            return False
        return True

    def run_exit(self) -> Any:
        """Run ``__exit__`` with what it was asked for with."""
        exc_info, self.exit_args = self.exit_args, ()
        return self.manager.__exit__(*exc_info)  # type: ignore[misc]

    def exit(self, exc_info: ExcInfo) -> str:
        """Ask for ``__exit__``; say whether the entering job runs it, one must be sent, or none."""
        with self.lock:
            if self.exit_args is not None or self.enter_failed or self.abandoned:
                return _NONE
            self.exit_args = exc_info
            if self.thread is not None:
                self.thread.close()
                return _IN_JOB
            return _SEND if self.returned else _IN_JOB

    def abandon(self) -> bool:
        """Give up before the job starts; true if neither half will run."""
        with self.lock:
            if self.started:
                return False
            self.abandoned = True
            if self.thread is not None:
                self.thread.close()
            return True

    def job_done(self, job: asyncio.Future[Any]) -> None:
        """On the loop: a job that ended before reporting was dropped or failed unstarted."""
        if self.entered.done():
            return
        self.abandon()
        error = None if job.cancelled() else job.exception()
        self.entered.set_exception(
            error or ExecutorShutdownError("the executor dropped the job entering the context")
        )

    def dropped(self) -> None:
        """The context was collected inside its block: exit for it, never leave a thread held."""
        if self.abandon():
            return
        how = self.exit(_abandoned())
        if how == _NONE:
            return
        logger.warning(
            "an async context over %r was dropped without being exited; "
            "its __exit__ runs with GeneratorExit",
            self.manager,
        )
        if how == _SEND:
            with contextlib.suppress(RuntimeError):  # shut down: nothing runs there any more
                self.executor.submit(self.run_exit)


def _abandoned() -> ExcInfo:
    return GeneratorExit, GeneratorExit(), None


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


async def _outlast(job: asyncio.Future[Any]) -> Any:
    """Wait for ``job``, through cancellation; a cancellation received is raised after it."""
    cancelled: asyncio.CancelledError | None = None
    while not job.done():
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError as exc:
            if job.done():
                break
            cancelled = exc
    result = job.result()  # what __exit__ raised, if it raised
    if cancelled is not None:
        raise cancelled
    return result


class _AsyncContext(AbstractAsyncContextManager[T]):
    """A blocking context manager whose ``__enter__`` and ``__exit__`` run on one thread."""

    def __init__(
        self,
        manager: AbstractContextManager[Any],
        executor: ExecutorSpec,
        convert: Callable[[Any], T],
    ) -> None:
        self._manager = manager
        self._spec = check_spec(executor)
        self._convert = convert
        self._entry: _Entry | None = None
        self._route: Route | None = None
        self._job: asyncio.Future[Any] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def held(self) -> HeldThread | None:
        """The thread held for the block, on a pool; None on a one-thread executor."""
        return None if self._entry is None else self._entry.thread

    async def __aenter__(self) -> T:
        if self._entry is not None:
            raise RuntimeError(
                "this async context manager was entered already; make one for each async with"
            )
        loop = running_loop(self)
        executor = resolve(self._spec)
        hold = not one_thread(executor)
        chosen = self._route = route_to(executor) if hold else route(self._spec)
        if chosen.kind.pickles:
            raise TypeError(
                f"acontext needs an executor that runs jobs on threads of this process, "
                f"got {executor!r}: a context entered in another process cannot be exited here"
            )
        entry = _Entry(self._manager, loop, executor, hold)
        self._job = job = chosen.call(loop, entry.serve, (), {})
        self._entry = entry
        job.add_done_callback(entry.job_done)
        finalizer = self._finalizer = weakref.finalize(self, entry.dropped)
        try:
            value = await entry.entered
        except asyncio.CancelledError as cancel:
            if entry.abandon():  # __enter__ never started: nothing to undo
                finalizer.detach()
                job.cancel()
                raise
            await self._exit((type(cancel), cancel, cancel.__traceback__))
            raise
        except BaseException:
            finalizer.detach()
            raise
        return self._convert(value)

    async def _exit(self, exc_info: ExcInfo) -> Any:
        entry, chosen, job = self._entry, self._route, self._job
        if entry is None or chosen is None or job is None:
            raise RuntimeError("__aexit__ was called without __aenter__")
        if self._finalizer is not None:
            self._finalizer.detach()
        how = entry.exit(exc_info)
        if how == _SEND:
            job = chosen.call(entry.loop, entry.run_exit, (), {})
        result = await _outlast(job)
        return result if how != _NONE else False

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return bool(await self._exit((exc_type, exc, tb)))


def acontext(
    manager: AbstractContextManager[T], *, executor: ExecutorSpec = "default"
) -> AbstractAsyncContextManager[T]:
    """Use a blocking context manager with ``async with``.

    ``__enter__`` and ``__exit__`` run on one thread of ``executor``: on a pool
    the context holds that thread for its block, so a lock that must be
    released where it was taken (``threading.RLock``, redis-py's ``Lock``)
    works. ``__exit__`` receives the exception raised in the body, and a true
    return value suppresses it, as in ``with``. Once the block is over,
    ``__exit__`` is waited for even if the task is cancelled. A task cancelled
    while ``__enter__`` runs waits for it, has ``__exit__`` called with the
    ``CancelledError``, then raises it; one cancelled before ``__enter__``
    starts runs neither.

    Examples:
        >>> import asyncio, threading, offload
        >>> lock = threading.RLock()  # released only by the thread that acquired it
        >>> async def main():
        ...     async with offload.acontext(lock, executor="io"):
        ...         held = repr(lock).startswith("<locked")
        ...     return held, repr(lock).startswith("<unlocked")
        >>> asyncio.run(main())
        (True, True)
    """
    return _AsyncContext(manager, executor, _unchanged)


def _unchanged(value: T) -> T:
    return value
