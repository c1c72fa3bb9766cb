"""Handing a call to an executor.

offload's own thread pool takes the call tuple directly (the fast path). Pools
that run calls in other processes or on a cluster need the call in a form that
pickles: offload's [`ProcessPool`][offload.ProcessPool] and
[`DaskExecutor`][offload.DaskExecutor] take it through their own ``_offload``, a
standard ``ProcessPoolExecutor`` gets a shipment with clear pickling errors, and
an executor offload does not know a call that runs in this process or, pickled,
in another. A ``ThreadPoolExecutor`` gets the call through ``submit`` (the
generic path).

A call made through a registered name also carries the name's monitor, which
counts and times it and, if the name is bounded, admits it to the executor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextvars import copy_context
from typing import Any

from ._dask import DaskExecutor
from ._delivery import (
    HOLDS,
    Call,
    Held,
    _deliveries,
    abandon_call,
    delivery_for,
    run_call,
    run_held,
)
from ._foreign import to_other_executor, to_process_pool_executor
from ._monitor import SAMPLE_EVERY, Monitor, abandon_monitored, run_monitored, run_pooled
from ._pool import ThreadPool
from ._process import ProcessPool

#: Executors that take an offloaded call through their own ``_offload``.
_ENGINES = (ProcessPool, DaskExecutor)

_now = time.perf_counter

SAMPLE_MASK = SAMPLE_EVERY - 1  # SAMPLE_EVERY is a power of two


def dispatch(  # noqa: C901, PLR0912, PLR0917 - the hot path: flat; positional arguments are cheapest
    loop: asyncio.AbstractEventLoop,
    executor: Executor,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    monitor: Monitor | None = None,
) -> asyncio.Future[Any]:
    """Run ``fn(*args, **kwargs)`` on ``executor``; return a Future on ``loop``.

    On threads the caller's contextvars travel as a copy, so what the worker
    sets does not leak back and concurrent calls do not see each other's values.
    Other processes get no contextvars.
    """
    if monitor is not None and monitor.limit is None:
        if isinstance(executor, ThreadPool):
            # The common named call, kept short: offload's pool, no bound. One
            # call in SAMPLE_EVERY is timed: the clock is most of what
            # statistics cost, and the percentiles need only a sample.
            future = loop.create_future()
            pooled = (
                run_pooled, abandon_monitored, future,
                _deliveries.get(id(loop)) or delivery_for(loop), copy_context(),
                fn, args, kwargs, monitor,
                0.0 if next(monitor.submitted) & SAMPLE_MASK else _now(), False,
            )  # fmt: skip
            try:
                executor._put(pooled)
            except BaseException:
                monitor.refused(holds=False)
                raise
            return future
        if type(executor) is ProcessPoolExecutor:
            # The pool reports back on a thread of offload's choosing: the
            # call is counted there and as its outcome reaches the loop.
            next(monitor.submitted)
            try:
                return to_process_pool_executor(loop, executor, fn, args, kwargs, monitor)
            except BaseException:  # refused before it was sent (a lambda): it ends as failed
                monitor.refused(holds=False)
                raise
    future = loop.create_future()
    delivery = _deliveries.get(id(loop)) or delivery_for(loop)
    if monitor is None or not isinstance(executor, (ThreadPool, ThreadPoolExecutor)):
        call: Call = (run_call, abandon_call, future, delivery, copy_context(), fn, args, kwargs)
        if monitor is not None:  # counted on its way to another process or a cluster
            return monitor.elsewhere(loop, executor, call, elsewhere)
    else:  # a named call on a stdlib thread pool, or a bounded name (timed every call)
        bounded = monitor.limit is not None
        queued_at = 0.0 if not bounded and next(monitor.submitted) & SAMPLE_MASK else _now()
        run = run_pooled if isinstance(executor, ThreadPool) else run_monitored
        call = (
            run, abandon_monitored, future, delivery, copy_context(),
            fn, args, kwargs, monitor, queued_at, bounded,
        )  # fmt: skip
        if bounded and not monitor.admit(executor, call, submit):
            return future  # it waits for a slot
    try:
        if isinstance(executor, ThreadPool):
            executor._put(call)
        elif not isinstance(executor, ThreadPoolExecutor):
            return elsewhere(loop, executor, call)
        else:
            # The call delivers its own outcome; the holder cancels the Future if
            # the pool drops the job unrun (shutdown(cancel_futures=True)).
            executor.submit(run_held, Held(call))
    except BaseException:
        if monitor is not None:  # the pool refused it (shut down): it ends as failed
            monitor.refused(holds=call[HOLDS])
        raise
    return future


def submit(executor: Executor, call: Call) -> None:
    """Hand a call that runs on a thread of this process to its pool."""
    if isinstance(executor, ThreadPool):
        executor._put(call)
    else:
        executor.submit(run_held, Held(call))


def elsewhere(
    loop: asyncio.AbstractEventLoop, executor: Executor, call: Call
) -> asyncio.Future[Any]:
    """A call for an executor that may run it in another process."""
    fn, args, kwargs = call[5:8]
    if isinstance(executor, _ENGINES):
        return executor._offload(loop, fn, args, kwargs)
    if isinstance(executor, ProcessPoolExecutor):
        return to_process_pool_executor(loop, executor, fn, args, kwargs)
    return to_other_executor(executor, call)


def sends_by_pickle(executor: Executor) -> bool:
    """Whether ``executor`` pickles calls with the standard pickle (no lambdas)."""
    return isinstance(executor, (ProcessPool, ProcessPoolExecutor))
