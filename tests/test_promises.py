"""Every executor kind keeps the same promises: the specification of the call path.

Each promise is held against every kind of executor offload runs calls on, reached in each
way a call reaches one: passed directly ("unnamed"), through a registered name ("named"),
and through a name bounded to one pending call ("bounded"), each with and without a
``timeout=``; on the "lane" kind, calls through the name go through a lane handle of it
(``registry.lane(name)``). Workers are held and released with files, which threads, worker
processes and cluster workers all see, so one body serves every kind. Only offload's public
API is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib
import itertools
import multiprocessing
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
from _pytest.mark.structures import ParameterSet

import offload
from tests import promise_targets as pt
from tests.conftest import WAIT, garbage_saved

P = ParamSpec("P")
R = TypeVar("R")

# Importing Dask makes every traceback picklable (tblib), in this process and in the
# workers it forks, which changes what an exception brings back from a forked worker.
# Imported first, as in an application that uses Dask (and as in the whole suite, which
# collects test_clusters), so that no outcome depends on which tests ran before.
with contextlib.suppress(ImportError):
    importlib.import_module("distributed")

pytestmark = [
    # Python 3.12+ warns when a multi-threaded process forks; fork is a kind under test.
    pytest.mark.filterwarnings("ignore:This process .*multi-threaded:DeprecationWarning"),
    pytest.mark.timeout(60),
]

#: How long a test waits for what a correct implementation does at once (a
#: shutdown without waiting, a settled count, a terminated worker).
SOON = 3.0
#: A timeout that expires while the call still waits behind busy workers; a cluster
#: takes longer to hear of a call.
QUEUED_TIMEOUT = 0.1
CLUSTER_QUEUED_TIMEOUT = 0.5
#: A timeout that expires while the call runs: it starts at once on an idle worker.
RUNNING_TIMEOUT = 0.3
#: As RUNNING_TIMEOUT, where it does not matter whether the call started first.
SHORT_TIMEOUT = 0.15
#: A timeout that expires after the call waited for its slot and then started.
WAITED_TIMEOUT = 0.8
#: The ``timeout=`` of the modes that have one: it never expires in a test.
LONG = 60.0
#: How long ``shutdown(timeout=...)`` is given, and the margin it may take beyond.
SHUTDOWN_TIMEOUT = 0.2
MARGIN = 2.0

THREAD_KINDS = ("threadpool", "stdlib-threads", "affine", "lanes", "lane", "foreign")
OFFLOAD_PROCESS_KINDS = ("processpool-fork", "processpool-spawn", "processpool-forkserver")
STDLIB_PROCESS_KINDS = ("stdlib-processes-spawn", "stdlib-processes-forkserver")
PROCESS_KINDS = OFFLOAD_PROCESS_KINDS + STDLIB_PROCESS_KINDS
KINDS = (
    "threadpool",
    "stdlib-threads",
    *OFFLOAD_PROCESS_KINDS,
    *STDLIB_PROCESS_KINDS,
    "affine",
    "lanes",
    "lane",
    "dask",
    "foreign",
)
#: How many calls each kind runs at once.
WORKERS = {kind: 1 if kind in ("affine", "lane") else 2 for kind in KINDS}

MODES = ("unnamed", "named", "bounded", "unnamed+timeout", "named+timeout", "bounded+timeout")
NAMING = ("unnamed", "named", "bounded")

#: The name a test's registry gives the executor under test.
NAME = "under-test"

FATES = ("completed", "failed", "cancelled", "timed_out", "rejected")


def grid(*axes: Sequence[str], skip: Callable[..., str | None] | None = None) -> list[ParameterSet]:
    """Every combination of ``axes``; those ``skip`` gives a reason for are marked skipped."""
    params = []
    for combination in itertools.product(*axes):
        reason = skip(*combination) if skip is not None else None
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(*combination, id="-".join(combination), marks=marks))
    return params


def _needs_a_name(_kind: str, mode: str, *_: str) -> str | None:
    if mode.startswith("unnamed"):
        return "an executor passed directly has no name, so no statistics count its calls"
    return None


# -- Executors of every kind -----------------------------------------------------


class Pools:
    """The module's executors, one per kind, made on first use and checked after each test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._executors: dict[str, Executor] = {}
        self._cluster: Any = None
        self._client: Any = None
        self._meetings = itertools.count()

    def client(self) -> Any:
        """The module's Dask client, on a local cluster started on first use."""
        if self._client is None:
            distributed = pytest.importorskip("distributed")
            self._cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            self._client = distributed.Client(self._cluster)
        return self._client

    def make(self, kind: str, tag: str) -> Executor:  # noqa: PLR0911 - one return per kind
        """A new executor of ``kind``; threads it starts have names that begin with ``tag``."""
        if kind == "threadpool":
            return offload.ThreadPool(2, name=tag)
        if kind == "stdlib-threads":
            return ThreadPoolExecutor(2, thread_name_prefix=tag)
        if kind in OFFLOAD_PROCESS_KINDS:
            return offload.ProcessPool(2, start_method=kind.rpartition("-")[2], name=tag)
        if kind in STDLIB_PROCESS_KINDS:
            context = multiprocessing.get_context(kind.rpartition("-")[2])
            return ProcessPoolExecutor(2, mp_context=context)
        if kind == "affine":
            return offload.AffineThread(name=tag)
        if kind == "lanes":
            return offload.Lanes(2, name=tag)
        if kind == "lane":  # its calls go through a lane handle of the name (Case.spec)
            return offload.Lanes(1, name=tag)
        if kind == "dask":
            return offload.DaskExecutor(self.client())
        assert kind == "foreign", kind
        return pt.Foreign(2, name=tag)

    def get(self, kind: str) -> Executor:
        """The shared executor of ``kind``, every worker started."""
        executor = self._executors.get(kind)
        if executor is None:
            executor = self._executors[kind] = self.make(kind, f"shared-{kind}")
            self.meet(kind, executor)
        return executor

    def meet(self, kind: str, executor: Executor) -> set[pt.Where]:
        """Run a barrier as wide as the executor: every worker has finished what it took before.

        Returns where the barrier's calls ran: one place per worker.
        """
        folder = self.folder / f"meeting{next(self._meetings)}"
        folder.mkdir()
        if isinstance(executor, offload.DaskExecutor):
            return _meet_on_cluster(executor.client, folder)
        count = WORKERS[kind]
        if isinstance(executor, offload.Lanes):  # one call on each lane, whatever each holds
            futures = [
                lane.submit(pt.meet, folder, i, count) for i, lane in enumerate(executor.threads)
            ]
        else:
            futures = [executor.submit(pt.meet, folder, i, count) for i in range(count)]
        _, not_done = wait_all(futures, timeout=SOON + MARGIN)
        if not_done:
            raise TimeoutError(f"{executor!r}: not every worker took a call")
        return {future.result() for future in futures}

    def check(self, kind: str) -> None:
        """After a test: replace the shared executor of ``kind`` if it no longer works."""
        executor = self._executors.get(kind)
        if executor is None:
            return
        try:
            self.meet(kind, executor)
        except Exception:
            del self._executors[kind]
            _discard(executor)

    def close(self) -> None:
        """Shut every executor down, then the cluster."""
        stoppers = [
            threading.Thread(target=_stop, args=(executor,), daemon=True)
            for executor in self._executors.values()
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(WAIT)
        for executor in self._executors.values():
            _kill_workers(executor)
        if self._client is not None:
            self._client.close()
            self._cluster.close()
            for _ in range(3):  # Dask leaves cycles as it closes; free them for later modules
                gc.collect()


def _meet_on_cluster(client: Any, folder: Path) -> set[pt.Where]:
    # One call pinned to each worker: the scheduler may see a worker as free while
    # its one thread still finishes a cancelled task, and put two calls there.
    distributed = pytest.importorskip("distributed")
    workers = sorted(client.scheduler_info()["workers"])
    tasks = [
        client.submit(pt.meet, folder, i, len(workers), workers=[worker], pure=False)
        for i, worker in enumerate(workers)
    ]
    distributed.wait(tasks, timeout=SOON + MARGIN)
    return set(client.gather(tasks))


def _stop(executor: Executor) -> None:
    with contextlib.suppress(Exception):
        executor.shutdown(wait=True, cancel_futures=True)


def _kill_workers(executor: Executor) -> None:
    # A ProcessPoolExecutor whose manager thread died cannot stop its workers, and
    # they are not daemons: the interpreter would wait for them forever at exit.
    if isinstance(executor, ProcessPoolExecutor):
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.kill()


def _discard(executor: Executor) -> None:
    """Give up on a broken executor: stop it without waiting, and kill what it started."""
    _kill_workers(executor)
    threading.Thread(target=_stop, args=(executor,), daemon=True).start()


def drain(executor: Executor) -> bool:
    """Shut ``executor`` down and wait until its workers are done; false if they hang."""
    done = threading.Event()

    def stop() -> None:
        with contextlib.suppress(Exception):
            executor.shutdown(wait=True)
        done.set()

    threading.Thread(target=stop, name="drain", daemon=True).start()
    if done.wait(WAIT):
        return True
    _discard(executor)
    return False


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pools]:
    """The executors the module's tests share."""
    shared = Pools(tmp_path_factory.mktemp("meetings"))
    yield shared
    shared.close()


# -- One test's view of an executor ----------------------------------------------


def succeeded(future: asyncio.Future[Any]) -> bool:
    """Whether ``future`` ended with a result."""
    return future.done() and not future.cancelled() and future.exception() is None


def fate(future: asyncio.Future[Any]) -> str:
    """How ``future`` ended, for messages."""
    if not future.done():
        return "still pending"
    if future.cancelled():
        return "cancelled"
    error = future.exception()
    if error is None:
        return f"returned {future.result()!r}"
    return f"raised {type(error).__name__}: {_text(error)}"


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception as exc:
        return f"<str() raised {type(exc).__name__}>"


async def settled(future: asyncio.Future[Any], within: float = WAIT) -> None:
    """Wait until ``future`` is done, without cancelling it."""
    await asyncio.wait({future}, timeout=within)
    assert future.done(), "the call never settled"


async def turns() -> None:
    """Let the loop run what is due, and other threads run, before looking."""
    for _ in range(10):
        await asyncio.sleep(0)
    await asyncio.to_thread(int)
    for _ in range(10):
        await asyncio.sleep(0)


def _at_rest(stats: offload.ExecutorStats) -> bool:
    ended = (
        stats["completed"]
        + stats["failed"]
        + stats["cancelled"]
        + stats["timed_out"]
        + stats["rejected"]
    )
    where = (stats["waiting"], stats["queued"], stats["running"])
    return where == (0, 0, 0) and stats["submitted"] == ended


class Case:
    """An executor of one kind, reached in one mode, with a folder of files to order calls."""

    def __init__(
        self, kind: str, mode: str, executor: Executor, folder: Path, pools: Pools
    ) -> None:
        self.kind, self.executor, self.folder, self.pools = kind, executor, folder, pools
        self.naming, _, timed = mode.partition("+")
        self.timeout = LONG if timed else None
        self.queued_timeout = CLUSTER_QUEUED_TIMEOUT if kind == "dask" else QUEUED_TIMEOUT
        self.workers = WORKERS[kind]
        self.registry = offload.Registry()
        if self.naming == "named":
            self.registry.register(NAME, executor)
        elif self.naming == "bounded":
            self.registry.register(NAME, executor, max_pending=1, when_full="wait")
        elif self.naming == "failing":
            self.registry.register(NAME, executor, max_pending=1, when_full="fail")
        self.release = folder / "release"
        self._gates = [self.release]
        self._lanes: dict[str, offload.Lane] = {}

    def spec(self, name: str = NAME) -> str | Executor:
        """Where this case's calls go: the executor itself, the name, or a lane handle of it."""
        if self.naming == "unnamed":
            return self.executor
        if self.kind == "lane":
            if name not in self._lanes:
                self._lanes[name] = self.registry.lane(name)
            return self._lanes[name]
        return name

    def gate(self, name: str) -> Path:
        """A file that releases held calls, touched at the end of the test at the latest."""
        path = self.folder / f"release-{name}"
        self._gates.append(path)
        return path

    def open_gates(self) -> None:
        """Release every held call of the test."""
        for path in self._gates:
            path.touch()

    def call(
        self, fn: Callable[P, R], *, timeout: float | None = None
    ) -> Callable[P, asyncio.Future[R]]:
        """``fn`` offloaded in this case's mode; ``timeout`` replaces the mode's own."""
        return self.registry.offload(fn, executor=self.spec(), timeout=timeout or self.timeout)

    def coroutine(
        self, fn: Callable[P, R], *, timeout: float | None = None
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        """``fn`` as a coroutine form with ``cancel="wait"``, in this case's mode."""
        return self.registry.offload(
            fn,
            executor=self.spec(),
            timeout=timeout or self.timeout,
            coroutine=True,
            cancel="wait",
        )

    def direct(self, fn: Callable[P, R]) -> Callable[P, asyncio.Future[R]]:
        """``fn`` offloaded to the executor itself: no name, no bound, not counted."""
        return self.registry.offload(fn, executor=self.executor)

    def path(self, name: str) -> Path:
        return self.folder / name

    def stats(self) -> offload.ExecutorStats:
        return self.registry.stats()[NAME]

    async def started(self, path: Path, future: asyncio.Future[Any] | None = None) -> pt.Where:
        """Wait until the call that announces itself in ``path`` has started; where it runs."""
        deadline = time.monotonic() + WAIT
        while not await asyncio.to_thread(path.exists):
            if future is not None and future.done():
                pytest.fail(f"{path.name}: the call ended before it started: {fate(future)}")
            if time.monotonic() > deadline:
                pytest.fail(f"{path.name}: the call never started")
            await asyncio.sleep(0.002)
        return pt.read_where(path)

    async def fill(
        self, *, through_name: bool = True, release: Path | None = None
    ) -> list[asyncio.Future[pt.Where]]:
        """Hold every worker with a call; in bounded mode the first holds the only slot."""
        release = release or self.release
        futures = []
        for i in range(self.workers):
            named = through_name and (self.naming != "bounded" or i == 0)
            offloaded = self.call(pt.hold) if named else self.direct(pt.hold)
            futures.append(offloaded(self.path(f"busy{i}"), release))
        for i, future in enumerate(futures):
            await self.started(self.path(f"busy{i}"), future)
        return futures

    async def reached_the_pool(self, name: str, *, waiting: bool | None = None) -> None:
        """Return once the queued calls of function ``name`` have reached the executor.

        A ProcessPoolExecutor moves queued calls to its workers' call queue, where they
        can no longer be cancelled, as soon as its manager thread wakes up; a probe
        submitted after them is marked running once it has done so. A cluster hears
        of a task, and of its cancellation, through messages that may overtake each
        other; a task it knows is queued there. Calls that wait for a bounded name's
        slot (``waiting``, by default in bounded mode) have not left yet.
        """
        if waiting is None:
            waiting = self.naming == "bounded"
        if waiting:
            return
        deadline = time.monotonic() + WAIT
        if self.kind in STDLIB_PROCESS_KINDS:
            probe = self.executor.submit(int)
            while not (probe.running() or probe.done()):
                assert time.monotonic() < deadline, "the pool never took the queued calls"
                await asyncio.sleep(0.002)
        elif self.kind == "dask":
            while not await asyncio.to_thread(self._cluster_knows, name):
                assert time.monotonic() < deadline, f"the cluster never heard of the {name} call"
                await asyncio.sleep(0.01)

    def _cluster_knows(self, name: str) -> list[str]:
        client = self.pools.client()
        keys = list(client.run_on_scheduler(pt.scheduler_keys))
        for on_worker in client.run(pt.worker_keys).values():
            keys.extend(on_worker)
        return [key for key in keys if key.startswith(f"{name}-")]

    async def settle(self) -> set[pt.Where]:
        """A barrier on every worker: each has finished what it took before. Where they are."""
        return await asyncio.to_thread(self.pools.meet, self.kind, self.executor)

    async def worker_pids(self) -> set[int]:
        """The pids of the executor's worker processes now."""
        if self.kind == "dask":
            pids = await asyncio.to_thread(self.pools.client().run, os.getpid)
            return set(pids.values())
        return {pid for pid, _ in await self.settle()}

    async def forgotten(self, name: str) -> None:
        """On a cluster: wait until no scheduler or worker knows a task of function ``name``.

        A cancelled task is dropped by messages between processes; the cluster has
        dropped it once nobody there knows it.
        """
        if self.kind != "dask":
            return
        deadline = time.monotonic() + WAIT
        while await asyncio.to_thread(self._cluster_knows, name):
            assert time.monotonic() < deadline, f"the cluster still knows a {name} task"
            await asyncio.sleep(0.01)

    async def at_rest(self) -> offload.ExecutorStats:
        """The name's statistics once nothing waits, is queued or runs (or after SOON)."""
        deadline = time.monotonic() + SOON
        stats = self.stats()
        while not _at_rest(stats) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            stats = self.stats()
        return stats


@pytest.fixture
def kind() -> str:
    """The executor kind; tests parametrize it."""
    return "threadpool"


@pytest.fixture
def mode() -> str:
    """How calls reach the executor; tests parametrize it."""
    return "unnamed"


@pytest.fixture
def case(kind: str, mode: str, pools: Pools, tmp_path: Path) -> Iterator[Case]:
    """The test's kind and mode on the module's shared executor, checked afterwards."""
    the_case = Case(kind, mode, pools.get(kind), tmp_path, pools)
    yield the_case
    the_case.open_gates()
    pools.check(kind)


@pytest.fixture
def fresh(kind: str, mode: str, pools: Pools, tmp_path: Path) -> Iterator[Case]:
    """The test's kind and mode on an executor of its own, which the test may shut down."""
    executor = pools.make(kind, f"fresh-{kind}")
    the_case = Case(kind, mode, executor, tmp_path, pools)
    yield the_case
    the_case.open_gates()
    drain(executor)


# -- 1. A call done before it starts never runs ----------------------------------


def _timeout_needs_timeout(_kind: str, mode: str, reason: str) -> str | None:
    if reason == "timed-out" and "+timeout" not in mode:
        return "a call without timeout= cannot time out"
    return None


@pytest.mark.parametrize(
    ("kind", "mode", "reason"),
    grid(KINDS, MODES, ["cancelled", "timed-out"], skip=_timeout_needs_timeout),
)
async def test_a_call_done_before_it_starts_never_runs(case: Case, reason: str) -> None:
    """A call cancelled or timed out while busy workers or a full bound hold it back never runs."""
    busy = await case.fill()
    victim_ran = case.path("victim")
    timeout = case.queued_timeout if reason == "timed-out" else None
    victim = case.call(pt.mark, timeout=timeout)(victim_ran)
    await case.reached_the_pool("mark")
    if reason == "cancelled":
        assert victim.cancel()
    else:
        await settled(victim)
        assert isinstance(victim.exception(), TimeoutError), fate(victim)
    await case.forgotten("mark")
    case.release.touch()
    await asyncio.wait_for(asyncio.gather(*busy), WAIT)
    assert await asyncio.wait_for(case.call(pt.echo)("after"), WAIT) == "after"
    await case.settle()  # every worker has passed the point where the victim would run
    assert not victim_ran.exists(), f"the {reason} call ran on {pt.read_where(victim_ran)}"


# -- 2. Every call ends in exactly one fate, counted once -------------------------


@pytest.mark.parametrize(("kind", "mode"), grid(KINDS, NAMING, skip=_needs_a_name))
async def test_every_call_ends_in_exactly_one_fate_counted_once(case: Case) -> None:
    """Returned, raised, cancelled or timed out, queued or running: each call counts once."""
    assert await asyncio.wait_for(case.call(pt.echo)(1), WAIT) == 1
    with pytest.raises(pt.Boom, match="no"):
        await asyncio.wait_for(case.call(pt.boom)("no"), WAIT)

    # Given up while queued behind busy workers (or waiting for the slot).
    release_busy = case.gate("busy")
    busy = await case.fill(release=release_busy)
    queued_cancelled = case.call(pt.mark)(case.path("queued-cancelled"))
    queued_timed_out = case.call(pt.mark, timeout=case.queued_timeout)(
        case.path("queued-timed-out")
    )
    await case.reached_the_pool("mark")
    assert queued_cancelled.cancel()
    await settled(queued_timed_out)
    assert isinstance(queued_timed_out.exception(), TimeoutError), fate(queued_timed_out)
    await case.forgotten("mark")
    release_busy.touch()
    await asyncio.wait_for(asyncio.gather(*busy), WAIT)

    # Given up while running.
    release_cancelled = case.gate("cancelled")
    running = case.call(pt.hold)(case.path("running-cancelled"), release_cancelled)
    await case.started(case.path("running-cancelled"), running)
    assert running.cancel()
    release_cancelled.touch()
    await case.settle()
    expiring = case.call(pt.hold, timeout=SHORT_TIMEOUT)(
        case.path("running-timed-out"), case.release
    )
    await settled(expiring)
    assert isinstance(expiring.exception(), TimeoutError), fate(expiring)
    case.release.touch()
    await case.settle()

    stats = await case.at_rest()
    busy_counted = 1 if case.naming == "bounded" else case.workers
    expected = {
        "completed": 1 + busy_counted,
        "failed": 1,
        "cancelled": 2,
        "timed_out": 2,
        "rejected": 0,
    }
    assert {name: stats[name] for name in FATES} == expected  # type: ignore[literal-required]
    assert stats["submitted"] == sum(expected.values())
    assert (stats["waiting"], stats["queued"], stats["running"]) == (0, 0, 0)


@pytest.mark.parametrize(("kind", "mode"), grid(KINDS, ["failing"]))
async def test_a_call_refused_by_a_full_bound_is_submitted_and_rejected(case: Case) -> None:
    """A call refused by when_full="fail" counts as submitted and rejected: the fates add up."""
    blocker = case.call(pt.hold)(case.path("blocker"), case.release)
    await case.started(case.path("blocker"), blocker)
    with pytest.raises(offload.OverloadedError):
        case.call(pt.echo)("refused")
    case.release.touch()
    await asyncio.wait_for(blocker, WAIT)
    stats = await case.at_rest()
    counts = (stats["submitted"], stats["completed"], stats["rejected"])
    assert counts == (2, 1, 1), f"(submitted, completed, rejected) is {counts}"
    assert _at_rest(stats), stats


# -- 3. A bounded slot is held until the work is over, and given back once ---------


def _stoppable(kind: str, _mode: str) -> str | None:
    if kind in OFFLOAD_PROCESS_KINDS:
        return (
            "a cancelled call's worker is terminated, which ends the work: see "
            "test_a_given_up_call_on_a_process_pool_has_its_worker_terminated"
        )
    if kind == "dask":
        return "offload cannot see when a cancelled cluster task stops running"
    return None


@pytest.mark.parametrize(
    ("kind", "mode"), grid(KINDS, ["bounded", "bounded+timeout"], skip=_stoppable)
)
async def test_a_slot_is_held_until_a_cancelled_call_really_returns_and_given_back_once(
    case: Case,
) -> None:
    """Cancelled as it runs, a call keeps its slot until its body returns; it comes back once."""
    finished = case.path("first-finished")
    first = case.call(pt.hold)(case.path("first"), case.gate("first"), finished)
    await case.started(case.path("first"), first)
    second = case.call(pt.ran_after)(finished, case.path("second"))
    assert first.cancel()
    await turns()
    assert case.stats()["waiting"] == 1, "the slot came back while the cancelled call still runs"
    assert not case.path("second").exists()
    case.gate("first").touch()
    assert await asyncio.wait_for(second, WAIT) is True, "the next call started too early"

    # Given back exactly once: the bound of one still holds.
    third = case.call(pt.hold)(case.path("third"), case.release)
    await case.started(case.path("third"), third)
    fourth = case.call(pt.mark)(case.path("fourth"))
    await turns()
    assert case.stats()["waiting"] == 1, "the slot was given back twice: two calls got in"
    assert not case.path("fourth").exists()
    case.release.touch()
    await asyncio.wait_for(asyncio.gather(third, fourth), WAIT)


@pytest.mark.parametrize(("kind", "mode"), grid(KINDS, ["bounded", "bounded+timeout"]))
async def test_cancelled_waiting_calls_leave_the_line_at_once_and_free_their_arguments(
    case: Case,
) -> None:
    """A waiting call that is cancelled leaves the line at once and lets go of its arguments."""
    blocker = case.call(pt.hold)(case.path("blocker"), case.release)
    await case.started(case.path("blocker"), blocker)
    tokens = [pt.Token(f"token{i}") for i in range(3)]
    refs = [weakref.ref(token) for token in tokens]
    touch = case.call(pt.touch_token)
    waiting = [touch(token, case.path(f"waiting{i}")) for i, token in enumerate(tokens)]
    del tokens
    assert case.stats()["waiting"] == 3
    assert waiting[0].cancel()
    assert waiting[2].cancel()
    await turns()  # the slot is still held all along
    assert case.stats()["waiting"] == 1, "cancelled calls stay in line until a slot frees"
    gc.collect()
    alive = [ref() is not None for ref in refs]
    assert alive == [False, True, False], "a cancelled waiting call still holds its arguments"
    case.release.touch()
    assert await asyncio.wait_for(waiting[1], WAIT) == "token1"
    await case.settle()
    assert not case.path("waiting0").exists()
    assert not case.path("waiting2").exists()


# -- 4. A given-up call on offload's ProcessPool has its worker terminated ---------


def _waits_need_a_bound(_kind: str, mode: str, waited: str, _reason: str) -> str | None:
    if waited == "after-waiting" and mode != "bounded":
        return "only a bounded name makes a call wait for a slot"
    return None


@pytest.mark.parametrize(
    ("kind", "mode", "waited", "reason"),
    grid(
        OFFLOAD_PROCESS_KINDS,
        NAMING,
        ["at-once", "after-waiting"],
        ["cancelled", "timed-out"],
        skip=_waits_need_a_bound,
    ),
)
async def test_a_given_up_call_on_a_process_pool_has_its_worker_terminated(
    case: Case, waited: str, reason: str
) -> None:
    """Cancelled or timed out, a running call's worker is gone, and the call is counted once."""
    waits = waited == "after-waiting"
    if waits:
        blocker = case.call(pt.hold)(case.path("blocker"), case.gate("blocker"))
        await case.started(case.path("blocker"), blocker)
    timeout = (WAITED_TIMEOUT if waits else RUNNING_TIMEOUT) if reason == "timed-out" else None
    victim = case.call(pt.hold, timeout=timeout)(case.path("victim"), case.release)
    if waits:
        await turns()
        assert case.stats()["waiting"] == 1
        case.gate("blocker").touch()
        await asyncio.wait_for(blocker, WAIT)
    pid, _ = await case.started(case.path("victim"), victim)
    if reason == "cancelled":
        assert victim.cancel()
    else:
        await settled(victim)
        assert isinstance(victim.exception(), TimeoutError), fate(victim)
    assert await gone(pid), f"the worker {pid} running the {reason} call was not terminated"
    if case.naming != "unnamed":
        stats = await case.at_rest()
        counted = {name: stats[name] for name in FATES}  # type: ignore[literal-required]
        expected = dict.fromkeys(FATES, 0)
        expected["cancelled" if reason == "cancelled" else "timed_out"] = 1
        expected["completed"] = 1 if waits else 0
        assert counted == expected
        assert _at_rest(stats), stats
    # The slot came back (bounded), and the pool replaced its worker.
    assert await asyncio.wait_for(case.call(pt.echo)("next"), WAIT) == "next"


async def gone(pid: int) -> bool:
    """Wait (up to SOON) until process ``pid`` has exited and been reaped."""
    deadline = time.monotonic() + SOON
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)


# -- 5. Shutdown returns in every form, and never deadlocks -------------------------

SHUTDOWNS: dict[str, dict[str, Any]] = {
    "wait": {"wait": True, "cancel_futures": False},
    "wait-cancel": {"wait": True, "cancel_futures": True},
    "wait-timeout": {"wait": True, "cancel_futures": False, "timeout": SHUTDOWN_TIMEOUT},
    "wait-cancel-timeout": {"wait": True, "cancel_futures": True, "timeout": SHUTDOWN_TIMEOUT},
    "no-wait": {"wait": False, "cancel_futures": False},
    "no-wait-cancel": {"wait": False, "cancel_futures": True},
}

#: A second name on the executor of the shutdown tests, bounded to one call.
BOUND = "bound"


def _in_thread(fn: Callable[[], object]) -> threading.Event:
    """Run ``fn`` on a daemon thread of its own; the Event is set once it returns."""
    returned = threading.Event()

    def run() -> None:
        fn()
        returned.set()

    threading.Thread(target=run, name="shutting-down", daemon=True).start()
    return returned


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # a shutdown that gives up warns
@pytest.mark.parametrize(("kind", "mode", "form"), grid(KINDS, ["named"], list(SHUTDOWNS)))
async def test_registry_shutdown_returns_in_every_form_with_calls_running_and_waiting(
    fresh: Case, form: str
) -> None:
    """registry.shutdown returns on time, bounded or not, with calls running, queued and waiting."""
    case = fresh
    case.registry.register(BOUND, case.executor, max_pending=1, when_full="wait")
    bound = case.spec(BOUND)
    running = [case.registry.offload(pt.hold, executor=bound)(case.path("run0"), case.release)]
    running += [
        case.call(pt.hold)(case.path(f"run{i}"), case.release) for i in range(1, case.workers)
    ]
    for i, future in enumerate(running):
        await case.started(case.path(f"run{i}"), future)
    victims = {
        case.path(f"queued{i}"): case.call(pt.mark)(case.path(f"queued{i}")) for i in range(2)
    }
    mark_bound = case.registry.offload(pt.mark, executor=bound)
    victims |= {case.path(f"waiting{i}"): mark_bound(case.path(f"waiting{i}")) for i in range(2)}

    options = SHUTDOWNS[form]
    timeout = options.get("timeout")
    limit = timeout + MARGIN if timeout is not None else WAIT if options["wait"] else SOON
    began = time.monotonic()
    returned = _in_thread(functools.partial(case.registry.shutdown, **options))
    if options["wait"] and timeout is None:
        case.release.touch()  # an orderly shutdown waits for the running calls
    returned_in_time = await asyncio.to_thread(returned.wait, limit)
    took = time.monotonic() - began
    case.release.touch()
    assert returned_in_time, f"registry.shutdown({options}) did not return in {limit}s: deadlock"
    assert took < limit

    futures = [*running, *victims.values()]
    _, pending = await asyncio.wait(futures, timeout=WAIT)
    assert not pending, f"{len(pending)} calls never settled after the shutdown"
    if case.kind == "dask":
        await case.forgotten("mark")
    else:
        assert await asyncio.to_thread(drain, case.executor), "the executor's workers hang"
    ran_anyway = [
        f"{path.name} ({fate(future)})"
        for path, future in victims.items()
        if not succeeded(future) and path.exists()
    ]
    assert not ran_anyway, f"calls the shutdown ended ran anyway: {ran_anyway}"


def _shuts_down_its_tasks(kind: str, _mode: str) -> str | None:
    if kind == "dask":
        return "DaskExecutor.shutdown leaves tasks to the cluster: it drops no queued call"
    return None


@pytest.mark.parametrize(("kind", "mode"), grid(KINDS, NAMING, skip=_shuts_down_its_tasks))
async def test_a_pools_own_shutdown_with_cancel_futures_drops_its_queued_calls(
    fresh: Case,
) -> None:
    """executor.shutdown(cancel_futures=True) cancels queued calls, counts them, frees slots."""
    case = fresh
    busy = await case.fill(through_name=False)
    marks = [case.path(f"queued{i}") for i in range(2)]
    queued = [case.call(pt.mark)(path) for path in marks]  # bounded: the second one waits
    await case.reached_the_pool("mark", waiting=False)  # the first holds the slot
    await turns()
    returned = _in_thread(
        functools.partial(case.executor.shutdown, wait=False, cancel_futures=True)
    )
    returned_in_time = await asyncio.to_thread(returned.wait, SOON)
    case.release.touch()
    assert returned_in_time, "executor.shutdown(cancel_futures=True) deadlocked"
    _, pending = await asyncio.wait([*busy, *queued], timeout=WAIT)
    assert not pending, f"calls never settled: {[fate(f) for f in queued]}"
    assert await asyncio.to_thread(drain, case.executor), "the executor's workers hang"
    fates = [fate(future) for future in queued]
    if case.naming == "bounded":
        assert fates[0] == "cancelled", fates
        assert not succeeded(queued[1]), fates  # it got the slot back, on a shut-down pool
    else:
        assert fates == ["cancelled", "cancelled"]
    assert not [path.name for path in marks if path.exists()], "a dropped call ran"
    if case.naming != "unnamed":
        stats = await case.at_rest()
        assert _at_rest(stats), stats
        assert stats["submitted"] == 2, stats
        assert stats["cancelled"] >= 1 if case.naming == "bounded" else stats["cancelled"] == 2


# -- 6. Replacing a name's executor carries its waiting calls over ------------------


@pytest.mark.parametrize(("kind", "mode"), grid(KINDS, ["bounded", "bounded+timeout"]))
async def test_replacing_the_executor_carries_waiting_calls_over_to_the_new_one(
    pools: Pools, tmp_path: Path, kind: str, mode: str
) -> None:
    """register(name, new, replace=True) sends the calls waiting for a slot to the new executor."""
    old, new = pools.make(kind, "old-executor"), pools.make(kind, "new-executor")
    timeout = LONG if mode.endswith("+timeout") else None
    registry = offload.Registry()
    registry.register(NAME, lambda: old, max_pending=1, when_full="wait")
    spec = registry.lane(NAME) if kind == "lane" else NAME
    release = tmp_path / "release"
    try:
        held = [registry.offload(pt.hold, executor=spec)(tmp_path / "held0", release)]
        held += [
            registry.offload(pt.hold, executor=old)(tmp_path / f"held{i}", release)
            for i in range(1, WORKERS[kind])
        ]
        case = Case(kind, "unnamed", old, tmp_path, pools)
        old_places = {await case.started(tmp_path / f"held{i}", f) for i, f in enumerate(held)}
        locate = registry.offload(pt.where, executor=spec, timeout=timeout)
        waiting = [locate() for _ in range(2)]
        await turns()
        assert registry.stats()[NAME]["waiting"] == 2
        registry.register(NAME, new, replace=True, max_pending=1, when_full="wait")
        release.touch()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*held, *waiting, return_exceptions=True), WAIT
        )
    finally:
        release.touch()
        await asyncio.to_thread(drain, old)
        await asyncio.to_thread(drain, new)
    places = outcomes[len(held) :]
    errors = [p for p in places if isinstance(p, BaseException)]
    assert not errors, f"waiting calls failed after the replacement: {errors!r}"
    old_pids = {pid for pid, _ in old_places}
    for pid, thread in places:  # type: ignore[misc]
        if kind in THREAD_KINDS:
            assert thread.startswith("new-executor"), f"ran on {thread}, not on the new executor"
        elif kind != "dask":  # one cluster behind both: nothing tells them apart
            assert pid not in old_pids, f"ran in {pid}, a worker of the old executor"
            assert pid != os.getpid()


# -- 7. Nothing a worker raises or returns breaks a pool ---------------------------

#: What a worker does -> (the function, the exception that may arrive as it is, if any).
HARD: dict[str, tuple[Callable[[], object], type[BaseException] | None]] = {
    "frozen-exception": (pt.raise_frozen, pt.FrozenError),
    "unpicklable-exception": (pt.raise_unpicklable, None),
    "unprintable-exception": (pt.raise_unprintable, None),
    "result-failing-to-unpickle": (pt.return_poison, None),
    "base-exception": (pt.raise_abort, pt.Abort),
}


@pytest.mark.parametrize(
    ("kind", "mode", "what"), grid((*PROCESS_KINDS, "dask"), ["named"], list(HARD))
)
async def test_nothing_a_worker_raises_or_returns_breaks_a_process_executor(
    case: Case, what: str
) -> None:
    """The call fails with an error naming its function; the same workers take the next call."""
    before = await case.worker_pids()
    fn, itself = HARD[what]
    with threads_that_die() as died:
        outcome = case.call(fn)()
        await asyncio.wait({outcome}, timeout=SOON)
        assert not died, f"a thread of the executor died: {died}"
        assert outcome.done(), "the call never settled"
        assert not outcome.cancelled()
        error = outcome.exception()
        assert error is not None, fate(outcome)
        assert not isinstance(error, offload.WorkerDiedError), f"a worker died: {_text(error)}"
        clear = (itself is not None and type(error) is itself) or fn.__name__ in _text(error)
        assert clear, f"an unclear error: {type(error).__name__}: {_text(error)}"
        next_call = case.call(pt.echo)("next")
        await settled(next_call, SOON)
        assert succeeded(next_call), fate(next_call)
        assert await case.worker_pids() == before, "a worker process died or was replaced"
    assert not died, f"a thread of the executor died: {died}"


@contextlib.contextmanager
def threads_that_die() -> Iterator[list[str]]:
    """Record the threads an exception ends meanwhile, instead of leaving them to pytest.

    The test then fails as soon as it looks, rather than whenever pytest's own hook
    reports the thread.
    """
    died: list[str] = []

    def record(args: threading.ExceptHookArgs) -> None:
        thread = args.thread.name if args.thread is not None else "a thread"
        died.append(f"{thread} ({args.exc_type.__name__}: {args.exc_value})")

    previous, threading.excepthook = threading.excepthook, record
    try:
        yield died
    finally:
        threading.excepthook = previous


@pytest.mark.parametrize(
    ("kind", "mode", "what"), grid(THREAD_KINDS, NAMING, ["base-exception", "system-exit"])
)
async def test_a_base_exception_on_a_thread_fails_only_its_call(case: Case, what: str) -> None:
    """A BaseException from the body fails the call with it; the same threads take the next call."""
    before = await case.settle()
    fn: Callable[[], None] = pt.raise_abort if what == "base-exception" else pt.raise_system_exit
    expected = pt.Abort if what == "base-exception" else SystemExit
    outcome = case.call(fn)()
    await settled(outcome, SOON)
    assert not outcome.cancelled()
    assert isinstance(outcome.exception(), expected), fate(outcome)
    assert await asyncio.wait_for(case.call(pt.echo)("next"), SOON) == "next"
    assert await case.settle() == before, "a worker thread died"


# -- 8. No reference cycles per call; a closed loop is freed -------------------------

_OFFLOAD_DIR = str(Path(offload.__file__).parent)


def _made_by_offload(obj: object, loop: asyncio.AbstractEventLoop) -> bool:  # noqa: PLR0911
    """Whether ``obj`` is something offload made for calls on ``loop``."""
    if isinstance(obj, asyncio.Future):
        return obj.get_loop() is loop
    if isinstance(obj, types.FrameType):
        return obj.f_code.co_filename.startswith(_OFFLOAD_DIR)
    if isinstance(obj, (types.CoroutineType, types.GeneratorType)):
        code = obj.cr_code if isinstance(obj, types.CoroutineType) else obj.gi_code
        return code.co_filename.startswith(_OFFLOAD_DIR)
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        return str(getattr(obj, "__module__", "")).startswith("offload")
    if isinstance(obj, functools.partial):
        return _made_by_offload(obj.func, loop)
    if isinstance(obj, tuple) and obj and callable(obj[0]):
        return _made_by_offload(obj[0], loop)
    if isinstance(obj, pt.Boom):  # the calls' own exceptions, kept in a cycle
        return True
    return type(obj).__module__.startswith("offload")


def _describe(obj: object) -> str:
    if isinstance(obj, types.FrameType):
        return f"frame of {obj.f_code.co_name}"
    return type(obj).__name__


@pytest.mark.parametrize(("kind", "mode"), grid(KINDS, NAMING))
def test_calls_leave_no_reference_cycles(case: Case) -> None:
    """With gc off, calls that return and calls that raise leave nothing offload made in a cycle."""
    returns, raises = case.call(pt.echo), case.call(pt.boom)

    async def main() -> None:
        for i in range(10):  # awaited directly: asyncio.wait_for makes cycles of its own
            assert await returns(i) == i
            with contextlib.suppress(pt.Boom):
                await raises("x")

    with garbage_saved() as garbage:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        case.pools.meet(case.kind, case.executor)  # every worker is done with the calls
        gc.collect()
        ours = [_describe(obj) for obj in garbage if _made_by_offload(obj, loop)]
    assert ours == [], f"{len(ours)} objects in reference cycles: {sorted(set(ours))}"


@pytest.mark.parametrize(("kind", "mode"), grid(KINDS, NAMING))
def test_a_closed_loop_and_everything_bound_for_it_is_freed(case: Case) -> None:
    """A closed loop is freed with its Futures, even if a result came while it was stopped."""
    loop = asyncio.new_event_loop()

    async def start() -> weakref.ref[asyncio.Future[pt.Where]]:
        results = await asyncio.wait_for(
            asyncio.gather(*(case.call(pt.echo)(i) for i in range(5))), WAIT
        )
        assert results == list(range(5))
        late = case.call(pt.hold)(case.path("late"), case.release)
        await case.started(case.path("late"), late)
        return weakref.ref(late)

    try:
        late = loop.run_until_complete(start())
    finally:
        case.release.touch()  # the late call returns while the loop is stopped
    case.pools.meet(case.kind, case.executor)  # ... and its outcome has been sent
    loop.close()
    loop_ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert late() is None, "the Future of the loop is kept alive"
    assert loop_ref() is None, "the closed loop is kept alive"


# -- 9. cancel="wait": a given-up coroutine form ends once its work is over ----------------


@pytest.mark.parametrize(
    ("kind", "mode", "reason"), grid(KINDS, NAMING, ["cancelled", "timed-out"])
)
async def test_a_given_up_coroutine_ends_only_once_its_work_is_over(
    case: Case, reason: str
) -> None:
    """With cancel="wait", a cancelled or timed-out call ends once its thread returned or its
    worker process is gone, not before; on a cluster, once the cluster reports its task ended."""
    finished = case.path("finished")
    timeout = RUNNING_TIMEOUT if reason == "timed-out" else None
    call = case.coroutine(pt.hold, timeout=timeout)
    task = asyncio.ensure_future(call(case.path("victim"), case.release, finished))
    pid, _ = await case.started(case.path("victim"))
    if reason == "cancelled":
        task.cancel()
    terminated = case.kind in OFFLOAD_PROCESS_KINDS  # the pool stops the worker
    # A cluster cannot stop a running task, nor say when it stops: offload waits
    # for the cluster to report the task cancelled.
    unseen = case.kind == "dask"
    if not (terminated or unseen):
        # Past the deadline, with the work still held: the caller must still be waiting.
        done, _ = await asyncio.wait({task}, timeout=RUNNING_TIMEOUT + SHORT_TIMEOUT)
        assert not done, f"the {reason} call ended while its work still ran"
        case.release.touch()
    done, _ = await asyncio.wait({task}, timeout=WAIT)
    assert done, f"the {reason} call never ended"
    if terminated:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, and reaped, by the time the caller hears
    elif not unseen:
        assert finished.exists(), "the caller heard before the work was over"
    if reason == "cancelled":
        assert task.cancelled()
    else:
        assert isinstance(task.exception(), TimeoutError), task
    case.release.touch()
    assert await asyncio.wait_for(case.call(pt.echo)("next"), WAIT) == "next"


@pytest.mark.parametrize(("kind", "mode"), grid(KINDS, NAMING))
async def test_a_coroutine_cancelled_before_its_call_starts_ends_at_once_unrun(
    case: Case,
) -> None:
    """With cancel="wait", a call cancelled while it waits for a worker or a slot ends at
    once, and never runs."""
    busy = await case.fill()
    never = case.path("never")
    task = asyncio.ensure_future(case.coroutine(pt.mark)(never))
    await turns()  # the task has sent its call
    await case.reached_the_pool("mark")
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=WAIT)
    assert done, "the cancel waited for work that had not started"
    assert task.cancelled()
    await case.forgotten("mark")
    case.release.touch()
    await asyncio.wait_for(asyncio.gather(*busy), WAIT)
    await case.settle()
    assert not never.exists(), f"the cancelled call ran on {pt.read_where(never)}"


# -- Bugs, one test each ------------------------------------------------------------


def count_up(n: int) -> Iterator[int]:
    """A blocking generator function."""
    yield from range(n)


@pytest.mark.parametrize("form", ["bare", "named", "plain-call"])
def test_offloading_a_generator_function_points_to_agenerator(form: str) -> None:
    """A generator function is refused at decoration with TypeError naming offload.agenerator."""
    registry = offload.Registry()
    decorate: dict[str, Callable[[], object]] = {
        "bare": lambda: registry.offload(count_up),
        "named": lambda: registry.offload("io")(count_up),
        "plain-call": lambda: registry.offload(count_up, executor="io"),
    }
    with pytest.raises(TypeError, match="agenerator"):
        decorate[form]()


@pytest.mark.parametrize(
    "cls",
    [ThreadPoolExecutor, ProcessPoolExecutor, offload.ThreadPool, offload.ProcessPool],
    ids=lambda cls: cls.__name__,
)
def test_an_executor_class_is_refused_saying_to_pass_an_instance_or_a_factory(
    cls: type[Executor],
) -> None:
    """offload(executor=ThreadPoolExecutor) is a TypeError at decoration that says what to pass."""
    attempts: tuple[Callable[[], object], ...] = (
        lambda: offload.offload(executor=cls),  # type: ignore[call-overload]
        lambda: offload.offload(len, executor=cls),  # type: ignore[call-overload]
    )
    for decorate in attempts:
        with pytest.raises(TypeError) as info:
            decorate()
        message = str(info.value)
        assert cls.__name__ in message, message
        assert "instance" in message, message
        assert "factory" in message, message


@pytest.mark.parametrize("kind", PROCESS_KINDS)
async def test_classmethod_above_offload_on_a_process_pool_says_to_apply_offload_last(
    case: Case,
) -> None:
    """@classmethod above @offload on a process pool fails with NotPicklableError and the fix."""
    pt.registry.register("procs", case.executor, replace=True)
    with pytest.raises(offload.NotPicklableError, match=r"apply offload last \(outermost\)"):
        await asyncio.wait_for(pt.Misordered.describe(2), SOON)


@pytest.mark.parametrize(
    ("kind", "mode"), [("affine", "bounded"), ("lanes", "bounded"), ("lane", "bounded")]
)
async def test_a_cancelled_call_still_running_on_an_affine_thread_keeps_its_slot(
    case: Case,
) -> None:
    """On an AffineThread, a cancelled call that still runs keeps its slot until it returns."""
    first = case.call(pt.hold)(case.path("first"), case.gate("first"))
    await case.started(case.path("first"), first)
    second = case.call(pt.mark)(case.path("second"))
    assert first.cancel()
    await turns()
    stats = case.stats()
    where = (stats["waiting"], stats["running"] + stats["queued"])
    assert where == (1, 1), f"(waiting, in the executor) is {where}: the slot came back early"
    case.gate("first").touch()
    await asyncio.wait_for(second, WAIT)


async def _dependent_calls(pool: offload.ThreadPool, gate: threading.Event) -> object:
    wait_for_gate = offload.offload(gate.wait, executor=pool)
    open_gate = offload.offload(gate.set, executor=pool)
    await offload.offload(int, executor=pool)()  # one thread started, now idle
    await asyncio.to_thread(int)  # ... and waiting for work, as between bursts
    calls = asyncio.gather(wait_for_gate(WAIT), wait_for_gate(WAIT), open_gate())
    try:
        return await asyncio.wait_for(calls, SOON)
    except TimeoutError:
        return "deadlock: a call waited behind busy workers while threads were unstarted"


@pytest.mark.timeout(60)
def test_dependent_calls_never_wait_behind_busy_workers_while_threads_are_unstarted() -> None:
    """On ThreadPool(4), two calls waiting for a third to set an Event all finish, 200 times."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for attempt in range(200):
            pool = offload.ThreadPool(4, name=f"dependent{attempt}")
            gate = threading.Event()
            try:
                outcome = asyncio.run(_dependent_calls(pool, gate))
            finally:
                gate.set()
                pool.shutdown(wait=True)
            assert outcome == [True, True, None], f"attempt {attempt}: {outcome}"
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.parametrize("kind", THREAD_KINDS)
async def test_two_pending_anext_calls_on_one_iterator_both_get_items(case: Case) -> None:
    """Two anext() awaiting one offload.aiterate iterator at once each get an item."""
    items = offload.aiterate(pt.gated(case.release, 2), executor=case.executor, prefetch=4)
    first = asyncio.ensure_future(anext(items))
    second = asyncio.ensure_future(anext(items))
    try:
        await turns()
        assert not first.done()
        assert not second.done()
        case.release.touch()
        _, pending = await asyncio.wait({first, second}, timeout=SOON)
        assert not pending, "one of two pending anext() never got an item"
        assert sorted([first.result(), second.result()]) == [1, 2]
    finally:
        first.cancel()
        second.cancel()
        await asyncio.wait_for(items.aclose(), WAIT)


class Stepped:
    """Items 0 to ``count - 1``, each made once the file ``go{i}`` exists; counts what it made."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder, self.count, self.made = folder, count, 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.count):
            assert pt.wait_for(self.folder / f"go{i}")
            self.made += 1
            yield i


@pytest.mark.parametrize(
    "when", ["producer-running", "producer-queued", "producer-queued-cancelled"]
)
async def test_an_iterator_on_a_shut_down_affine_thread_loses_no_item_and_never_hangs(
    tmp_path: Path, when: str
) -> None:
    """A shut-down AffineThread ends an iterator with ExecutorShutdownError, no item lost."""
    thread = offload.AffineThread(name="iterated")
    source = Stepped(tmp_path, 4)
    items = offload.aiterate(source, executor=thread, prefetch=1)
    try:
        first = asyncio.ensure_future(anext(items))
        await turns()
        if when != "producer-running":  # a job queued behind the producer of item 0
            blocker = thread.submit(pt.hold, tmp_path / "blocker", tmp_path / "release")
        (tmp_path / "go0").touch()
        got = [await asyncio.wait_for(first, SOON)]  # the producer of item 1 is on its way now
        # ... so that producer is queued behind it; unless the producer of item 0 took the
        # credit for item 1 before it returned, and waits for go1 first (both orders are the
        # executor's to choose).
        if when != "producer-running" and not await asyncio.to_thread(
            pt.wait_for, tmp_path / "blocker", SOON
        ):
            (tmp_path / "go1").touch()
            assert await asyncio.to_thread(pt.wait_for, tmp_path / "blocker")
        thread.shutdown(wait=False, cancel_futures=when == "producer-queued-cancelled")
        for i in range(1, 4):
            (tmp_path / f"go{i}").touch()
        (tmp_path / "release").touch()
        ending = "more items than the source has"
        for _ in range(5):
            try:
                got.append(await asyncio.wait_for(anext(items), SOON))
            except StopAsyncIteration:
                ending = "the end"
                break
            except offload.ExecutorShutdownError:
                ending = "ExecutorShutdownError"
                break
    finally:
        (tmp_path / "release").touch()
        for i in range(4):
            (tmp_path / f"go{i}").touch()
        thread.shutdown(wait=False)
    assert got == list(range(source.made)), f"made {source.made} items, delivered {got}"
    assert ending == "ExecutorShutdownError" or (ending == "the end" and got == [0, 1, 2, 3])
    if when != "producer-running":
        assert blocker.result(timeout=WAIT)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "mode"), [*grid(THREAD_KINDS, ["named"]), *grid(["threadpool"], ["bounded"])]
)
def test_counters_stay_exact_when_four_loops_race_through_one_name(case: Case) -> None:
    """Four threads, each running a loop, make 2,000 calls each through one name: all counted."""
    noop = case.call(pt.echo)
    errors: list[BaseException] = []

    def flood() -> None:
        async def main() -> None:
            await asyncio.wait_for(asyncio.gather(*(noop(i) for i in range(2_000))), 50)

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=flood) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(55)
    finally:
        sys.setswitchinterval(previous)
    assert errors == []
    deadline = time.monotonic() + SOON
    stats = case.stats()
    while not _at_rest(stats) and time.monotonic() < deadline:  # the last workers finishing
        time.sleep(0.01)
        stats = case.stats()
    assert (stats["submitted"], stats["completed"]) == (8_000, 8_000)
    assert _at_rest(stats), stats
