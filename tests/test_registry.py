"""Names resolve to executors: registration, lazy creation, shutdown, fork."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import Executor, ThreadPoolExecutor

import pytest

import offload
from tests.conftest import WAIT, hold


def test_builtin_names_exist_and_are_created_lazily(registry: offload.Registry) -> None:
    """``cpu``, ``default`` and ``io`` are registered but not created until first used."""
    assert registry.names() == ("cpu", "default", "io")
    assert all(entry.executor is None for entry in registry._entries.values())
    assert isinstance(registry.get_executor("io"), offload.ThreadPool)
    assert registry.get_executor() is registry.get_executor("default")


def test_builtin_sizes_follow_environment_variables(
    registry: offload.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OFFLOAD_DEFAULT_WORKERS and OFFLOAD_IO_WORKERS size the built-in pools."""
    monkeypatch.setenv("OFFLOAD_DEFAULT_WORKERS", "3")
    monkeypatch.setenv("OFFLOAD_IO_WORKERS", "7")
    assert registry.get_executor("default").max_workers == 3  # type: ignore[attr-defined]
    assert registry.get_executor("io").max_workers == 7  # type: ignore[attr-defined]


def test_a_bad_size_variable_is_a_clear_error(
    registry: offload.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-positive or non-integer size names the variable."""
    monkeypatch.setenv("OFFLOAD_IO_WORKERS", "many")
    with pytest.raises(ValueError, match="OFFLOAD_IO_WORKERS must be a positive integer"):
        registry.get_executor("io")


def test_registering_a_taken_name_needs_replace(registry: offload.Registry) -> None:
    """A second registration raises unless ``replace=True``."""
    registry.register("db", ThreadPoolExecutor(1))
    with pytest.raises(ValueError, match=r"already registered as 'db'.*replace=True"):
        registry.register("db", ThreadPoolExecutor(1))
    registry.register("db", offload.ThreadPool(1), replace=True)


@pytest.mark.parametrize("bad", [None, 42, "pool"], ids=["none", "int", "str"])
def test_registering_a_non_executor_is_refused(registry: offload.Registry, bad: object) -> None:
    """Only an Executor or a callable factory can be registered."""
    with pytest.raises(TypeError, match="Executor or a zero-argument factory"):
        registry.register("x", bad)  # type: ignore[arg-type]


def test_a_factory_returning_a_non_executor_fails_on_use(registry: offload.Registry) -> None:
    """The factory's result is checked when it runs."""
    registry.register("odd", lambda: "not an executor")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="returned 'not an executor'"):
        registry.get_executor("odd")


def test_factory_runs_exactly_once_when_first_calls_race(registry: offload.Registry) -> None:
    """Many threads asking for a new name at once share one executor."""
    made: list[Executor] = []
    gate = threading.Barrier(8, timeout=WAIT)

    def factory() -> Executor:
        pool = offload.ThreadPool(1)
        made.append(pool)
        return pool

    registry.register("racy", factory)
    seen: list[Executor] = []

    def first_use() -> None:
        gate.wait()
        seen.append(registry.get_executor("racy"))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(made) == 1
    assert seen == made * 8


def test_library_default_yields_to_application(registry: offload.Registry) -> None:
    """An app's registration wins over a library default, whichever comes first."""
    library_pool, app_pool = offload.ThreadPool(1), offload.ThreadPool(1)
    registry.register("mydriver.io", library_pool, default=True)
    registry.register("mydriver.io", app_pool)  # no replace needed over a default
    assert registry.get_executor("mydriver.io") is app_pool
    registry.register("mydriver.io", offload.ThreadPool(1), default=True)  # a late default: no-op
    assert registry.get_executor("mydriver.io") is app_pool
    library_pool.shutdown()


def test_application_can_repoint_a_builtin(registry: offload.Registry) -> None:
    """Built-ins are defaults, so ``register("io", ...)`` needs no ``replace``."""
    mine = ThreadPoolExecutor(2)
    registry.register("io", mine)
    assert registry.get_executor("io") is mine


def test_replacing_a_factory_made_executor_shuts_the_old_one(registry: offload.Registry) -> None:
    """The registry owns what it built: replacing it shuts it down."""
    old = registry.get_executor("io")
    registry.register("io", offload.ThreadPool(1), replace=True)
    assert old._closed  # type: ignore[attr-defined]


def test_get_executor_of_unknown_name(registry: offload.Registry) -> None:
    """``get_executor`` raises UnknownExecutorError for an unknown name."""
    with pytest.raises(offload.UnknownExecutorError, match="'gpu'"):
        registry.get_executor("gpu")


async def test_calls_after_shutdown_raise_a_clear_error(registry: offload.Registry) -> None:
    """After shutdown a call through a shut-down name raises, synchronously, without hanging."""
    call = registry.offload(len, executor="io")
    assert await call([1]) == 1
    registry.shutdown()
    with pytest.raises(offload.ExecutorShutdownError, match=r"'io' was shut down.*replace=True"):
        call([1])
    registry.register("io", offload.ThreadPool(1), replace=True)
    assert await call([1, 2]) == 2


async def test_shutdown_waits_for_running_calls(registry: offload.Registry) -> None:
    """``shutdown(wait=True)`` returns only after the workers running calls have ended."""
    started, release = threading.Event(), threading.Event()

    def body() -> str:
        started.set()
        release.wait(WAIT)
        return "done"

    future = registry.offload(body, executor="io")()
    assert await asyncio.to_thread(started.wait, WAIT)
    pool = registry.get_executor.__self__._entries["io"].executor  # type: ignore[attr-defined]
    stopping = asyncio.ensure_future(asyncio.to_thread(registry.shutdown))
    release.set()
    await asyncio.wait_for(stopping, WAIT)
    assert not any(thread.is_alive() for thread in pool._workers)
    assert await future == "done"


def test_shutdown_timeout_returns_and_names_what_still_runs(registry: offload.Registry) -> None:
    """With a timeout, shutdown returns while a worker hangs, warning with its name."""
    started, release = threading.Event(), threading.Event()
    stdlib = ThreadPoolExecutor(1)
    registry.register("stuck", stdlib)
    stdlib.submit(hold(started, release))
    assert started.wait(WAIT)
    try:
        with pytest.warns(RuntimeWarning, match=r"gave up after 0.1s; still running: 'stuck'"):
            registry.shutdown(timeout=0.1)
    finally:
        release.set()


def test_shutdown_timeout_on_offload_pool(registry: offload.Registry) -> None:
    """The timeout also bounds waiting for offload's own pools."""
    started, release = threading.Event(), threading.Event()
    pool = registry.get_executor("io")
    pool.submit(hold(started, release))
    assert started.wait(WAIT)
    try:
        with pytest.warns(RuntimeWarning, match="still running: 'io'"):
            registry.shutdown(timeout=0.1)
    finally:
        release.set()


def test_registries_are_isolated() -> None:
    """Registering in one registry does not affect another or the shared one."""
    a, b = offload.Registry(), offload.Registry()
    a.register("only-a", ThreadPoolExecutor(1))
    assert "only-a" in a.names()
    assert "only-a" not in b.names()
    assert "only-a" not in offload.Registry().names()
    a.shutdown()


def test_register_rejects_bad_names(registry: offload.Registry) -> None:
    """Names must be non-empty strings."""
    with pytest.raises(TypeError, match="non-empty str"):
        registry.register("", ThreadPoolExecutor(1))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_after_fork_gets_fresh_executors(registry: offload.Registry) -> None:
    """After ``os.fork``, the child recreates registry-made executors and calls succeed."""
    square = registry.offload(lambda x: x * x, executor="io")

    async def use() -> int:
        result: int = await square(7)
        return result

    parent_pool = registry.get_executor("io")
    assert asyncio.run(use()) == 49
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            fresh = registry.get_executor("io") is not parent_pool
            ok = fresh and asyncio.run(asyncio.wait_for(use(), WAIT)) == 49
            os.write(write_end, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        report = os.read(read_end, 16)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert report == b"ok", sys.platform
