"""Thread-affine executors: every job on one thread, in order.

Some objects must only be used on the thread that made them: sqlite3
connections refuse other threads, and many C drivers keep per-thread state.
An ``AffineThread`` runs everything submitted to it, in order, on one
thread of its own, so such an object is made and used in one place.

One job can deadlock such an executor: a job that waits for another job on the
same thread waits forever, since that job can only start once the waiting one
returns. The Futures it hands out therefore know their thread: asking for an
unfinished Future's result on that thread raises ``DeadlockError`` at once.
Submitting from the thread is allowed (the job simply queues); only waiting is
refused.

The queue holds what ``ThreadPool``'s holds: tuples whose first item runs the
job and whose second reports that it never will, each taking the whole tuple.
So an offloaded call's record goes on the queue as it is (``_put``, the send of
the ``OwnThread`` kind), with no concurrent Future and no holder per call, and
``submit`` queues its own jobs beside the calls. A put takes the executor's
lock, which orders it against the shutdown: every job is queued before the stop
signal or refused, so none is left behind on a queue nobody serves.
"""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import Future as ConcurrentFuture
from typing import ParamSpec, TypeVar

from ._errors import ExecutorShutdownError
from ._pool import Job, abandon_submitted, give_up_jobs, run_submitted, take_queued

P = ParamSpec("P")
T = TypeVar("T")

_numbers = itertools.count()


class DeadlockError(RuntimeError):
    """A job on an ``AffineThread`` waited for a job on that same thread.

    The awaited job could never start, so instead of hanging, the wait fails at
    once. Call the function directly instead: the waiting code already runs on
    the right thread.

    Examples:
        >>> import offload
        >>> worker = offload.AffineThread(name="db")
        >>> def nested():
        ...     return worker.submit(len, "abc").result()
        >>> try:
        ...     worker.submit(nested).result()
        ... except offload.DeadlockError as exc:
        ...     print(exc)
        a job on the thread 'db' waited for another job queued on that same thread,
        which cannot start until the waiting job returns; call the function
        directly instead of submitting it
        >>> worker.shutdown()
    """


class _AffineFuture(ConcurrentFuture[T]):
    """A Future that refuses to be waited for from the thread that must run it."""

    def __init__(self, thread: threading.Thread | None) -> None:
        super().__init__()
        self._thread = thread

    def _refuse_wait_from_own_thread(self) -> None:
        thread = self._thread
        if thread is not None and threading.current_thread() is thread and not self.done():
            raise DeadlockError(
                f"a job on the thread {thread.name!r} waited for another job queued "
                "on that same thread, which cannot start until the waiting job returns; "
                "call the function directly instead of submitting it"
            )

    def result(self, timeout: float | None = None) -> T:
        self._refuse_wait_from_own_thread()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._refuse_wait_from_own_thread()
        return super().exception(timeout)


class _Line:
    """What a one-thread executor shares with its thread, which must not hold the executor."""

    __slots__ = ("current", "done", "jobs", "queued")

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        #: Jobs queued so far, written under the executor's lock.
        self.queued = 0
        #: Jobs the thread has run so far, and the one it runs now: written by that thread only.
        self.done = 0
        self.current: Job | None = None


def _serve(line: _Line) -> None:
    """Run the line's jobs, in order, until the stop signal."""
    get = line.jobs.get
    while True:
        job = get()
        if job is None:
            return
        line.current = job
        job[0](job)
        line.current = job = None
        line.done += 1


class _OneThread(Executor):
    """What ``AffineThread`` and ``HeldThread`` share: one line of jobs, one thread serving it."""

    _thread: threading.Thread | None

    def __init__(self, name: str) -> None:
        self._name = name
        self._line = _Line()
        self._lock = threading.Lock()
        self._closed = False

    def _refusal(self) -> str:
        raise NotImplementedError

    def _ready(self) -> None:
        """With the lock held, before a job is queued: the thread is there to serve it."""

    def _put(self, job: Job) -> None:
        """Queue a job: ``job[0](job)`` runs it; the fast path for offloaded calls."""
        with self._lock:
            if self._closed:
                raise ExecutorShutdownError(self._refusal())
            self._ready()
            line = self._line
            line.jobs.put(job)
            line.queued += 1

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> ConcurrentFuture[T]:
        """Queue ``fn(*args, **kwargs)`` for the thread; return its Future."""
        future: _AffineFuture[T] = _AffineFuture(self._thread)
        self._put((run_submitted, abandon_submitted, future, fn, args, kwargs))
        return future

    def _close(self, cancel_futures: bool) -> list[Job]:
        """Take no more jobs and queue the stop signal; the jobs dropped, if cancelling."""
        dropped: list[Job] = []
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    dropped = self._take_queued()
                self._line.jobs.put(None)
        return dropped

    def _take_queued(self) -> list[Job]:
        """Empty the queue (with the lock held): the jobs in it, stop signals left out."""
        return take_queued(self._line.jobs)

    def _give_up(self, error: Callable[[], BaseException]) -> None:
        """After a shutdown that timed out: fail every call still queued or running.

        Offloaded calls fail with ``error()``; the thread cannot be stopped, so a
        running call runs on, holding its slot, and its outcome is dropped. Jobs
        from ``submit`` that have not started are cancelled.
        """
        with self._lock:
            queued = self._take_queued()
            self._line.jobs.put(None)  # the stop signal, taken out with the rest
        give_up_jobs(queued, [self._line.current], error)


def end_dropped(dropped: list[Job]) -> None:
    """End dropped jobs unrun, oldest first, each let go of as it ends.

    Outside the executor's lock: ending a call gives back its slot, which may
    hand a waiting call to this very executor (which then refuses it).
    """
    dropped.reverse()
    while dropped:
        job = dropped.pop()
        job[1](job)
        del job


class AffineThread(_OneThread):
    """An executor that runs every job, in order, on one dedicated thread.

    Use it for objects that must stay on the thread that created them. Make one
    per process and register it under a name, or one per connection and pass it
    as the ``executor`` of that connection's calls: each instance has a thread
    of its own, started on the first job and named after the executor. To have
    per-connection threads counted and bounded under a name, register
    [`Lanes`][offload.Lanes] and give each connection a [`lane`][offload.lane].

    A job that waits for another job on the same thread (``submit(...).result()``
    from inside a job) raises ``DeadlockError`` instead of hanging. Waiting
    by other means, such as ``concurrent.futures.wait``, is not checked.

    The thread ends on ``shutdown``, or once the executor is garbage.

    Examples:
        >>> import asyncio, sqlite3, offload
        >>> db_thread = offload.AffineThread(name="sqlite")
        >>> connect = offload.offload(sqlite3.connect, executor=db_thread)
        >>> async def main():
        ...     conn = await connect(":memory:")  # made on the thread ...
        ...     query = offload.offload(conn.execute, executor=db_thread)
        ...     cursor = await query("SELECT 6 * 7")  # ... and used there
        ...     row = await offload.offload(cursor.fetchone, executor=db_thread)()
        ...     await offload.offload(conn.close, executor=db_thread)()
        ...     return row
        >>> asyncio.run(main())
        (42,)
        >>> db_thread.shutdown()
    """

    _thread: threading.Thread

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name or f"offload-affine{next(_numbers)}")
        self._thread = threading.Thread(
            target=_serve, args=(self._line,), name=self._name, daemon=True
        )
        self._started = False
        # The thread holds its line, not the executor: dropping it ends the thread.
        weakref.finalize(self, self._line.jobs.put, None)

    @property
    def name(self) -> str:
        """The name of the thread."""
        return self._name

    def __repr__(self) -> str:
        if self._closed:
            state = "shut down"
        else:
            state = "running" if self._thread.is_alive() else "not started"
        return f"<offload.AffineThread {self._name!r} {state}>"

    def is_current(self) -> bool:
        """Whether the calling code runs on this executor's thread.

        Examples:
            >>> import offload
            >>> worker = offload.AffineThread()
            >>> worker.is_current(), worker.submit(worker.is_current).result()
            (False, True)
            >>> worker.shutdown()
        """
        return threading.current_thread() is self._thread

    def _refusal(self) -> str:
        return f"the affine thread {self._name!r} was shut down"

    def _ready(self) -> None:
        if not self._started:
            self._thread.start()  # if the OS refuses a thread, the job is refused
            self._started = True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; optionally cancel the queued ones; optionally wait.

        Queued jobs still run unless ``cancel_futures`` is true. Waiting is
        skipped when called from the executor's own thread.
        """
        end_dropped(self._close(cancel_futures))
        if wait:
            self._join()

    def _join(self, timeout: float | None = None) -> bool:
        """Wait for the thread of a shut-down executor; true if it has ended."""
        if self._started and not self.is_current():
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True


class HeldThread(_OneThread):
    """A thread borrowed from a pool: what is submitted runs on it, in order, while it is lent.

    A job on the pool calls ``serve``, which runs the submitted jobs on that
    job's thread until ``close``; then the job goes on (a context's job runs
    ``__exit__`` next) and the thread goes back to the pool. This is how a
    context keeps one thread of a pool for its block. Jobs queued before
    ``close`` still run; later submits are refused. Its Futures refuse to be
    waited for from the thread itself, as an ``AffineThread``'s do.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._thread = None

    def __repr__(self) -> str:
        where = "not yet lent" if self._thread is None else f"on {self._thread.name!r}"
        return f"<offload held thread for {self._name} {where}>"

    def _refusal(self) -> str:
        return f"the thread held for {self._name} was given back"

    def serve(self) -> None:
        """On the borrowed thread: run submitted jobs until ``close``."""
        self._thread = threading.current_thread()
        _serve(self._line)

    def close(self) -> None:
        """Let ``serve`` return once the jobs queued so far have run."""
        self._close(cancel_futures=False)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: ARG002
        """Close: the jobs queued so far run, then the thread goes back to its pool.

        Neither waiting nor cancelling applies: the context that holds the
        thread waits for its own job.
        """
        self.close()

    def _join(self, timeout: float | None = None) -> bool:  # noqa: ARG002
        """Nothing to wait for: the context that holds the thread waits for its own job."""
        return True
