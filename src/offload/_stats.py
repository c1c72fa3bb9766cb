"""What a name knows about its calls: counters and timings, counted in one place.

Counters are kept per thread: each thread that counts a call's step gets a
row of its own and is the only writer of that row, so no update can be lost
whatever the interpreter does between a read and a write (no lock, and no
reliance on the GIL making ``+=`` atomic, which it does not). Reading sums the
rows; a reader may see a count a moment old, never a wrong one. A row whose
thread has ended is folded into ``retired`` when stats are read.

Which step of a call is counted where is written in ``_call.py`` (starts,
ends, calls that never ran) and ``_delivery.py`` (the fates the loop settles);
``_route.py`` counts submissions and ``_timeouts.py`` expiries.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any, Literal, TypedDict

logger = logging.getLogger("offload")

#: How many recent calls the wait and run-time percentiles are taken over.
WINDOW = 1024

#: Calls of an unbounded name are timed one in this many (every call of a
#: bounded name is timed): percentiles need only a sample, and reading the
#: clock is most of what statistics cost. A power of two.
SAMPLE_EVERY = 8
SAMPLE_MASK = SAMPLE_EVERY - 1

#: A name logs its slow-queue warning at most once in this many seconds.
WARN_EVERY = 10.0

#: What ``when_full`` may be.
WhenFull = Literal["wait", "fail"]

#: The counters, by index in a row. ``dropped`` calls left before they started
#: (they were given up while queued or waiting, or an executor refused them).
SUBMITTED, REJECTED, STARTED, ENDED, DROPPED, COMPLETED, FAILED, CANCELLED, TIMED_OUT = range(9)
_COUNTERS = 9

#: Rows kept before the rows of ended threads are folded away.
_PRUNE_AT = 64

now = time.perf_counter


class Timings(TypedDict):
    """Percentiles, in seconds, over a sample of a name's recent calls.

    The sample holds up to 1,024 calls: every call of a name with
    ``max_pending`` or whose calls leave this process, else one call in 8.

    Examples:
        >>> import offload
        >>> io = offload.Registry().stats()["io"]
        >>> io["wait"]
        {'samples': 0, 'p50': None, 'p90': None, 'p99': None, 'max': None}
    """

    #: How many calls the figures are taken over.
    samples: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


class ExecutorStats(TypedDict):
    """One name's statistics, as [`stats`][offload.stats] returns them: plain data.

    Counters run from the registry's creation. ``submitted`` counts every call
    made through the name, and each ends as exactly one of ``completed`` (it
    returned), ``failed`` (it raised, or could not run), ``cancelled`` (its
    caller cancelled it), ``timed_out``, or ``rejected`` (refused at once by a
    full ``max_pending`` bound with ``when_full="fail"``). At rest,
    ``submitted == completed + failed + cancelled + timed_out + rejected``.
    ``waiting``, ``queued`` and ``running`` say where the calls are now:
    waiting for a ``max_pending`` slot, in the executor's queue, or running. A
    thread whose caller gave up still counts as running until it returns.

    Examples:
        >>> import offload
        >>> stats = offload.Registry().stats()["default"]
        >>> stats["submitted"], stats["running"], stats["max_pending"]
        (0, 0, None)
    """

    name: str
    #: The executor's repr, or None before its first call.
    executor: str | None
    #: How many workers the executor has, where it says.
    workers: int | None
    max_pending: int | None
    when_full: WhenFull
    submitted: int
    rejected: int
    waiting: int
    queued: int
    running: int
    completed: int
    failed: int
    cancelled: int
    timed_out: int
    #: Time from the call to the start of its run. On a standard process pool,
    #: to the moment offload hands it to a free worker; calls on a cluster or
    #: an executor offload does not know are not timed here: offload cannot
    #: see them start.
    wait: Timings
    #: Time the call ran; where offload cannot see the start, the whole round trip.
    run: Timings


class Stats:
    """The counters and timing windows of one name (kept across replacements)."""

    __slots__ = (
        "last_warning",
        "local",
        "lock",
        "name",
        "retired",
        "rows",
        "runs",
        "waits",
        "warn_after",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        #: ``local.row`` is the calling thread's row of counters.
        self.local = threading.local()
        self.lock = threading.Lock()  # guards ``rows`` and ``retired``, not the counts
        # Each row with its owner, the only one that writes it: a thread, or a
        # loop's Delivery (for what is counted on that loop's thread).
        self.rows: list[tuple[weakref.ref[Any], list[int]]] = []
        self.retired = [0] * _COUNTERS
        self.waits: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.runs: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.warn_after = float("inf")
        self.last_warning = -WARN_EVERY

    def new_row(self) -> list[int]:
        """The calling thread's row, made on its first count."""
        row = [0] * _COUNTERS
        with self.lock:
            if len(self.rows) >= _PRUNE_AT:  # threads come and go: fold the ended ones
                self._fold_ended()
            self.rows.append((weakref.ref(threading.current_thread()), row))
        self.local.row = row
        return row

    def row_for(self, owner: object) -> list[int]:
        """A row for ``owner`` (a loop's Delivery) to count in; folded away once it is gone."""
        row = [0] * _COUNTERS
        with self.lock:
            self.rows.append((weakref.ref(owner), row))
        return row

    def add(self, counter: int) -> None:
        """Count one of ``counter`` on the calling thread's row."""
        try:
            row: list[int] = self.local.row
        except AttributeError:
            row = self.new_row()
        row[counter] += 1

    def totals(self) -> list[int]:
        """Every counter, summed over the threads that counted."""
        with self.lock:
            kept = self._fold_ended()
            totals = list(self.retired)
        for _, row in kept:
            for i, value in enumerate(list(row)):
                totals[i] += value
        return totals

    def _fold_ended(self) -> list[tuple[weakref.ref[Any], list[int]]]:
        # With the lock held: add the rows of ended threads and gone loops into ``retired``.
        kept = []
        for ref, row in self.rows:
            owner = ref()
            if owner is None or (isinstance(owner, threading.Thread) and not owner.is_alive()):
                for i, value in enumerate(row):
                    self.retired[i] += value
            else:
                kept.append((ref, row))
        self.rows = kept
        return kept

    def waited(self, wait: float, executor: object) -> None:
        """Record a call's wait for a worker; warn if it was too long."""
        self.waits.append(wait)
        if wait > self.warn_after:
            self._slow(wait, executor)

    def _slow(self, wait: float, executor: object) -> None:
        # At most once per WARN_EVERY seconds: a queue stays slow for a while.
        moment = time.monotonic()
        if moment - self.last_warning < WARN_EVERY:
            return
        self.last_warning = moment
        logger.warning(
            "a call to %r waited %.3fs for a worker (warn_after=%ss); its executor %r has "
            "%s workers; raise its size or bound the load with max_pending",
            self.name,
            wait,
            self.warn_after,
            executor,
            workers_of(executor) or "an unknown number of",
        )

    def after_fork(self) -> None:
        """In a child after ``fork``: the counts go on, from this one thread.

        The lock is replaced first: another thread of the parent may have held it.
        """
        self.lock = threading.Lock()
        totals = list(self.retired)
        for _, row in self.rows:
            for i, value in enumerate(list(row)):
                totals[i] += value
        self.local = threading.local()
        self.rows = []
        self.retired = totals


def timings(window: collections.deque[float]) -> Timings:
    """Percentiles over a window that other threads may be appending to."""
    while True:
        try:
            samples: Sequence[float] = sorted(window)
            break
        except RuntimeError:  # a worker appended while we copied: take it again
            continue
    n = len(samples)
    if not n:
        return Timings(samples=0, p50=None, p90=None, p99=None, max=None)

    def rank(p: float) -> float:
        return samples[min(n - 1, int(p * n))]

    return Timings(samples=n, p50=rank(0.5), p90=rank(0.9), p99=rank(0.99), max=samples[-1])


def workers_of(executor: object) -> int | None:
    """How many workers ``executor`` has, where it says."""
    for attribute in ("max_workers", "_max_workers"):
        size = getattr(executor, attribute, None)
        if isinstance(size, int) and not isinstance(size, bool):
            return size
    return None


def snapshot(
    stats: Stats,
    executor: Executor | None,
    max_pending: int | None,
    when_full: WhenFull,
    waiting: int,
) -> ExecutorStats:
    """One name's statistics now, as plain data."""
    counts = stats.totals()
    started, dropped = counts[STARTED], counts[DROPPED]
    settled = counts[SUBMITTED] - counts[REJECTED]
    return ExecutorStats(
        name=stats.name,
        executor=None if executor is None else repr(executor),
        workers=workers_of(executor),
        max_pending=max_pending,
        when_full=when_full,
        submitted=counts[SUBMITTED],
        rejected=counts[REJECTED],
        waiting=waiting,
        queued=max(0, settled - waiting - started - dropped),
        running=max(0, started - counts[ENDED]),
        completed=counts[COMPLETED],
        failed=counts[FAILED],
        cancelled=counts[CANCELLED],
        timed_out=counts[TIMED_OUT],
        wait=timings(stats.waits),
        run=timings(stats.runs),
    )
