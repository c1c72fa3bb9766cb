"""Waiting for a call's work to be over, not only for its Future: ``cancel="wait"``.

A caller that gives up on a call (cancels it, or its timeout expires) gets its
Future settled at once, while the work may go on: a thread runs on, a worker
process is being stopped. ``offload(..., coroutine=True, cancel="wait")``
wants to return only once the work is over, so it puts a ``Watch`` in
``watched`` for the call's Future while it awaits it. Once that Future is
done, every path on which the call ends afterwards calls ``over``: the call
returned or raised on its thread, its worker process was stopped, it left a
queue unrun, or its outcome reached the loop just after the caller gave up.
Those paths are the call path's exits for a given-up call, so a call nobody
watches pays nothing but the test of an empty dict on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class Watch:
    """One caller waiting for the end of one call's work.

    ``gave_up`` is set when the call's Future was failed while the call may
    still run (by a timeout, or by a shutdown that stopped waiting for it):
    the caller cannot tell that from an error of the call's own.

    On a thread executor a given-up call stays queued until a worker takes it,
    so ``_call.run`` asks ``begin`` before it runs a watched call, and a caller
    that gives up asks ``leave``: under the lock exactly one of them wins, so
    a call the caller left never runs, and one that began is waited for.
    """

    __slots__ = ("ended", "future", "gated", "gave_up", "left", "lock", "loop", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, gated: bool) -> None:
        self.loop = loop
        self.ended: asyncio.Future[None] = loop.create_future()
        self.future: asyncio.Future[Any] | None = None
        self.gave_up = False
        self.gated = gated  # the call's kind ends it unrun in _call.run
        self.lock = threading.Lock()
        self.started = self.left = False

    def watching(self, future: asyncio.Future[Any]) -> None:
        """Watch the call of ``future``: before it is sent, so its worker sees the watch."""
        self.future = future
        watched[future] = self

    def forget(self) -> None:
        """The caller stops watching (its call ended, or was never sent)."""
        if self.future is not None:
            watched.pop(self.future, None)

    def begin(self) -> bool:
        """On the worker, before the call runs: whether it may (its caller has not left)."""
        with self.lock:
            if self.left:
                return False
            self.started = True
            return True

    def sending(self, gated: bool) -> bool:
        """Whether to send a call that waited for a slot (its caller has not left).

        ``gated``: the kind of the route it is sent on now ends it unrun in ``_call.run``.
        """
        with self.lock:
            if self.left:
                return False
            self.gated = gated
            return True

    def leave(self) -> bool:
        """On the loop, as the caller gives up: whether the call will never run."""
        with self.lock:
            if self.gated and not self.started:
                self.left = True
            return self.left

    def end(self) -> None:
        """From any thread: the watched call's work is over."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(_set_ended, self.ended)


def _set_ended(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_result(None)


#: The Futures of watched calls, each with its Watch (read without a lock: an
#: empty dict is the common case, and a Future is only ever added on its loop
#: before its call can be given up).
watched: dict[asyncio.Future[Any], Watch] = {}


def over(future: asyncio.Future[Any]) -> None:
    """The call of ``future`` ended after ``future`` was done: wake its watcher, if any."""
    watch = watched.pop(future, None)
    if watch is not None:
        watch.end()


def gave_up(future: asyncio.Future[Any]) -> None:
    """``future`` was just failed while its call may still run (on the loop)."""
    watch = watched.get(future)
    if watch is not None:
        watch.gave_up = True


async def to_the_end(watch: Watch) -> Any:
    """Await a watched call's Future; if it was given up, wait until its work is over too.

    Its outcome is the Future's: its result, its error, or ``CancelledError``
    if it was cancelled. Cancelling the waiting task again changes nothing but
    that: the wait goes on until the work is over, and then ends in
    ``CancelledError``.
    """
    future = watch.future
    assert future is not None  # noqa: S101  # watching() ran as the call was sent
    try:
        return await future
    except BaseException as exc:
        given_up = future.cancelled() or watch.gave_up
        if given_up and not watch.leave():
            # Cancelled while it waited for the work: the task ends cancelled, as asked.
            cancelled = await _sit_out(watch.ended)
            if cancelled and not isinstance(exc, asyncio.CancelledError):
                raise asyncio.CancelledError from exc
        raise
    finally:
        watch.forget()
        # The traceback keeps this frame: let go of the Future, which holds the
        # exception, or the three would form a cycle per failed call.
        watch.future = future = None


async def _sit_out(ended: asyncio.Future[None]) -> bool:
    """Wait for ``ended`` through any cancellation; true if the task was cancelled meanwhile."""
    cancelled = False
    while not ended.done():
        try:
            await asyncio.shield(ended)
        except asyncio.CancelledError:
            cancelled = True
    return cancelled
