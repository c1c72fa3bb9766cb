"""Deadlines on offloaded calls, and asking from a worker whether the caller gave up.

A timeout is kept on the loop: ``loop.call_later`` fails the Future with
``TimeoutError``. What happens to the running call depends on the executor. On
a pool offload manages ([`ProcessPool`][offload.ProcessPool]) the Future's
done-callback terminates the worker; a cluster task is cancelled; a thread
cannot be killed, so it runs on, and can stop early by asking
[`cancelled`][offload.cancelled].
"""

from __future__ import annotations

import asyncio
import functools
import sys
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from ._delivery import run_call
from ._errors import name_of
from ._monitor import Monitor, run_monitored, run_pooled
from ._pickling import REMOTE_CODES
from ._pool import ThreadPool
from ._process import ProcessPool


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
    executor: Executor,
    *,
    monitor: Monitor | None = None,
) -> asyncio.Future[Any]:
    """Fail ``future`` with ``TimeoutError`` unless it is done within ``timeout`` seconds."""
    handle = loop.call_later(timeout, _expire, future, timeout, fn, executor, monitor)
    future.add_done_callback(functools.partial(_disarm, handle))
    return future


def _disarm(handle: asyncio.TimerHandle, _future: object) -> None:
    handle.cancel()


def _expire(
    future: asyncio.Future[Any],
    timeout: float,
    fn: object,
    executor: Executor,
    monitor: Monitor | None,
) -> None:
    if future.done():
        return
    if isinstance(executor, ProcessPool):
        fate = "its worker process was terminated"
    elif isinstance(executor, (ThreadPool, ThreadPoolExecutor)):
        fate = (
            "a thread cannot be killed, so the call runs on; offload.cancelled() lets "
            "a long loop in it stop early"
        )
    elif hasattr(executor, "_offload"):
        fate = "its task was cancelled"
    else:
        fate = f"it may run on in {executor!r}, which offload cannot stop; its outcome is dropped"
    error = TimeoutError(f"{name_of(fn)} did not finish within {timeout}s; {fate}")
    error._offload_expired = True  # type: ignore[attr-defined]  # counted here, not as failed
    future.set_exception(error)
    if monitor is not None:
        next(monitor.timed_out)


#: The code of the functions that run a call on a worker thread; each has the
#: call's Future in a local named ``future``.
_CALL_CODES = (run_call.__code__, run_monitored.__code__, run_pooled.__code__)


def cancelled() -> bool:
    """In an offloaded call: whether its caller gave up (cancelled, or timed out).

    A thread cannot be killed, so a long-running call can ask now and then and
    return early. In a worker process it is always false: offload terminates a
    worker whose call is given up, where it manages the pool.

    Raises:
        RuntimeError: called outside an offloaded call, for example on the loop.

    Example:
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
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code in _CALL_CODES:
            future: asyncio.Future[Any] = frame.f_locals["future"]
            return future.done()  # done before the call returns: given up
        if code in REMOTE_CODES:
            return False
        frame = frame.f_back  # type: ignore[assignment]
    raise RuntimeError(
        "offload.cancelled() asks whether an offloaded call's caller gave up, so it only "
        "works inside a function running through offload (on a thread or in a worker "
        "process); here no offloaded call is running. On the loop, check the Future "
        "itself: future.cancelled()."
    )


def check_cancelled() -> None:
    """In an offloaded call: raise ``asyncio.CancelledError`` if its caller gave up.

    The exception unwinds the call (it is a ``BaseException``, so ``except
    Exception`` blocks let it through); its outcome is dropped anyway.

    Raises:
        asyncio.CancelledError: the caller cancelled the Future or it timed out.
        RuntimeError: called outside an offloaded call.

    Example:
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
