"""offload's own process pool: it knows which worker runs which call.

A ``concurrent.futures.ProcessPoolExecutor`` cannot stop one job: killing a
worker breaks the whole pool and fails every call in flight. Here each worker
runs one call at a time over its own pipe, so a call that times out or is
cancelled costs only its own worker, which is terminated (``SIGTERM``, then
``SIGKILL`` if it lingers) and replaced. A worker that dies fails only its own
call, with [`WorkerDiedError`][offload.WorkerDiedError]. One manager thread per pool sends
calls, reads results and watches the workers; results go straight to the
caller's loop through its delivery queue.

A worker runs the pool's initializer before it reads its first call; if the
initializer raised, its reply to that call says so, and it exits. The manager
counts each worker's replies and, after ``max_tasks_per_child``, sends it the
same stop message as a shutdown: the worker itself keeps no count.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import math
import multiprocessing
import multiprocessing.util  # its exit hook must be registered before ours runs
import os
import pickle
import socket
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import Future as ConcurrentFuture
from multiprocessing.connection import Connection, wait
from typing import Any, ParamSpec, TypeVar

from ._call import ARGS, FN, FUTURE, KWARGS, ROUTE, Call, began, finish, never_ran
from ._delivery import CANCELLED
from ._errors import (
    ExecutorShutdownError,
    InitializerError,
    NotPicklableError,
    WorkerDiedError,
    describe_exit,
    name_of,
)
from ._pickling import (
    PROTOCOL,
    describe_exception,
    local_function_error,
    pack_call,
    pack_exception,
    run_shipment,
    ship,
    unpack_exception,
    unpack_reply,
)
from ._pool import usable_cpus

P = ParamSpec("P")
T = TypeVar("T")

_pool_numbers = itertools.count()

#: Environment variable choosing the start method of the built-in ``"cpu"`` pool.
START_METHOD_VARIABLE = "OFFLOAD_CPU_START_METHOD"

#: The first byte of a worker's reply when its initializer raised (a call's
#: reply starts with ``_pickling.RESULT`` or ``ERROR``).
INIT_FAILED = b"i"
#: What a worker sends once its initializer returned: no reply is empty.
INITIALIZED = b""

#: What a worker runs before its first call: the initializer and its arguments,
#: pickled once when the pool is made (spawn, forkserver), or as they are (fork).
Initializer = bytes | tuple[Callable[..., object], tuple[Any, ...]]


def default_start_method() -> str:
    """``"forkserver"`` where the platform has it, else ``"spawn"``.

    Not ``"fork"``: forking a process that runs an event loop and thread pools
    copies their locks mid-use (Python 3.14 made the same choice).
    """
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def _worker_main(
    conn: Connection,
    parent_end: Connection | None = None,
    initializer: Initializer | None = None,
    initializer_name: str = "",
) -> None:
    """A worker process: run calls from ``conn`` one at a time until told to stop.

    The pool counts the calls (``max_tasks_per_child``) and tells a worker to
    stop, so a worker needs no count of its own.
    """
    if parent_end is not None:
        # Forked, this process holds the pool's end of its own pipe too: close
        # it, or the pipe never reports the pool's process gone.
        parent_end.close()
    failure = None
    if initializer is not None:
        failure = _initialize(initializer, initializer_name)
        if failure is None:
            try:
                conn.send_bytes(INITIALIZED)
            except OSError:
                return
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the parent is gone
            return
        if not message:
            return
        if failure is not None:
            # The reply to the call this worker was started for: the pool fails
            # that call with the initializer's error, and the worker, not fit to
            # run calls, exits.
            with contextlib.suppress(OSError):
                conn.send_bytes(failure)
            return
        split = message.index(b"\0")
        name = message[:split].decode()
        reply = run_shipment(memoryview(message)[split + 1 :], name)
        del message
        try:
            conn.send_bytes(reply)
        except OSError:
            return


def _initialize(initializer: Initializer, name: str) -> bytes | None:
    """In a worker: run the pool's initializer; if it raised, the reply that says so."""
    try:
        fn, args = (
            _load_initializer(initializer, name) if isinstance(initializer, bytes) else initializer
        )
        fn(*args)
    except BaseException as exc:  # whatever it raised goes back with the first call
        return INIT_FAILED + pack_exception(exc, name)
    return None


def _load_initializer(packed: bytes, name: str) -> tuple[Callable[..., object], tuple[Any, ...]]:
    try:
        loaded: tuple[Callable[..., object], tuple[Any, ...]] = pickle.loads(packed)  # noqa: S301  # from our parent
    except Exception as exc:
        raise NotPicklableError(
            f"the worker process could not load the initializer {name} or its initargs "
            f"({describe_exception(exc)}). Under spawn and forkserver a worker imports the "
            "initializer's module by name: define it in an importable module, not in an "
            "interactive session."
        ) from exc
    return loaded


class _Job:
    """One call: an offloaded call's record, or a ``submit`` job's concurrent Future."""

    __slots__ = (
        "abandoned", "args", "call", "finished", "future", "kwargs", "name", "started", "target",
    )  # fmt: skip

    def __init__(  # noqa: PLR0917 - one call's parts
        self,
        target: Any,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        call: Call | None,
        future: ConcurrentFuture[Any] | None = None,
    ) -> None:
        self.target, self.args, self.kwargs = target, args, kwargs
        self.call, self.future = call, future
        self.name = name
        self.abandoned = False  # its caller gave up: cancelled, or timed out
        self.finished = False  # it ended: an outcome was delivered, or it never ran
        self.started = 0.0

    def start(self) -> bool:
        """Whether to run it now; a job given up before it started ends here, unrun."""
        call = self.call
        if call is None:
            if self.future.set_running_or_notify_cancel():  # type: ignore[union-attr]
                return True
            self.finished = True
            return False
        if self.abandoned or call[FUTURE].done():
            self.finished = True
            never_ran(call)
            return False
        stats = call[ROUTE].stats
        if stats is not None:
            self.started = began(call, stats)
        return True

    def end(self, value: Any, exc: Any) -> None:
        """Its work is over: deliver the outcome (the slot, if any, is given back)."""
        self.finished = True
        if self.call is not None:
            finish(self.call, value, exc, self.started)
        elif exc is None:
            self.future.set_result(value)  # type: ignore[union-attr]
        elif exc is CANCELLED:
            self.future.set_exception(  # type: ignore[union-attr]
                ExecutorShutdownError("the process pool stopped this job")
            )
        else:
            self.future.set_exception(exc)  # type: ignore[union-attr]

    def drop(self) -> None:
        """It never started and never will (the pool was shut down): cancel it."""
        self.finished = True
        if self.call is not None:
            never_ran(self.call)
        else:
            self.future.cancel()  # type: ignore[union-attr]


class _Worker:
    __slots__ = ("calls", "conn", "gone", "initialized", "job", "kill_at", "process", "stopping")

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process, self.conn = process, conn
        self.job: _Job | None = None
        self.calls = 0  # calls it replied to
        self.initialized = False  # its initializer, if any, returned
        self.gone = False  # its pipe closed: waiting for the process to be reaped
        self.stopping = False
        self.kill_at = math.inf

    @property
    def idle(self) -> bool:
        return self.job is None and not (self.gone or self.stopping)


_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


class ProcessPool(Executor):
    """A process pool that can stop one call: the built-in ``"cpu"`` name uses it.

    Offloaded calls run in worker processes, started on demand up to
    ``max_workers`` and reused. The function travels by reference (module and
    name), its arguments and result by pickle; in the worker the original body
    runs, never the wrapper.

    Beyond ``ProcessPoolExecutor``:

    - a call that times out (``offload(..., timeout=...)``) or whose Future is
      cancelled while it runs has its worker terminated: ``SIGTERM``, then
      ``SIGKILL`` after ``terminate_timeout`` seconds. A new worker takes its
      place; other calls in flight carry on.
    - a worker that dies fails only its own call, with
      [`WorkerDiedError`][offload.WorkerDiedError]; the pool stays usable.
    - a call whose function, arguments or result cannot be pickled fails alone,
      with [`NotPicklableError`][offload.NotPicklableError].
    - an ``initializer`` that raises fails only the call its worker was started
      for, with [`InitializerError`][offload.InitializerError]; the pool stays
      usable, where a standard pool breaks as a whole.

    ``initializer`` and ``max_tasks_per_child`` mean what they mean for
    ``ProcessPoolExecutor``. The initializer runs once in each worker process,
    before its first call: in every new worker, also those that replace a
    worker that was recycled, terminated or died. If it raises, that worker
    exits, and the call it was started for fails with ``InitializerError``
    (the initializer's exception is its ``__cause__``). The next call starts a
    new worker, which runs the initializer again, so an initializer that can
    never succeed fails every call, each after starting a worker.

    A worker exits after ``max_tasks_per_child`` calls (calls that reached it:
    one that could not be pickled never does), and the next call that needs
    a worker starts a new one. There are never more than ``max_workers``
    worker processes, the exiting ones included. ``ProcessPoolExecutor``
    refuses ``max_tasks_per_child`` with ``"fork"``, because it forks all its
    workers before its manager thread starts and a replacement would be forked
    from a process with threads. This pool starts every worker on demand from
    its manager thread whatever the option, so a recycled worker is forked
    exactly as any other: ``"fork"`` is allowed, with the risk it always has
    (see ``start_method``).

    Args:
        max_workers: Worker processes at most; defaults to the CPUs this
            process may use (``os.process_cpu_count()`` on Python 3.13+, else
            the CPUs it may run on).
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"``; defaults to
            ``"forkserver"`` where available, else ``"spawn"``. Not ``"fork"``
            by default: forking a process that runs threads copies their locks
            in whatever state they are in.
        name: Prefix of the worker process names.
        terminate_timeout: Seconds between ``SIGTERM`` and ``SIGKILL`` when a
            worker is stopped.
        max_tasks_per_child: Calls a worker process runs before it exits and
            a new one takes its place; ``None`` (the default) keeps workers
            for the pool's life. Bounds what a leaking library can hold.
        initializer: Called as ``initializer(*initargs)`` once in each worker
            process before its first call, to set up what its calls share (a
            connection, a model, a seeded generator). Under ``"spawn"`` and
            ``"forkserver"`` it must be picklable: a module-level function.
        initargs: The arguments of ``initializer``, a tuple. Under ``"spawn"``
            and ``"forkserver"`` they are pickled once, when the pool is made.

    Raises:
        TypeError: ``initializer`` is not callable, or is a lambda or nested
            function under ``"spawn"`` or ``"forkserver"``; ``initargs`` is not
            a tuple, or is given without an initializer;
            ``max_tasks_per_child`` is not an int.
        ValueError: ``max_workers`` or ``max_tasks_per_child`` is not
            positive, ``start_method`` is unknown, or ``terminate_timeout``
            is negative.
        NotPicklableError: under ``"spawn"`` or ``"forkserver"``, the
            initializer or its arguments cannot be pickled.

    Examples:
        >>> import offload, socket
        >>> pool = offload.ProcessPool(2, start_method="spawn", name="offload-docs")
        >>> pool
        <offload.ProcessPool 'offload-docs' max_workers=2 start_method='spawn' 0 processes>
        >>> pool.shutdown()

        Each worker runs one call, then a new one replaces it; each sets its
        default socket timeout before its first call:

        >>> pool = offload.ProcessPool(
        ...     1, start_method="spawn", max_tasks_per_child=1,
        ...     initializer=socket.setdefaulttimeout, initargs=(5.0,),
        ... )
        >>> [pool.submit(socket.getdefaulttimeout).result(timeout=30) for _ in range(2)]
        [5.0, 5.0]
        >>> pool.shutdown()
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str | None = None,
        name: str | None = None,
        terminate_timeout: float = 1.0,
        max_tasks_per_child: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers is None:
            max_workers = usable_cpus()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
        if start_method is None:
            start_method = default_start_method()
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method must be one of {multiprocessing.get_all_start_methods()}, "
                f"got {start_method!r}"
            )
        if not terminate_timeout >= 0:
            raise ValueError(f"terminate_timeout must be >= 0, got {terminate_timeout!r}")
        _check_max_tasks(max_tasks_per_child)
        self._context = multiprocessing.get_context(start_method)
        self._start_method = start_method
        self._max_workers = max_workers
        self._name = name or f"offload-processes{next(_pool_numbers)}"
        self._terminate_timeout = terminate_timeout
        self._max_tasks_per_child = max_tasks_per_child
        self._initializer_name = "" if initializer is None else name_of(initializer)
        self._initializer = _pack_initializer(initializer, initargs, start_method, self._where())
        self._lock = threading.Lock()
        self._queue: collections.deque[_Job] = collections.deque()
        self._given_up = False  # a call was given up: the queue may hold it (see _drop_given_up)
        self._closed = False
        self._exiting = False
        self._woken = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._manager: threading.Thread | None = None
        # Touched by the manager thread only:
        self._workers: list[_Worker] = []
        self._dying: list[_Worker] = []
        self._started = 0
        _pools.add(self)

    @property
    def max_workers(self) -> int:
        """How many worker processes the pool may run at once."""
        return self._max_workers

    @property
    def name(self) -> str:
        """The prefix of the pool's worker process names."""
        return self._name

    @property
    def start_method(self) -> str:
        """How worker processes start: ``"fork"``, ``"spawn"`` or ``"forkserver"``."""
        return self._start_method

    @property
    def max_tasks_per_child(self) -> int | None:
        """How many calls a worker process runs before a new one replaces it, or None."""
        return self._max_tasks_per_child

    def __repr__(self) -> str:
        state = "shut down" if self._closed else f"{len(self._workers)} processes"
        recycle = (
            ""
            if self._max_tasks_per_child is None
            else f" max_tasks_per_child={self._max_tasks_per_child}"
        )
        return (
            f"<offload.ProcessPool {self._name!r} max_workers={self._max_workers} "
            f"start_method={self._start_method!r}{recycle} {state}>"
        )

    # -- the caller's side ---------------------------------------------------

    def _send(self, call: Call) -> None:
        """Queue an offloaded call; its outcome goes to its loop's delivery queue."""
        target, name = ship(call[FN], self._where)
        job = _Job(target, name, call[ARGS], call[KWARGS], call)
        self._put(job)
        call[FUTURE].add_done_callback(functools.partial(self._settled, job))

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> ConcurrentFuture[T]:
        """Schedule ``fn(*args, **kwargs)`` and return a ``concurrent.futures.Future``."""
        future: ConcurrentFuture[T] = ConcurrentFuture()
        self._put(_Job(*ship(fn, self._where), args, kwargs, None, future))
        return future

    def _where(self) -> str:
        return f"the process pool {self._name!r}"

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise ExecutorShutdownError(f"the process pool {self._name!r} was shut down")
            self._queue.append(job)
            if self._manager is None:
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.settimeout(0.0)  # non-blocking
                self._wake_w.settimeout(0.0)
                self._manager = threading.Thread(
                    target=self._manage, name=f"{self._name}-manager", daemon=True
                )
                self._manager.start()
                # Told to stop when this process exits, before multiprocessing
                # joins its children: also in a process multiprocessing started,
                # which runs these finalizers and not atexit.
                multiprocessing.util.Finalize(
                    self, _stop_pool, args=(weakref.ref(self),), exitpriority=10
                )
            else:
                self._wake()

    def _wake(self) -> None:
        # With self._lock held. One byte per burst: the manager clears the flag
        # before it looks at the queue, so no request is missed.
        if not self._woken and self._wake_w is not None:
            self._woken = True
            with contextlib.suppress(OSError):  # a full buffer: the manager is awake anyway
                self._wake_w.send(b"\0")

    def _settled(self, job: _Job, _future: object) -> None:
        """Done-callback of an offloaded call's Future: stop it if it still runs."""
        if not job.finished:
            job.abandoned = True
            with self._lock:
                self._given_up = True
                self._wake()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; optionally cancel the queued ones; optionally wait.

        Queued calls still run unless ``cancel_futures`` is true. Workers exit
        once their current call is done.
        """
        with self._lock:
            self._closed = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
            self._wake()
        for job in dropped:
            job.drop()
        if wait:
            self._join()

    def _stop_now(self) -> None:
        """At interpreter exit: cancel queued calls, terminate running ones, wait.

        Nobody is left to await their Futures, and a call that never returns
        must not keep the interpreter from exiting. The manager thread itself
        terminates what runs, so a job it holds between the queue and a worker
        is seen too.
        """
        self._exiting = True
        self.shutdown(wait=False, cancel_futures=True)
        self._join()

    def _join(self, timeout: float | None = None) -> bool:
        """Wait for a shut-down pool's workers to exit; true if they all have."""
        manager = self._manager
        if manager is None or manager is threading.current_thread():
            return True
        manager.join(timeout)
        return not manager.is_alive()

    # -- the manager thread --------------------------------------------------

    def _manage(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            self._fail_all(exc)
            raise
        finally:
            for sock in (self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()

    def _run(self) -> None:
        wake_r = self._wake_r
        assert wake_r is not None  # noqa: S101  # set before the thread starts
        while True:
            now = time.monotonic()
            self._assign()
            self._drop_given_up()
            if self._exiting:  # every running call is given up, the one just assigned too
                for worker in self._workers:
                    if worker.job is not None:
                        worker.job.abandoned = True
            self._stop_abandoned(now)
            if self._closed and self._retire():
                return
            waitables: list[Any] = [wake_r]
            for worker in self._workers:
                if worker.job is not None and not worker.gone:
                    waitables.append(worker.conn)
                waitables.append(worker.process.sentinel)
            waitables.extend(worker.process.sentinel for worker in self._dying)
            deadline = min((worker.kill_at for worker in self._dying), default=math.inf)
            timeout = None if deadline == math.inf else max(0.0, deadline - now)
            self._handle(set(wait(waitables, timeout)))

    def _handle(self, ready: set[Any]) -> None:
        wake_r = self._wake_r
        if wake_r in ready:
            # Drain, then clear the flag: cleared first, a wake-up sent in
            # between would be drained with the flag left set, and every later
            # wake-up skipped.
            with contextlib.suppress(BlockingIOError):
                while wake_r.recv(4096):  # type: ignore[union-attr]
                    pass
            with self._lock:
                self._woken = False
        for worker in self._workers:
            if worker.conn in ready:
                self._receive(worker)
        for worker in [w for w in self._workers if w.process.sentinel in ready]:
            self._buried(worker)
        self._reap(ready)

    def _assign(self) -> None:
        while True:
            worker = next((w for w in self._workers if w.idle), None)
            if worker is None and len(self._workers) >= self._max_workers:
                return
            with self._lock:
                if not self._queue:
                    return
                job = self._queue.popleft()
            try:
                if job.start():  # else given up before it started: it never runs
                    self._give(job, worker)
            except BaseException as exc:  # whatever a job does, the manager carries on
                if not job.finished:
                    job.end(None, _broke(job, exc))

    def _drop_given_up(self) -> None:
        # A call given up while queued leaves the queue now, not when a worker
        # frees: it ends unrun at once, so its slot comes back and a caller
        # that waits for its end (cancel="wait") hears now.
        with self._lock:
            if not self._given_up:
                return
            self._given_up = False
            left = [job for job in self._queue if job.abandoned]
            if left:
                self._queue = collections.deque(job for job in self._queue if not job.abandoned)
        for job in left:
            job.start()  # given up: it ends unrun

    def _give(self, job: _Job, worker: _Worker | None) -> None:
        try:
            data = pack_call(job.target, job.args, job.kwargs, job.name)
        except NotPicklableError as exc:
            job.end(None, exc)
            return
        if worker is None:
            try:
                worker = self._start_worker()
            except Exception as exc:
                err = RuntimeError(
                    f"the process pool {self._name!r} could not start a worker process "
                    f"for {job.name}: {type(exc).__name__}: {exc}"
                )
                err.__cause__ = exc
                job.end(None, err)
                return
        worker.job = job
        try:
            worker.conn.send_bytes(job.name.encode() + b"\0" + data)
        except OSError:
            worker.gone = True  # it died: its sentinel reports how

    def _start_worker(self) -> _Worker:
        parent, child = self._context.Pipe()
        inherited = parent if self._start_method == "fork" else None
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child, inherited, self._initializer, self._initializer_name),
            name=f"{self._name}_{self._started}",
        )
        self._started += 1
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.append(worker)
        return worker

    def _receive(self, worker: _Worker) -> None:
        try:
            reply = worker.conn.recv_bytes()
        except (EOFError, OSError):
            worker.gone = True
            return
        self._take(worker, reply)

    def _take(self, worker: _Worker, reply: bytes) -> None:
        """What a worker sent: a call's outcome, or word that its initializer returned."""
        if reply == INITIALIZED:
            worker.initialized = True
            return
        job, worker.job = worker.job, None
        worker.calls += 1
        init_failed = reply[:1] == INIT_FAILED
        if init_failed:
            worker.stopping = True  # it exits on its own
        elif worker.calls == self._max_tasks_per_child:
            self._stop_worker(worker)  # it has run its share: a new one takes its place
        if job is None or job.finished:
            return
        try:
            if init_failed:
                job.end(None, self._initializer_failed(job, worker, reply))
            else:
                job.end(*unpack_reply(reply, job.name))
        except BaseException as exc:  # whatever came back, the manager carries on
            if not job.finished:
                job.end(None, _broke(job, exc))

    def _initializer_failed(self, job: _Job, worker: _Worker, reply: bytes) -> InitializerError:
        cause = unpack_exception(memoryview(reply)[1:], self._initializer_name)
        pid = worker.process.pid
        err = InitializerError(
            f"the initializer {self._initializer_name} of the process pool {self._name!r} "
            f"raised {describe_exception(cause)} in the worker process {pid}, so {job.name} "
            "did not run; that worker exits, and the next call starts a new one, which runs "
            "the initializer again",
            pid=pid,
        )
        err.__cause__ = cause
        return err

    def _stop_worker(self, worker: _Worker) -> None:
        """Tell an idle worker to exit once it has read what it was sent."""
        worker.stopping = True
        try:
            worker.conn.send_bytes(b"")
        except OSError:
            worker.gone = True

    def _buried(self, worker: _Worker) -> None:
        """A worker process ended on its own: fail its call, forget the worker."""
        worker.process.join()
        # What it sent before it died (a reply, word of its initializer) still counts.
        with contextlib.suppress(EOFError, OSError):
            while worker.job is not None and worker.conn.poll():
                self._take(worker, worker.conn.recv_bytes())
        worker.conn.close()
        self._workers.remove(worker)
        job = worker.job
        if job is not None and not job.finished:
            code = worker.process.exitcode
            pid = worker.process.pid
            if self._initializer is not None and not worker.initialized:
                how = (
                    f"started for {job.name} died ({describe_exit(code)}) in its initializer "
                    f"{self._initializer_name}, before the call ran"
                )
            else:
                how = f"running {job.name} died ({describe_exit(code)}) before it returned"
            job.end(
                None,
                WorkerDiedError(
                    f"the worker process {pid} {how}; the pool {self._name!r} replaces it, "
                    "so later calls run on a new worker",
                    code,
                    pid=pid,
                ),
            )

    def _stop_abandoned(self, now: float) -> None:
        # A given-up call's worker is terminated. The call keeps its slot until
        # the process is gone (``_reap``): only then is its work really over.
        for worker in list(self._workers):
            job = worker.job
            if job is not None and job.abandoned and not job.finished:
                worker.process.terminate()
                worker.kill_at = now + self._terminate_timeout
                self._workers.remove(worker)
                self._dying.append(worker)

    def _reap(self, ready: set[Any]) -> None:
        now = time.monotonic()
        for worker in list(self._dying):
            if worker.process.sentinel in ready:
                worker.process.join()
                worker.conn.close()
                self._dying.remove(worker)
                job, worker.job = worker.job, None
                if job is not None and not job.finished:
                    job.end(None, _stopped(job, self._exiting))
            elif worker.kill_at <= now:
                worker.process.kill()  # it ignored SIGTERM
                worker.kill_at = math.inf

    def _retire(self) -> bool:
        """While closing: stop idle workers; true once every worker has exited."""
        with self._lock:
            if self._queue:
                return False
        for worker in self._workers:
            if worker.idle:
                self._stop_worker(worker)
        return not self._workers and not self._dying

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._queue)
            self._queue.clear()
        jobs.extend(w.job for w in self._workers + self._dying if w.job is not None)
        for job in jobs:
            if not job.finished:
                job.end(None, RuntimeError(f"the process pool {self._name!r} failed: {exc!r}"))
        for worker in self._workers + self._dying:
            worker.process.kill()


def _check_max_tasks(max_tasks_per_child: object) -> None:
    if max_tasks_per_child is None:
        return
    if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
        raise TypeError(
            "max_tasks_per_child must be a positive int (calls per worker process) or None, "
            f"got {max_tasks_per_child!r}"
        )
    if max_tasks_per_child < 1:
        raise ValueError(
            "max_tasks_per_child must be a positive int (calls per worker process) or None, "
            f"got {max_tasks_per_child!r}"
        )


def _pack_initializer(
    initializer: object, initargs: object, start_method: str, where: str
) -> Initializer | None:
    """What each worker gets to run before its first call, checked now; None for nothing."""
    if not isinstance(initargs, tuple):
        raise TypeError(
            f"initargs must be a tuple of the initializer's arguments, got {initargs!r} "
            f"(a {type(initargs).__name__}); for one argument write initargs=(value,)"
        )
    if initializer is None:
        if initargs:
            raise TypeError(f"initargs={initargs!r} was given without an initializer to take it")
        return None
    if not callable(initializer):
        raise TypeError(
            f"initializer must be a callable, run in each worker process before its first "
            f"call, got {initializer!r} (a {type(initializer).__name__})"
        )
    if start_method == "fork":  # a forked worker has it already: nothing to pickle
        return initializer, initargs
    error = local_function_error(
        initializer,
        f"{where} as its initializer",
        advice=(
            f"Under {start_method!r} each worker process imports it: define it at module "
            "level, or start workers with start_method='fork'."
        ),
    )
    if error is not None:
        raise error
    try:
        return pickle.dumps((initializer, initargs), PROTOCOL)
    except Exception as exc:
        raise NotPicklableError(
            f"the initializer {name_of(initializer)} or its initargs cannot be pickled to "
            f"send them to worker processes started with {start_method!r} "
            f"({describe_exception(exc)}). Define the initializer at module level and pass "
            "picklable initargs, or start workers with start_method='fork'."
        ) from exc


def _broke(job: _Job, exc: BaseException) -> BaseException:
    err = RuntimeError(
        f"the process pool could not handle {job.name}: {type(exc).__name__} while sending "
        "the call or reading its outcome; the pool carries on"
    )
    err.__cause__ = exc
    return err


def _stopped(job: _Job, exiting: bool) -> Any:
    # A worker terminated for its job: normally the caller gave up, and the
    # Future is settled already (the outcome is then dropped).
    if exiting:
        return ExecutorShutdownError(
            f"the interpreter exited while {job.name} ran; its worker process was terminated"
        )
    return CANCELLED


def _reset_after_fork() -> None:
    # The parent's manager thread and workers are not this process's: start afresh.
    for pool in list(_pools):
        pool._lock = threading.Lock()
        pool._queue.clear()
        pool._woken = False
        pool._wake_r = pool._wake_w = None
        pool._manager = None
        pool._exiting = False
        pool._workers, pool._dying = [], []


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_reset_after_fork)


def _stop_pool(ref: weakref.ref[ProcessPool]) -> None:
    pool = ref()
    if pool is not None:
        pool._stop_now()


def _shutdown_all() -> None:
    for pool in list(_pools):
        pool._stop_now()


# Workers are not daemons (so a call may start processes of its own), so they
# must be told to stop before multiprocessing joins them at exit.
atexit.register(_shutdown_all)
