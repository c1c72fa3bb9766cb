"""Shutdown under fire: on time, with every call resolved, and no hang at exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import offload
from tests.conftest import WAIT, hold


def test_shutdown_with_a_timeout_returns_on_time_while_a_worker_hangs(
    registry: offload.Registry,
) -> None:
    registry.register("stuck", offload.ThreadPool(1, name="stuck-pool"))
    started, release = threading.Event(), threading.Event()
    hang = registry.offload("stuck")(hold(started, release))
    queued_behind = registry.offload("stuck")(abs)

    async def main() -> tuple[object, object, float]:
        running, queued = hang(), queued_behind(-1)
        assert await asyncio.to_thread(started.wait, WAIT)
        began = time.monotonic()
        with pytest.warns(RuntimeWarning, match=r"'stuck' \(<offload.ThreadPool 'stuck-pool'"):
            await asyncio.to_thread(registry.shutdown, timeout=0.2)
        took = time.monotonic() - began
        # Neither call hangs: both fail with an error that says what happened.
        outcomes = await asyncio.wait_for(
            asyncio.gather(running, queued, return_exceptions=True), WAIT
        )
        return outcomes[0], outcomes[1], took

    try:
        running, queued, took = asyncio.run(main())
    finally:
        release.set()
    assert took < 0.2 + 2.0  # on time: it did not wait for the hung worker
    for outcome in (running, queued):
        assert isinstance(outcome, offload.ExecutorShutdownError)
        assert "gave up on the executor 'stuck' after 0.2s" in str(outcome)


def test_calls_queued_at_an_orderly_shutdown_complete(registry: offload.Registry) -> None:
    registry.register("w", offload.ThreadPool(1))
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload("w")(hold(started, release))
    noop = registry.offload("w")(abs)

    async def main() -> list[object]:
        calls: list[asyncio.Future[Any]] = [blocker(), *(noop(-i) for i in range(5))]
        assert await asyncio.to_thread(started.wait, WAIT)
        stopping = asyncio.ensure_future(asyncio.to_thread(registry.shutdown))
        release.set()
        await asyncio.wait_for(stopping, WAIT)
        return await asyncio.wait_for(asyncio.gather(*calls), WAIT)

    assert asyncio.run(main()) == [True, 0, 1, 2, 3, 4]
    with pytest.raises(offload.ExecutorShutdownError):
        registry.get_executor("w")


def test_calls_waiting_for_a_slot_at_shutdown_fail_clearly(registry: offload.Registry) -> None:
    registry.register("w", offload.ThreadPool(1), max_pending=1)
    started, release = threading.Event(), threading.Event()
    blocker = registry.offload("w")(hold(started, release))
    noop = registry.offload("w")(abs)

    async def main() -> list[object]:
        first = blocker()
        assert await asyncio.to_thread(started.wait, WAIT)
        waiting = [noop(-i) for i in range(3)]
        registry.shutdown(wait=False)
        release.set()
        return await asyncio.wait_for(asyncio.gather(first, *waiting, return_exceptions=True), WAIT)

    first, *waiting = asyncio.run(main())
    assert first is True
    for outcome in waiting:
        assert isinstance(outcome, offload.ExecutorShutdownError)
        assert "while this call waited for a max_pending slot" in str(outcome)
    stats = registry.stats()["w"]
    assert (stats["completed"], stats["failed"], stats["waiting"]) == (1, 3, 0)


def test_a_call_after_shutdown_fails_at_once(registry: offload.Registry) -> None:
    noop = registry.offload("io")(abs)
    registry.shutdown()

    async def main() -> None:
        with pytest.raises(offload.ExecutorShutdownError, match="replace=True"):
            noop(1)

    asyncio.run(main())


@pytest.mark.parametrize("name", ["default", "cpu"])
def test_interpreter_exit_with_work_pending_does_not_hang(name: str) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, threading, time
        import offload

        nap = offload.offload({name!r})(time.sleep)

        async def main():
            for _ in range(64):  # some running, some queued
                nap(3600)
            await asyncio.sleep(0.2)
            print("leaving", flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, on a script written above
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "leaving"
    assert done.returncode == 0, done.stderr
