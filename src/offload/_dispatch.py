"""Handing a call to an executor.

offload's own thread pool takes the call tuple directly (the fast path). Pools
that run calls in other processes or on a cluster need the call in a form that
pickles: offload's [`ProcessPool`][offload.ProcessPool] and
[`DaskExecutor`][offload.DaskExecutor] take it through their own ``_offload``, a
standard ``ProcessPoolExecutor`` gets a shipment with clear pickling errors, and
an executor offload does not know a call that runs in this process or, pickled,
in another. A ``ThreadPoolExecutor`` gets the call through ``submit`` (the
generic path).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextvars import copy_context
from typing import Any

from ._dask import DaskExecutor
from ._delivery import (
    Held,
    _deliveries,
    abandon_call,
    delivery_for,
    run_call,
    run_held,
)
from ._foreign import to_other_executor, to_process_pool_executor
from ._pool import ThreadPool
from ._process import ProcessPool

#: Executors that take an offloaded call through their own ``_offload``.
_ENGINES = (ProcessPool, DaskExecutor)


def dispatch(
    loop: asyncio.AbstractEventLoop,
    executor: Executor,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> asyncio.Future[Any]:
    """Run ``fn(*args, **kwargs)`` on ``executor``; return a Future on ``loop``.

    On threads the caller's contextvars travel as a copy, so what the worker
    sets does not leak back and concurrent calls do not see each other's values.
    Other processes get no contextvars.
    """
    future = loop.create_future()
    delivery = _deliveries.get(id(loop)) or delivery_for(loop)
    call = (run_call, abandon_call, future, delivery, copy_context(), fn, args, kwargs)
    if isinstance(executor, ThreadPool):
        executor._put(call)
    elif not isinstance(executor, ThreadPoolExecutor):
        return _elsewhere(loop, executor, call)
    else:
        # The call delivers its own outcome; the holder cancels the Future if
        # the pool drops the job unrun (shutdown(cancel_futures=True)).
        executor.submit(run_held, Held(call))
    return future


def _elsewhere(
    loop: asyncio.AbstractEventLoop, executor: Executor, call: tuple[Any, ...]
) -> asyncio.Future[Any]:
    """A call for an executor that may run it in another process."""
    fn, args, kwargs = call[5:]
    if isinstance(executor, _ENGINES):
        return executor._offload(loop, fn, args, kwargs)
    if isinstance(executor, ProcessPoolExecutor):
        return to_process_pool_executor(loop, executor, fn, args, kwargs)
    return to_other_executor(executor, call)


def sends_by_pickle(executor: Executor) -> bool:
    """Whether ``executor`` pickles calls with the standard pickle (no lambdas)."""
    return isinstance(executor, (ProcessPool, ProcessPoolExecutor))
