"""A name's ``max_pending`` bound: exact, first come first served, and flat under a flood."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import offload
from tests.conftest import WAIT, hold


def _blocked_pool(
    registry: offload.Registry, name: str, **options: Any
) -> tuple[offload.ThreadPool, threading.Event, threading.Event, Callable[[], Any]]:
    """A one-thread pool registered as ``name``, and a call that holds its thread."""
    pool = offload.ThreadPool(1, name=f"test-{name}")
    registry.register(name, pool, **options)
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload(name)(hold(started, release))
    return pool, started, release, blocker


def test_bad_bounds_are_refused_at_registration(registry: offload.Registry) -> None:
    pool = offload.ThreadPool(1)
    for options in (
        {"max_pending": 0},
        {"max_pending": True},
        {"max_pending": 1.5},
        {"when_full": "drop"},
        {"warn_after": 0},
        {"warn_after": "1s"},
    ):
        with pytest.raises(ValueError, match=next(iter(options))):
            registry.register("x", pool, **options)
    assert "x" not in registry.names()
    pool.shutdown()


def test_waiting_calls_hold_no_slot_and_start_first_come_first_served(
    registry: offload.Registry,
) -> None:
    pool, started, release, blocker = _blocked_pool(registry, "db", max_pending=3)
    order: list[int] = []
    record = registry.offload("db")(order.append)

    async def main() -> None:
        first = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        calls = [record(i) for i in range(10)]
        stats = registry.stats()["db"]
        # Exactly 3 in the executor (1 running, 2 queued); the rest wait.
        assert pool._queue.qsize() == 2
        assert (stats["running"], stats["queued"], stats["waiting"]) == (1, 2, 8)
        ticked = asyncio.Event()
        asyncio.get_running_loop().call_soon(ticked.set)
        await asyncio.wait_for(ticked.wait(), WAIT)  # the loop was never blocked
        release.set()
        assert await first is True
        await asyncio.wait_for(asyncio.gather(*calls), WAIT)

    asyncio.run(main())
    assert order == list(range(10))
    stats = registry.stats()["db"]
    assert (stats["submitted"], stats["completed"], stats["waiting"], stats["queued"]) == (
        11,
        11,
        0,
        0,
    )


def test_the_bound_is_exact_when_two_loops_race_to_fill_it(registry: offload.Registry) -> None:
    pool, started, release, blocker = _blocked_pool(registry, "db", max_pending=50)
    ready = threading.Barrier(2, timeout=WAIT)
    filled = threading.Barrier(3, timeout=WAIT)
    counts: list[int] = []
    noop = registry.offload("db")(abs)

    def flood() -> None:
        async def main() -> None:
            ready.wait()
            calls = [noop(i) for i in range(2_000)]
            filled.wait()
            await asyncio.wait_for(asyncio.gather(*calls), WAIT)
            counts.append(len(calls))

        asyncio.run(main())

    async def first() -> None:
        future = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        threads = [threading.Thread(target=flood) for _ in range(2)]
        for thread in threads:
            thread.start()
        await asyncio.to_thread(filled.wait)
        # One call runs, 49 are queued: not one more, whichever loop won each race.
        assert pool._queue.qsize() == 49
        assert registry.stats()["db"]["waiting"] == 2 * 2_000 - 49
        release.set()
        await future
        for thread in threads:
            await asyncio.to_thread(thread.join, WAIT)

    asyncio.run(first())
    assert counts == [2_000, 2_000]
    assert registry.stats()["db"]["completed"] == 4_001


def test_a_full_name_with_when_full_fail_refuses_at_once(registry: offload.Registry) -> None:
    _, _, release, blocker = _blocked_pool(registry, "db", max_pending=2, when_full="fail")
    noop = registry.offload("db")(abs)

    async def main() -> None:
        first = blocker()
        queued = noop(-1)
        with pytest.raises(offload.OverloadedError, match="max_pending=2") as caught:
            noop(-2)
        assert (caught.value.name, caught.value.max_pending) == ("db", 2)
        release.set()
        assert (await first, await queued) == (True, 1)
        assert await noop(-3) == 3  # slots came back

    asyncio.run(main())
    stats = registry.stats()["db"]
    assert (stats["submitted"], stats["rejected"], stats["completed"]) == (4, 1, 3)


def test_cancelling_a_waiting_call_means_it_never_runs(registry: offload.Registry) -> None:
    _, started, release, blocker = _blocked_pool(registry, "db", max_pending=1)
    ran: list[int] = []
    record = registry.offload("db")(ran.append)

    async def main() -> None:
        first = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        waiting = [record(i) for i in range(3)]
        waiting[1].cancel()
        release.set()
        await first
        results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), WAIT)
        assert isinstance(results[1], asyncio.CancelledError)

    asyncio.run(main())
    assert ran == [0, 2]
    stats = registry.stats()["db"]
    assert (stats["cancelled"], stats["completed"], stats["waiting"]) == (1, 3, 0)


def test_a_timeout_counts_the_time_spent_waiting_for_a_slot(registry: offload.Registry) -> None:
    _, started, release, blocker = _blocked_pool(registry, "db", max_pending=1)
    late = registry.offload("db", timeout=0.05)(abs)

    async def main() -> None:
        first = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        with pytest.raises(TimeoutError):
            await late(-1)
        release.set()
        await first

    asyncio.run(main())
    stats = registry.stats()["db"]
    assert (stats["timed_out"], stats["completed"]) == (1, 1)


def test_the_bound_holds_on_a_stdlib_thread_pool(registry: offload.Registry) -> None:
    pool = ThreadPoolExecutor(1)
    registry.register("x", pool, max_pending=2)
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload("x")(hold(started, release))
    square = registry.offload("x")(pow)

    async def main() -> list[int]:
        first = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        calls = [square(i, 2) for i in range(6)]
        assert pool._work_queue.qsize() == 1
        assert registry.stats()["x"]["waiting"] == 5
        release.set()
        await first
        return await asyncio.wait_for(asyncio.gather(*calls), WAIT)

    assert asyncio.run(main()) == [i * i for i in range(6)]
    stats = registry.stats()["x"]
    assert (stats["submitted"], stats["completed"], stats["waiting"]) == (7, 7, 0)
    pool.shutdown()


def test_the_bound_holds_on_a_process_pool(registry: offload.Registry) -> None:
    pool = offload.ProcessPool(1)
    registry.register("x", pool, max_pending=2)
    square = registry.offload("x")(pow)

    async def main() -> list[int]:
        # Slots come back on the loop, so none can free up while these are made.
        calls = [square(i, 2) for i in range(6)]
        assert registry.stats()["x"]["waiting"] == 4
        return await asyncio.wait_for(asyncio.gather(*calls), 30)

    assert asyncio.run(main()) == [i * i for i in range(6)]
    stats = registry.stats()["x"]
    assert (stats["submitted"], stats["completed"], stats["waiting"]) == (6, 6, 0)
    pool.shutdown()


def _flood_peak(registry: offload.Registry, calls: int) -> tuple[int, int]:
    """Flood a blocked, bounded name with ``calls`` calls; the traced peak and refusals."""
    _, started, release, blocker = _blocked_pool(
        registry, f"flood{calls}", max_pending=1_000, when_full="fail"
    )
    noop = registry.offload(f"flood{calls}")(abs)

    async def main() -> tuple[int, int]:
        first = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        accepted: list[asyncio.Future[int]] = []
        refused = 0
        tracemalloc.start()
        try:
            for i in range(calls):
                try:
                    accepted.append(noop(i))
                except offload.OverloadedError:
                    refused += 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        release.set()
        await first
        await asyncio.wait_for(asyncio.gather(*accepted), WAIT)
        return peak, refused

    return asyncio.run(main())


def test_memory_stays_flat_under_a_flood_of_100_000_calls(registry: offload.Registry) -> None:
    small_peak, small_refused = _flood_peak(registry, 10_000)
    big_peak, big_refused = _flood_peak(registry, 100_000)
    assert (small_refused, big_refused) == (10_000 - 999, 100_000 - 999)
    # Ten times the calls, the same memory: only the 999 accepted calls are held.
    assert big_peak < small_peak + 256 * 1024, (small_peak, big_peak)
