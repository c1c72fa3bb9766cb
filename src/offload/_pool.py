"""offload's own thread pool: workers drain a queue of calls directly.

A ``concurrent.futures.ThreadPoolExecutor`` wraps every job in a ``_WorkItem``
and a ``concurrent.futures.Future`` with its own Condition; the caller's asyncio
Future is then chained onto it. Here an offloaded call is one small object on a
``SimpleQueue`` and the worker reports straight to the loop's delivery queue.
``submit`` still works, so the pool is a full ``Executor`` for anyone else,
and it is a ``ThreadPoolExecutor`` (which asyncio's ``set_default_executor``
asks for), though none of that class's machinery runs.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from ._call import DELIVERY, FUTURE, ROUTE, fail_unstarted, run
from ._delivery import GaveUp
from ._errors import ExecutorShutdownError
from ._stats import CANCELLED, COMPLETED, DROPPED, ENDED, FAILED, STARTED, SUBMITTED, Stats

P = ParamSpec("P")
T = TypeVar("T")

_pool_numbers = itertools.count()

#: Called with a pool as it is shut down, by whoever shuts it down.
shutdown_hooks: list[Callable[[ThreadPool], object]] = []


def usable_cpus() -> int:
    """The CPUs this process may use.

    ``os.process_cpu_count()`` where it exists (3.13+, it respects CPU affinity),
    else the CPUs this process may run on, else ``os.cpu_count()``.
    """
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return counter() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_thread_count() -> int:
    """The size of the ``"default"`` pool: like ``ThreadPoolExecutor``'s."""
    return min(32, usable_cpus() + 4)


#: What the pool's queue holds: tuples whose first item runs the job and whose
#: second reports that it never will, each taking the whole tuple.
Job = tuple[Any, ...]


def run_submitted(job: Job) -> None:
    """Run a ``submit`` job: ``(run_submitted, abandon_submitted, future, fn, args, kwargs)``."""
    _, _, future, fn, args, kwargs = job
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        future.set_exception(exc)
        del job, future  # break the frame <-> exception cycle
    else:
        future.set_result(result)


def abandon_submitted(job: Job) -> None:
    """A ``submit`` job that will never run: its Future is cancelled."""
    job[2].cancel()


def _run_counted(job: Job) -> None:
    # A submit job of a pool that a name owns: counted in that name's statistics.
    _, _, future, fn, args, kwargs, stats = job
    if not future.set_running_or_notify_cancel():  # cancelled while it was queued
        stats.add(DROPPED)
        stats.add(CANCELLED)
        return
    try:
        row: list[int] = stats.local.row
    except AttributeError:
        row = stats.new_row()
    row[STARTED] += 1
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        row[ENDED] += 1
        row[FAILED] += 1
        future.set_exception(exc)
        del job, future  # break the frame <-> exception cycle
    else:
        row[ENDED] += 1
        row[COMPLETED] += 1
        future.set_result(result)


def _abandon_counted(job: Job) -> None:
    if job[2].cancel():
        job[6].add(DROPPED)
        job[6].add(CANCELLED)


class ThreadPool(ThreadPoolExecutor):
    """A thread pool tuned for offloaded calls; a ``concurrent.futures.Executor``.

    The built-in ``"default"`` and ``"io"`` names use it. Register your own to
    get the fast path with a size and thread names of your choosing; any other
    ``Executor`` also works, through the generic path.

    Threads are started on demand up to ``max_workers`` and are named
    ``f"{name}_{n}"``, so stack dumps show which pool runs what.

    It is a ``ThreadPoolExecutor``, so it can be the event loop's default
    executor (``loop.set_default_executor``): ``asyncio.to_thread`` and
    ``run_in_executor(None, ...)`` then run on it, and once a name uses the
    pool, what arrives through ``submit`` is counted in that name's statistics
    (the first name, if several share it). A pool that a registry made from a
    factory (the built-in names' pools, for one) and that is then shut down
    from outside the registry, as ``asyncio.run`` does to the default
    executor when it ends, is replaced by a new one on the name's next call.

    Examples:
        >>> import offload
        >>> pool = offload.ThreadPool(4, name="offload-db")
        >>> pool.submit(sum, [1, 2, 3]).result()
        6
        >>> pool.shutdown()
    """

    def __init__(self, max_workers: int | None = None, *, name: str | None = None) -> None:
        if max_workers is None:
            max_workers = default_thread_count()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
        self._max_workers = max_workers
        self._name = name or f"offload-pool{next(_pool_numbers)}"
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []  # started, in order
        self._current: list[Job | None] = []  # each worker's running job, written by that worker
        # While threads can still be started, ``_spare`` is exactly how many
        # workers wait (or are about to wait) for a job, less the jobs queued
        # for them; see ``_put_growing``. Both change under ``_lock`` only.
        self._unstarted = max_workers
        self._spare = 0
        self._alive = 0  # workers that have not yet exited
        self._closed = False
        #: The statistics ``submit`` jobs are counted in: those of the first name to use the pool.
        self._submit_stats: Stats | None = None

    @property
    def max_workers(self) -> int:
        """How many threads the pool may run at once."""
        return self._max_workers

    @property
    def name(self) -> str:
        """The prefix of the pool's thread names."""
        return self._name

    def __repr__(self) -> str:
        state = "shut down" if self._closed else f"{len(self._workers)} threads"
        return f"<offload.ThreadPool {self._name!r} max_workers={self._max_workers} {state}>"

    def _put(self, job: Job) -> None:
        """Queue a job: ``job[0](job)`` runs it; the fast path for offloaded calls.

        Once every thread is started, a put takes no lock: several loops can
        share one pool without queueing up on a lock (measured: 13 µs per call
        with one loop rose to 42 µs with four when every put took the lock).
        """
        if self._closed:
            raise ExecutorShutdownError(f"the thread pool {self._name!r} was shut down")
        if self._unstarted:
            self._put_growing(job)
        else:
            self._queue.put(job)
        if self._closed:  # shut down as we queued: make sure someone ends the job
            self._settle_orphans()

    def _put_growing(self, job: Job) -> None:
        # Every job in the queue has a worker that will take it without waiting
        # for a busy one: ``_spare`` counts waiting workers less queued jobs, a
        # worker adds one before it waits, and a put either uses one up or
        # starts a thread. So calls that wait for each other never deadlock
        # while the pool could still grow. Once it is full this is moot.
        with self._lock:
            if self._closed:
                raise ExecutorShutdownError(f"the thread pool {self._name!r} was shut down")
            if self._spare > 0:
                self._spare -= 1
            elif self._unstarted:
                self._start_worker()
            self._queue.put(job)

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> ConcurrentFuture[T]:
        """Schedule ``fn(*args, **kwargs)`` and return a ``concurrent.futures.Future``."""
        future: ConcurrentFuture[T] = ConcurrentFuture()
        stats = self._submit_stats
        if stats is None:
            self._put((run_submitted, abandon_submitted, future, fn, args, kwargs))
            return future
        stats.add(SUBMITTED)
        try:
            self._put((_run_counted, _abandon_counted, future, fn, args, kwargs, stats))
        except BaseException:
            stats.add(DROPPED)
            stats.add(FAILED)
            raise
        return future

    def _start_worker(self) -> None:
        # With the lock held. If the OS refuses a thread, the pool carries on
        # with the ones it has (the next put tries again); with none, the call fails.
        index = len(self._workers)
        thread = threading.Thread(
            target=self._work, args=(index,), name=f"{self._name}_{index}", daemon=True
        )
        self._current.append(None)
        try:
            thread.start()
        except RuntimeError:
            self._current.pop()
            if not self._alive:
                raise
            return
        self._workers.append(thread)
        self._unstarted -= 1
        self._alive += 1

    def _work(self, index: int) -> None:
        get, lock, current = self._queue.get, self._lock, self._current
        while True:
            job = get()
            if job is None:
                break
            current[index] = job
            job[0](job)
            current[index] = job = None
            if self._unstarted:  # still growing: say this worker waits again
                with lock:
                    self._spare += 1
        self._queue.put(None)  # pass the stop signal on to the next worker
        with lock:
            self._alive -= 1
            last = not self._alive
        if last:
            self._settle_orphans()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; optionally drop the queued ones; optionally wait.

        Calls already queued still run unless ``cancel_futures`` is true, in
        which case their Futures are cancelled and they never run.
        """
        dropped: list[Job] = []
        with self._lock:
            first = not self._closed
            if first:
                self._closed = True
                if cancel_futures:
                    dropped = self._take_queued()
                self._queue.put(None)
        if first:
            # A registry that made this pool from a factory makes a new one.
            for hook in shutdown_hooks:
                hook(self)
        # Outside the lock: ending a call gives back its slot, which may hand
        # a waiting call to this very pool (and be refused).
        for job in dropped:
            job[1](job)
        if not self._alive:
            self._settle_orphans()
        if wait:
            self._join()

    def _settle_orphans(self) -> None:
        """With the pool shut and no worker left: end every job still queued."""
        with self._lock:
            if self._alive or not self._closed:
                return  # a worker will see them, or the last one to exit will
            orphans = self._take_queued()
            self._queue.put(None)
        for job in orphans:
            job[1](job)

    def _take_queued(self) -> list[Job]:
        """Empty the queue (with the lock held): the jobs in it, stop signals left out."""
        return take_queued(self._queue)

    def _give_up(self, error: Callable[[], BaseException]) -> None:
        """After a shutdown that timed out: fail every call still queued or running.

        Offloaded calls fail with ``error()``; a thread cannot be stopped, so a
        running one runs on, holding its slot, and its outcome is dropped. Jobs
        from ``submit`` that have not started are cancelled.
        """
        with self._lock:
            queued = self._take_queued()
            self._queue.put(None)  # the stop signal, taken out with the rest
        give_up_jobs(queued, list(self._current), error)

    def _join(self, timeout: float | None = None) -> bool:
        """Wait for the threads of a shut-down pool; true if all have ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._workers):
            if thread is threading.current_thread():
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
            if thread.is_alive():
                return False
        return True


def fail_running(call: Job, error: BaseException) -> None:
    """Fail a running call's Future now (a shutdown gave up on it)."""
    # Fail the Future now; the thread's own outcome, when it comes, is dropped.
    # If the caller gave up already, the call's own end counts that: not here.
    call[DELIVERY].push(call[FUTURE], None, GaveUp(error), call[ROUTE].stats)


def take_queued(jobs: queue.SimpleQueue[Job | None]) -> list[Job]:
    """Empty a job queue (with its executor's lock held): the jobs in it, stop signals left out."""
    taken: list[Job] = []
    while True:
        try:
            job = jobs.get(block=False)
        except queue.Empty:
            return taken
        if job is not None:
            taken.append(job)


def give_up_jobs(
    queued: list[Job], running: list[Job | None], error: Callable[[], BaseException]
) -> None:
    """End what a shutdown that timed out gives up on: queued jobs unrun, running calls failed.

    Offloaded calls fail with ``error()`` (a running one runs on, its outcome dropped);
    ``submit`` jobs that have not started are cancelled.
    """
    for job in queued:
        if job[0] is run:
            fail_unstarted(job, error())
        else:
            job[1](job)
    for call in running:
        if call is not None and call[0] is run:
            fail_running(call, error())
