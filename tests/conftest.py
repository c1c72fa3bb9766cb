"""Shared fixtures: an isolated registry per test, the executor kinds, and private servers."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import pytest

import offload
from tests import servers

#: How long a test waits for another thread before it counts as a hang.
WAIT = 10.0


@contextlib.contextmanager
def garbage_saved() -> Iterator[list[Any]]:
    """Collect with DEBUG_SAVEALL, as Tornado's circlerefs_test does; the garbage found meanwhile.

    A test that enters it itself, rather than through the ``saved_garbage`` fixture, leaves
    out what the previous test's failure keeps alive: pytest drops that only as the test
    starts to run, after its fixtures.
    """
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@contextlib.contextmanager
def repointed(name: str, lanes: offload.Lanes, *, then: Callable[[], Executor]) -> Iterator[None]:
    """``name`` pointed at ``lanes`` for the block, then at what the factory ``then`` makes."""
    offload.register(name, lanes, replace=True)
    try:
        yield
    finally:
        offload.register(name, then, replace=True)
        lanes.shutdown(wait=False)


def lane_thread(executor: object) -> str:
    """The name of the thread a lane handle's calls run on now."""
    assert isinstance(executor, offload.Lane)
    thread = executor.get_executor()
    assert isinstance(thread, offload.AffineThread)
    return thread.name


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    """``garbage_saved()`` around the test."""
    with garbage_saved() as garbage:
        yield garbage


def hold(started: threading.Event, release: threading.Event) -> Callable[[], bool]:
    """A blocking body that reports it started, then waits until released."""

    def body() -> bool:
        started.set()
        return release.wait(WAIT)

    return body


@pytest.fixture
def registry() -> Iterator[offload.Registry]:
    """A registry of its own, shut down when the test ends."""
    reg = offload.Registry()
    yield reg
    reg.shutdown(wait=True, cancel_futures=True, timeout=WAIT)


@pytest.fixture(params=["offload-pool", "stdlib-pool"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """Each test that takes it runs on offload's pool (fast path) and a stdlib pool (generic)."""
    pool: Executor = (
        offload.ThreadPool(4, name="offload-test")
        if request.param == "offload-pool"
        else ThreadPoolExecutor(4, thread_name_prefix="stdlib-test")
    )
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RedisServer]:
    """A private redis-server for the session, on a free port; stopped at the end."""
    with servers.running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.PostgresServer]:
    """A private PostgreSQL for the session, on a free port; stopped at the end."""
    with servers.running_postgres() as server:
        yield server
