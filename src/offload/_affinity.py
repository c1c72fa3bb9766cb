"""A thread-affine executor: every job on one dedicated thread.

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
"""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import Future as ConcurrentFuture
from typing import Any, ParamSpec, TypeVar

from ._errors import ExecutorShutdownError

P = ParamSpec("P")
T = TypeVar("T")

_numbers = itertools.count()
_Job = tuple["_AffineFuture[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


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

    def __init__(self, thread: threading.Thread) -> None:
        super().__init__()
        self._thread = thread

    def _refuse_wait_from_own_thread(self) -> None:
        if threading.current_thread() is self._thread and not self.done():
            raise DeadlockError(
                f"a job on the thread {self._thread.name!r} waited for another job queued "
                "on that same thread, which cannot start until the waiting job returns; "
                "call the function directly instead of submitting it"
            )

    def result(self, timeout: float | None = None) -> T:
        self._refuse_wait_from_own_thread()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._refuse_wait_from_own_thread()
        return super().exception(timeout)


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        future, fn, args, kwargs = job
        del job
        if not future.set_running_or_notify_cancel():
            continue
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            future.set_exception(exc)
            del exc  # the traceback holds this frame: do not keep it in a cycle
        else:
            future.set_result(result)
        del future, fn, args, kwargs


class AffineThread(Executor):
    """An executor that runs every job, in order, on one dedicated thread.

    Use it for objects that must stay on the thread that created them. Make one
    per process and register it under a name, or one per connection and pass it
    as the ``executor`` of that connection's calls: each instance has a thread
    of its own, started on the first job and named after the executor.

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

    def __init__(self, name: str | None = None) -> None:
        self._name = name or f"offload-affine{next(_numbers)}"
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=_serve, args=(self._jobs,), name=self._name, daemon=True
        )
        self._lock = threading.Lock()
        self._closed = False
        # The thread holds the queue, not the executor: dropping it ends the thread.
        weakref.finalize(self, self._jobs.put, None)

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

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> ConcurrentFuture[T]:
        """Queue ``fn(*args, **kwargs)`` for the thread; return its Future."""
        future: _AffineFuture[T] = _AffineFuture(self._thread)
        with self._lock:
            if self._closed:
                raise ExecutorShutdownError(f"the affine thread {self._name!r} was shut down")
            if self._thread.ident is None:
                self._thread.start()
            self._jobs.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; optionally cancel the queued ones; optionally wait.

        Queued jobs still run unless ``cancel_futures`` is true. Waiting is
        skipped when called from the executor's own thread.
        """
        dropped: list[_Job] = []
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    dropped = self._take_queued()
                self._jobs.put(None)
            started = self._thread.ident is not None
        # Outside the lock: a dropped job may give back a slot that hands a
        # waiting call to this very executor (which then refuses it).
        dropped.reverse()
        while dropped:  # each job dropped as it is cancelled, oldest first
            dropped.pop()[0].cancel()
        if wait and started and not self.is_current():
            self._thread.join()

    def _take_queued(self) -> list[_Job]:
        jobs: list[_Job] = []
        while True:
            try:
                job = self._jobs.get(block=False)
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)


class HeldThread(Executor):
    """A thread borrowed from a pool: what is submitted runs on it, in order, while it is lent.

    A job on the pool calls ``serve``, which runs the submitted jobs on that
    job's thread until ``close``; then the job goes on (a context's job runs
    ``__exit__`` next) and the thread goes back to the pool. This is how a
    context keeps one thread of a pool for its block. Jobs queued before
    ``close`` still run; later submits are refused. Its Futures refuse to be
    waited for from the thread itself, as an ``AffineThread``'s do.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = "not yet lent" if self._thread is None else f"on {self._thread.name!r}"
        return f"<offload held thread for {self._name} {where}>"

    def serve(self) -> None:
        """On the borrowed thread: run submitted jobs until ``close``."""
        self._thread = threading.current_thread()
        _serve(self._jobs)

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> ConcurrentFuture[T]:
        """Queue ``fn(*args, **kwargs)`` for the held thread; return its Future."""
        future: _AffineFuture[T] = _AffineFuture(self._thread)  # type: ignore[arg-type]
        with self._lock:
            if self._closed:
                raise ExecutorShutdownError(f"the thread held for {self._name} was given back")
            self._jobs.put((future, fn, args, kwargs))
        return future

    def close(self) -> None:
        """Let ``serve`` return once the jobs queued so far have run."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._jobs.put(None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: ARG002
        """Close: the jobs queued so far run, then the thread goes back to its pool.

        Neither waiting nor cancelling applies: the context that holds the
        thread waits for its own job.
        """
        self.close()
