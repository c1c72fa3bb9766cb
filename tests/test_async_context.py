"""Blocking context managers used with ``async with``: both halves on the executor."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import TracebackType

import pytest

import offload
from tests.conftest import WAIT


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


async def test_cancelled_while_entering_still_exits(worker: offload.AffineThread) -> None:
    """A task cancelled while __enter__ runs gets __exit__ called with CancelledError."""
    gate = threading.Event()
    manager = Recorder(enter_gate=gate)

    async def use() -> None:
        async with offload.acontext(manager, executor=worker):
            raise AssertionError("the body must not run")

    task = asyncio.ensure_future(use())
    assert await asyncio.to_thread(manager.entering.wait, WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    assert await asyncio.to_thread(manager.exited.wait, WAIT)
    assert manager.exit_args is not None
    assert manager.exit_args[0] is asyncio.CancelledError


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
