"""Bringing outcomes back to the loop: one wake-up per burst of completions.

A worker thread never touches an asyncio Future's callbacks: it appends the
outcome to the loop's ``Delivery`` queue, and only the first completion of a
burst pays for ``call_soon_threadsafe`` (a self-pipe write). The loop then
resolves up to ``MAX_PER_WAKEUP`` futures in one callback and yields before the
next batch, so a flood of completions cannot starve other callbacks.
"""

from __future__ import annotations

import asyncio
import collections
import os
import weakref
from typing import Any

#: Futures resolved per loop callback before yielding to the rest of the loop.
MAX_PER_WAKEUP = 256

_CANCELLED = object()


class Delivery:
    """The completions bound for one event loop."""

    __slots__ = ("__weakref__", "_loop_ref", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_ref = weakref.ref(loop)
        # (future, result, exception, monitor): the monitor, if any, counts the outcome.
        self._pending: collections.deque[tuple[asyncio.Future[Any], Any, Any, Any]] = (
            collections.deque()
        )
        self._scheduled = False

    def push(self, future: asyncio.Future[Any], result: Any, exc: Any, monitor: Any = None) -> None:
        """Queue an outcome for the loop; called from any thread."""
        # Append first, then read the flag: the loop clears the flag before it
        # drains, so either it sees this item or we see the flag cleared.
        self._pending.append((future, result, exc, monitor))
        if not self._scheduled:
            self._wake()

    def _wake(self) -> None:
        self._scheduled = True
        loop = self._loop_ref()
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self._drain)
                return
        except RuntimeError:  # the loop is closed
            pass
        # The loop is closed or gone: nobody can await these futures. Drop
        # them, and every later one as it comes (the flag is cleared first, as
        # in _drain); a call given up by cancelling it is still counted.
        self._scheduled = False
        while True:
            try:  # another worker may be emptying the queue too
                future, _, _, monitor = self._pending.popleft()
            except IndexError:
                return
            if monitor is not None and future.cancelled():
                next(monitor.cancelled)

    def _drain(self) -> None:  # noqa: C901 - one flat loop: it runs once per burst
        self._scheduled = False
        pending = self._pending
        for _ in range(MAX_PER_WAKEUP):
            try:
                future, result, exc, monitor = pending.popleft()
            except IndexError:
                return
            if future.done():
                # Given up while it ran: the late outcome is dropped. A
                # cancelled call is counted here; a timed-out one by its timer.
                if monitor is not None and future.cancelled():
                    next(monitor.cancelled)
                continue
            if exc is None:
                future.set_result(result)
                if monitor is not None:
                    next(monitor.completed)
            elif exc is _CANCELLED:
                future.cancel()
                if monitor is not None:
                    next(monitor.cancelled)
            else:
                future.set_exception(exc)
                if monitor is not None:
                    next(monitor.failed)
        if pending and not self._scheduled:
            self._scheduled = True
            loop = self._loop_ref()
            if loop is not None:
                loop.call_soon(self._drain)


_deliveries: dict[int, Delivery] = {}


def delivery_for(loop: asyncio.AbstractEventLoop) -> Delivery:
    """The loop's Delivery, made on first use and dropped with the loop."""
    delivery = _deliveries.get(id(loop))
    if delivery is None:
        delivery = _deliveries[id(loop)] = Delivery(loop)
        # Dropped as the loop is collected, before its id can be reused.
        weakref.finalize(loop, _deliveries.pop, id(loop), None)
    return delivery


os.register_at_fork(after_in_child=_deliveries.clear)


def _settable(exc: BaseException) -> BaseException:
    # asyncio refuses StopIteration on a Future (it would end a coroutine).
    if isinstance(exc, StopIteration):
        err = RuntimeError(f"the offloaded call raised {type(exc).__name__}")
        err.__cause__ = exc
        return err
    return exc


#: One offloaded call, as executors carry it: a plain tuple, because a call
#: is built on every invocation and tuples are the cheapest thing to build.
#: ``call[RUN](call)`` runs it; ``call[ABANDON](call)`` reports that it never
#: will. Then come the Future, its loop's Delivery, the caller's contextvars,
#: the blocking function, its args and kwargs; a call through a registered
#: name adds its monitor, when it was made, and whether it holds a slot.
Call = tuple[Any, ...]
RUN, ABANDON, MONITOR, HOLDS = 0, 1, 8, 10


def run_call(call: Call) -> None:
    """Run an offloaded call on a worker thread and push its outcome to the loop.

    A call whose Future was cancelled before it started never runs.
    """
    _, _, future, delivery, context, fn, args, kwargs = call
    if future.cancelled():
        return
    try:
        result = context.run(fn, *args, **kwargs)
    except BaseException as exc:
        delivery.push(future, None, _settable(exc))
        # The traceback keeps this frame alive; drop the locals that would
        # otherwise tie the Future, its exception and this frame in a cycle.
        del call, future
    else:  # Delivery.push, inlined: this runs once per call
        delivery._pending.append((future, result, None, None))
        if not delivery._scheduled:
            delivery._wake()


def fail_call(call: Call, error: BaseException, *, started: bool) -> None:
    """Fail an offloaded call's Future with ``error``: its pool gave up on it.

    A call that ``started`` may still finish; its late outcome is dropped.
    """
    monitor = call[MONITOR] if len(call) > MONITOR else None
    if monitor is not None and not started:
        monitor.left_unstarted(holds=call[HOLDS])
    call[3].push(call[2], None, error, monitor)


def abandon_call(call: Call) -> None:
    """The executor dropped the call without running it: cancel its Future."""
    call[3].push(call[2], None, _CANCELLED)


class Held:
    """A call handed to a foreign executor, which gives it up once it has run.

    The pool keeps its job's arguments for as long as a traceback keeps the
    worker's frames (frames link to their callers), so ``run_held`` takes the
    call out before running it: nothing the pool keeps refers to the call, its
    Future or its exception, and no reference cycle forms. A pool that drops
    the job without running it, as ``shutdown(cancel_futures=True)`` does,
    drops the last reference to this holder with the call still inside, and
    the Future is cancelled; that costs nothing per call, unlike a
    done-callback on the pool's Future.
    """

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call: Call | None = call

    def __del__(self) -> None:
        if self.call is not None:
            abandon_call(self.call)

    def take(self) -> Call | None:
        """The call, which the holder gives up."""
        call, self.call = self.call, None
        return call


def run_held(held: Held) -> None:
    """Run the call in ``held`` on a foreign executor's worker."""
    # No local names the call: this frame outlives the run in any traceback.
    if held.call is not None:
        held.call[RUN](held.take())
