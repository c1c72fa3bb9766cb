"""Blocking iterators, used with ``async for``.

An iterator is drained by a producer job on the executor into a buffer the
loop reads. Items cross in bursts, not one by one: the producer appends each
item to the buffer and wakes the loop only if a consumer is waiting for one,
so while the consumer is busy items pile up and it later takes them without a
thread hop; the producer stops once ``prefetch`` items are ahead and is woken
only when the consumer has brought the buffer down to half of that, so it too
is woken once per burst rather than once per item. A source that can fetch
many items in one call (a DB-API cursor's ``fetchmany``) fills the free room in
one call. The end of the items (``_END``) is queued after them, so an exception
arrives after exactly the items produced before it.

Where the producer waits depends on the executor. On a pool it waits on its
thread, keeping that one thread for the iterator's whole life, so every item is
produced on the same thread. On a one-thread executor (an ``AffineThread``, or
the thread a context holds) the thread is already fixed, so the producer
returns instead and is queued again once the consumer catches up: other jobs
for that thread (another query on the same connection, say) can run between
bursts instead of waiting for the iterator.

The producer and the loop share a deque, whose appends and pops are
thread-safe, and a few flags. Each side writes its flag before it reads the
other's state, and reads the other's flag after it changed the deque: the
consumer registers as waiting, then looks at the deque again; the producer
appends, then reads whether a consumer waits (the same handshake as
``_delivery``'s flag). The producer pauses under the lock, and looks at the
deque again after it has said it pauses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ._affinity import AffineThread, HeldThread
from ._api import default_registry
from ._decorator import ExecutorSpec, check_spec
from ._errors import ExecutorShutdownError, no_running_loop
from ._interrupt import Interrupt, Interrupting, check_interrupt
from ._lanes import Lane
from ._route import Route, route_to

P = ParamSpec("P")
T = TypeVar("T")

#: Items an iterator may produce ahead of its consumer, unless told otherwise.
PREFETCH = 16

#: Queued after the last item: the source ended, or raised (``_Pump.error``).
_END: Any = object()


def resolve(spec: ExecutorSpec) -> Executor:
    """The executor a name or Executor stands for, looked up now (a lane handle's lane).

    An iterator's producer, like the job a context holds a thread with, is one
    long job, so it is not counted as calls and takes no ``max_pending`` slot.
    """
    if isinstance(spec, Lane):
        return spec.get_executor()
    return spec if isinstance(spec, Executor) else default_registry.get_executor(spec)


def one_thread(executor: Executor) -> bool:
    """Whether every job sent to ``executor`` runs on one and the same thread."""
    return isinstance(executor, (AffineThread, HeldThread))


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

    def __init__(  # noqa: PLR0917 - the iterator's settings, passed on
        self,
        loop: asyncio.AbstractEventLoop,
        open_source: Callable[[], Any],
        prefetch: int,
        hold: bool,
        chunks: bool,
        interrupt: Interrupt | None,
    ) -> None:
        self.loop = loop
        self.open_source = open_source
        self.source: Any = None  # an iterator, or with ``chunks`` a fetchmany-like callable
        self.chunks = chunks
        self.chunk_size = 1  # rows the next fetch asks for, at most the free room
        self.prefetch = prefetch
        self.resume_at = prefetch // 2  # a paused producer goes on once the buffer is this low
        self.hold = hold
        self.interrupt = interrupt
        self.items: collections.deque[Any] = collections.deque()
        self.error: BaseException | None = None  # what the source raised, after the items
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        # Consumers waiting for an item: every one is woken, and each looks again.
        self.waiters: list[asyncio.Future[None]] = []
        self.running = False  # a producer job is queued or running
        self.paused = False  # the producer waits for room (or returned to wait, if not holding)
        self.stopping = False  # the consumer is gone: close the source, make no more
        self.finished = False  # the source ended or raised, or was closed
        self.interrupting: Interrupting | None = None
        self.close_error: BaseException | None = None

    def produce(self) -> None:
        """The producer job: make items until paused (and not holding), stopped or finished."""
        try:
            if self.source is None:
                opened = self.open_source()
                self.source = opened if self.chunks else iter(opened)
            stopped = self._chunks() if self.chunks else self._items()
        except StopIteration:
            self._finish(None)
        except BaseException as exc:
            self._finish(exc)
            del exc
        else:
            if stopped:
                self.close_source()

    def _items(self) -> bool:
        """Make items one ``next()`` at a time; true once stopped, false if paused and gone."""
        items, limit, make = self.items, self.prefetch, self.source.__next__
        while True:
            if len(items) >= limit and not self._room():
                return self.stopping
            if self.stopping:
                return True
            items.append(make())
            if self.waiters:
                self._wake()

    def _chunks(self) -> bool:
        """As ``_items``, a chunk per call; an empty chunk is the end.

        A fetch returns only once it has all the rows asked for, so the first
        asks for one row, and each next for twice as many, up to the free
        room: the first row comes as soon as it would one at a time. The size
        reached is kept for a producer that paused and starts again: a long
        scan is read in full chunks, each a round trip for a server cursor.
        """
        items, limit, fetch = self.items, self.prefetch, self.source
        size = self.chunk_size
        while True:
            if len(items) >= limit and not self._room():
                return self.stopping
            if self.stopping:
                return True
            chunk = fetch(min(size, limit - len(items)))
            if not chunk:
                raise StopIteration
            items.extend(chunk)
            if self.waiters:
                self._wake()
            if size < limit:
                size = self.chunk_size = size * 2

    def _room(self) -> bool:
        """Wait until the consumer made room; false if the producer must return instead."""
        with self.lock:
            self.paused = True
            while len(self.items) > self.resume_at and not self.stopping:
                if not self.hold:  # the consumer queues a producer again
                    self.running = False
                    return False
                self.space.wait()
            self.paused = False
            return not self.stopping

    def _finish(self, error: BaseException | None) -> None:
        with self.lock:
            self.running = False
            self.finished = True
            interrupting = self.interrupting
        if interrupting is not None:
            interrupting.wait()
        self.error = error
        self.items.append(_END)
        self._wake()

    def close_source(self) -> None:
        """Close the source on the producing thread, keeping any error for aclose()."""
        with self.lock:
            self.running = False
            if self.finished:
                return
            self.finished = True
            interrupting = self.interrupting
        if interrupting is not None:  # it must not land on the close, or on later work
            interrupting.wait()
        try:
            _close(self.source)
        except BaseException as exc:
            self.close_error = exc

    def _wake(self) -> None:
        with self.lock:
            waiters, self.waiters = self.waiters, []
        if waiters:
            self.loop.call_soon_threadsafe(_wake, waiters)

    def job_done(self, job: asyncio.Future[Any]) -> None:
        """Report a producer job that the executor dropped unstarted (shut down)."""
        if job.cancelled():
            with self.lock:
                if self.finished:
                    return
                self.finished = True
                self.running = False
            self.error = ExecutorShutdownError("the executor dropped the iterator's producer")
            self.items.append(_END)
            self._wake()

    def resume(self) -> bool:
        """On the loop, with room made: wake a paused producer; true if one must be queued."""
        with self.lock:
            if not self.paused or self.stopping or self.finished:
                return False
            if self.hold:
                self.space.notify()
                return False
            if self.running:
                return False
            self.paused = False
            self.running = True
            return True

    def stop(self) -> bool:
        """Ask the producer to close the source; true if no producer job will.

        A producer inside the source (not paused) is interrupted, if the
        iterator has an interrupt.
        """
        with self.lock:
            if self.stopping:
                return False
            self.stopping = True
            self.space.notify()
            busy = self.running and not self.paused and not self.finished
            if busy and self.interrupt is not None:
                self.interrupting = Interrupting(self.interrupt, "its iterator was closed early")
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
        self,
        open_source: Callable[[], Any],
        executor: ExecutorSpec,
        prefetch: int,
        *,
        interrupt: Interrupt | None = None,
        chunks: bool = False,
    ) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be a positive int, got {prefetch!r}")
        self._open_source = open_source
        self._spec = check_spec(executor)
        self._prefetch = prefetch
        self._interrupt = check_interrupt(interrupt)
        self._chunks = chunks
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
        pump = self._pump = _Pump(
            loop,
            self._open_source,
            self._prefetch,
            not one_thread(executor),
            self._chunks,
            self._interrupt,
        )
        pump.running = True
        self._run_producer(pump, executor)
        return pump

    def _run_producer(self, pump: _Pump, executor: Executor) -> None:
        self._job = route_to(executor).call(pump.loop, pump.produce, (), {})
        # The callback holds the pump, not self: ``break`` must be able to drop self.
        self._job.add_done_callback(pump.job_done)

    async def __anext__(self) -> T:
        if self._done:
            raise StopAsyncIteration
        pump = self._pump or self._start()
        items = pump.items
        while True:
            if items:  # only the loop takes items: what it sees stays there
                item = items.popleft()
                if item is _END:
                    self._done = True
                    error, pump.error = pump.error, None
                    if error is not None:
                        try:
                            raise error
                        finally:
                            del error
                    raise StopAsyncIteration
                if pump.paused and len(items) <= pump.resume_at:
                    self._resume(pump)
                return item  # type: ignore[no-any-return]
            waiter = pump.loop.create_future()
            with pump.lock:
                pump.waiters.append(waiter)
            if not items:  # looked at after registering: an item appended since wakes us
                await waiter
                if self._done:  # closed by another task meanwhile
                    raise StopAsyncIteration

    def _resume(self, pump: _Pump) -> None:
        if pump.resume() and self._executor is not None:
            try:
                self._run_producer(pump, self._executor)
            except BaseException as exc:  # the executor was shut down between bursts
                # The item in hand is still the caller's; the end comes after it.
                with pump.lock:
                    pump.running = False
                    pump.finished = True
                pump.error = exc
                pump.items.append(_END)

    async def aclose(self) -> None:
        """Stop the producer, close the source on its thread, and wait for both.

        A producer blocked inside the source is interrupted first, if the
        iterator was given an ``interrupt``. An exception raised while closing
        the source is raised here.
        """
        self._done = True
        pump, self._pump = self._pump, None
        if pump is None:
            return
        if pump.stop() and self._executor is not None:
            self._job = route_to(self._executor).call(pump.loop, pump.close_source, (), {})
        with pump.lock:
            waiters, pump.waiters = pump.waiters, []
        _wake(waiters)  # a consumer waiting in another task sees the end
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
    iterable: Iterable[T],
    *,
    executor: ExecutorSpec = "default",
    prefetch: int = PREFETCH,
    interrupt: Callable[[], object] | None = None,
) -> OffloadedIterator[T]:
    r"""Iterate a blocking iterable with ``async for``, producing items on ``executor``.

    ``iter()`` and every ``next()`` run on one thread of the executor, at most
    ``prefetch`` items ahead of the consumer; items reach the loop in bursts.
    An exception from the source is raised by ``__anext__`` after the items
    made before it. Leaving early (``break``, ``aclose()``, ``async with``)
    closes the source if it has a ``close()`` method (a generator runs its
    ``finally``) and frees the thread.

    ``interrupt``, if given, is called when the iterator is closed early while
    the producer is inside the source (blocked in ``next()``, say), on a thread
    of its own, so that the blocked call returns: ``connection.interrupt``, or
    an Event's ``set``. Its errors are logged on the ``offload`` logger.

    From ``@gen.coroutine`` code, where ``async for`` is not allowed, yield
    ``anext(it, None)`` (or another sentinel) until it returns the sentinel.

    Examples:
        >>> import asyncio, io, offload
        >>> async def main():
        ...     lines = offload.aiterate(io.StringIO("a\nb\n"), executor="io")
        ...     return [line.strip() async for line in lines]
        >>> asyncio.run(main())
        ['a', 'b']

        A source that blocks until told to stop, stopped by ``aclose()``:

        >>> import threading
        >>> def ticks(stop):
        ...     yield "tick"
        ...     stop.wait()  # blocks, as a read from a quiet socket would
        >>> async def main():
        ...     stop = threading.Event()
        ...     it = offload.aiterate(ticks(stop), executor="io", interrupt=stop.set)
        ...     first = await anext(it)
        ...     await it.aclose()  # interrupts the wait: the generator ends
        ...     return first, stop.is_set()
        >>> asyncio.run(main())
        ('tick', True)
    """
    check_interrupt(interrupt)
    return OffloadedIterator(
        functools.partial(_same, iterable), executor, prefetch, interrupt=interrupt
    )


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
