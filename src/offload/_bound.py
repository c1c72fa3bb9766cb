"""A name's ``max_pending`` bound: a policy that composes with any executor kind.

At most ``limit`` calls through the name hold a slot, from the moment they are
admitted until their work is really over (the thread returned, or the worker
process was stopped): ``_call.finish`` and ``_call.never_ran`` give the slot
back, once per call. Calls past the limit wait in line, first come first
served, without blocking the loop (``when_full="wait"``), or are refused at
once with [`OverloadedError`][offload.OverloadedError] (``"fail"``).

A waiting call belongs to the name, not to an executor: when a slot frees, it
goes to whatever executor the name leads to then, so replacing the executor
carries the line over. A waiting call whose Future is settled (cancelled,
timed out) leaves the line at once, and its arguments with it.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._call import FUTURE, HOLDS, ROUTE, Call, fail_unstarted
from ._errors import OverloadedError
from ._stats import CANCELLED, DROPPED, REJECTED, WhenFull
from ._watch import over, watched

if TYPE_CHECKING:
    import asyncio

    from ._route import Route


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


class Bound:
    """The slots and the line of one registered name."""

    __slots__ = ("limit", "lock", "name", "pending", "route_now", "waiters", "when_full")

    def __init__(self, name: str, route_now: Callable[[], Route]) -> None:
        self.name = name
        #: The name's route as it is now: where a waiting call goes once admitted.
        self.route_now = route_now
        self.lock = threading.Lock()
        self.limit: int | None = None
        self.when_full: WhenFull = "wait"
        self.pending = 0  # calls holding a slot
        self.waiters: collections.OrderedDict[asyncio.Future[Any], Call] = collections.OrderedDict()

    def configure(self, limit: int | None, when_full: WhenFull) -> None:
        """Apply a registration's bound; a raised or removed limit lets waiting calls in now."""
        with self.lock:
            self.limit = limit
            self.when_full = when_full
        self.release(0)

    def admit(self, call: Call) -> bool:
        """Take a slot for ``call`` (true: send it now), or put it in line (false).

        Raises:
            OverloadedError: the bound is full and ``when_full`` is ``"fail"``.
        """
        with self.lock:
            limit = self.limit
            if limit is None or self.pending < limit:
                self.pending += 1
                return True
            refused = self.when_full == "fail"
            if not refused:
                self.waiters[call[FUTURE]] = call
        stats = call[ROUTE].stats
        if refused:
            stats.add(REJECTED)
            raise OverloadedError(self.name, limit)
        call[FUTURE].add_done_callback(self._left_line)
        return False

    def _left_line(self, future: asyncio.Future[Any]) -> None:
        # Done-callback of a waiting call's Future: if it is still in line, it
        # was given up there (a timeout is counted by its timer).
        with self.lock:
            call = self.waiters.pop(future, None)
        if call is not None:
            _gone(call)

    def release(self, slots: int = 1) -> None:
        """Give back ``slots``; hand freed slots to waiting calls, oldest first."""
        while True:
            with self.lock:
                self.pending -= slots
                admitted = []
                limit = self.limit
                while self.waiters and (limit is None or self.pending < limit):
                    future, call = self.waiters.popitem(last=False)
                    if future.done():  # given up, its done-callback not yet run
                        _gone(call)
                        continue
                    self.pending += 1
                    admitted.append(call)
            slots = sum(1 for call in admitted if not self._hand_over(call))
            if not slots:
                return

    def _hand_over(self, call: Call) -> bool:
        """Send an admitted call on the name's route as it is now; false if that failed.

        A lane handle's call goes to the handle's lane of that route.
        """
        try:
            route = self.route_now()
            lane = call[ROUTE].lane
            if lane is not None:
                route = route.to_lane(lane)
            route.send_admitted(call)
        except BaseException as exc:  # shut down, or its factory failed: the call fails
            fail_unstarted((*call[:HOLDS], False), exc)
            return False
        return True

    def waiting(self) -> int:
        """How many calls wait in line (those given up a moment ago left it)."""
        with self.lock:
            futures = list(self.waiters)
        return sum(1 for future in futures if not future.done())

    def fail_waiting(self, error: Callable[[], BaseException]) -> None:
        """Fail every call still waiting (the name was shut down)."""
        with self.lock:
            waiters = list(self.waiters.values())
            self.waiters.clear()
        for call in waiters:
            fail_unstarted(call, error())

    def after_fork(self) -> None:
        """In a child after ``fork``: the parent's waiting calls and slots are not ours."""
        self.lock = threading.Lock()
        self.waiters.clear()
        self.pending = 0


def _gone(call: Call) -> None:
    stats = call[ROUTE].stats
    stats.add(DROPPED)
    if call[FUTURE].cancelled():
        stats.add(CANCELLED)
    if watched:
        over(call[FUTURE])
