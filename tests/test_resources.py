"""Calls leave nothing behind: no reference cycles, no loop kept alive."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import types
import weakref
from concurrent.futures import Executor
from typing import Any

import offload
from offload import _call, _delivery


def fails(x: int) -> int:
    raise ValueError(x)


def twice(x: int) -> int:
    return 2 * x


def _ours(garbage: list[Any], loop: asyncio.AbstractEventLoop) -> list[Any]:
    """The objects in ``garbage`` that offloaded calls on ``loop`` created."""
    return [
        obj
        for obj in garbage
        if (isinstance(obj, asyncio.Future) and obj.get_loop() is loop)
        or (isinstance(obj, tuple) and obj and obj[0] is _call.run)
        or (isinstance(obj, types.FrameType) and obj.f_code is _call.run.__code__)
    ]


def test_calls_create_no_reference_cycles(executor: Executor, saved_garbage: list[Any]) -> None:
    """Neither results nor exceptions leave a cycle holding the Future, the call or its frame."""
    ok = offload.offload(twice, executor=executor)
    bad = offload.offload(fails, executor=executor)

    async def main() -> None:
        for x in range(50):
            assert await ok(x) == 2 * x
            with contextlib.suppress(ValueError):
                await bad(x)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    gc.collect()
    assert _ours(saved_garbage, loop) == []


def test_loop_is_collectable_after_asyncio_run() -> None:
    """``asyncio.run`` leaves no reference from offload to the loop it used."""
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    pool = offload.ThreadPool(2, name="collectable")
    call = offload.offload(twice, executor=pool)

    async def main() -> int:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return sum(await asyncio.gather(*(call(x) for x in range(100))))

    assert asyncio.run(main()) == 9900
    pool.shutdown()
    gc.collect()
    assert loops[0]() is None
    assert all(d.loop_ref() is not None for d in _delivery._deliveries.values())


def test_several_run_until_complete_on_one_loop() -> None:
    """One loop can run offloaded calls across several ``run_until_complete`` calls."""
    call = offload.offload(twice)

    async def once(x: int) -> int:
        result: int = await call(x)
        return result

    loop = asyncio.new_event_loop()
    try:
        assert [loop.run_until_complete(once(x)) for x in range(3)] == [0, 2, 4]
    finally:
        loop.close()
