"""The function runs on a worker; its outcome is set on the loop's thread."""

from __future__ import annotations

import asyncio
import threading
import traceback
from concurrent.futures import Executor

import pytest

import offload


async def test_body_runs_on_a_worker_thread(executor: Executor) -> None:
    """The blocking body never runs on the loop's thread."""
    where = offload.offload(threading.get_ident, executor=executor)
    assert await where() != threading.get_ident()


async def test_result_is_set_on_the_loop_thread(executor: Executor) -> None:
    """Done-callbacks (and so the awaiting coroutine) run on the loop's thread."""
    loop_thread = threading.get_ident()
    seen: list[int] = []
    future = offload.offload(lambda: 1, executor=executor)()
    future.add_done_callback(lambda _: seen.append(threading.get_ident()))
    await future
    await asyncio.sleep(0)  # done-callbacks are scheduled with call_soon
    assert seen == [loop_thread]


def failing_body() -> None:
    raise KeyError("missing row")


async def test_exception_keeps_the_workers_traceback(executor: Executor) -> None:
    """The exception arrives with its type and the frames of the worker's code."""
    call = offload.offload(failing_body, executor=executor)
    with pytest.raises(KeyError, match="missing row") as info:
        await call()
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "failing_body" in frames


async def test_stop_iteration_becomes_a_runtime_error(executor: Executor) -> None:
    """StopIteration cannot travel through a Future, so it arrives as its cause."""

    def exhausted() -> int:
        return next(iter(list[int]()))

    call = offload.offload(exhausted, executor=executor)
    with pytest.raises(RuntimeError) as info:
        await call()
    assert isinstance(info.value.__cause__, StopIteration)


async def test_thread_names_carry_the_executor_name() -> None:
    """Built-in pools name their threads after the executor, e.g. ``offload-io_0``."""
    registry = offload.Registry()
    try:
        name = await registry.offload(lambda: threading.current_thread().name, executor="io")()
        assert name.startswith("offload-io_")
    finally:
        registry.shutdown()
