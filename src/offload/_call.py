"""One offloaded call: its record, the one function that runs it on a thread, and how it ends.

A call is a plain tuple with named indices: one is built on every invocation,
and a tuple is the cheapest record Python builds (a slotted object with an
``__init__`` costs about 0.3 µs more per call). ``call[RUN](call)`` runs it
and ``call[ABANDON](call)`` reports that it never will, so that offload's own
thread pool can hold other jobs in the same queue.

Every call that reaches an executor ends exactly once, through one of:

- ``finish``: its work is over (it returned or raised, or its worker process
  was stopped); the outcome is delivered;
- ``never_ran``: it was given up before it started (its Future is done), or
  its executor dropped it unrun; ``fail_unstarted`` is the same with an error.

Each counts the step for the name's statistics, gives back the call's
``max_pending`` slot if it holds one (once, since a call ends once), and hands
the outcome to the loop. The fate itself (completed, failed, cancelled) is
counted where the Future is settled: in ``Delivery.drain``, or here when the
caller gave up before the outcome arrived.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from ._delivery import CANCELLED, settable
from ._stats import CANCELLED as CANCELLED_COUNT
from ._stats import DROPPED, ENDED, FAILED, STARTED, Stats, now
from ._watch import over, watched

if TYPE_CHECKING:
    from ._route import Route

Call = tuple[Any, ...]
#: The fields of a call record: how to run it and to report it unrun; the
#: caller's Future and its loop's Delivery; the caller's contextvars; what to
#: call; the Route it was sent on; when it was made (0.0 if it is not timed);
#: and whether it holds a ``max_pending`` slot.
RUN, ABANDON, FUTURE, DELIVERY, CONTEXT, FN, ARGS, KWARGS, ROUTE, QUEUED_AT, HOLDS = range(11)


class _Running(threading.local):
    #: The call this thread is running, ``REMOTE`` in a worker process, else None.
    call: Any = None


_running = _Running()

#: What ``_running.call`` holds while a worker process runs a call: such a
#: call is never cancelled cooperatively (offload stops its process instead).
REMOTE = object()


def run(call: Call) -> None:  # noqa: C901 - the hot path, flat on purpose
    """Run an offloaded call on a worker thread: the one place a thread runs one.

    A call whose Future is done before it starts (cancelled, timed out, failed
    by a shutdown) never runs. After it ran, this is ``began`` + ``finish`` +
    ``deliver`` written out in one frame: three Python calls fewer per call,
    on the path every call to offload's own pool takes.
    """
    future = call[FUTURE]
    # A watcher (cancel="wait") is looked up before the Future is read: it
    # forgets its watch only once the Future is done, so one of the two tells.
    watch = watched.get(future) if watched else None
    if future.done() or (watch is not None and not watch.begin()):
        never_ran(call)
        return
    route = call[ROUTE]
    stats = route.stats
    started = 0.0
    if stats is not None:
        try:
            row: list[int] = stats.local.row
        except AttributeError:
            row = stats.new_row()
        row[STARTED] += 1
        queued_at = call[QUEUED_AT]
        if queued_at:
            started = now()
            stats.waited(started - queued_at, route.executor)
    running = _running
    previous = running.call
    running.call = call
    try:
        result = call[CONTEXT].run(call[FN], *call[ARGS], **call[KWARGS])
    except BaseException as exc:
        running.call = previous
        finish(call, None, settable(exc), started)
        # The traceback keeps this frame alive: drop the locals that would
        # tie the Future, its exception and this frame into a cycle.
        del call, future, previous
        return
    running.call = previous
    if stats is not None:
        if started:
            stats.runs.append(now() - started)
        row[ENDED] += 1
    if call[HOLDS]:
        route.bound.release()
    if future.done():  # given up while it ran: see deliver
        if stats is not None and future.cancelled():
            row[CANCELLED_COUNT] += 1
        if watched:
            over(future)
        return
    delivery = call[DELIVERY]
    delivery.pending.append((future, result, None, stats))
    if not delivery.scheduled:
        delivery.wake()


def began(call: Call, stats: Stats, *, waited: bool = True) -> float:
    """Count a call's start; the time it started if it is timed, else 0.0."""
    try:
        row: list[int] = stats.local.row
    except AttributeError:
        row = stats.new_row()
    row[STARTED] += 1
    queued_at = call[QUEUED_AT]
    if not queued_at:
        return 0.0
    started = now()
    if waited:
        stats.waited(started - queued_at, call[ROUTE].executor)
    return started


def finish(call: Call, result: Any, exc: Any, started: float = 0.0) -> None:
    """The call's work is over: count its end, give back its slot, deliver its outcome."""
    route = call[ROUTE]
    stats = route.stats
    if stats is not None:
        if started:
            stats.runs.append(now() - started)
        try:
            row: list[int] = stats.local.row
        except AttributeError:
            row = stats.new_row()
        row[ENDED] += 1
    if call[HOLDS]:
        route.bound.release()
    deliver(call, result, exc)


def never_ran(call: Call) -> None:
    """The call ends without running: given up before it started, or dropped unrun.

    A Future that is not done yet (the executor dropped the call) is cancelled.
    """
    _left(call)
    deliver(call, None, CANCELLED)


def fail_unstarted(call: Call, error: BaseException) -> None:
    """The call ends without running, its Future failed with ``error``."""
    _left(call)
    deliver(call, None, error)


def refused(call: Call) -> None:
    """The executor refused the call (it raised on send): it ends as failed, unrun."""
    _left(call)
    stats = call[ROUTE].stats
    if stats is not None:
        stats.add(FAILED)


def _left(call: Call) -> None:
    route: Route = call[ROUTE]
    if route.stats is not None:
        route.stats.add(DROPPED)
    if call[HOLDS]:
        route.bound.release()  # type: ignore[union-attr]  # a call holding a slot has a bound


def deliver(call: Call, result: Any, exc: Any) -> None:
    """Hand an outcome to the call's loop, unless its caller gave up already.

    A call given up while it ran is counted here if it was cancelled (its
    timer counted a timeout), not when the loop drains the dropped outcome:
    the loop may be closed by then.
    """
    future: asyncio.Future[Any] = call[FUTURE]
    stats = call[ROUTE].stats
    if future.done():
        if stats is not None and future.cancelled():
            stats.add(CANCELLED_COUNT)
        if watched:
            over(future)
        return
    delivery = call[DELIVERY]
    delivery.pending.append((future, result, exc, stats))
    if not delivery.scheduled:
        delivery.wake()


class Held:
    """A call handed to an executor offload does not own, which gives it up once it has run.

    The pool keeps its job's arguments for as long as a traceback keeps the
    worker's frames (frames link to their callers), so ``run_held`` takes the
    call out before running it: nothing the pool keeps refers to the call, its
    Future or its exception, and no reference cycle forms. A pool that drops
    the job without running it, as ``shutdown(cancel_futures=True)`` does,
    drops the last reference to this holder with the call still inside, and
    the call ends as never run; that costs nothing per call, unlike a
    done-callback on the pool's Future.
    """

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call: Call | None = call

    def __del__(self) -> None:
        call = self.call
        if call is not None:
            self.call = None
            call[ABANDON](call)

    def take(self) -> Call | None:
        """The call, which the holder gives up."""
        call, self.call = self.call, None
        return call


def run_held(held: Held) -> None:
    """Run the call in ``held`` on a foreign executor's worker."""
    # No local names the call: this frame outlives the run in any traceback.
    if held.call is not None:
        run(held.take())  # type: ignore[arg-type]


def cancelled() -> bool:
    """In an offloaded call: whether its caller gave up (cancelled, or timed out).

    A thread cannot be killed, so a long-running call can ask now and then and
    return early. In a worker process it is always false: offload terminates a
    worker whose call is given up, where it manages the pool.

    Raises:
        RuntimeError: called outside an offloaded call, for example on the loop.

    Examples:
        >>> import asyncio, offload
        >>> @offload.offload
        ... def crunch(n):
        ...     done = 0
        ...     while done < n and not offload.cancelled():
        ...         done += 1
        ...     return done
        >>> async def main():
        ...     return await crunch(1000)
        >>> asyncio.run(main())
        1000
    """
    call = _running.call
    if call is None:
        raise RuntimeError(
            "offload.cancelled() asks whether an offloaded call's caller gave up, so it only "
            "works inside a function running through offload (on a thread or in a worker "
            "process); here no offloaded call is running. On the loop, check the Future "
            "itself: future.cancelled()."
        )
    if call is REMOTE:
        return False
    return bool(call[FUTURE].done())  # done before the call returns: given up


def check_cancelled() -> None:
    """In an offloaded call: raise ``asyncio.CancelledError`` if its caller gave up.

    The exception unwinds the call (it is a ``BaseException``, so ``except
    Exception`` blocks let it through); its outcome is dropped anyway.

    Raises:
        asyncio.CancelledError: the caller cancelled the Future or it timed out.
        RuntimeError: called outside an offloaded call.

    Examples:
        >>> import asyncio, offload
        >>> @offload.offload
        ... def steps(n):
        ...     for _ in range(n):
        ...         offload.check_cancelled()
        ...     return n
        >>> async def main():
        ...     return await steps(3)
        >>> asyncio.run(main())
        3
    """
    if cancelled():
        raise asyncio.CancelledError("the caller of this offloaded call gave up")


def running_remotely() -> Any:
    """Mark this thread as running a call for another process; returns what to restore."""
    previous = _running.call
    _running.call = REMOTE
    return previous


def restore(previous: Any) -> None:
    """Undo ``running_remotely``."""
    _running.call = previous
