"""Bringing outcomes back to the loop: one wake-up per burst of completions.

A worker thread never touches an asyncio Future's callbacks: it appends the
outcome to the loop's ``Delivery`` queue, and only the first completion of a
burst pays for ``call_soon_threadsafe`` (a self-pipe write). The loop then
resolves up to ``MAX_PER_WAKEUP`` futures in one callback and yields before the
next batch, so a flood of completions cannot starve other callbacks.

Why no wake-up is lost, without relying on the GIL: a worker appends, then
reads ``scheduled``; the loop clears ``scheduled``, then drains. If the worker
reads ``True``, its append came before the loop's clear, so the drain that
follows sees the item; if it reads ``False``, it schedules a drain itself. The
worst case is two drains for one burst, and the second finds nothing.

The drain settles each Future and counts its fate for the name's statistics:
this is where the fate of a call that ran is counted (see ``_call.py``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import weakref
from typing import Any

from ._stats import CANCELLED as CANCELLED_COUNT
from ._stats import COMPLETED, FAILED, Stats
from ._watch import gave_up, over, watched

#: Futures resolved per loop callback before yielding to the rest of the loop.
MAX_PER_WAKEUP = 256

#: The outcome that cancels the Future: the executor dropped the call unrun.
CANCELLED = object()

Outcome = tuple["asyncio.Future[Any]", Any, Any, "Stats | None"]


class Delivery:
    """The completions bound for one event loop."""

    __slots__ = ("__weakref__", "loop_ref", "pending", "rows", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref = weakref.ref(loop)
        # (future, result, exception, stats): the stats, if any, count the fate.
        self.pending: collections.deque[Outcome] = collections.deque()
        self.scheduled = False
        # Per name, the row this loop's thread counts in (submissions, and the
        # fates drain settles): cheaper than a thread-local row on the hot path.
        self.rows: dict[Stats, list[int]] = {}

    def row(self, stats: Stats) -> list[int]:
        """The row this loop counts ``stats`` in; only this loop's thread writes it."""
        row = self.rows.get(stats)
        if row is None:
            row = self.rows[stats] = stats.row_for(self)
        return row

    def push(
        self, future: asyncio.Future[Any], result: Any, exc: Any, stats: Stats | None = None
    ) -> None:
        """Queue an outcome for the loop; called from any thread."""
        self.pending.append((future, result, exc, stats))
        if not self.scheduled:
            self.wake()

    def wake(self) -> None:
        """Schedule a drain on the loop, or settle the queue here if the loop is closed."""
        self.scheduled = True
        loop = self.loop_ref()
        if loop is not None:
            try:
                loop.call_soon_threadsafe(_Wakeup(self))
            except RuntimeError:  # the loop is closed
                pass
            else:
                return
        self.discard()

    def discard(self) -> None:
        """The loop is closed or gone: nobody can await these futures; count and drop them."""
        self.scheduled = False  # cleared first, as in drain: a later push wakes again
        while True:
            try:  # another worker may be emptying the queue too
                future, _, exc, stats = self.pending.popleft()
            except IndexError:
                return
            fate = _fate(future, exc)
            if stats is not None and fate is not None:
                stats.add(fate)
            if watched and type(exc) is not GaveUp:  # nobody can await it: let go
                over(future)

    def drain(self) -> None:  # noqa: C901, PLR0912 - one flat loop, run once per burst
        """On the loop: settle up to ``MAX_PER_WAKEUP`` futures, then yield."""
        self.scheduled = False
        pending = self.pending
        for _ in range(MAX_PER_WAKEUP):
            try:
                future, result, exc, stats = pending.popleft()
            except IndexError:
                return
            if future.done():
                # Given up while it ran: the late outcome is dropped. A
                # cancelled call is counted here; a timed-out one by its timer.
                if stats is not None and future.cancelled() and type(exc) is not GaveUp:
                    stats.add(CANCELLED_COUNT)
                if watched and type(exc) is not GaveUp:
                    over(future)
                continue
            if type(exc) is GaveUp:
                exc = exc.error
                gave_up(future)
            if exc is None:
                future.set_result(result)
                if stats is not None:  # once per call: this loop's own row
                    (self.rows.get(stats) or self.row(stats))[COMPLETED] += 1
            elif exc is CANCELLED:  # the executor dropped it unrun: its end
                future.cancel()
                if stats is not None:
                    stats.add(CANCELLED_COUNT)
                if watched:
                    over(future)
            else:
                future.set_exception(exc)
                if stats is not None:
                    stats.add(FAILED)
        if pending and not self.scheduled:
            self.scheduled = True
            loop = self.loop_ref()
            if loop is not None:
                loop.call_soon(_Wakeup(self))


def _fate(future: asyncio.Future[Any], exc: Any) -> int | None:
    """The counter for an outcome the loop will never settle, as ``drain`` would count it."""
    if future.done():  # a timeout was counted by its timer; only a cancel is left to count
        return CANCELLED_COUNT if future.cancelled() and type(exc) is not GaveUp else None
    if exc is None:
        return COMPLETED
    return CANCELLED_COUNT if exc is CANCELLED else FAILED


class GaveUp:
    """An outcome that fails a call still running, which is not the call's own end.

    A shutdown that gives up fails the Future of a call whose thread runs on;
    if the caller had cancelled it already, the call's own end counts that.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Wakeup:
    """A scheduled drain. If the loop drops it unrun (it was closed), the queue is settled."""

    __slots__ = ("delivery", "ran")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery: Delivery | None = delivery
        self.ran = False

    def __call__(self) -> None:
        delivery, self.delivery = self.delivery, None
        if delivery is not None:
            delivery.drain()

    def __del__(self) -> None:
        # A loop stopped with a drain due and then closed throws the drain
        # away: without this, the flag would stay set, no later completion
        # would wake the loop, and the queue would keep the loop alive.
        delivery = self.delivery
        if delivery is not None:
            loop = delivery.loop_ref()
            if loop is None or loop.is_closed():
                delivery.discard()
            else:
                delivery.scheduled = False


_deliveries: dict[int, Delivery] = {}


def delivery_for(loop: asyncio.AbstractEventLoop) -> Delivery:
    """The loop's Delivery, made on first use and dropped with the loop."""
    delivery = _deliveries.get(id(loop))
    if delivery is None:
        delivery = _deliveries[id(loop)] = Delivery(loop)
        # Dropped as the loop is collected, before its id can be reused.
        weakref.finalize(loop, _deliveries.pop, id(loop), None)
    return delivery


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_deliveries.clear)


def settable(exc: BaseException) -> BaseException:
    """``exc``, or what to set instead where asyncio refuses it on a Future."""
    # asyncio refuses StopIteration on a Future (it would end a coroutine).
    if isinstance(exc, StopIteration):
        err = RuntimeError(f"the offloaded call raised {type(exc).__name__}")
        err.__cause__ = exc
        return err
    return exc
