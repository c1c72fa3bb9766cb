"""Completions come back in bursts without starving the loop."""

from __future__ import annotations

import asyncio
import threading

import offload
from offload import _delivery
from tests.conftest import WAIT


async def test_a_flood_of_completions_yields_to_other_callbacks() -> None:
    """One wake-up resolves at most MAX_PER_WAKEUP futures, then other callbacks run."""
    loop = asyncio.get_running_loop()
    delivery = _delivery.delivery_for(loop)
    total = _delivery.MAX_PER_WAKEUP * 4
    futures = [loop.create_future() for _ in range(total)]
    for number, future in enumerate(futures):
        delivery.push(future, number, None)  # the first push schedules one drain
    resolved_when_marker_ran: list[int] = []
    loop.call_soon(lambda: resolved_when_marker_ran.append(sum(f.done() for f in futures)))
    assert await asyncio.gather(*futures) == list(range(total))
    assert resolved_when_marker_ran == [_delivery.MAX_PER_WAKEUP]
    assert not delivery.pending


async def test_a_flood_through_the_pool_resolves_every_future_once() -> None:
    """Thousands of calls finishing together all arrive, each with its own result."""
    pool = offload.ThreadPool(2, name="flood")
    try:
        ident = offload.offload(int, executor=pool)
        total = _delivery.MAX_PER_WAKEUP * 20
        assert await asyncio.gather(*(ident(i) for i in range(total))) == list(range(total))
    finally:
        pool.shutdown()


def test_outcomes_for_a_closed_loop_are_dropped() -> None:
    """Workers finishing after their loop closed neither raise nor keep the outcomes."""
    started, release, pushed = threading.Event(), threading.Event(), threading.Event()
    pool = offload.ThreadPool(1, name="late")

    def body() -> int:
        started.set()
        release.wait(WAIT)
        return 1

    holder: dict[str, object] = {}

    async def start() -> None:
        holder["delivery"] = _delivery.delivery_for(asyncio.get_running_loop())
        late = offload.offload(body, executor=pool)
        late()
        late()  # queued behind the first: it finishes after the first was dropped
        await asyncio.to_thread(started.wait, WAIT)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    loop.close()
    release.set()
    pool.submit(pushed.set)  # one worker: this runs after both late calls have pushed
    assert pushed.wait(WAIT)
    pool.shutdown()
    assert not holder["delivery"].pending  # type: ignore[attr-defined]
