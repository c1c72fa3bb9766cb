"""Deadlines on offloaded calls, kept on the loop.

``loop.call_later`` fails the Future with ``TimeoutError`` and counts the call
as timed out. Settling the Future is all a timeout does here: each executor
kind reacts to a settled Future as it does to a cancel (offload's
[`ProcessPool`][offload.ProcessPool] terminates the worker, a cluster task is
cancelled, a call still queued never runs, a thread runs on and can stop early
by asking [`cancelled`][offload.cancelled]). The kind says which, for the
error's message.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from ._errors import name_of
from ._stats import TIMED_OUT
from ._watch import gave_up

if TYPE_CHECKING:
    from ._route import Route


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds, or a clear error at decoration time."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    return float(timeout)


def arm(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    timeout: float,
    fn: object,
    route: Route,
) -> None:
    """Fail ``future`` with ``TimeoutError`` unless it is done within ``timeout`` seconds."""
    handle = loop.call_later(timeout, _expire, future, timeout, fn, route)
    future.add_done_callback(functools.partial(_disarm, handle))


def _disarm(handle: asyncio.TimerHandle, _future: object) -> None:
    handle.cancel()


def _expire(future: asyncio.Future[Any], timeout: float, fn: object, route: Route) -> None:
    if future.done():
        return
    future.set_exception(
        TimeoutError(f"{name_of(fn)} did not finish within {timeout}s; {route.kind.on_timeout}")
    )
    gave_up(future)
    if route.stats is not None:
        route.stats.add(TIMED_OUT)
