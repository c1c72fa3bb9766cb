"""A route: where the calls through one name, or to one Executor, go.

A Route is made once per executor: when a name's executor is made (or
replaced), or when an Executor is passed directly. It holds the executor's
``Kind`` (how to send it a call, chosen then, never per call) and, for a
registered name, the name's ``Stats`` and ``Bound``, which outlive any one
executor. ``Route.call`` is the send side of every offloaded call:

    decorator -> registry (name -> Route) -> Route.call -> Kind.send -> executor
    executor  -> _call.run / finish / never_ran -> Delivery -> the caller's loop

The common call, a named call to an unbounded name, builds one tuple and hands
it to the kind's ``send``; nothing on the way asks what kind the executor is.

A lane handle (``_lanes.Lane``) has a route of its own per route its name
leads to (``pinned``): the name's statistics and bound, the handle's lane as
the executor, and the handle's index, so that a call of it that waited for a
slot is handed to its lane (``to_lane``) of whatever the name leads to then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from contextvars import copy_context
from typing import TYPE_CHECKING, Any

from ._call import (
    DELIVERY,
    FUTURE,
    HOLDS,
    QUEUED_AT,
    ROUTE,
    Call,
    fail_unstarted,
    never_ran,
    refused,
    run,
)
from ._delivery import _deliveries, delivery_for, settable
from ._kinds import kind_of
from ._stats import SAMPLE_MASK, SUBMITTED, Stats, now
from ._timeouts import arm
from ._watch import watched

if TYPE_CHECKING:
    from ._bound import Bound
    from ._watch import Watch


class Route:
    """One executor, how to send it calls, and the statistics and bound of its name."""

    __slots__ = (
        "__weakref__",
        "bound",
        "executor",
        "kind",
        "lane",
        "lane_routes",
        "sample_mask",
        "send",
        "stats",
    )

    def __init__(
        self,
        executor: Executor,
        *,
        stats: Stats | None = None,
        bound: Bound | None = None,
        lane: int | None = None,
    ) -> None:
        self.executor = executor
        #: The index of the lane handle whose calls take this route, else None.
        self.lane = lane
        #: Per lane of a ``Lanes`` executor, the route a waiting call is handed over on.
        self.lane_routes: list[Route | None] | None = None
        self.kind = kind_of(executor)
        #: ``send(call)`` hands a call to the executor; it raises if the executor refuses.
        self.send: Callable[[Call], None] = self.kind.send
        self.stats = stats
        self.bound = bound
        if stats is not None:
            self.kind.named(stats)
        #: A call is timed when its number ANDed with this is 0: one in
        #: SAMPLE_EVERY, or every call where the kind says so.
        self.sample_mask = 0 if self.kind.times_every_call else SAMPLE_MASK

    def __repr__(self) -> str:
        name = "unnamed" if self.stats is None else repr(self.stats.name)
        lane = "" if self.lane is None else f" lane {self.lane}"
        return f"<offload route {name}{lane} -> {self.executor!r}>"

    def pinned(self, index: int) -> Route:
        """A route for the calls of lane handle ``index``: on its lane, under this route's name.

        Its lane is ``index mod n`` of this route's ``Lanes``; on any other
        executor, the executor itself.
        """
        lanes = self.kind.lanes
        executor = lanes[index % len(lanes)] if lanes else self.executor
        return Route(executor, stats=self.stats, bound=self.bound, lane=index)

    def to_lane(self, index: int) -> Route:
        """Where a call of lane handle ``index`` that waited for a slot is sent: its lane here."""
        lanes = self.kind.lanes
        if not lanes:
            return self
        routes = self.lane_routes
        if routes is None:
            routes = self.lane_routes = [None] * len(lanes)
        i = index % len(lanes)
        route = routes[i]
        if route is None:  # two threads may both make it: either serves
            route = routes[i] = Route(lanes[i], stats=self.stats, bound=self.bound)
        return route

    def call(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
        *,
        watch: Watch | None = None,
    ) -> asyncio.Future[Any]:
        """Send ``fn(*args, **kwargs)`` to the executor; its Future, on ``loop``.

        On threads the caller's contextvars travel as a copy, so what the
        worker sets does not leak back and concurrent calls do not see each
        other's values. Other processes get no contextvars. A ``watch``
        (``cancel="wait"``) is in place before the call is sent: a worker may
        start it at once.
        """
        future = loop.create_future()
        if watch is not None:
            watch.watching(future)
        delivery = _deliveries.get(id(loop)) or delivery_for(loop)
        stats = self.stats
        queued_at = 0.0
        if stats is not None:
            row = delivery.rows.get(stats) or delivery.row(stats)
            number = row[SUBMITTED]
            row[SUBMITTED] = number + 1
            if self.bound.limit is not None:  # type: ignore[union-attr]  # a name has a bound
                return self._call_bounded(loop, future, fn, args, kwargs, timeout)
            # One call in SAMPLE_EVERY is timed: the clock is most of what
            # statistics cost, and the percentiles need only a sample.
            if not number & self.sample_mask:
                queued_at = now()
        call = (
            run, never_ran, future, delivery, copy_context(),
            fn, args, kwargs, self, queued_at, False,
        )  # fmt: skip
        try:
            self.send(call)
        except BaseException:
            refused(call)
            raise
        if timeout is not None:
            arm(loop, future, timeout, fn, self)
        return future

    def _call_bounded(  # noqa: PLR0917 - call's arguments, passed on
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> asyncio.Future[Any]:
        bound: Bound = self.bound  # type: ignore[assignment]
        call: Call = (
            run, never_ran, future, delivery_for(loop), copy_context(),
            fn, args, kwargs, self, now(), False,
        )  # fmt: skip
        if bound.admit(call):  # else it waits in line (OverloadedError if it may not)
            call = (*call[:HOLDS], True)
            try:
                self.send(call)
            except BaseException:
                refused(call)
                raise
        if timeout is not None:
            arm(loop, future, timeout, fn, self)
        return future

    def send_admitted(self, call: Call) -> None:
        """Send a call that waited for a slot of the name and now holds one.

        Called from whichever thread freed the slot. A kind that must be sent
        on the caller's loop gets the call there.

        Raises:
            BaseException: the call could not be sent; the caller frees its slot.
        """
        call = (*call[:ROUTE], self, call[QUEUED_AT], True)
        watch = watched.get(call[FUTURE]) if watched else None
        if watch is not None and not watch.sending(self.kind.ends_unstarted_in_run):
            never_ran(call)  # its caller left while it waited (cancel="wait"): it never runs
            return
        if self.kind.hand_over_inline:
            self.send(call)
            return
        # A slot is often freed inside an executor's own callback, under its
        # own locks (a standard pool's, since 3.12, while it reports a broken
        # pool): sending from there could deadlock. The caller's loop sends it.
        loop = call[DELIVERY].loop_ref()
        if loop is None:
            raise RuntimeError("the caller's event loop is gone")
        loop.call_soon_threadsafe(_HandOver(self, call))


class _HandOver:
    """A waiting call on its way to its loop; if the loop drops it unrun (closed), it fails."""

    __slots__ = ("call", "route")

    def __init__(self, route: Route, call: Call) -> None:
        self.route = route
        self.call: Call | None = call

    def __call__(self) -> None:
        call, self.call = self.call, None
        if call is None:
            return
        if call[FUTURE].done():  # given up while the hand-over was on its way
            never_ran(call)
            return
        try:
            self.route.send(call)
        except BaseException as exc:
            fail_unstarted(call, settable(exc))

    def __del__(self) -> None:
        call, self.call = self.call, None
        if call is not None:  # its slot must come back, or the name stays full
            fail_unstarted(
                call, RuntimeError("the caller's event loop closed before the call was sent")
            )


def route_to(executor: Executor) -> Route:
    """The route for calls to an Executor passed directly: no name, so nothing counts them.

    Made once per executor and kept on it, where it takes attributes. A lane
    handle's ``_offload_route`` is a property: its name's route now, pinned
    to its lane, so its calls are the name's.
    """
    route: Route | None = getattr(executor, "_offload_route", None)
    if route is None:
        route = Route(executor)
        with contextlib.suppress(AttributeError, TypeError):  # slotted or frozen: per call
            executor._offload_route = route  # type: ignore[attr-defined]
    return route
