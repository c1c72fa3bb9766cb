"""Blocking iterators and context managers, used with ``async for`` and ``async with``.

An iterator is drained by a producer job on the executor. It runs ahead of the
consumer by at most ``prefetch`` items, then waits: a slow consumer holds the
producer back instead of letting items pile up. Outcomes (items, the end, an
exception) travel to the loop in order, so an exception arrives after exactly
the items produced before it.

Where the producer waits depends on the executor. On a pool it waits on its
thread, keeping that one thread for the iterator's whole life, so every item is
produced on the same thread. On an ``AffineThread`` the executor already
guarantees the thread, so the producer returns instead and is queued again once
the consumer catches up: other jobs for that thread (another query on the same
connection, say) can run between batches instead of waiting for the iterator.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ._affinity import AffineThread
from ._api import default_registry
from ._decorator import ExecutorSpec, check_spec
from ._errors import ExecutorShutdownError, no_running_loop
from ._route import Route, route_to

P = ParamSpec("P")
T = TypeVar("T")

#: Items an iterator may produce ahead of its consumer, unless told otherwise.
PREFETCH = 16

_ITEM, _END, _ERROR = "item", "end", "error"


def resolve(spec: ExecutorSpec) -> Executor:
    """The executor a name or Executor stands for, looked up now.

    An iterator's producer is one long job, paused and resumed by backpressure,
    so it is not counted as calls and takes no ``max_pending`` slot.
    """
    return spec if isinstance(spec, Executor) else default_registry.get_executor(spec)


def route(spec: ExecutorSpec) -> Route:
    """The route of a name or an Executor, looked up now, at call time."""
    return route_to(spec) if isinstance(spec, Executor) else default_registry._route(spec)


def running_loop(what: object) -> asyncio.AbstractEventLoop:
    """The running loop, or the error that explains why one is needed."""
    loop = asyncio._get_running_loop()
    if loop is None:
        raise no_running_loop(what)
    return loop


def _close(source: object) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


class _Pump:
    """What the producer thread and the consumer on the loop share."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        open_source: Callable[[], Iterable[Any]],
        prefetch: int,
        hold: bool,
    ) -> None:
        self.loop = loop
        self.open_source = open_source
        self.source: Iterator[Any] | None = None
        self.hold = hold
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self.credit = prefetch  # items the producer may make before it must wait
        self.outcomes: collections.deque[tuple[str, Any]] = collections.deque()
        # Consumers waiting for an outcome: every one is woken, and each looks again.
        self.waiters: list[asyncio.Future[None]] = []
        self.running = False  # a producer job is queued or running
        self.stopping = False  # the consumer is gone: close the source, make no more
        self.finished = False  # the source ended or raised; nothing left to close
        self.close_error: BaseException | None = None

    def produce(self) -> None:
        """The producer job: make items until out of credit, stopped or finished."""
        try:
            if self.source is None:
                self.source = iter(self.open_source())
            while True:
                with self.lock:
                    while self.credit == 0 and not self.stopping:
                        if not self.hold:
                            self.running = False  # the consumer queues us again
                            return
                        self.space.wait()
                    if self.stopping:
                        break
                    self.credit -= 1
                self._push(_ITEM, next(self.source))
        except StopIteration:
            self.finished = True
            self._push(_END, None)
            return
        except BaseException as exc:
            self.finished = True
            self._push(_ERROR, exc)
            return
        self.close_source()

    def close_source(self) -> None:
        """Close the source on the producing thread, keeping any error for aclose()."""
        with self.lock:
            self.running = False
            if self.finished:
                return
            self.finished = True
        try:
            _close(self.source)
        except BaseException as exc:
            self.close_error = exc

    def _push(self, kind: str, value: Any) -> None:
        self.outcomes.append((kind, value))
        with self.lock:
            waiters, self.waiters = self.waiters, []
        if waiters:
            self.loop.call_soon_threadsafe(_wake, waiters)

    def job_done(self, job: asyncio.Future[Any]) -> None:
        """Report a producer job that the executor dropped unstarted (shut down)."""
        if job.cancelled() and not self.finished:
            self.finished = True
            self._push(
                _ERROR, ExecutorShutdownError("the executor dropped the iterator's producer")
            )

    def stop(self) -> bool:
        """Ask the producer to close the source; true if no producer job will."""
        with self.lock:
            self.stopping = True
            self.space.notify()
            return not self.running and not self.finished


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


class OffloadedIterator(Generic[T]):
    """An async iterator over a blocking one; made by ``aiterate``.

    Leaving it early with ``break`` closes it once nothing refers to it; for a
    close at a known point use ``aclose()``, or ``async with``.
    """

    def __init__(
        self, open_source: Callable[[], Iterable[T]], executor: ExecutorSpec, prefetch: int
    ) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be a positive int, got {prefetch!r}")
        self._open_source = open_source
        self._spec = check_spec(executor)
        self._prefetch = prefetch
        self._executor: Executor | None = None
        self._pump: _Pump | None = None
        self._job: asyncio.Future[Any] | None = None
        self._done = False

    def __aiter__(self) -> OffloadedIterator[T]:
        return self

    async def __aenter__(self) -> OffloadedIterator[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _start(self) -> _Pump:
        loop = running_loop(self)
        executor = self._executor = resolve(self._spec)
        hold = not isinstance(executor, AffineThread)
        pump = self._pump = _Pump(loop, self._open_source, self._prefetch, hold)
        self._run_producer(pump, executor)
        return pump

    def _run_producer(self, pump: _Pump, executor: Executor) -> None:
        pump.running = True
        self._job = route_to(executor).call(pump.loop, pump.produce, (), {})
        # The callback holds the pump, not self: ``break`` must be able to drop self.
        self._job.add_done_callback(pump.job_done)

    async def __anext__(self) -> T:
        pump = self._pump or self._start()
        while True:
            if self._done:
                raise StopAsyncIteration
            with pump.lock:
                outcome = pump.outcomes.popleft() if pump.outcomes else None
                if outcome is None:
                    waiter = pump.loop.create_future()
                    pump.waiters.append(waiter)
            if outcome is None:
                await waiter
                continue
            kind, value = outcome
            if kind == _ITEM:
                self._give_credit(pump)
                return value  # type: ignore[no-any-return]
            self._done = True
            if kind == _ERROR:
                try:
                    raise value
                finally:
                    del value
            raise StopAsyncIteration

    def _give_credit(self, pump: _Pump) -> None:
        with pump.lock:
            pump.credit += 1
            resume = not pump.running and not pump.finished and not pump.stopping
            if resume:
                pump.running = True
            pump.space.notify()
        if resume and self._executor is not None:
            try:
                self._run_producer(pump, self._executor)
            except BaseException as exc:  # the executor was shut down between batches
                # The item in hand is still the caller's; the end comes after it.
                pump.running = False
                pump.finished = True
                pump._push(_ERROR, exc)

    async def aclose(self) -> None:
        """Stop the producer, close the source on its thread, and wait for both.

        An exception raised while closing the source is raised here.
        """
        self._done = True
        pump, self._pump = self._pump, None
        if pump is None:
            return
        if pump.stop() and self._executor is not None:
            self._job = route_to(self._executor).call(pump.loop, pump.close_source, (), {})
        if self._job is not None:
            await asyncio.shield(self._job)
        if pump.close_error is not None:
            try:
                raise pump.close_error
            finally:
                pump.close_error = None

    def __del__(self) -> None:
        # ``break`` out of ``async for`` drops the iterator without aclose().
        pump = getattr(self, "_pump", None)  # None too if __init__ failed
        if pump is not None and pump.stop() and self._executor is not None:
            # A shut-down executor refuses: then nothing will run the source again anyway.
            with contextlib.suppress(RuntimeError):
                self._executor.submit(pump.close_source)


def aiterate(
    iterable: Iterable[T], *, executor: ExecutorSpec = "default", prefetch: int = PREFETCH
) -> OffloadedIterator[T]:
    r"""Iterate a blocking iterable with ``async for``, producing items on ``executor``.

    ``iter()`` and every ``next()`` run on one thread of the executor, at most
    ``prefetch`` items ahead of the consumer. An exception from the source is
    raised by ``__anext__`` after the items made before it. Leaving early
    (``break``, ``aclose()``, ``async with``) closes the source if it has a
    ``close()`` method (a generator runs its ``finally``) and frees the thread.

    From ``@gen.coroutine`` code, where ``async for`` is not allowed, yield
    ``anext(it, None)`` (or another sentinel) until it returns the sentinel.

    Examples:
        >>> import asyncio, io, offload
        >>> async def main():
        ...     lines = offload.aiterate(io.StringIO("a\nb\n"), executor="io")
        ...     return [line.strip() async for line in lines]
        >>> asyncio.run(main())
        ['a', 'b']
    """
    return OffloadedIterator(functools.partial(_same, iterable), executor, prefetch)


def _same(iterable: Iterable[T]) -> Iterable[T]:
    return iterable


@overload
def agenerator(fn: Callable[P, Iterable[T]], /) -> Callable[P, OffloadedIterator[T]]: ...
@overload
def agenerator(
    executor: ExecutorSpec = "default", /, *, prefetch: int = PREFETCH
) -> Callable[[Callable[P, Iterable[T]]], Callable[P, OffloadedIterator[T]]]: ...
@overload
def agenerator(
    *, executor: ExecutorSpec = "default", prefetch: int = PREFETCH
) -> Callable[[Callable[P, Iterable[T]]], Callable[P, OffloadedIterator[T]]]: ...
def agenerator(fn: Any = "default", /, *, executor: Any = None, prefetch: int = PREFETCH) -> Any:
    """Turn a blocking generator function into one returning an async iterator.

    Forms: ``@agenerator``, ``@agenerator("io")``, ``@agenerator(executor="io",
    prefetch=4)``. Calling the result runs nothing yet; the call itself, like
    every step of the generator, runs on the executor once iteration starts. See
    ``aiterate`` for ordering, backpressure and closing. The original stays
    reachable as ``__wrapped__``.

    Examples:
        >>> import asyncio, offload
        >>> @offload.agenerator("io")
        ... def countdown(n):
        ...     while n:
        ...         yield n  # a blocking read would go here
        ...         n -= 1
        >>> async def main():
        ...     return [n async for n in countdown(3)]
        >>> asyncio.run(main())
        [3, 2, 1]
    """
    if callable(fn) and not isinstance(fn, Executor):
        return _generator(fn, check_spec(executor or "default"), prefetch)
    if executor is not None and fn != "default":
        raise TypeError("give the executor once: agenerator('io') or agenerator(executor='io')")
    spec = check_spec(executor if executor is not None else fn)
    return lambda gen_fn: _generator(gen_fn, spec, prefetch)


def _generator(
    fn: Callable[P, Iterable[T]], spec: ExecutorSpec, prefetch: int
) -> Callable[P, OffloadedIterator[T]]:
    if not callable(fn):
        raise TypeError(f"agenerator() needs a generator function, got {fn!r}")

    @functools.wraps(fn)
    def start(*args: P.args, **kwargs: P.kwargs) -> OffloadedIterator[T]:
        return OffloadedIterator(functools.partial(fn, *args, **kwargs), spec, prefetch)

    return start


class _AsyncContext(AbstractAsyncContextManager[T]):
    """A blocking context manager whose ``__enter__`` and ``__exit__`` run on an executor."""

    def __init__(
        self,
        manager: AbstractContextManager[Any],
        executor: ExecutorSpec,
        convert: Callable[[Any], T],
    ) -> None:
        self._manager = manager
        self._spec = check_spec(executor)
        self._convert = convert
        self._lock = threading.Lock()
        self._entered = False
        self._abandoned = False

    def _call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return route(self._spec).call(running_loop(fn), fn, args, {})

    def _enter(self) -> Any:
        value = self._manager.__enter__()
        with self._lock:
            abandoned = self._abandoned
            self._entered = True
        if abandoned:  # the caller was cancelled while we entered: undo it here
            cancelled = asyncio.CancelledError()
            self._manager.__exit__(type(cancelled), cancelled, None)
        return value

    async def __aenter__(self) -> T:
        entering = self._call(self._enter)
        try:
            value = await entering
        except asyncio.CancelledError:
            with self._lock:
                self._abandoned = True
                entered = self._entered
            if entered:  # entered, but the outcome came too late: exit for the caller
                cancelled = asyncio.CancelledError()
                self._call(self._manager.__exit__, type(cancelled), cancelled, None)
            raise
        return self._convert(value)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        # Shielded: once the body has run, __exit__ must run even if we are cancelled.
        return bool(await asyncio.shield(self._call(self._manager.__exit__, exc_type, exc, tb)))


def acontext(
    manager: AbstractContextManager[T], *, executor: ExecutorSpec = "default"
) -> AbstractAsyncContextManager[T]:
    """Use a blocking context manager with ``async with``.

    ``__enter__`` and ``__exit__`` run on ``executor``. ``__exit__`` receives the
    exception raised in the body, and a true return value suppresses it, as in
    ``with``. It runs even if the task is cancelled while it runs; a task
    cancelled while ``__enter__`` runs has ``__exit__`` called with the
    ``CancelledError``.

    Examples:
        >>> import asyncio, threading, offload
        >>> lock = threading.Lock()
        >>> async def main():
        ...     async with offload.acontext(lock, executor="io"):
        ...         return lock.locked()
        >>> asyncio.run(main())
        True
    """
    return _AsyncContext(manager, executor, _unchanged)


def _unchanged(value: T) -> T:
    return value
