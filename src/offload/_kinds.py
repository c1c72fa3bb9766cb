"""Executor kinds: how offload sends a call to each kind of executor, in one place.

``kind_of(executor)`` picks the first class in ``KINDS`` that accepts the
executor. It runs once, when a Route to the executor is made; no call asks
again. Each kind says how to send a call, whether calls must pickle, whether
a call that waited for a slot may be handed to it inline, what a timeout does to a running
call, and how to stop and wait for the executor. Adding an executor kind is
one new class here, put in ``KINDS`` before the kinds it is more specific than.

Whatever the kind, a call ends through ``_call.finish`` or
``_call.never_ran``, so every kind keeps the same promises (see
``docs/semantics.md``).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, ThreadPoolExecutor
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from typing import Any, ClassVar, Protocol, cast

from ._affinity import AffineThread, HeldThread
from ._call import (
    ARGS,
    FN,
    FUTURE,
    KWARGS,
    ROUTE,
    Call,
    Held,
    began,
    fail_unstarted,
    finish,
    never_ran,
    run,
    run_held,
)
from ._dask import DaskExecutor
from ._delivery import CANCELLED, settable
from ._errors import NotPicklableError, WorkerDiedError, describe_exit
from ._lanes import Lanes
from ._pickling import RemoteJob, pack_call, run_shipment, ship, ship_target, unpack_reply
from ._pool import ThreadPool
from ._process import ProcessPool
from ._stats import Stats, workers_of

#: Called with a broken executor; the registry installs its replacement hook here.
broken_hooks: list[Any] = []


def replace_broken(executor: Executor) -> bool:
    """Tell the registries ``executor`` is broken; true if one will make a new one."""
    replaced = False
    for hook in broken_hooks:  # every hook, not just up to the first that replaces
        replaced = hook(executor) or replaced
    return replaced


class Kind:
    """How offload uses one kind of executor; one instance per executor."""

    #: Calls must pickle with the standard pickle (so no lambdas): checked at decoration.
    pickles: ClassVar[bool] = False
    #: What a timeout does to a call that is running, for the TimeoutError.
    on_timeout: ClassVar[str] = "it may run on, and its outcome is dropped"
    #: Time every call, not a sample: right where a call costs far more than the clock.
    times_every_call: ClassVar[bool] = True
    #: A call that waited for a slot may be sent from whatever thread freed the
    #: slot. Only for executors whose callbacks never hold their own locks.
    hand_over_inline: ClassVar[bool] = False
    #: A given-up call stays queued until a worker takes it and ``_call.run``
    #: ends it unrun: offload cannot take a call out of these executors' queues.
    #: Other kinds end a given-up queued call at once themselves.
    ends_unstarted_in_run: ClassVar[bool] = False
    #: The one-thread executors a lane handle's calls are pinned to, by lane
    #: (a ``Lanes``'s threads); empty for executors that have no lanes.
    lanes: tuple[Executor, ...] = ()

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def named(self, stats: Stats) -> None:
        """A name's route uses this executor, with these statistics."""

    @staticmethod
    def accepts(executor: Executor) -> bool:
        """Whether this kind knows how to use ``executor``."""
        raise NotImplementedError

    def send(self, call: Call) -> None:
        """Hand ``call`` to the executor; raise if it refuses (it was shut down)."""
        raise NotImplementedError

    def stop(self, cancel_futures: bool) -> None:
        """Tell the executor to take no more calls, without waiting."""
        try:
            self.executor.shutdown(wait=False, cancel_futures=cancel_futures)
        except TypeError:  # an executor with the pre-3.9 signature, such as loky's
            self.executor.shutdown(wait=False)

    def join(self, timeout: float | None) -> bool:
        """Wait for a stopped executor's work to end; true if it did within ``timeout``."""
        if timeout is None:
            self.executor.shutdown(wait=True)
            return True
        waiter = threading.Thread(
            target=self.executor.shutdown, name="offload-shutdown", daemon=True
        )
        waiter.start()
        waiter.join(timeout)
        return not waiter.is_alive()

    def give_up(self, error: Any) -> None:
        """After a shutdown that timed out: fail what still runs, where the kind can."""


class _Queues(Protocol):
    """What offload's own thread executors offer their kinds."""

    def _put(self, job: Call) -> None: ...
    def _join(self, timeout: float | None = None) -> bool: ...
    def _give_up(self, error: Callable[[], BaseException]) -> None: ...


class _OwnQueue(Kind):
    """offload's own thread executors: the call tuple goes straight on a thread's queue.

    ``send`` *is* the executor's ``_put``; a given-up call stays queued until
    its thread takes it and ``_call.run`` ends it unrun.
    """

    times_every_call = False
    hand_over_inline = True
    ends_unstarted_in_run = True
    on_timeout = (
        "a thread cannot be killed, so the call runs on; offload.cancelled() lets a long "
        "loop in it stop early"
    )
    executor: _Queues  # type: ignore[assignment]  # and an Executor

    def __init__(self, executor: Executor) -> None:
        super().__init__(executor)
        self.send = self.executor._put  # type: ignore[method-assign,assignment]

    def join(self, timeout: float | None) -> bool:
        """Wait for the executor's threads; true if they ended in time."""
        return self.executor._join(timeout)

    def give_up(self, error: Any) -> None:
        """Fail the calls still queued or running; a running thread runs on."""
        self.executor._give_up(error)


class OwnThreads(_OwnQueue):
    """offload's [`ThreadPool`][offload.ThreadPool]."""

    executor: ThreadPool

    def named(self, stats: Stats) -> None:
        """A name's route uses the pool: its ``submit`` jobs count there, if no other name's do."""
        if self.executor._submit_stats is None:
            self.executor._submit_stats = stats

    @staticmethod
    def accepts(executor: Executor) -> bool:
        """Whether ``executor`` is of this kind."""
        return isinstance(executor, ThreadPool)


class OwnThread(_OwnQueue):
    """offload's one-thread executors.

    An [`AffineThread`][offload.AffineThread] (a lane of a ``Lanes`` is one), or
    the thread a context holds for its block (``HeldThread``).
    """

    @staticmethod
    def accepts(executor: Executor) -> bool:
        """Whether ``executor`` is of this kind."""
        return isinstance(executor, (AffineThread, HeldThread))


class OwnLanes(_OwnQueue):
    """A [`Lanes`][offload.Lanes]: a call through its name goes on its least loaded lane.

    A lane handle's calls go to the handle's lane, of the ``OwnThread`` kind.
    """

    def __init__(self, executor: Executor) -> None:
        super().__init__(executor)
        self.lanes = cast("Lanes", executor).threads

    @staticmethod
    def accepts(executor: Executor) -> bool:
        """Whether ``executor`` is of this kind."""
        return isinstance(executor, Lanes)


class Threads(Kind):
    """A standard ``ThreadPoolExecutor``, which runs calls on threads of this process.

    The call travels in a ``Held``: if the pool drops it unrun, it ends as never run.
    """

    times_every_call = False
    on_timeout = OwnThreads.on_timeout
    ends_unstarted_in_run = True

    @staticmethod
    def accepts(executor: Executor) -> bool:
        """Whether ``executor`` is of this kind."""
        return isinstance(executor, ThreadPoolExecutor)

    def send(self, call: Call) -> None:
        """Hand ``call`` to the executor."""
        held = Held(call)
        try:
            self.executor.submit(run_held, held)
        except BaseException:
            held.take()  # refused: the caller ends it, not the holder
            raise


class OwnProcesses(Kind):
    """offload's [`ProcessPool`][offload.ProcessPool], which can stop one call."""

    pickles = True
    on_timeout = "its worker process was terminated"
    executor: ProcessPool

    def __init__(self, executor: Executor) -> None:
        super().__init__(executor)
        self.send = self.executor._send  # type: ignore[method-assign]

    @staticmethod
    def accepts(executor: Executor) -> bool:
        """Whether ``executor`` is of this kind."""
        return isinstance(executor, ProcessPool)

    def join(self, timeout: float | None) -> bool:
        """Wait for the pool's threads or processes; true if they ended in time."""
        return self.executor._join(timeout)


class Cluster(Kind):
    """A [`DaskExecutor`][offload.DaskExecutor]: a call is a task, cancelled if given up."""

    on_timeout = "its task was cancelled"
    executor: DaskExecutor

    def __init__(self, executor: Executor) -> None:
        super().__init__(executor)
        self.send = self.executor._send  # type: ignore[method-assign]

    @staticmethod
    def accepts(executor: Executor) -> bool:
        """Whether ``executor`` is of this kind."""
        return isinstance(executor, DaskExecutor)


class StdProcesses(Kind):
    """A standard ``ProcessPoolExecutor``: the call goes as bytes offload pickled.

    So a call that does not pickle fails alone and clearly, before it reaches
    the pool, and a result the caller cannot load fails its call where the
    pool would break. A broken pool is reported as
    [`WorkerDiedError`][offload.WorkerDiedError] and replaced from its factory.

    The pool is handed no more calls than it has workers; the rest wait in
    offload's backlog. The pool moves what it is handed to its workers ahead
    of time, and a call it has moved can no longer be withdrawn: so a call
    given up while it waits in the backlog never runs. A call given up while
    it runs runs on (the pool cannot stop one call), holding its slot until
    it ends.
    """

    pickles = True
    on_timeout = (
        "offload cannot stop one call on a standard ProcessPoolExecutor, so it runs on "
        "and its outcome is dropped (offload.ProcessPool terminates it)"
    )
    executor: ProcessPoolExecutor

    def __init__(self, executor: Executor) -> None:
        super().__init__(executor)
        self.lock = threading.Lock()
        # Calls waiting for a worker, each with its pickled call and its name.
        # Keyed by the call's Future, oldest first, so a call given up leaves at once.
        self.backlog: collections.OrderedDict[Any, tuple[Call, tuple[bytes, str]]] = (
            collections.OrderedDict()
        )
        self.in_flight = 0  # calls the pool holds
        self.limit = workers_of(executor) or 1
        self.closing = False  # stop() was asked: shut the pool down once the backlog is sent
        self.sent = threading.Event()  # closing, and the backlog is empty
        self.sent.set()

    @staticmethod
    def accepts(executor: Executor) -> bool:
        """Whether ``executor`` is of this kind."""
        return isinstance(executor, ProcessPoolExecutor)

    def send(self, call: Call) -> None:
        """Hand ``call`` to the pool if a worker is free, else keep it in the backlog."""
        # Refused here, as at the pool, whether the call is sent now or waits;
        # pickled here, on the caller's thread, so a refill from the backlog
        # (on the pool's own thread) only submits.
        target, name = ship(call[FN], self.executor.__repr__)
        if getattr(self.executor, "_shutdown_thread", False):
            raise RuntimeError("cannot schedule new futures after shutdown")
        try:
            data = pack_call(target, call[ARGS], call[KWARGS], name)
        except NotPicklableError as exc:
            fail_unstarted(call, exc)
            return
        with self.lock:
            waits = self.in_flight >= self.limit
            if waits:
                self.backlog[call[FUTURE]] = (call, (data, name))
            else:
                self.in_flight += 1
        if waits:
            call[FUTURE].add_done_callback(self._left_backlog)
            return
        try:
            sent = self._submit(call, data, name)
        except BaseException:
            self._freed()
            raise
        if not sent:
            self._freed()

    def _submit(self, call: Call, data: bytes, name: str) -> bool:
        """Submit a pickled call; false if the call failed instead (the pool broke)."""
        executor = self.executor
        try:
            pool_future = executor.submit(run_shipment, data, name)
        except BrokenProcessPool as exc:  # it broke while idle
            fail_unstarted(call, self._died(name, exc))
            return False
        stats = call[ROUTE].stats
        started = began(call, stats) if stats is not None else 0.0
        pool_future.add_done_callback(functools.partial(self._relay, call, name, started))
        return True

    def _relay(
        self, call: Call, name: str, started: float, pool_future: ConcurrentFuture[Any]
    ) -> None:
        # On the pool's own thread, once the call is over (or dropped unrun).
        try:  # one look at the pool's Future on the common path: each look takes its lock
            data = pool_future.result()
        except BaseException as exc:
            if pool_future.cancelled():
                finish(call, None, CANCELLED, started)
                self._freed()
                return
            broken = isinstance(exc, BrokenProcessPool)
            if broken:
                exc = self._died(name, exc)
            elif isinstance(exc, NotPicklableError) and exc.__context__ is not None:
                exc.__cause__ = exc.__context__  # the pool overwrote the cause with its traceback
            finish(call, None, settable(exc), started)
            del exc, call
            self._freed(broken=broken)
            return
        finish(call, *unpack_reply(data, name), started)
        self._freed()

    def _left_backlog(self, future: Any) -> None:
        # Done-callback of a waiting call's Future: given up (or failed) while it
        # waited, it ends unrun now, not when a worker frees. If a refill took
        # it first, the refill ends it.
        with self.lock:
            waiting = self.backlog.pop(future, None)
        if waiting is not None:
            never_ran(waiting[0])

    def _freed(self, *, broken: bool = False) -> None:
        """A call left the pool: hand it the oldest waiting call not given up."""
        while True:
            with self.lock:
                waiting = self.backlog.popitem(last=False)[1] if self.backlog else None
                if waiting is None:
                    self.in_flight -= 1
                    if self.closing:
                        self.sent.set()
                    return
            call, shipped = waiting
            if broken:
                # Not submitted from here: a broken pool reports under the lock
                # that submit takes. Its calls fail, as the pool's own would.
                fail_unstarted(call, WorkerDiedError(f"{self.executor!r} broke before it ran"))
            elif call[FUTURE].done():  # given up while it waited: it never runs
                never_ran(call)
            else:
                try:
                    if self._submit(call, *shipped):
                        return  # it holds the pool's place now
                except RuntimeError:
                    # The pool was shut down directly, before the call reached it:
                    # dropped unrun, as the pool drops what it holds with
                    # cancel_futures=True. (It cannot say whether that was asked;
                    # offload.shutdown sends the backlog first unless it was.)
                    never_ran(call)
                except BaseException as exc:
                    fail_unstarted(call, exc)

    def stop(self, cancel_futures: bool) -> None:
        """Drop or keep the backlog; shut the pool down once nothing is left to send."""
        with self.lock:
            self.closing = True
            dropped = [call for call, _ in self.backlog.values()] if cancel_futures else []
            if cancel_futures:
                self.backlog.clear()
            if not self.backlog:
                self.sent.set()
            else:
                self.sent.clear()
        for call in dropped:
            never_ran(call)
        if self.sent.is_set():
            super().stop(cancel_futures)
        else:  # the last call sent from the backlog shuts it down
            threading.Thread(
                target=self._stop_when_sent, args=(cancel_futures,), daemon=True
            ).start()

    def _stop_when_sent(self, cancel_futures: bool) -> None:
        self.sent.wait()
        super().stop(cancel_futures)

    def join(self, timeout: float | None) -> bool:
        """Wait for the backlog to be sent, then for the pool."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.sent.wait(timeout):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return super().join(remaining)

    def _died(self, name: str, cause: BaseException) -> WorkerDiedError:
        executor = self.executor
        # The pool does not say which worker died; its process table may still know.
        code = pid = None
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            if getattr(process, "exitcode", None):
                code, pid = int(process.exitcode), process.pid
                break
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
            pid=pid,
        )
        err.__cause__ = cause
        return err


class Foreign(Kind):
    """Any other Executor: the call travels as a ``Portable``.

    In this process it runs like any offloaded call; if the executor pickles
    it to run elsewhere (loky, ``mpi4py.futures``), it pickles as the function
    by reference and its arguments, and the outcome comes back through the
    executor's Future.
    """

    @staticmethod
    def accepts(executor: Executor) -> bool:  # noqa: ARG004 - the last kind takes any
        """Whether ``executor`` is of this kind."""
        return True

    @property
    def on_timeout(self) -> str:  # type: ignore[override]  # names the executor
        """What a timeout does to a running call, naming the executor."""
        return (
            f"it may run on in {self.executor!r}, which offload cannot stop; its outcome is dropped"
        )

    def send(self, call: Call) -> None:
        """Hand ``call`` to the executor."""
        portable = Portable(call, self.executor)
        pool_future = self.executor.submit(portable)
        pool_future.add_done_callback(portable.relay)
        call[FUTURE].add_done_callback(functools.partial(_cancel_pool_future, pool_future))


class Portable:
    """An offloaded call for an executor that may run it in another process.

    Called in this process, it runs the call; pickled, it becomes a
    ``RemoteJob``, leaving the Future and the contextvars behind. Running
    empties it, so no traceback can tie the call into a cycle (see ``Held``).
    """

    __slots__ = ("call", "executor")

    def __init__(self, call: Call, executor: Executor) -> None:
        self.call: Call | None = call
        self.executor = executor

    def __call__(self) -> None:
        # No local names the call: a traceback through run() links to this
        # frame, which would tie the call, its Future and the exception in a cycle.
        if self.call is None:
            raise RuntimeError("an offloaded call runs once")
        run(self._take())

    def _take(self) -> Call:
        call, self.call = self.call, None
        return call  # type: ignore[return-value]  # checked by the caller

    def __reduce__(self) -> tuple[type[RemoteJob], tuple[Any, ...]]:
        if self.call is None:
            raise RuntimeError("an offloaded call runs once")
        return RemoteJob, (ship_target(self.call[FN]), self.call[ARGS], self.call[KWARGS])

    def relay(self, pool_future: ConcurrentFuture[Any]) -> None:
        """Done-callback on the executor's Future: the outcome of a call that ran elsewhere."""
        call, self.call = self.call, None
        if call is None:
            return  # it ran in this process and delivered its own outcome
        if pool_future.cancelled():
            never_ran(call)
            return
        stats = call[ROUTE].stats
        started = began(call, stats, waited=False) if stats is not None else 0.0
        exc = pool_future.exception()
        if exc is None:
            finish(call, pool_future.result(), None, started)
            return
        if isinstance(exc, BrokenExecutor):
            replace_broken(self.executor)
        finish(call, None, settable(exc), started)
        del exc, call


def _cancel_pool_future(pool_future: ConcurrentFuture[Any], _future: object) -> None:
    # Settled before the pool's Future: the caller gave up (cancelled, or timed
    # out). A call still queued never runs; one that already runs cannot be
    # stopped in a pool offload does not own, and its outcome is dropped.
    if not pool_future.done():
        pool_future.cancel()


#: The kinds, most specific first; the last accepts any Executor.
KINDS: tuple[type[Kind], ...] = (
    OwnThreads,
    OwnThread,
    OwnLanes,
    Threads,
    OwnProcesses,
    StdProcesses,
    Cluster,
    Foreign,
)


def kind_of(executor: Executor) -> Kind:
    """The kind of ``executor``, made on first use and kept on it.

    So every route to one executor (several names, or none) shares what the
    kind keeps, such as a standard process pool's backlog.
    """
    kind: Kind | None = getattr(executor, "_offload_kind", None)
    if kind is not None and kind.executor is executor:
        return kind
    kind = next(k for k in KINDS if k.accepts(executor))(executor)
    with contextlib.suppress(AttributeError, TypeError):  # slotted or frozen: one per route
        executor._offload_kind = kind  # type: ignore[attr-defined]
    return kind


def wait_for_all(kinds: dict[str, Kind], timeout: float | None) -> dict[str, Kind]:
    """Join every kind's executor within one deadline; the ones still running."""
    deadline = None if timeout is None else time.monotonic() + timeout
    stuck = {}
    for name, kind in kinds.items():
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not kind.join(remaining):
            stuck[name] = kind
    return stuck
