"""Executors offload does not own: standard process pools and everything else.

A standard ``ProcessPoolExecutor`` gets the call as bytes that offload pickled
(see ``run_shipment``), so pickling fails with clear errors both ways, and a
broken pool is reported as
[`WorkerDiedError`][offload.WorkerDiedError] and replaced from its factory.

Any other executor gets a ``Portable``. In the same process it is an
ordinary offloaded call; if the executor pickles it to run elsewhere (loky,
``mpi4py.futures``, a Dask ``ClientExecutor``), it pickles as the function by
reference and its arguments, and the result comes back through the executor's
Future. Registration alone is enough.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from typing import Any

from ._delivery import _CANCELLED, Delivery, _settable, delivery_for
from ._errors import NotPicklableError, WorkerDiedError, describe_exit
from ._pickling import (
    RemoteJob,
    pack_call,
    run_shipment,
    ship,
    ship_target,
    unpack_result,
)

_now = time.perf_counter

#: Called with a broken executor; the registry installs its replacement hook here.
broken_hooks: list[Callable[[Executor], bool]] = []


def replace_broken(executor: Executor) -> bool:
    """Tell the registries ``executor`` is broken; true if one will make a new one."""
    replaced = False
    for hook in broken_hooks:  # every hook, not just up to the first that replaces
        replaced = hook(executor) or replaced
    return replaced


def _exitcode(executor: ProcessPoolExecutor) -> int | None:
    # The pool does not say which worker died; its process table may still know.
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        code = getattr(process, "exitcode", None)
        if code:
            return int(code)
    return None


def _died(executor: ProcessPoolExecutor, name: str, cause: BaseException) -> WorkerDiedError:
    code = _exitcode(executor)
    if replace_broken(executor):
        after = "offload replaces it from its factory, so later calls run on a new pool"
    else:
        after = (
            "it was registered as an instance, so offload cannot replace it: register a "
            "factory instead, register(name, lambda: ProcessPoolExecutor(...)), or use "
            "offload.ProcessPool, which replaces a dead worker by itself"
        )
    err = WorkerDiedError(
        f"a worker process of {executor!r} died ({describe_exit(code)}) while {name} was "
        f"running or queued, which broke the pool; {after}",
        code,
    )
    err.__cause__ = cause
    return err


def to_process_pool_executor(  # noqa: PLR0917 - dispatch's positional style
    loop: asyncio.AbstractEventLoop,
    executor: ProcessPoolExecutor,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    monitor: Any = None,
) -> asyncio.Future[Any]:
    """Send a call to a standard ``ProcessPoolExecutor``.

    With the ``monitor`` of an unbounded name, the call is counted on its way:
    started as it is handed over, ended and timed as the pool reports back,
    and its fate by the loop as the outcome arrives. That is no more work for
    the loop than a call that is not counted.

    Only what the pool needs is done before ``submit``: one call at a time, the
    work before it adds to every call's latency, while the work after it runs
    as the pool's own threads wake up.
    """
    target, name = ship(fn, executor.__repr__)
    try:
        data = pack_call(target, args, kwargs, name)
    except NotPicklableError as exc:
        return _refused(loop, exc, monitor)
    try:
        pool_future = executor.submit(run_shipment, data, name)
    except BrokenProcessPool as exc:  # it broke while idle
        return _refused(loop, _died(executor, name, exc), monitor)
    future = loop.create_future()
    if monitor is not None:
        next(monitor.started)
    relay = functools.partial(
        _relay_shipment, future, delivery_for(loop), executor, name, monitor, _now()
    )
    pool_future.add_done_callback(relay)
    future.add_done_callback(functools.partial(_cancel_pool_future, pool_future))
    return future


def _refused(
    loop: asyncio.AbstractEventLoop, error: BaseException, monitor: Any
) -> asyncio.Future[Any]:
    future = loop.create_future()
    future.set_exception(error)
    if monitor is not None:
        monitor.refused(holds=False)
    return future


def _relay_shipment(  # noqa: PLR0917 - a done-callback's bound arguments
    future: asyncio.Future[Any],
    delivery: Delivery,
    executor: ProcessPoolExecutor,
    name: str,
    monitor: Any,
    began: float,
    pool_future: ConcurrentFuture[Any],
) -> None:
    if monitor is not None:
        monitor.runs.append(_now() - began)
        next(monitor.ended)
        if future.done():  # given up: counted now, as the loop may be closed (see run_pooled)
            if future.cancelled():
                next(monitor.cancelled)
            return
    try:  # one look at the pool's Future on the common path: each look takes its lock
        data = pool_future.result()
    except BaseException as exc:
        if pool_future.cancelled():
            delivery.push(future, None, _CANCELLED, monitor)
            return
        if isinstance(exc, BrokenProcessPool):
            exc = _died(executor, name, exc)
        elif isinstance(exc, NotPicklableError) and exc.__context__ is not None:
            exc.__cause__ = exc.__context__  # the pool overwrote the cause with its traceback
        delivery.push(future, None, _settable(exc), monitor)
        return
    try:
        value = unpack_result(data, name)
    except NotPicklableError as err:
        delivery.push(future, None, err, monitor)
    else:
        delivery.push(future, value, None, monitor)


def _cancel_pool_future(pool_future: ConcurrentFuture[Any], _future: object) -> None:
    # Settled before the pool's Future: the caller gave up (cancelled, or timed
    # out). A call still queued never runs; one that already runs cannot be
    # stopped in a pool offload does not own, and its outcome is dropped.
    if not pool_future.done():
        pool_future.cancel()


class Portable:
    """An offloaded call for an executor that may run it in another process.

    Called in this process, it runs the call tuple like any other; pickled, it
    becomes a ``RemoteJob``, leaving the Future and
    the contextvars behind. Running empties it, so no traceback can tie the call
    into a cycle (see ``run_held``).
    """

    __slots__ = ("call", "delivery", "executor", "future")

    def __init__(self, call: tuple[Any, ...], executor: Executor) -> None:
        self.call: tuple[Any, ...] | None = call
        self.future: asyncio.Future[Any] = call[2]
        self.delivery: Delivery = call[3]
        self.executor = executor

    def __call__(self) -> None:
        call = self._take()
        call[0](call)

    def _take(self) -> tuple[Any, ...]:
        call, self.call = self.call, None
        if call is None:
            raise RuntimeError("an offloaded call runs once")
        return call

    def __reduce__(self) -> tuple[type[RemoteJob], tuple[Any, ...]]:
        if self.call is None:
            raise RuntimeError("an offloaded call runs once")
        fn, args, kwargs = self.call[5:8]
        return RemoteJob, (ship_target(fn), args, kwargs)

    def relay(self, pool_future: ConcurrentFuture[Any]) -> None:
        """Done-callback on the executor's Future: deliver an outcome from elsewhere."""
        if self.call is None:
            return  # it ran in this process and delivered its own outcome
        self.call = None
        if pool_future.cancelled():
            self.delivery.push(self.future, None, _CANCELLED)
            return
        exc = pool_future.exception()
        if exc is None:
            self.delivery.push(self.future, pool_future.result(), None)
            return
        if isinstance(exc, BrokenExecutor):
            replace_broken(self.executor)
        self.delivery.push(self.future, None, _settable(exc))
        del exc


def to_other_executor(executor: Executor, call: tuple[Any, ...]) -> asyncio.Future[Any]:
    """Send a call to an executor offload knows nothing about."""
    portable = Portable(call, executor)
    pool_future = executor.submit(portable)
    pool_future.add_done_callback(portable.relay)
    future: asyncio.Future[Any] = call[2]
    future.add_done_callback(functools.partial(_cancel_pool_future, pool_future))
    return future
