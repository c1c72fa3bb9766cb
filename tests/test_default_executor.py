"""offload's pools as the event loop's default executor.

``loop.set_default_executor`` takes only a ``ThreadPoolExecutor``; offload's
``ThreadPool`` is one, so ``asyncio.to_thread``, ``run_in_executor(None, ...)``
and Tornado's ``IOLoop.run_in_executor(None, ...)`` can share a named,
monitored pool. What arrives through ``submit`` is counted under the name, and
``asyncio.run``'s final shutdown of the default executor does not leave a
registry name dead when the registry can make its pool again.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from tornado.ioloop import IOLoop

import offload
from tests.conftest import WAIT

pytestmark = pytest.mark.timeout(60)


def thread_name() -> str:
    return threading.current_thread().name


def fail() -> None:
    raise LookupError("missing")


def test_a_thread_pool_is_a_thread_pool_executor_and_keeps_offloads_fast_path() -> None:
    """``ThreadPool`` passes asyncio's check and is still sent calls on its own queue."""
    pool = offload.ThreadPool(1, name="kind-check")
    try:
        assert isinstance(pool, ThreadPoolExecutor)

        async def main() -> str:
            asyncio.get_running_loop().set_default_executor(pool)
            return await offload.offload(thread_name, executor=pool)()

        # Its own submit, not ThreadPoolExecutor's: the pool's threads run it.
        assert pool.submit(thread_name).result(WAIT).startswith("kind-check_")
        assert asyncio.run(main()).startswith("kind-check_")
    finally:
        pool.shutdown()


async def test_to_thread_and_run_in_executor_run_on_a_registry_pool_and_are_counted(
    registry: offload.Registry,
) -> None:
    """With a name's pool as the default executor, ``asyncio.to_thread`` and
    ``run_in_executor(None, ...)`` run on its threads and count in the name's statistics."""
    registry.register("shared", lambda: offload.ThreadPool(2, name="shared-pool"))
    loop = asyncio.get_running_loop()
    loop.set_default_executor(registry.get_executor("shared"))
    assert (await asyncio.to_thread(thread_name)).startswith("shared-pool_")
    assert (await loop.run_in_executor(None, thread_name)).startswith("shared-pool_")
    with pytest.raises(LookupError):
        await asyncio.to_thread(fail)
    assert (await registry.offload(thread_name, executor="shared")()).startswith("shared-pool_")
    stats = registry.stats()["shared"]
    assert (stats["submitted"], stats["completed"], stats["failed"]) == (4, 3, 1)
    assert (stats["queued"], stats["running"]) == (0, 0)


async def test_tornados_run_in_executor_runs_on_the_default_pool(
    registry: offload.Registry,
) -> None:
    """Tornado's ``IOLoop.run_in_executor(None, ...)`` runs on the loop's default executor."""
    registry.register("tornado", lambda: offload.ThreadPool(1, name="tornado-default"))
    asyncio.get_running_loop().set_default_executor(registry.get_executor("tornado"))
    name = await IOLoop.current().run_in_executor(None, thread_name)
    assert name.startswith("tornado-default_")
    assert registry.stats()["tornado"]["completed"] == 1


def test_a_submit_job_cancelled_before_it_starts_is_counted_cancelled(
    registry: offload.Registry,
) -> None:
    """A ``submit`` job cancelled while it waits for a thread never runs, and is counted
    as cancelled, not as running or queued."""
    registry.register("one", lambda: offload.ThreadPool(1, name="one-thread"))
    pool = registry.get_executor("one")
    started, release = threading.Event(), threading.Event()
    busy = pool.submit(lambda: started.wait(WAIT) and release.wait(WAIT))
    waiting = pool.submit(thread_name)
    assert waiting.cancel()
    started.set()
    release.set()
    assert busy.result(WAIT) is True
    pool.submit(int).result(WAIT)  # the queue has moved past the cancelled job
    stats = registry.stats()["one"]
    assert (stats["submitted"], stats["completed"], stats["cancelled"]) == (3, 2, 1)
    assert (stats["queued"], stats["running"]) == (0, 0)


def test_asyncio_runs_final_shutdown_leaves_a_factory_name_working() -> None:
    """``asyncio.run`` shuts the default executor down as it ends; a name whose pool the
    registry made from a factory gets a new pool on its next call, and keeps counting."""
    registry = offload.Registry()
    registry.register("io", lambda: offload.ThreadPool(2, name="per-run"))
    work = registry.offload(thread_name, executor="io")

    async def main() -> list[str]:
        asyncio.get_running_loop().set_default_executor(registry.get_executor("io"))
        return [await asyncio.to_thread(thread_name), await work()]

    try:
        first_pool = None

        async def first() -> list[str]:
            nonlocal first_pool
            first_pool = registry.get_executor("io")
            return await main()

        assert all(name.startswith("per-run_") for name in asyncio.run(first()))
        assert first_pool is not None
        with pytest.raises(offload.ExecutorShutdownError):
            first_pool.submit(int)  # asyncio.run shut it down
        assert all(name.startswith("per-run_") for name in asyncio.run(main()))
        assert registry.get_executor("io") is not first_pool
        assert registry.stats()["io"]["completed"] == 4
    finally:
        registry.shutdown()


def test_a_registered_pool_shut_down_by_asyncio_run_fails_later_calls_clearly() -> None:
    """A pool registered as an instance cannot be made again: after ``asyncio.run`` shut it
    down as the default executor, a call through its name fails saying it was shut down."""
    registry = offload.Registry()
    pool = offload.ThreadPool(1, name="instance-pool")
    registry.register("db", pool)
    work = registry.offload(thread_name, executor="db")

    async def use_as_default() -> str:
        asyncio.get_running_loop().set_default_executor(pool)
        return await asyncio.to_thread(thread_name)

    try:
        assert asyncio.run(use_as_default()).startswith("instance-pool_")

        async def call() -> str:
            return await work()

        with pytest.raises(offload.ExecutorShutdownError, match=r"instance-pool.*shut down"):
            asyncio.run(call())
    finally:
        registry.shutdown()


def test_a_factory_that_shuts_another_pool_down_does_not_deadlock() -> None:
    """A registry factory may shut a ThreadPool down while the registry holds its entry's
    lock: the shutdown hook does not wait for that lock."""
    registry = offload.Registry()
    old = offload.ThreadPool(1, name="old")

    def factory() -> offload.ThreadPool:
        old.shutdown(wait=False)
        return offload.ThreadPool(1, name="made")

    registry.register("x", factory)
    made: list[object] = []
    thread = threading.Thread(target=lambda: made.append(registry.get_executor("x")), daemon=True)
    thread.start()
    thread.join(WAIT)
    try:
        assert not thread.is_alive(), "get_executor deadlocked"
        assert isinstance(made[0], offload.ThreadPool)
    finally:
        registry.shutdown()
