"""Offloaded calls on a Dask distributed cluster (``pip install tornado-offload[dask]``).

The call goes to the cluster as a task: the function by reference (the worker
runs the original body), the arguments and result by Dask's serialisation. The
task's completion is relayed to the caller's loop through its delivery queue,
so awaiting never blocks the loop; cancelling the Future cancels the task.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import Future as ConcurrentFuture
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._call import ARGS, FN, FUTURE, KWARGS, ROUTE, Call, began, finish
from ._delivery import CANCELLED, settable
from ._errors import ExecutorShutdownError, name_of
from ._pickling import Ref, call_original, run_remote, ship_target, unpack_reply

if TYPE_CHECKING:
    import distributed

P = ParamSpec("P")
T = TypeVar("T")


def _import_distributed() -> Any:
    try:
        import distributed  # noqa: PLC0415  # an optional extra, imported on first use
    except ImportError as exc:
        raise ImportError(
            "offload.DaskExecutor needs Dask distributed: pip install 'tornado-offload[dask]'"
        ) from exc
    return distributed


class DaskExecutor(Executor):
    """An executor backed by a Dask distributed cluster; register it by name.

    Args:
        address_or_client: A scheduler address such as ``"tcp://10.0.0.5:8786"``,
            an existing ``distributed.Client`` (used as is, and not closed by
            ``shutdown``), or ``None`` for a local cluster.
        client_kwargs: Passed to ``distributed.Client`` when it is made here.

    Connecting blocks until the scheduler answers, so make it at start-up, or
    register a factory and accept that the first call waits for the connection.

    Examples:
        >>> import offload
        >>> offload.register(  # doctest: +SKIP
        ...     "cluster", lambda: offload.DaskExecutor("tcp://scheduler:8786")
        ... )
    """

    def __init__(
        self, address_or_client: str | distributed.Client | None = None, **client_kwargs: Any
    ) -> None:
        dist = _import_distributed()
        if isinstance(address_or_client, dist.Client):
            if client_kwargs:
                raise TypeError("client keyword arguments only apply when given an address")
            self._client: distributed.Client = address_or_client
            self._owns_client = False
        elif address_or_client is None or isinstance(address_or_client, str):
            self._client = dist.Client(address_or_client, **client_kwargs)
            self._owns_client = True
        else:
            raise TypeError(
                "DaskExecutor needs a scheduler address (str), a distributed.Client or None, "
                f"got {address_or_client!r}"
            )
        self._closed = False
        self._lock = threading.Lock()

    @property
    def client(self) -> distributed.Client:
        """The ``distributed.Client`` that submits the tasks."""
        return self._client

    def __repr__(self) -> str:
        state = " shut down" if self._closed else ""
        address = getattr(self._client.scheduler, "address", None)
        return f"<offload.DaskExecutor {address!r}{state}>"

    def _submit_task(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        packed: bool = False,
    ) -> tuple[Any, str]:
        if self._closed:
            raise ExecutorShutdownError(f"{self!r} was shut down and takes no new calls")
        target = ship_target(fn)
        name = target.qualname if isinstance(target, Ref) else name_of(fn)
        key = f"{name.replace('.', '-')}-{uuid.uuid4().hex}"
        # The call's own arguments travel packed, so none can clash with submit's.
        # An offloaded call's outcome comes back packed (``run_remote``).
        if packed:
            task = self._client.submit(run_remote, target, args, kwargs, name, key=key, pure=False)
        else:
            task = self._client.submit(call_original, target, args, kwargs, key=key, pure=False)
        return task, name

    def _send(self, call: Call) -> None:
        """Submit an offloaded call as a task; its outcome goes to the caller's loop."""
        task, name = self._submit_task(call[FN], call[ARGS], call[KWARGS], packed=True)
        client = self._client
        if client.loop is None:
            raise ExecutorShutdownError(f"{self!r}: its client is closed")
        stats = call[ROUTE].stats
        started = began(call, stats, waited=False) if stats is not None else 0.0
        # Wait on the client's own loop: many results are fetched at once there,
        # and the caller's loop only hears of the outcome through its delivery.
        client.loop.add_callback(_relay, client, task, call, name, started)
        call[FUTURE].add_done_callback(functools.partial(self._settled, task))

    def _settled(self, task: Any, _future: object) -> None:
        if not task.done():  # the caller gave up: cancel on the cluster, without blocking
            client = self._client
            if client.loop is not None:
                cancel = functools.partial(client.cancel, [task], asynchronous=True)
                client.loop.add_callback(cancel)

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> ConcurrentFuture[T]:
        """Run ``fn(*args, **kwargs)`` on the cluster; return a ``concurrent.futures.Future``."""
        future: ConcurrentFuture[T] = ConcurrentFuture()
        future.set_running_or_notify_cancel()
        task, _name = self._submit_task(fn, args, kwargs)
        task.add_done_callback(functools.partial(_relay_concurrent, future))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no new calls; close the client if this executor made it."""
        del wait, cancel_futures  # the client's tasks end with it, or carry on with it
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owns_client:
            self._client.close()  # type: ignore[no-untyped-call]


async def _relay(
    client: distributed.Client, task: Any, call: Call, name: str, started: float
) -> None:
    """On the client's loop: wait for the task, fetch its outcome, end the call with it."""
    try:
        reply = await client.gather(task, asynchronous=True)  # type: ignore[no-untyped-call]
    except BaseException as exc:
        finish(call, None, CANCELLED if task.cancelled() else settable(exc), started)
        # The traceback keeps this frame: drop what would tie the task, the
        # call and its exception into a cycle (and keep the task alive).
        del call, task, exc
    else:
        finish(call, *unpack_reply(reply, name), started)


def _relay_concurrent(future: ConcurrentFuture[Any], task: Any) -> None:
    try:
        future.set_result(task.result())
    except BaseException as exc:
        future.set_exception(exc)
        del future, task, exc
