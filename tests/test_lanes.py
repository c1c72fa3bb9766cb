"""Lanes and lane handles: per-connection threads under a name.

A ``Lanes(n)`` registered under a name is n affine threads; a lane handle of the name
(``registry.lane(name)``) sends its calls through the name (counted, bounded, re-pointable)
and runs every one of them on one lane. The promises every executor kind keeps are held
against both in test_promises.py; these tests hold what is particular to lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from typing import Any, Self

import pytest

import offload
from tests.conftest import WAIT

pytestmark = pytest.mark.timeout(60)


def thread_name() -> str:
    """The name of the thread this runs on."""
    return threading.current_thread().name


def wait_then_name(started: threading.Event, release: threading.Event) -> str:
    """Report that it started, wait until released, then say where it ran."""
    started.set()
    assert release.wait(WAIT), "never released"
    return threading.current_thread().name


def lane_of(handle: offload.Lane) -> str:
    """The name of the thread a handle's calls go to now."""
    executor = handle.get_executor()
    assert isinstance(executor, offload.AffineThread), executor
    return executor.name


@pytest.fixture
def lanes_of(registry: offload.Registry) -> Any:
    """Register ``Lanes(n)`` as ``name`` (with register's options) in the test's registry."""

    def register(name: str, n: int, **options: Any) -> None:
        registry.register(name, lambda: offload.Lanes(n, name=name), **options)

    return register


# -- Affinity: one handle, one thread ---------------------------------------------


async def test_every_call_of_a_handle_runs_on_one_thread_and_live_handles_get_their_own(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """Four handles on Lanes(4): each handle's calls all run on one lane, a different one each."""
    lanes_of("kv", 4)
    handles = [registry.lane("kv") for _ in range(4)]
    where = [registry.offload(thread_name, executor=handle) for handle in handles]
    seen = [set(await asyncio.gather(*(w() for _ in range(20)))) for w in where]
    assert seen == [{"kv_0"}, {"kv_1"}, {"kv_2"}, {"kv_3"}]
    assert [lane_of(handle) for handle in handles] == ["kv_0", "kv_1", "kv_2", "kv_3"]


def test_more_handles_than_lanes_wrap_around(registry: offload.Registry, lanes_of: Any) -> None:
    """With more live handles than lanes, handle ``i`` runs on lane ``i mod n``."""
    lanes_of("kv", 2)
    handles = [registry.lane("kv") for _ in range(5)]
    assert [handle.index for handle in handles] == [0, 1, 2, 3, 4]
    assert [lane_of(handle) for handle in handles] == [
        "kv_0",
        "kv_1",
        "kv_0",
        "kv_1",
        "kv_0",
    ]


def test_a_dropped_handle_gives_its_lane_to_the_next_one(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """The lowest index no live handle holds is dealt next: a replacement gets the lost lane."""
    lanes_of("kv", 3)
    handles = [registry.lane("kv") for _ in range(3)]
    del handles[1]  # a connection closed
    gc.collect()
    replacement = registry.lane("kv")
    assert replacement.index == 1
    assert lane_of(replacement) == "kv_1"
    assert registry.lane("kv").index == 3
    assert registry.lane("other").index == 0, "each name deals its own indexes"


async def test_a_sqlite_connection_made_on_a_lane_is_used_there_with_the_thread_check_on(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """sqlite3 refuses other threads; made through a handle, every later use succeeds."""
    lanes_of("db", 2)
    lane = registry.lane("db")
    conn = await registry.offload(sqlite3.connect, executor=lane)(":memory:")
    try:
        run = registry.offload(conn.execute, executor=lane)
        await run("CREATE TABLE t (x)")
        async with offload.acontext(conn, executor=lane):  # commits on its thread
            await run("INSERT INTO t VALUES (1), (2), (3)")
        cursor = await run("SELECT x FROM t ORDER BY x")
        rows = [row async for row in offload.aiterate(cursor, executor=lane, prefetch=2)]
        assert rows == [(1,), (2,), (3,)]
        with pytest.raises(sqlite3.ProgrammingError, match="thread"):
            conn.execute("SELECT 1")  # the loop's thread is not the connection's
    finally:
        await registry.offload(conn.close, executor=lane)()
    # connect, three statements, close, and the context's __enter__ and __exit__; the
    # iterator's producer is one long job, not calls.
    assert registry.stats()["db"]["completed"] == 7


class Recorder:
    """A blocking object that says where its methods run."""

    def where(self) -> str:
        """The name of the thread this runs on."""
        return threading.current_thread().name

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


AsyncRecorder = offload.facade(Recorder, run=["where"])


class TornadoStyle:
    """A class that keeps its executor in ``self.executor``, as Tornado's decorator wants."""

    def __init__(self, executor: offload.Lane) -> None:
        self.executor = executor

    @offload.run_on_executor
    def where(self) -> str:
        """The name of the thread this runs on."""
        return threading.current_thread().name


async def test_a_handle_is_accepted_wherever_an_executor_is(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """The decorator, its coroutine form, a facade, run_on_executor, aiterate and acontext all
    run on the handle's lane, and the calls among them count under the name."""
    lanes_of("any", 3)
    registry.lane("any")  # dropped at once: its index is dealt again
    other = registry.lane("any")
    lane = registry.lane("any")
    assert (other.index, lane.index) == (0, 1)
    expected = {"any_1"}
    seen = {await registry.offload(thread_name, executor=lane)()}
    seen.add(await registry.offload(thread_name, executor=lane, coroutine=True)())
    facade = AsyncRecorder(Recorder(), executor=lane)
    seen.add(await facade.where())
    async with facade as inside:
        seen.add(await inside.where())
    seen.add(await TornadoStyle(lane).where())
    produced = offload.aiterate((thread_name() for _ in range(2)), executor=lane)
    seen |= {name async for name in produced}
    async with offload.acontext(Recorder(), executor=lane):
        pass
    assert seen == expected
    stats = registry.stats()["any"]
    # Five calls, and two contexts entered and exited (a job each on a lane); the
    # iterator's producer is one long job, not calls.
    assert (stats["submitted"], stats["completed"]) == (9, 9)


# -- Statistics and max_pending ----------------------------------------------------


async def test_calls_through_a_handle_show_in_the_names_statistics_as_they_run(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """A held call is running and the next queued, under the name, then both completed."""
    lanes_of("kv", 2)
    lane = registry.lane("kv")
    started, release = threading.Event(), threading.Event()
    held = registry.offload(wait_then_name, executor=lane)(started, release)
    queued = registry.offload(thread_name, executor=lane)()
    try:
        assert await asyncio.to_thread(started.wait, WAIT)
        stats = registry.stats()["kv"]
        assert (stats["submitted"], stats["running"], stats["queued"]) == (2, 1, 1)
    finally:
        release.set()
    assert list(await asyncio.gather(held, queued)) == ["kv_0", "kv_0"]
    stats = registry.stats()["kv"]
    assert (stats["completed"], stats["running"], stats["queued"]) == (2, 0, 0)


async def test_max_pending_bounds_handle_calls_and_each_waiting_call_runs_on_its_own_lane(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """With max_pending=1, calls of three handles wait in line; each, once let in, runs on the
    lane of the handle that made it, in the order they came."""
    lanes_of("kv", 3, max_pending=1)
    handles = [registry.lane("kv") for _ in range(3)]
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload(wait_then_name, executor=handles[0])(started, release)
    assert await asyncio.to_thread(started.wait, WAIT)
    order: list[str] = []

    def note(tag: str) -> str:
        order.append(tag)
        return threading.current_thread().name

    waiting = [
        registry.offload(note, executor=handle)(f"h{i}-{j}")
        for j in range(2)
        for i, handle in reversed(list(enumerate(handles)))
    ]
    await asyncio.sleep(0)
    stats = registry.stats()["kv"]
    assert (stats["waiting"], stats["running"]) == (6, 1)
    release.set()
    where = await asyncio.wait_for(asyncio.gather(*waiting), WAIT)
    assert await blocker == "kv_0"
    assert where == ["kv_2", "kv_1", "kv_0"] * 2
    assert order == ["h2-0", "h1-0", "h0-0", "h2-1", "h1-1", "h0-1"]


async def test_when_full_fail_refuses_a_handle_call_at_once(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """A full name with when_full="fail" refuses a handle's call with OverloadedError."""
    lanes_of("kv", 2, max_pending=1, when_full="fail")
    first, second = registry.lane("kv"), registry.lane("kv")
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload(wait_then_name, executor=first)(started, release)
    try:
        assert await asyncio.to_thread(started.wait, WAIT)
        with pytest.raises(offload.OverloadedError, match="'kv'"):
            registry.offload(thread_name, executor=second)()
    finally:
        release.set()
    await blocker
    assert registry.stats()["kv"]["rejected"] == 1


# -- Re-pointing the name ------------------------------------------------------------


async def test_re_pointing_at_other_lanes_moves_each_handle_to_its_index_mod_n_there(
    registry: offload.Registry,
) -> None:
    """Re-pointed from Lanes(3) to Lanes(2), handle i runs on lane i mod 2 of the new Lanes."""
    registry.register("kv", offload.Lanes(3, name="old"))
    handles = [registry.lane("kv") for _ in range(3)]
    calls = [registry.offload(thread_name, executor=handle) for handle in handles]
    assert [await call() for call in calls] == ["old_0", "old_1", "old_2"]
    registry.register("kv", offload.Lanes(2, name="new"), replace=True)
    assert [await call() for call in calls] == ["new_0", "new_1", "new_0"]
    assert registry.stats()["kv"]["completed"] == 6


async def test_a_call_waiting_across_a_re_pointing_runs_where_its_handle_now_runs(
    registry: offload.Registry,
) -> None:
    """Handle 5 runs on lane 1 of Lanes(4); re-pointed at Lanes(3), its call that waited for a
    slot runs on lane 5 mod 3 = 2 of the new Lanes, as its later calls do."""
    registry.register("kv", offload.Lanes(4, name="old"), max_pending=1)
    handles = [registry.lane("kv") for _ in range(6)]
    assert lane_of(handles[5]) == "old_1"
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload(wait_then_name, executor=handles[0])(started, release)
    assert await asyncio.to_thread(started.wait, WAIT)
    waited = registry.offload(thread_name, executor=handles[5])()
    await asyncio.sleep(0)
    assert registry.stats()["kv"]["waiting"] == 1
    registry.register("kv", offload.Lanes(3, name="new"), replace=True, max_pending=1)
    release.set()
    assert await asyncio.wait_for(waited, WAIT) == "new_2"
    assert await blocker == "old_0"
    assert await registry.offload(thread_name, executor=handles[5])() == "new_2"


async def test_re_pointing_at_a_thread_pool_sends_handle_calls_to_the_pool(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """A name re-pointed at a ThreadPool takes its handles' calls there, still counted."""
    lanes_of("kv", 2)
    lane = registry.lane("kv")
    where = registry.offload(thread_name, executor=lane)
    assert await where() == "kv_0"
    registry.register("kv", offload.ThreadPool(2, name="pool"), replace=True)
    assert (await where()).startswith("pool_")
    assert lane.get_executor() is registry.get_executor("kv")
    registry.register("kv", offload.Lanes(2, name="back"), replace=True)
    assert await where() == "back_0"
    assert registry.stats()["kv"]["completed"] == 3


# -- The Lanes executor itself --------------------------------------------------------


async def test_calls_through_the_name_go_to_the_least_loaded_lane(
    registry: offload.Registry,
) -> None:
    """A named call to Lanes(2) with lane 0 busy runs on lane 1, at once."""
    lanes = offload.Lanes(2, name="kv")
    registry.register("kv", lanes)
    started, release = threading.Event(), threading.Event()
    busy = lanes.threads[0].submit(wait_then_name, started, release)
    try:
        assert started.wait(WAIT)
        assert await asyncio.wait_for(registry.offload(thread_name, executor="kv")(), WAIT) == (
            "kv_1"
        )
    finally:
        release.set()
    assert busy.result(WAIT) == "kv_0"


def test_submit_from_a_lane_never_picks_that_lane() -> None:
    """A job on lane 0 may submit to the Lanes and wait: the job goes to another lane."""
    lanes = offload.Lanes(2, name="kv")
    try:
        nested = lanes.threads[0].submit(lambda: lanes.submit(thread_name).result(WAIT))
        assert nested.result(WAIT) == "kv_1"
    finally:
        lanes.shutdown()


async def test_waiting_for_a_job_on_the_own_lane_raises_deadlock_error(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """A call on a handle's lane that waits for a job it submitted to that lane fails at once."""
    lanes_of("kv", 2)
    lane = registry.lane("kv")

    def nested() -> str:
        return lane.submit(thread_name).result(WAIT)

    with pytest.raises(offload.DeadlockError, match="'kv_0'"):
        await asyncio.wait_for(registry.offload(nested, executor=lane)(), WAIT)


def test_repr_shows_the_lanes_and_how_many_started() -> None:
    """Lanes and handles say what they are."""
    lanes = offload.Lanes(3, name="kv")
    assert repr(lanes) == "<offload.Lanes 'kv' 3 lanes, 0 started>"
    lanes.threads[1].submit(int).result(WAIT)
    assert repr(lanes) == "<offload.Lanes 'kv' 3 lanes, 1 started>"
    assert lanes.max_workers == 3
    lanes.shutdown()
    assert repr(lanes) == "<offload.Lanes 'kv' 3 lanes, shut down>"
    assert repr(offload.Registry().lane("db")) == "<offload.Lane 0 of 'db'>"


# -- Shutdown ------------------------------------------------------------------------


async def test_registry_shutdown_ends_every_lane_and_handles_refuse_later_calls() -> None:
    """After registry.shutdown, the lanes' threads have ended and a handle's call raises."""
    registry = offload.Registry()
    lanes_of_registry = offload.Lanes(2, name="kv")
    registry.register("kv", lanes_of_registry)
    lane = registry.lane("kv")
    await registry.offload(thread_name, executor=lane)()
    threads = [thread._thread for thread in lanes_of_registry.threads]
    registry.shutdown()
    assert not any(thread.is_alive() for thread in threads)
    with pytest.raises(offload.ExecutorShutdownError, match="'kv'"):
        registry.offload(thread_name, executor=lane)()


async def test_a_handles_shutdown_leaves_its_lane_running_for_the_others(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """lane.shutdown() does nothing: another handle on the same lane goes on working."""
    lanes_of("kv", 1)
    first, second = registry.lane("kv"), registry.lane("kv")
    await registry.offload(thread_name, executor=first)()
    first.shutdown(wait=True, cancel_futures=True)
    assert await registry.offload(thread_name, executor=second)() == "kv_0"
    assert await registry.offload(thread_name, executor=first)() == "kv_0"


# -- Bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, True, 1.5, "2"])
def test_lanes_needs_a_positive_int(n: Any) -> None:
    """Lanes(0), Lanes(True), Lanes("2") fail at once, saying what is wanted."""
    with pytest.raises(ValueError, match="positive int of lanes"):
        offload.Lanes(n)


def test_lanes_names_must_be_strings() -> None:
    """Lanes(2, name="") or a non-str name fails at once."""
    for name in ("", 7):
        with pytest.raises(TypeError, match="non-empty str"):
            offload.Lanes(2, name=name)  # type: ignore[arg-type]


def test_a_handle_cannot_be_registered_as_an_executor(registry: offload.Registry) -> None:
    """register(name, a_handle), or a factory returning one, is a TypeError saying what to do."""
    registry.register("kv", offload.Lanes(2))
    handle = registry.lane("kv")
    with pytest.raises(TypeError, match=r"register the executor itself, such as offload.Lanes"):
        registry.register("alias", handle)
    registry.register("alias", lambda: handle)
    with pytest.raises(TypeError, match="lane handle"):
        registry.get_executor("alias")


def test_a_handle_needs_a_name_and_an_unknown_one_fails_at_call_time(
    registry: offload.Registry,
) -> None:
    """lane("") is a TypeError; a handle of a name nobody registered raises when used."""
    with pytest.raises(TypeError, match="non-empty str"):
        registry.lane("")
    handle = registry.lane("nowhere")
    with pytest.raises(offload.UnknownExecutorError, match="'nowhere'"):
        handle.get_executor()


# -- Fork ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .*multi-threaded:DeprecationWarning")
def test_after_fork_a_handle_runs_on_a_new_lane_in_the_child(
    registry: offload.Registry, lanes_of: Any
) -> None:
    """In a child after fork, Lanes made by a factory are made anew and handles use them."""
    lanes_of("kv", 2)
    lane = registry.lane("kv")
    where = registry.offload(threading.get_ident, executor=lane)

    async def use() -> int:
        ident: int = await asyncio.wait_for(where(), WAIT)
        return ident

    parent_thread = asyncio.run(use())
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            child_thread = asyncio.run(use())
            again = asyncio.run(use())
            ok = child_thread == again and registry.stats()["kv"]["completed"] >= 2
            os.write(write_end, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        report = os.read(read_end, 16)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert report == b"ok", sys.platform
    assert asyncio.run(use()) == parent_thread


# -- AffineThread's fast path ------------------------------------------------------------


@contextlib.contextmanager
def _held(worker: offload.AffineThread) -> Iterator[threading.Event]:
    started, release = threading.Event(), threading.Event()
    worker.submit(wait_then_name, started, release)
    assert started.wait(WAIT)
    try:
        yield release
    finally:
        release.set()


async def test_an_affine_thread_runs_offloaded_calls_and_submitted_jobs_in_one_order() -> None:
    """Offloaded calls and submit jobs share one queue: they run in the order they came."""
    worker = offload.AffineThread(name="mixed")
    seen: list[int] = []
    try:
        with _held(worker):
            offloaded = offload.offload(seen.append, executor=worker)
            first, submitted, last = offloaded(0), worker.submit(seen.append, 1), offloaded(2)
        await asyncio.wait_for(asyncio.gather(first, last), WAIT)
        assert submitted.result(WAIT) is None
        assert seen == [0, 1, 2]
    finally:
        worker.shutdown()


def _race_a_shutdown(attempt: int) -> list[int]:
    """Two loops send calls through a handle; the registry shuts down as they do. Per loop,
    how many of the calls it made were left pending."""
    registry = offload.Registry()
    registry.register("kv", offload.Lanes(2, name=f"race{attempt}"))
    lane = registry.lane("kv")
    sent_some = threading.Event()
    pending: list[int] = []

    def flood() -> None:
        async def main() -> None:
            call = registry.offload(int, executor=lane)
            futures = []
            for i in range(1_000):
                try:
                    futures.append(call(i))
                except offload.ExecutorShutdownError:
                    break
                if i == 100:
                    sent_some.set()
                if i % 50 == 0:
                    await asyncio.sleep(0)
            # A loop that started late may have been refused its first call.
            left = (await asyncio.wait(futures, timeout=WAIT))[1] if futures else set()
            pending.append(len(left))

        asyncio.run(main())

    floods = [threading.Thread(target=flood) for _ in range(2)]
    for thread in floods:
        thread.start()
    assert sent_some.wait(WAIT)
    registry.shutdown(cancel_futures=True)
    for thread in floods:
        thread.join(WAIT)
    return pending


def test_calls_racing_a_shutdown_each_run_or_end_and_none_is_left_pending() -> None:
    """Calls sent while the registry shuts down (cancelling) run, are cancelled, or are refused
    as they are made; none is left pending. 20 times, switching threads as often as possible."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for attempt in range(20):
            assert _race_a_shutdown(attempt) == [0, 0], f"attempt {attempt}: calls left pending"
    finally:
        sys.setswitchinterval(previous)


async def test_a_shutdown_that_gives_up_fails_an_affine_threads_calls(
    registry: offload.Registry,
) -> None:
    """registry.shutdown(timeout=...) on a stuck AffineThread fails its running and queued calls."""
    worker = offload.AffineThread(name="stuck")
    registry.register("stuck", worker)
    started, release = threading.Event(), threading.Event()
    running = registry.offload(wait_then_name, executor="stuck")(started, release)
    queued = registry.offload(thread_name, executor="stuck")()
    try:
        assert await asyncio.to_thread(started.wait, WAIT)
        with pytest.warns(RuntimeWarning, match="gave up"):
            await asyncio.to_thread(registry.shutdown, timeout=0.1)
        for future in (running, queued):
            with pytest.raises(offload.ExecutorShutdownError, match="gave up"):
                await asyncio.wait_for(future, WAIT)
    finally:
        release.set()
