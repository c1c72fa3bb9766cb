"""What a name knows about its calls: counts, timings, and its bound on pending calls.

Every call made through a registered name carries the name's ``Monitor``. The
monitor counts each call's fate exactly once, keeps a window of recent queue
waits and run times, warns when calls wait too long for a worker, and, when the
name has a ``max_pending`` bound, admits calls to the executor one slot at a
time.

Counters are ``itertools.count`` objects: ``next()`` on one is a single C call,
so worker threads and loop threads can bump the same counter without a lock
and without losing an update. Only a bounded name takes a lock, to admit calls.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ._delivery import _CANCELLED, MONITOR, Call, _settable
from ._errors import OverloadedError
from ._pool import ThreadPool

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger("offload")

#: How many recent calls the wait and run-time percentiles are taken over.
WINDOW = 1024

#: Calls of an unbounded name are timed one in this many (every call of a
#: bounded name is timed): percentiles need only a sample, and reading the
#: clock is most of what statistics cost. A power of two.
SAMPLE_EVERY = 8

#: A name logs its slow-queue warning at most once in this many seconds.
WARN_EVERY = 10.0

#: What ``when_full`` may be.
WhenFull = Literal["wait", "fail"]

_now = time.perf_counter


class Timings(TypedDict):
    """Percentiles, in seconds, over a sample of a name's recent calls.

    The sample holds up to 1,024 calls: every call of a name with
    ``max_pending``, else one call in 8.

    Example:
        >>> import offload
        >>> io = offload.Registry().stats()["io"]
        >>> io["wait"]
        {'samples': 0, 'p50': None, 'p90': None, 'p99': None, 'max': None}
    """

    #: How many calls the figures are taken over.
    samples: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


class ExecutorStats(TypedDict):
    """One name's statistics, as [`stats`][offload.stats] returns them: plain data.

    Counters run from the registry's creation: ``submitted`` calls were
    accepted, and each ends as exactly one of ``completed`` (it returned),
    ``failed`` (it raised, or could not run), ``cancelled`` (its caller
    cancelled it) or ``timed_out``. ``rejected`` calls were refused by a full
    ``max_pending`` bound and never counted as submitted. ``waiting``,
    ``queued`` and ``running`` say where the calls are now: waiting for a
    ``max_pending`` slot, in the executor's queue, or running. A thread whose
    caller gave up still counts as running until it returns.

    Example:
        >>> import offload
        >>> stats = offload.Registry().stats()["default"]
        >>> stats["submitted"], stats["running"], stats["max_pending"]
        (0, 0, None)
    """

    name: str
    #: The executor's repr, or None before its first call.
    executor: str | None
    #: How many workers the executor has, where it says.
    workers: int | None
    max_pending: int | None
    when_full: WhenFull
    submitted: int
    rejected: int
    waiting: int
    queued: int
    running: int
    completed: int
    failed: int
    cancelled: int
    timed_out: int
    #: Time from the call to the start of its run. Calls that run in other
    #: processes or on a cluster are not timed here: offload cannot see them start.
    wait: Timings
    #: Time the call ran; for other processes and clusters, the whole round trip.
    run: Timings


def check_bounds(max_pending: object, when_full: object, warn_after: object) -> None:
    """A clear error for a bad ``register`` option, before anything is registered."""
    if max_pending is not None and (
        isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
    ):
        raise ValueError(f"max_pending must be a positive int or None, got {max_pending!r}")
    if when_full not in ("wait", "fail"):
        raise ValueError(f"when_full must be 'wait' or 'fail', got {when_full!r}")
    if warn_after is not None and (
        isinstance(warn_after, bool) or not isinstance(warn_after, (int, float)) or warn_after <= 0
    ):
        raise ValueError(
            f"warn_after must be a positive number of seconds or None, got {warn_after!r}"
        )


def _value(counter: itertools.count[int]) -> int:
    # count's repr is its next value: "count(7)". Reading it takes no lock.
    return int(repr(counter)[6:-1])


def _timings(window: collections.deque[float]) -> Timings:
    while True:
        try:
            samples: Sequence[float] = sorted(window)
            break
        except RuntimeError:  # a worker appended while we copied: take it again
            continue
    n = len(samples)
    if not n:
        return Timings(samples=0, p50=None, p90=None, p99=None, max=None)

    def rank(p: float) -> float:
        return samples[min(n - 1, int(p * n))]

    return Timings(samples=n, p50=rank(0.5), p90=rank(0.9), p99=rank(0.99), max=samples[-1])


def _workers(executor: Executor | None) -> int | None:
    for attribute in ("max_workers", "_max_workers"):
        size = getattr(executor, attribute, None)
        if isinstance(size, int):
            return size
    return None


#: How a call that runs elsewhere is sent: ``start(loop, executor, call)`` -> its Future.
Start = Callable[[asyncio.AbstractEventLoop, Executor, Call], "asyncio.Future[Any]"]

#: A call waiting for a slot: the executor it goes to and how to hand it over.
Waiter = tuple[Executor, Call, Callable[[Executor, Call], None]]


class Monitor:
    """The counters, timings and bound of one registered name."""

    __slots__ = (
        "cancelled",
        "completed",
        "dropped",
        "ended",
        "executor",
        "failed",
        "last_warning",
        "limit",
        "lock",
        "name",
        "pending",
        "pooled",
        "rejected",
        "runs",
        "started",
        "submitted",
        "timed_out",
        "waiters",
        "waits",
        "warn_after",
        "when_full",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.executor: Executor | None = None
        self.limit: int | None = None
        self.when_full: WhenFull = "wait"
        self.warn_after = float("inf")
        # Counters: see ExecutorStats. ``dropped`` calls left before they started.
        self.submitted = itertools.count()
        self.rejected = itertools.count()
        # Calls that ran on a foreign thread pool or elsewhere count ``started``
        # and ``ended``; calls on offload's own pool count ``pooled`` as they
        # start, and the pool says which are running.
        self.started = itertools.count()
        self.ended = itertools.count()
        self.pooled = itertools.count()
        self.dropped = itertools.count()
        self.completed = itertools.count()
        self.failed = itertools.count()
        self.cancelled = itertools.count()
        self.timed_out = itertools.count()
        self.waits: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.runs: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.last_warning = -WARN_EVERY
        # The bound: ``pending`` calls hold a slot (queued or running in the
        # executor); ``waiters`` wait for one, first come first served.
        self.lock = threading.Lock()
        self.pending = 0
        self.waiters: collections.deque[Waiter] = collections.deque()

    def configure(
        self, max_pending: int | None, when_full: WhenFull, warn_after: float | None
    ) -> None:
        """Apply a registration's options (checked by ``check_bounds``)."""
        with self.lock:
            self.limit = max_pending
            self.when_full = when_full
            self.warn_after = float("inf") if warn_after is None else float(warn_after)
        self.release(0)  # a raised bound lets waiting calls in now

    # -- admission -------------------------------------------------------------

    def admit(
        self, executor: Executor, call: Call, submit: Callable[[Executor, Call], None]
    ) -> bool:
        """Take a slot for ``call``; else queue it (wait) or refuse it (fail).

        True if the caller should hand the call over now.
        """
        with self.lock:
            limit = self.limit
            if limit is None or self.pending < limit:
                self.pending += 1
                admitted: bool | None = True
            elif self.when_full == "fail":
                admitted = None
            else:
                self.waiters.append((executor, call, submit))
                admitted = False
        if admitted is None:
            next(self.rejected)
            raise OverloadedError(self.name, limit)  # type: ignore[arg-type]
        next(self.submitted)
        return admitted

    def release(self, slots: int = 1) -> None:
        """Give back ``slots``; hand freed slots to waiting calls, oldest first."""
        while True:
            with self.lock:
                self.pending -= slots
                slots = 0
                waiter = None
                limit = self.limit
                while self.waiters and (limit is None or self.pending < limit):
                    waiter = self.waiters.popleft()
                    if waiter[1][2].done():  # cancelled or timed out while waiting
                        self._left_unrun(waiter[1])
                        waiter = None
                        continue
                    self.pending += 1
                    break
            if waiter is None:
                return
            executor, call, submit = waiter
            try:
                submit(executor, call)
            except Exception as exc:
                call[3].push(call[2], None, _settable(exc), self)
                next(self.dropped)
                slots = 1

    def _left_unrun(self, call: Call) -> None:
        next(self.dropped)
        if call[2].cancelled():
            next(self.cancelled)
        # else it timed out, which the timer counted

    def fail_waiting(self, error: Callable[[], BaseException]) -> None:
        """Fail every call still waiting for a slot (the name was shut down)."""
        with self.lock:
            waiters = list(self.waiters)
            self.waiters.clear()
        for _, call, _ in waiters:
            next(self.dropped)
            call[3].push(call[2], None, error(), self)

    # -- the worker's side -----------------------------------------------------

    def slow(self, wait: float) -> None:
        """Warn, at most once per ``WARN_EVERY`` seconds, that calls wait for a worker."""
        now = time.monotonic()
        if now - self.last_warning < WARN_EVERY:
            return
        self.last_warning = now
        executor = self.executor
        logger.warning(
            "offload: a call to %r waited %.3fs for a worker (warn_after=%ss); its executor "
            "%r has %s workers; raise its size or bound the load with max_pending",
            self.name,
            wait,
            self.warn_after,
            executor,
            _workers(executor) or "an unknown number of",
        )

    # -- calls that run elsewhere ----------------------------------------------

    def elsewhere(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        call: Call,
        start: Start,
    ) -> asyncio.Future[Any]:
        """Send a call to an executor that may run it in another process, counting it."""
        holds = self.limit is not None  # unbounded: no slot to take, no lock
        if not holds:
            next(self.submitted)
        elif not self.admit(executor, call, functools.partial(self._start_later, start)):
            future: asyncio.Future[Any] = call[2]
            return future  # it waits for a slot; its Future is the caller's
        try:
            return self._start(loop, executor, call, start, holds=holds)
        except BaseException:
            self.refused(holds=holds)
            raise

    def left_unstarted(self, *, holds: bool) -> None:
        """An admitted call left the executor without running; its outcome is counted apart."""
        next(self.dropped)
        if holds:
            self.release()

    def after_fork(self) -> None:
        """In a child after ``fork``: the parent's waiting calls and slots are not ours."""
        self.lock = threading.Lock()
        self.waiters.clear()
        self.pending = 0

    def refused(self, *, holds: bool) -> None:
        """The executor refused an admitted call (it raised): the call ends as failed."""
        next(self.failed)
        self.left_unstarted(holds=holds)

    def _start_later(
        self,
        start: Start,
        executor: Executor,
        call: Call,
    ) -> None:
        loop = call[3]._loop_ref()
        if loop is None:
            raise RuntimeError("the caller's event loop is gone")
        loop.call_soon_threadsafe(self._start_waited, loop, executor, call, start)

    def _start_waited(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        call: Call,
        start: Start,
    ) -> None:
        outer: asyncio.Future[Any] = call[2]
        if outer.done():  # given up while the hand-over was on its way
            self._left_unrun(call)
            self.release()
            return
        try:
            inner = self._start(loop, executor, call, start, holds=True)
        except Exception as exc:
            outer.set_exception(_settable(exc))
            self.refused(holds=True)
            return
        if inner is outer:
            return
        inner.add_done_callback(lambda done: _copy_outcome(done, outer))
        outer.add_done_callback(lambda done: inner.cancel() if done.cancelled() else None)

    def _start(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        call: Call,
        start: Start,
        *,
        holds: bool,
    ) -> asyncio.Future[Any]:
        began = _now()
        future = start(loop, executor, call)
        next(self.started)
        future.add_done_callback(lambda done: self._settled(done, began, holds=holds))
        return future

    def _settled(self, future: asyncio.Future[Any], began: float, *, holds: bool) -> None:
        self.runs.append(_now() - began)
        next(self.ended)
        if future.cancelled():
            next(self.cancelled)
        else:
            exc = future.exception()
            if exc is None:
                next(self.completed)
            elif not getattr(exc, "_offload_expired", False):
                next(self.failed)
            # else the timer counted it as timed out
        if holds:
            self.release()

    # -- reading ---------------------------------------------------------------

    def snapshot(self) -> ExecutorStats:
        """The counters and percentiles now, as plain data."""
        waiting = len(self.waiters)
        submitted = _value(self.submitted)
        started = _value(self.started)
        pooled = _value(self.pooled)
        dropped = _value(self.dropped)
        executor = self.executor
        return ExecutorStats(
            name=self.name,
            executor=None if executor is None else repr(executor),
            workers=_workers(executor),
            max_pending=self.limit,
            when_full=self.when_full,
            submitted=submitted,
            rejected=_value(self.rejected),
            waiting=waiting,
            queued=max(0, submitted - waiting - started - pooled - dropped),
            running=max(0, started - _value(self.ended)) + _running_on(executor, self),
            completed=_value(self.completed),
            failed=_value(self.failed),
            cancelled=_value(self.cancelled),
            timed_out=_value(self.timed_out),
            wait=_timings(self.waits),
            run=_timings(self.runs),
        )


def _running_on(executor: Executor | None, monitor: Monitor) -> int:
    """How many of ``monitor``'s calls the workers of offload's pool are running."""
    if not isinstance(executor, ThreadPool):
        return 0
    return sum(
        1
        for job in list(executor._current)
        if job is not None and job[0] is run_pooled and job[MONITOR] is monitor
    )


def _copy_outcome(inner: asyncio.Future[Any], outer: asyncio.Future[Any]) -> None:
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
        return
    exc = inner.exception()
    if exc is None:
        outer.set_result(inner.result())
    else:
        outer.set_exception(exc)


def run_monitored(call: Call) -> None:  # noqa: C901, PLR0912 - one flat path, run once per call
    """``run_call`` for a call through a registered name: counted, and sometimes timed.

    The call tuple carries three more items: the monitor, when the call was
    made (0.0 if this call is not timed), and whether it holds one of the
    name's ``max_pending`` slots.
    """
    _, _, future, delivery, context, fn, args, kwargs, monitor, queued_at, holds = call
    if future.cancelled():
        next(monitor.dropped)
        next(monitor.cancelled)
        if holds:
            monitor.release()
        return
    next(monitor.started)
    if queued_at:
        started = _now()
        wait = started - queued_at
        monitor.waits.append(wait)
        if wait > monitor.warn_after:
            monitor.slow(wait)
    try:
        result = context.run(fn, *args, **kwargs)
    except BaseException as exc:
        if queued_at:
            monitor.runs.append(_now() - started)
        next(monitor.ended)
        if holds:
            monitor.release()
        if not future.done():
            delivery.push(future, None, _settable(exc), monitor)
        elif future.cancelled():
            next(monitor.cancelled)
        # See run_call: break the frame <-> exception cycle.
        del call, future
    else:
        if queued_at:
            monitor.runs.append(_now() - started)
        next(monitor.ended)
        if holds:
            monitor.release()
        if future.done():
            # Given up while it ran. Count a cancel now, not when the loop
            # drains the dropped outcome: the loop may be closed by then.
            if future.cancelled():
                next(monitor.cancelled)
            return
        delivery._pending.append((future, result, None, monitor))
        if not delivery._scheduled:
            delivery._wake()


def run_pooled(call: Call) -> None:  # noqa: C901, PLR0912 - one flat path, run once per call
    """``run_monitored`` for offload's own pool, which needs less bookkeeping.

    The pool records each worker's running call, so the monitor counts only
    starts here and reads ``running`` off the pool: one counter bump fewer per
    call than on a foreign pool.
    """
    _, _, future, delivery, context, fn, args, kwargs, monitor, queued_at, holds = call
    if future.cancelled():
        next(monitor.dropped)
        next(monitor.cancelled)
        if holds:
            monitor.release()
        return
    next(monitor.pooled)
    if queued_at:
        started = _now()
        wait = started - queued_at
        monitor.waits.append(wait)
        if wait > monitor.warn_after:
            monitor.slow(wait)
    try:
        result = context.run(fn, *args, **kwargs)
    except BaseException as exc:
        if queued_at:
            monitor.runs.append(_now() - started)
        if holds:
            monitor.release()
        if not future.done():
            delivery.push(future, None, _settable(exc), monitor)
        elif future.cancelled():
            next(monitor.cancelled)
        # See run_call: break the frame <-> exception cycle.
        del call, future
    else:
        if queued_at:
            monitor.runs.append(_now() - started)
        if holds:
            monitor.release()
        if future.done():
            # Given up while it ran. Count a cancel now, not when the loop
            # drains the dropped outcome: the loop may have closed meanwhile,
            # with a drain it never ran still due.
            if future.cancelled():
                next(monitor.cancelled)
            return
        delivery._pending.append((future, result, None, monitor))
        if not delivery._scheduled:
            delivery._wake()


def abandon_monitored(call: Call) -> None:
    """The executor dropped a counted call without running it: cancel its Future."""
    monitor: Monitor = call[8]
    monitor.left_unstarted(holds=call[10])
    call[3].push(call[2], None, _CANCELLED, monitor)
