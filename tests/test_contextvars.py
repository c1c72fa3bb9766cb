"""The caller's contextvars reach the worker as a copy."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import Executor

import offload

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


async def test_worker_sees_the_callers_values(executor: Executor) -> None:
    """A value set before the call is visible inside the blocking function."""
    read = offload.offload(request_id.get, executor=executor)
    request_id.set("r-1")
    assert await read() == "r-1"


async def test_worker_changes_do_not_leak_back(executor: Executor) -> None:
    """What the worker sets stays in its copy."""
    write = offload.offload(lambda: request_id.set("from-worker"), executor=executor)
    request_id.set("caller")
    await write()
    assert request_id.get() == "caller"


async def test_concurrent_calls_do_not_see_each_other(executor: Executor) -> None:
    """Two calls in flight together each see their own caller's value."""
    both_inside = threading.Barrier(2, timeout=10)

    def read_after_barrier() -> str:
        both_inside.wait()
        return request_id.get()

    call = offload.offload(read_after_barrier, executor=executor)

    async def as_request(value: str) -> str:
        request_id.set(value)
        return await call()

    assert list(await asyncio.gather(as_request("a"), as_request("b"))) == ["a", "b"]
