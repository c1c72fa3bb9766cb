"""Bringing outcomes back to the loop: one wake-up per burst of completions.

A worker thread never touches an asyncio Future's callbacks: it appends the
outcome to the loop's :class:`Delivery` queue, and only the first completion of a
burst pays for ``call_soon_threadsafe`` (a self-pipe write). The loop then
resolves up to ``MAX_PER_WAKEUP`` futures in one callback and yields before the
next batch, so a flood of completions cannot starve other callbacks.
"""

from __future__ import annotations

import asyncio
import collections
import os
import weakref
from collections.abc import Callable
from concurrent.futures import Future as ConcurrentFuture
from contextvars import Context
from typing import Any

#: Futures resolved per loop callback before yielding to the rest of the loop.
MAX_PER_WAKEUP = 256

_CANCELLED = object()


class Delivery:
    """The completions bound for one event loop."""

    __slots__ = ("__weakref__", "_loop_ref", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_ref = weakref.ref(loop)
        self._pending: collections.deque[tuple[asyncio.Future[Any], Any, Any]] = collections.deque()
        self._scheduled = False

    def push(self, future: asyncio.Future[Any], result: Any, exc: Any) -> None:
        """Queue an outcome for the loop; called from any thread."""
        # Append first, then read the flag: the loop clears the flag before it
        # drains, so either it sees this item or we see the flag cleared.
        self._pending.append((future, result, exc))
        if self._scheduled:
            return
        self._scheduled = True
        loop = self._loop_ref()
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self._drain)
                return
        except RuntimeError:  # the loop is closed
            pass
        # The loop is closed or gone: nobody can await these futures.
        self._pending.clear()

    def _drain(self) -> None:
        self._scheduled = False
        pending = self._pending
        for _ in range(MAX_PER_WAKEUP):
            try:
                future, result, exc = pending.popleft()
            except IndexError:
                return
            if future.done():
                continue  # cancelled while it ran: the late outcome is dropped
            if exc is None:
                future.set_result(result)
            elif exc is _CANCELLED:
                future.cancel()
            else:
                future.set_exception(exc)
        if pending and not self._scheduled:
            self._scheduled = True
            loop = self._loop_ref()
            if loop is not None:
                loop.call_soon(self._drain)


_deliveries: dict[int, Delivery] = {}


def delivery_for(loop: asyncio.AbstractEventLoop) -> Delivery:
    """The loop's Delivery, made on first use and dropped with the loop."""
    delivery = _deliveries.get(id(loop))
    if delivery is None or delivery._loop_ref() is not loop:
        delivery = _deliveries[id(loop)] = Delivery(loop)
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


class Call:
    """One offloaded call: run ``fn`` in ``context`` and deliver the outcome.

    Instances are what executors run. Calling one on a worker thread runs the
    function unless its Future was already cancelled (so a call cancelled before
    it starts never runs), then pushes the outcome to the loop.
    """

    __slots__ = ("args", "context", "delivery", "fn", "future", "kwargs")

    def __init__(  # noqa: PLR0917  # one positional slot per field, built once per call
        self,
        future: asyncio.Future[Any],
        delivery: Delivery,
        context: Context,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.future = future
        self.delivery = delivery
        self.context = context
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> None:
        future = self.future
        if future.cancelled():
            return
        try:
            result = self.context.run(self.fn, *self.args, **self.kwargs)
        except BaseException as exc:
            self.delivery.push(future, None, _settable(exc))
            # The traceback keeps this frame alive; drop the locals that would
            # otherwise tie the Future, its exception and this frame in a cycle.
            del self, future
        else:
            self.delivery.push(future, result, None)

    def pool_done(self, pool_future: ConcurrentFuture[Any]) -> None:
        """Done-callback for foreign executors: relay a cancel made by the pool."""
        if pool_future.cancelled():
            self.delivery.push(self.future, None, _CANCELLED)

    def abandon(self) -> None:
        """The executor dropped this call before it ran (shutdown with cancel)."""
        self.delivery.push(self.future, None, _CANCELLED)
