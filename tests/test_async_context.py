"""Blocking context managers used with ``async with``: both halves on the executor."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from types import TracebackType
from typing import Self

import pytest

import offload
from tests.conftest import WAIT
from tests.promise_targets import Foreign


class Recorder:
    """A context manager that records its threads and the exception it was given."""

    def __init__(self, suppress: bool = False, enter_gate: threading.Event | None = None) -> None:
        self.suppress = suppress
        self.enter_gate = enter_gate
        self.entering = threading.Event()
        self.exited = threading.Event()
        self.threads: list[int] = []
        self.exit_args: tuple[object, ...] | None = None

    def __enter__(self) -> str:
        self.threads.append(threading.get_ident())
        self.entering.set()
        if self.enter_gate is not None:
            assert self.enter_gate.wait(WAIT)
        return "resource"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.threads.append(threading.get_ident())
        self.exit_args = (exc_type, exc, tb)
        self.exited.set()
        return self.suppress


@pytest.fixture
def worker() -> Iterator[offload.AffineThread]:
    """One thread for both halves, so the test can check they share it."""
    thread = offload.AffineThread(name="ctx-test")
    yield thread
    thread.shutdown()


async def test_enter_and_exit_run_on_the_executor(worker: offload.AffineThread) -> None:
    """__enter__ and __exit__ run on the executor's thread; the body gets __enter__'s value."""
    manager = Recorder()
    async with offload.acontext(manager, executor=worker) as value:
        assert value == "resource"
        assert manager.exit_args is None
    assert manager.exit_args == (None, None, None)
    assert len(set(manager.threads)) == 1
    assert manager.threads[0] != threading.get_ident()


async def test_exit_receives_the_body_exception(worker: offload.AffineThread) -> None:
    """__exit__ gets the exception raised in the body, and it propagates when not suppressed."""
    manager = Recorder()
    with pytest.raises(KeyError) as caught:
        async with offload.acontext(manager, executor=worker):
            raise KeyError("body")
    assert manager.exit_args is not None
    exc_type, exc, tb = manager.exit_args
    assert exc_type is KeyError
    assert exc is caught.value
    assert tb is not None


async def test_a_true_exit_suppresses_the_exception(worker: offload.AffineThread) -> None:
    """When __exit__ returns true the exception is swallowed, as with ``with``."""
    manager = Recorder(suppress=True)
    async with offload.acontext(manager, executor=worker):
        raise KeyError("swallowed")
    assert manager.exited.is_set()


async def test_cancelled_while_entering_waits_then_exits(any_executor: Executor) -> None:
    """A task cancelled while __enter__ runs waits for it, exits with CancelledError, raises it."""
    gate = threading.Event()
    manager = Recorder(enter_gate=gate)

    async def use() -> None:
        async with offload.acontext(manager, executor=any_executor):
            raise AssertionError("the body must not run")

    task = asyncio.ensure_future(use())
    assert await asyncio.to_thread(manager.entering.wait, WAIT)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()  # still waiting for __enter__
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert manager.exited.is_set()
    assert manager.exit_args is not None
    assert manager.exit_args[0] is asyncio.CancelledError
    assert len(set(manager.threads)) == 1


async def test_cancelled_before_entering_never_enters() -> None:
    """A task cancelled while __enter__ is still queued never enters, so never exits."""
    busy = offload.AffineThread()
    release = threading.Event()
    try:
        blocker = offload.offload(release.wait, executor=busy)(WAIT)
        manager = Recorder()

        async def use() -> None:
            async with offload.acontext(manager, executor=busy):
                pass

        task = asyncio.ensure_future(use())
        await asyncio.sleep(0)  # let the task queue its __enter__ behind the blocker
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await blocker
        await offload.offload(int, executor=busy)()  # everything queued before has run
        assert manager.threads == []
    finally:
        release.set()
        busy.shutdown()


# -- Both halves on one thread, on every kind of thread executor --------------------

KINDS = ["offload-pool", "stdlib-pool", "affine-thread", "foreign"]


def make(kind: str, workers: int = 4) -> Executor:
    """A fresh executor of ``kind``."""
    if kind == "offload-pool":
        return offload.ThreadPool(workers, name="ctx-pool")
    if kind == "stdlib-pool":
        return ThreadPoolExecutor(workers)
    if kind == "affine-thread":
        return offload.AffineThread(name="ctx-affine")
    return Foreign(workers)


@pytest.fixture(params=KINDS)
def any_executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """Each test that takes it runs on both pools, an AffineThread and a foreign executor."""
    executor = make(request.param)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


class TokenLock:
    """A lock that keeps its token in a threading.local, as redis-py's Lock does."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.released: list[object] = []

    def __enter__(self) -> Self:
        self.local.token = object()
        return self

    def extend(self) -> object:
        """Fails, as redis-py's does, on a thread that did not acquire the lock."""
        token = getattr(self.local, "token", None)
        if token is None:
            raise RuntimeError("cannot extend an unlocked lock")
        return token

    def __exit__(self, *exc_info: object) -> None:
        self.released.append(self.extend())
        del self.local.token


async def test_an_rlock_is_released_by_the_thread_that_took_it(any_executor: Executor) -> None:
    """A threading.RLock taken in __enter__ is released in __exit__ without RuntimeError."""
    lock = threading.RLock()
    other = offload.offload(threading.get_ident, executor=any_executor)
    async with offload.acontext(lock, executor=any_executor):
        assert repr(lock).startswith("<locked")
        await other()  # other work on the same executor meanwhile
    assert repr(lock).startswith("<unlocked")


async def test_a_thread_local_token_is_there_at_exit(any_executor: Executor) -> None:
    """A token __enter__ leaves in a threading.local is found by __exit__."""
    lock = TokenLock()
    for _ in range(3):
        async with offload.acontext(lock, executor=any_executor) as entered:
            assert entered is lock
    assert len(lock.released) == 3


@pytest.mark.parametrize("kind", ["offload-pool", "stdlib-pool", "foreign"])
async def test_concurrent_contexts_each_keep_their_own_thread(kind: str) -> None:
    """Three contexts open at once on a pool each exit on the thread they entered on."""
    pool = make(kind, workers=4)
    managers = [Recorder() for _ in range(3)]
    everyone_inside = asyncio.Event()
    inside = 0

    async def use(manager: Recorder) -> None:
        nonlocal inside
        async with offload.acontext(manager, executor=pool):
            inside += 1
            if inside == len(managers):
                everyone_inside.set()
            await everyone_inside.wait()

    try:
        await asyncio.wait_for(asyncio.gather(*(use(m) for m in managers)), WAIT)
    finally:
        pool.shutdown()
    for manager in managers:
        entered_on, exited_on = manager.threads
        assert entered_on == exited_on
    assert len({manager.threads[0] for manager in managers}) == 3


async def test_cancelled_in_the_block_exits_on_its_thread(any_executor: Executor) -> None:
    """A cancel inside the block runs __exit__ with it, on the entering thread, and waits."""
    gate = threading.Event()

    class SlowExit(Recorder):
        def __exit__(self, *exc_info: object) -> bool:
            result = super().__exit__(*exc_info)  # type: ignore[arg-type]
            assert gate.wait(WAIT)
            return result

    manager = SlowExit()
    inside = asyncio.Event()

    async def use() -> None:
        async with offload.acontext(manager, executor=any_executor):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(use())
    await inside.wait()
    task.cancel()
    assert await asyncio.to_thread(manager.exited.wait, WAIT)
    task.cancel()  # cancelled again while __exit__ runs: it is still waited for
    await asyncio.sleep(0)
    assert not task.done()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert manager.exit_args is not None
    exc_type, exc, tb = manager.exit_args
    assert exc_type is asyncio.CancelledError
    assert isinstance(exc, asyncio.CancelledError)
    assert tb is not None
    assert len(set(manager.threads)) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_before_entering_on_a_busy_pool_runs_neither(kind: str) -> None:
    """A context queued behind a busy one-thread pool and cancelled never enters."""
    pool = make(kind, workers=1)
    release = threading.Event()
    try:
        blocker = offload.offload(release.wait, executor=pool)(WAIT)
        manager = Recorder()
        task = asyncio.ensure_future(offload.acontext(manager, executor=pool).__aenter__())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await blocker
        assert await offload.offload(lambda: "free", executor=pool)() == "free"
        assert manager.threads == []
    finally:
        release.set()
        pool.shutdown()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failed_enter_gives_the_thread_back(kind: str) -> None:
    """__enter__'s error is raised, __exit__ is not called, and the pool's one thread is free."""
    pool = make(kind, workers=1)

    class Refuses(Recorder):
        def __enter__(self) -> str:
            raise KeyError("no")

    manager = Refuses()
    try:
        with pytest.raises(KeyError):
            async with offload.acontext(manager, executor=pool):
                raise AssertionError("the body must not run")
        assert manager.exit_args is None
        assert await offload.offload(lambda: "free", executor=pool)() == "free"
    finally:
        pool.shutdown()


async def test_an_exit_error_is_raised_from_the_block(any_executor: Executor) -> None:
    """An exception __exit__ raises comes out of ``async with``."""

    class FailingExit(Recorder):
        def __exit__(self, *exc_info: object) -> bool:
            raise OSError("exit failed")

    with pytest.raises(OSError, match="exit failed"):
        async with offload.acontext(FailingExit(), executor=any_executor):
            pass


@pytest.mark.parametrize("kind", KINDS)
async def test_a_dropped_context_exits_and_frees_its_thread(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A context entered by hand and dropped runs __exit__ with GeneratorExit and logs it."""
    pool = make(kind, workers=1)
    manager = Recorder()
    try:
        context = offload.acontext(manager, executor=pool)
        await context.__aenter__()
        with caplog.at_level(logging.WARNING, logger="offload"):
            del context
            gc.collect()
        assert await asyncio.to_thread(manager.exited.wait, WAIT)
        assert manager.exit_args is not None
        assert manager.exit_args[0] is GeneratorExit
        assert len(set(manager.threads)) == 1
        assert await offload.offload(lambda: "free", executor=pool)() == "free"
        assert "dropped without being exited" in caplog.text
    finally:
        pool.shutdown()


def test_a_process_pool_is_refused() -> None:
    """acontext on an executor that runs jobs in other processes fails with a clear error."""
    pool = offload.ProcessPool(1)

    async def use() -> None:
        async with offload.acontext(threading.Lock(), executor=pool):
            pass

    try:
        with pytest.raises(TypeError, match="threads of this process"):
            asyncio.run(use())
    finally:
        pool.shutdown()
