"""Handing a call to an executor.

offload's own pool takes the call object directly (the fast path); any other
``concurrent.futures.Executor`` gets it through ``submit`` (the generic path).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from contextvars import copy_context
from typing import Any

from ._delivery import (
    Held,
    _deliveries,
    abandon_call,
    delivery_for,
    run_call,
    run_held,
)
from ._pool import ThreadPool


def dispatch(
    loop: asyncio.AbstractEventLoop,
    executor: Executor,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> asyncio.Future[Any]:
    """Run ``fn(*args, **kwargs)`` on ``executor``; return a Future on ``loop``.

    The caller's contextvars travel as a copy, so what the worker sets does not
    leak back and concurrent calls do not see each other's values.
    """
    future = loop.create_future()
    delivery = _deliveries.get(id(loop)) or delivery_for(loop)
    call = (run_call, abandon_call, future, delivery, copy_context(), fn, args, kwargs)
    if isinstance(executor, ThreadPool):
        executor._put(call)
    else:
        # The call delivers its own outcome; the pool's Future only matters if
        # the pool cancels the job without running it (shutdown(cancel_futures)).
        executor.submit(run_held, Held(call))
    return future
