"""Statistics per name: counters that add up, percentiles, the slow-queue warning, JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import threading
import typing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
import tornado.testing
import tornado.web

import offload
from offload._stats import SAMPLE_EVERY
from tests import process_targets as targets
from tests.conftest import WAIT, hold


def test_stats_has_every_name_with_the_documented_fields(registry: offload.Registry) -> None:
    stats = registry.stats()
    assert sorted(stats) == ["cpu", "default", "io"]
    fields = typing.get_type_hints(offload.ExecutorStats)
    for name, entry in stats.items():
        assert set(entry) == set(fields)
        assert entry["name"] == name
        assert set(entry["wait"]) == set(typing.get_type_hints(offload.Timings))
    assert json.loads(json.dumps(stats)) == stats  # plain data


#: offload's pool reports which calls run; any other pool is counted at each start and end.
POOLS = pytest.mark.parametrize(
    "make_pool", [offload.ThreadPool, ThreadPoolExecutor], ids=["offload-pool", "stdlib-pool"]
)


@POOLS
def test_each_call_is_counted_once_by_its_fate(
    registry: offload.Registry, make_pool: Callable[[int], Executor]
) -> None:
    registry.register("w", make_pool(2))
    gate = threading.Event()

    @registry.offload("w")
    def work(kind: str) -> str:
        if kind == "fail":
            raise ValueError(kind)
        if kind == "slow":
            while not offload.cancelled():
                gate.wait(0.001)
        return kind

    @registry.offload("w", timeout=0.02)
    def deadline() -> None:
        while not offload.cancelled():
            gate.wait(0.001)

    async def main() -> None:
        assert await work("ok") == "ok"
        with pytest.raises(ValueError, match="fail"):
            await work("fail")
        with pytest.raises(TimeoutError):
            await deadline()
        slow = work("slow")
        await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow

    asyncio.run(main())
    registry.shutdown(wait=True)  # the cancelled and timed-out threads finish
    stats = registry.stats()["w"]
    fates = (stats["completed"], stats["failed"], stats["timed_out"], stats["cancelled"])
    assert fates == (1, 1, 1, 1)
    assert stats["submitted"] == 4
    assert (stats["running"], stats["queued"]) == (0, 0)


@POOLS
def test_queued_running_and_waiting_say_where_the_calls_are(
    registry: offload.Registry, make_pool: Callable[[int], Executor]
) -> None:
    pool = make_pool(1)
    registry.register("one", pool, max_pending=3)
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload("one")(hold(started, release))
    noop = registry.offload("one")(abs)

    async def main() -> None:
        first = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        rest = [noop(i) for i in range(5)]
        stats = registry.stats()["one"]
        assert (stats["running"], stats["queued"], stats["waiting"]) == (1, 2, 3)
        assert (stats["max_pending"], stats["workers"]) == (3, 1)
        assert stats["executor"] == repr(pool)
        release.set()
        await first
        await asyncio.gather(*rest)

    asyncio.run(main())
    stats = registry.stats()["one"]
    assert (stats["running"], stats["queued"], stats["waiting"]) == (0, 0, 0)
    assert stats["wait"]["samples"] == 6  # a bounded name times every call
    wait = stats["wait"]
    assert wait["p50"] is not None
    assert wait["max"] is not None
    assert 0 <= wait["p50"] <= wait["max"]


@POOLS
def test_a_call_cancelled_as_it_runs_is_counted_after_its_loop_closed(
    registry: offload.Registry, make_pool: Callable[[int], Executor]
) -> None:
    registry.register("late", make_pool(1))
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload("late")(hold(started, release))

    async def start() -> None:
        call = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        assert registry.stats()["late"]["running"] == 1
        call.cancel()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    loop.close()
    release.set()
    registry.shutdown(wait=True)  # the worker has finished, and reported to the closed loop
    stats = registry.stats()["late"]
    counts = (stats["submitted"], stats["cancelled"], stats["running"], stats["queued"])
    assert counts == (1, 1, 0, 0)


def test_an_unbounded_name_times_a_sample_of_its_calls(registry: offload.Registry) -> None:
    noop = registry.offload("io")(abs)

    async def main() -> None:
        await asyncio.gather(*(noop(i) for i in range(10 * SAMPLE_EVERY)))

    asyncio.run(main())
    stats = registry.stats()["io"]
    assert stats["completed"] == 10 * SAMPLE_EVERY
    assert stats["wait"]["samples"] == stats["run"]["samples"] == 10


def test_calls_to_an_executor_passed_directly_are_not_counted(
    registry: offload.Registry,
) -> None:
    pool = offload.ThreadPool(1)
    registry.register("named", pool)
    direct = registry.offload(executor=pool)(abs)

    async def main() -> None:
        await direct(-1)

    asyncio.run(main())
    assert registry.stats()["named"]["submitted"] == 0
    pool.shutdown()


def test_counters_survive_replacing_the_executor_behind_a_name(
    registry: offload.Registry,
) -> None:
    registry.register("db", offload.ThreadPool(1))
    noop = registry.offload("db")(abs)

    async def main() -> None:
        await noop(1)
        registry.register("db", offload.ThreadPool(2), replace=True)
        await noop(2)

    asyncio.run(main())
    stats = registry.stats()["db"]
    assert (stats["completed"], stats["workers"]) == (2, 2)


def test_a_long_queue_wait_logs_one_line_naming_the_executor_and_its_size(
    registry: offload.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    pool = offload.ThreadPool(1, name="slowpool")
    registry.register("slow", pool, max_pending=100, warn_after=1e-6)
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload("slow")(hold(started, release))
    noop = registry.offload("slow")(abs)

    async def main() -> None:
        first = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        rest = [noop(i) for i in range(5)]
        release.set()
        await asyncio.gather(first, *rest)

    with caplog.at_level(logging.WARNING, logger="offload"):
        asyncio.run(main())
    records = [r for r in caplog.records if r.name == "offload"]
    assert len(records) == 1  # at most one per name every 10 s
    message = records[0].getMessage()
    assert "\n" not in message
    assert "'slow'" in message
    assert "slowpool" in message
    assert "has 1 workers" in message
    assert not message.startswith("offload")  # the logger's name says it once


def test_no_warning_while_calls_start_promptly(
    registry: offload.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.register("quick", offload.ThreadPool(2), max_pending=100, warn_after=30.0)
    noop = registry.offload("quick")(abs)

    async def main() -> None:
        await asyncio.gather(*(noop(i) for i in range(50)))

    with caplog.at_level(logging.WARNING, logger="offload"):
        asyncio.run(main())
    assert registry.stats()["quick"]["wait"]["samples"] == 50
    assert not [r for r in caplog.records if r.name == "offload"]


def test_calls_to_a_process_pool_are_counted_and_timed(registry: offload.Registry) -> None:
    registry.register("procs", offload.ProcessPool(1))
    square = registry.offload("procs")(pow)

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(square(i, 2) for i in range(4))), 30)

    assert asyncio.run(main()) == [0, 1, 4, 9]
    stats = registry.stats()["procs"]
    assert (stats["submitted"], stats["completed"], stats["running"]) == (4, 4, 0)
    assert stats["run"]["samples"] == 4
    assert stats["wait"]["samples"] == 4  # offload's own pool sees each call start


def test_calls_to_a_stdlib_process_pool_are_counted_by_their_fate(tmp_path: Path) -> None:
    """Counted as they go (a fast path with no done-callback): each fate once, none left over."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
    targets.registry.register("procs", pool, replace=True)
    started, release = tmp_path / "started", tmp_path / "release"
    fates = ("submitted", "completed", "failed", "cancelled", "timed_out")
    before = targets.registry.stats()["procs"]  # the name is shared with other tests

    async def main() -> None:
        assert await targets.power(3) == 9
        with pytest.raises(ValueError, match="boom"):
            await targets.fail("boom")
        with pytest.raises(offload.NotPicklableError, match="arguments of identity"):
            await targets.identity(threading.Lock())
        with pytest.raises(offload.NotPicklableError, match="result of make_lock"):
            await targets.make_lock()
        held = targets.hold(started, release)
        await targets.started(started)
        stats = targets.registry.stats()["procs"]
        assert stats["running"] + stats["queued"] == 1
        given_up = targets.power(4)
        given_up.cancel()
        release.write_text("go")
        assert await asyncio.wait_for(held, WAIT) > 0

    try:
        asyncio.run(main())
    finally:
        pool.shutdown(wait=True)
    stats = targets.registry.stats()["procs"]
    counted = [stats[fate] - before[fate] for fate in fates]  # type: ignore[literal-required]
    assert counted == [6, 2, 3, 1, 0]
    assert (stats["running"], stats["queued"], stats["waiting"]) == (0, 0, 0)


@pytest.mark.parametrize("make_pool", [offload.ProcessPool, ProcessPoolExecutor])
async def test_a_call_refused_before_it_reaches_a_process_pool_counts_as_failed(
    registry: offload.Registry, make_pool: Callable[[int], Executor]
) -> None:
    square = registry.offload(lambda x: x * x, executor="procs")  # not yet known to be a pool
    registry.register("procs", make_pool(1))
    with pytest.raises(TypeError, match="cannot run on"):
        square(3)
    stats = registry.stats()["procs"]
    counts = (stats["submitted"], stats["failed"], stats["queued"], stats["running"])
    assert counts == (1, 1, 0, 0)


class StatsOverHttp(tornado.testing.AsyncHTTPTestCase):
    """The ready ``StatsHandler`` serves the statistics as JSON."""

    def get_app(self) -> tornado.web.Application:
        self.registry = offload.Registry()
        self.registry.register("db", offload.ThreadPool(2, name="db"), max_pending=10)
        return tornado.web.Application(
            [
                (r"/stats", offload.StatsHandler, {"registry": self.registry}),
                (r"/shared", offload.StatsHandler),
            ]
        )

    def tearDown(self) -> None:
        super().tearDown()
        self.registry.shutdown(timeout=WAIT)

    @tornado.testing.gen_test(timeout=WAIT)
    async def test_it_serves_every_name_and_counts_real_calls(self) -> None:
        await self.registry.offload("db")(abs)(-4)
        response = await self.http_client.fetch(self.get_url("/stats"))
        assert response.headers["Content-Type"].startswith("application/json")
        body = json.loads(response.body)
        assert sorted(body) == ["cpu", "db", "default", "io"]
        assert (body["db"]["completed"], body["db"]["max_pending"]) == (1, 10)

    @tornado.testing.gen_test(timeout=WAIT)
    async def test_one_name_by_query_and_404_for_an_unknown_one(self) -> None:
        one = json.loads((await self.http_client.fetch(self.get_url("/stats?name=db"))).body)
        assert one["name"] == "db"
        missing = await self.http_client.fetch(self.get_url("/stats?name=nope"), raise_error=False)
        assert missing.code == 404

    @tornado.testing.gen_test(timeout=WAIT)
    async def test_without_arguments_it_serves_the_shared_registry(self) -> None:
        body = json.loads((await self.http_client.fetch(self.get_url("/shared"))).body)
        assert body.keys() == offload.stats().keys()
