"""What is measured: the call bodies, the ways of issuing calls, the workloads.

A *shape* issues the calls ``call(x)`` for every ``x`` in ``xs`` and returns
the sum of the results, which the harness checks: a mechanism that drops or
invents results fails the run instead of reporting a speed. Each shape exists
once per driving style: ``async def`` with ``await`` and ``asyncio.gather``;
Tornado's ``@gen.coroutine`` with ``yield`` (a list yields through
``gen.multi``); and a plain thread waiting on ``concurrent.futures`` results.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado import gen

#: Calls kept in flight by the throughput shapes: batches of this size are
#: issued together and all awaited before the next batch.
WINDOW = 1_000

#: Loop turns granted after queueing the pending calls: coroutine-based peers
#: reach their executor (or their limiter's wait queue) only once their task
#: has run a step or two.
SETTLE_TURNS = 10


# -- call bodies ---------------------------------------------------------------


def noop(x: int) -> int:
    return x


def cpu(x: int) -> int:
    sum(range(200))
    return x


def io(x: int) -> int:
    time.sleep(0.001)
    return x


# -- memory --------------------------------------------------------------------

_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_libc_name = ctypes.util.find_library("c")
_malloc_trim = getattr(ctypes.CDLL(_libc_name), "malloc_trim", None) if _libc_name else None


def rss_available() -> bool:
    return _STATM.exists()


def settled_rss() -> int:
    """Resident set size in bytes, after a full collection.

    ``malloc_trim`` (glibc) hands freed heap pages back first, so memory freed
    by an earlier measurement does not absorb this one's growth.
    """
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
    return int(_STATM.read_text().split()[1]) * _PAGE


class PendingProbe:
    """Holds the single worker on an Event while pending calls pile up.

    Every call to :meth:`held` waits on the gate. The gate is open during the
    warm-up; :meth:`arm` closes it, so the first measured call blocks the only
    worker and the rest queue behind it. :meth:`stop` reads the RSS, then
    opens the gate and the queue drains.
    """

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.before = self.delta = 0

    def held(self, x: int) -> int:
        self.gate.wait()
        return x

    def arm(self) -> None:
        self.gate.clear()

    def start(self) -> None:
        self.before = settled_rss()

    def stop(self) -> None:
        try:
            self.delta = settled_rss() - self.before
        finally:
            self.gate.set()


PROBE = PendingProbe()


# -- shapes: async def ---------------------------------------------------------


async def _sequential_async(call: Callable[[int], Any], xs: range) -> int:
    total = 0
    for x in xs:
        total += await call(x)
    return total


async def _batched_async(call: Callable[[int], Any], xs: range) -> int:
    total = 0
    for start in range(0, len(xs), WINDOW):
        total += sum(await asyncio.gather(*[call(x) for x in xs[start : start + WINDOW]]))
    return total


async def _pending_async(call: Callable[[int], Any], xs: range) -> int:
    PROBE.start()
    futures = [asyncio.ensure_future(call(x)) for x in xs]
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)
    PROBE.stop()
    return sum(await asyncio.gather(*futures))


# -- shapes: tornado gen.coroutine ----------------------------------------------


@gen.coroutine
def _sequential_gen(call: Callable[[int], Any], xs: range) -> Any:
    total = 0
    for x in xs:
        total += yield call(x)
    return total


@gen.coroutine
def _batched_gen(call: Callable[[int], Any], xs: range) -> Any:
    total = 0
    for start in range(0, len(xs), WINDOW):
        total += sum((yield [call(x) for x in xs[start : start + WINDOW]]))
    return total


@gen.coroutine
def _pending_gen(call: Callable[[int], Any], xs: range) -> Any:
    PROBE.start()
    futures = [call(x) for x in xs]
    for _ in range(SETTLE_TURNS):
        yield gen.moment
    PROBE.stop()
    return sum((yield futures))


# -- shapes: plain thread, no event loop ---------------------------------------


def _sequential_thread(call: Callable[[int], Any], xs: range) -> int:
    return sum(call(x).result() for x in xs)


def _batched_thread(call: Callable[[int], Any], xs: range) -> int:
    total = 0
    for start in range(0, len(xs), WINDOW):
        futures = [call(x) for x in xs[start : start + WINDOW]]
        total += sum(f.result() for f in futures)
    return total


def _pending_thread(call: Callable[[int], Any], xs: range) -> int:
    PROBE.start()
    futures = [call(x) for x in xs]
    PROBE.stop()
    return sum(f.result() for f in futures)


ShapeSet = dict[str, Callable[[Callable[[int], Any], range], Any]]

ASYNC_SHAPES: ShapeSet = {
    "sequential": _sequential_async,
    "batched": _batched_async,
    "pending": _pending_async,
}
GEN_SHAPES: ShapeSet = {
    "sequential": _sequential_gen,
    "batched": _batched_gen,
    "pending": _pending_gen,
}
THREAD_SHAPES: ShapeSet = {
    "sequential": _sequential_thread,
    "batched": _batched_thread,
    "pending": _pending_thread,
}


# -- workloads -----------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    unit: str
    shape: str  # "sequential", "batched" or "pending"
    body: Callable[[int], int]
    workers: int  # pool size (and anyio's CapacityLimiter)

    @property
    def memory(self) -> bool:
        """Pending calls: sized by --memory-calls, scored from the probe's RSS delta."""
        return self.shape == "pending"

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "calls/s"

    def score(self, seconds: float, calls: int) -> float:
        if self.memory:
            return PROBE.delta / calls
        if self.shape == "sequential":
            return seconds / calls * 1e6
        return calls / seconds


WORKLOADS: tuple[Workload, ...] = (
    Workload("latency", "sequential latency", "µs/call", "sequential", noop, 4),
    Workload("throughput", "throughput, 1,000 in flight", "calls/s", "batched", noop, 4),
    Workload("cpu", "CPU body: sum(range(200))", "calls/s", "batched", cpu, 4),
    Workload("io", "I/O body: sleep 1 ms, 64 threads", "calls/s", "batched", io, 64),
    Workload("memory", "memory per pending call", "B/call", "pending", PROBE.held, 1),
)
