"""The ways of running a blocking call off the event loop, as a table.

A mechanism names its pool factory, a ``bind`` that turns a call body into the
per-call callable (run inside the measurement's event loop, so loop-bound
objects belong to that loop), and a driver: the event loop runner plus the
shapes (``async def``, ``gen.coroutine`` or a plain thread) that issue calls.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from tornado.concurrent import run_on_executor
from tornado.ioloop import IOLoop

import offload
from offload._route import Route

from .workloads import ASYNC_SHAPES, GEN_SHAPES, THREAD_SHAPES, ShapeSet

Body = Callable[..., int]


@dataclass(frozen=True)
class Driver:
    name: str
    shapes: ShapeSet
    # Runs a zero-argument coroutine function on a fresh event loop and returns
    # its result; None: the shapes run on the calling thread, with no loop.
    run: Callable[[Callable[[], Any]], Any] | None


ASYNCIO = Driver("asyncio.run + async def", ASYNC_SHAPES, lambda main: asyncio.run(main()))
TORNADO_GEN = Driver("asyncio.run + gen.coroutine", GEN_SHAPES, lambda main: asyncio.run(main()))


def _anyio_run(main: Callable[[], Any]) -> Any:
    import anyio

    return anyio.run(main, backend="asyncio")


ANYIO = Driver("anyio.run(backend='asyncio') + async def", ASYNC_SHAPES, _anyio_run)
THREAD = Driver("plain thread", THREAD_SHAPES, None)


@dataclass(frozen=True)
class Mechanism:
    key: str
    label: str
    driver: Driver
    # bind(body, pool, workers) -> call; call(x) returns an awaitable (a
    # concurrent Future for the plain-thread driver).
    bind: Callable[[Body, Any, int], Callable[[int], Any]]
    pool: Callable[[int], Executor] | None = ThreadPoolExecutor
    requires: str | None = None  # an optional module; skipped when missing
    reference: bool = False

    def missing(self) -> str | None:
        """Why this mechanism cannot run here, or None."""
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed (pip install 'tornado-offload[bench]')"
        return None


# -- bind functions --------------------------------------------------------------


def _offload_registered(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    registry = offload.Registry()
    registry.register("default", pool)
    return registry.offload(body)


class _UncountedRegistry(offload.Registry):
    """A registry whose names keep no statistics: the gap between the "offload"
    row and this one is what statistics cost."""

    def register(self, name: str, executor_or_factory: Any, **options: Any) -> None:
        super().register(name, executor_or_factory, **options)
        entry = self._entries[name]
        if entry.executor is not None:  # the same route, with no statistics and no bound
            entry.route = Route(entry.executor)


def _offload_unmonitored(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    registry = _UncountedRegistry()
    registry.register("default", pool)
    return registry.offload(body)


def _offload_coroutine(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    # Each call is a coroutine: gathered, asyncio wraps each in a Task.
    registry = offload.Registry()
    registry.register("default", pool)
    return registry.offload(body, coroutine=True)


def _offload_coroutine_wait(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    registry = offload.Registry()
    registry.register("default", pool)
    return registry.offload(body, coroutine=True, cancel="wait")


def _offload_executor(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    return offload.offload(body, executor=pool)


class _Handler:
    """Tornado's documented pattern: the executor is an attribute of ``self``."""

    def __init__(self, executor: Executor, body: Body) -> None:
        self.executor = executor
        self.body = body

    @run_on_executor
    def call(self, x: int) -> int:
        return self.body(x)


def _run_on_executor(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    return _Handler(pool, body).call


def _ioloop_run_in_executor(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    return partial(IOLoop.current().run_in_executor, pool, body)


def _loop_run_in_executor(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    return partial(asyncio.get_running_loop().run_in_executor, pool, body)


def _to_thread(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    # to_thread uses the loop's default executor; asyncio.run shuts it down.
    asyncio.get_running_loop().set_default_executor(pool)
    return partial(asyncio.to_thread, body)


def _anyio_to_thread(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    import anyio
    import anyio.to_thread

    return partial(anyio.to_thread.run_sync, body, limiter=anyio.CapacityLimiter(workers))


def _asgiref(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    from asgiref.sync import sync_to_async

    return sync_to_async(body, thread_sensitive=False, executor=pool)


def _submit(body: Body, pool: Any, workers: int) -> Callable[[int], Any]:
    return partial(pool.submit, body)


def _offload_pool(workers: int) -> Executor:
    return offload.ThreadPool(workers, name="bench")


MECHANISMS: tuple[Mechanism, ...] = (
    Mechanism("offload", "offload (own ThreadPool)", ASYNCIO, _offload_registered, _offload_pool),
    Mechanism(
        "offload_nostats",
        "offload (own ThreadPool, no stats)",
        ASYNCIO,
        _offload_unmonitored,
        _offload_pool,
    ),
    Mechanism(
        "offload_coro",
        "offload (own ThreadPool, coroutine=True)",
        ASYNCIO,
        _offload_coroutine,
        _offload_pool,
    ),
    Mechanism(
        "offload_coro_wait",
        'offload (own ThreadPool, coroutine=True, cancel="wait")',
        ASYNCIO,
        _offload_coroutine_wait,
        _offload_pool,
    ),
    Mechanism("offload_tpe", "offload (stdlib ThreadPoolExecutor)", ASYNCIO, _offload_executor),
    Mechanism(
        "offload_gen",
        "offload (own ThreadPool, gen.coroutine)",
        TORNADO_GEN,
        _offload_registered,
        _offload_pool,
    ),
    Mechanism(
        "offload_tpe_gen",
        "offload (stdlib ThreadPoolExecutor, gen.coroutine)",
        TORNADO_GEN,
        _offload_executor,
    ),
    Mechanism(
        "run_on_executor",
        "tornado run_on_executor [ref]",
        TORNADO_GEN,
        _run_on_executor,
        reference=True,
    ),
    Mechanism("ioloop_run_in_executor", "IOLoop.run_in_executor", ASYNCIO, _ioloop_run_in_executor),
    Mechanism("loop_run_in_executor", "loop.run_in_executor", ASYNCIO, _loop_run_in_executor),
    Mechanism("to_thread", "asyncio.to_thread", ASYNCIO, _to_thread),
    Mechanism("anyio", "anyio to_thread.run_sync", ANYIO, _anyio_to_thread, None, "anyio"),
    Mechanism("asgiref", "asgiref sync_to_async", ASYNCIO, _asgiref, requires="asgiref"),
    Mechanism("thread_floor", "plain thread: submit().result()", THREAD, _submit),
)
