"""Offloaded functions for the process and cluster tests.

They live in an importable module so that workers started with spawn and
forkserver (and Dask workers) can import them by name. Each is decorated with a
name in ``registry``; the tests point the names at the executor under test.
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import offload

registry = offload.Registry()

#: How long a worker waits for a file before giving up, as conftest.WAIT.
WAIT = 10.0


def _wait_for(path: Path) -> bool:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@registry.offload("procs")
def where() -> int:
    """The process the call ran in."""
    return os.getpid()


@registry.offload("procs")
def power(x: int, *, exponent: int = 2) -> int:
    return int(x**exponent)


@registry.offload("procs")
def fail(message: str) -> None:
    raise ValueError(message)


@registry.offload("procs")
def identity(value: Any) -> Any:
    return value


@registry.offload("procs")
def back_to_the_loop() -> int:
    """Asks for the caller's loop from a worker process, where there is none."""
    return offload.run_on_loop(len, "abc")


@registry.offload("procs")
def make_lock() -> threading.Lock:
    """A result that cannot be pickled."""
    return threading.Lock()


@registry.offload("procs")
def exit_with(code: int) -> None:
    os._exit(code)


@registry.offload("procs")
def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


@registry.offload("procs")
def crash() -> None:
    faulthandler.disable()  # a forked worker inherits pytest's; the crash is expected
    ctypes.string_at(0)  # read address 0: SIGSEGV


def _hold(started: Path, release: Path | None, ignore_sigterm: bool) -> int:
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Written whole, then renamed into place: a reader that sees the file
    # sees the pid, never an empty file still being written.
    partial = started.with_name(started.name + ".partial")
    partial.write_text(str(os.getpid()))
    partial.replace(started)
    if release is None:
        while True:
            time.sleep(0.01)
    _wait_for(release)
    return os.getpid()


@registry.offload("procs")
def hold(started: Path, release: Path | None = None, ignore_sigterm: bool = False) -> int:
    """Report the pid in ``started``, then wait for ``release`` (forever if None)."""
    return _hold(started, release, ignore_sigterm)


@registry.offload("procs", timeout=1.0)
def hold_with_deadline(started: Path, ignore_sigterm: bool = False) -> int:
    """As ``hold`` with no release, with a one-second deadline."""
    return _hold(started, None, ignore_sigterm)


@registry.offload("cluster")
def on_cluster(x: int) -> tuple[int, int]:
    return x * 2, os.getpid()


@registry.offload("cluster")
def fail_on_cluster(message: str) -> None:
    raise KeyError(message)


@registry.offload("cluster")
def hold_on_cluster(started: Path, release: Path) -> int:
    return _hold(started, release, ignore_sigterm=False)


@registry.offload("loky")
def on_loky(x: int) -> tuple[int, int]:
    return x + 1, os.getpid()


class Shape:
    """Every binding kind, decorated for a process pool."""

    sides = 0

    def __init__(self, size: int) -> None:
        self.size = size

    @registry.offload("procs")
    def area(self) -> tuple[str, int, int]:
        return type(self).__name__, self.size * self.size, os.getpid()

    @registry.offload("procs")
    @classmethod
    def describe(cls, prefix: str) -> tuple[str, int]:
        return f"{prefix}{cls.__name__}", cls.sides

    @registry.offload("procs")
    @staticmethod
    def double(x: int) -> tuple[int, int]:
        return 2 * x, os.getpid()

    @registry.offload("cluster")
    def area_on_cluster(self) -> int:
        return self.size * self.size


class Triangle(Shape):
    sides = 3

    @registry.offload("procs")
    def area(self) -> tuple[str, int, int]:
        name, square, pid = super().area.__wrapped__()  # type: ignore[attr-defined]
        return name, square // 2, pid


@registry.offload("procs")
def ask_cancelled() -> bool:
    """What ``offload.cancelled()`` says in a worker process."""
    return offload.cancelled()


def plain_double(x: int) -> int:
    """Not offloaded here; a test offloads it later."""
    return 2 * x


def _logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator of the usual kind, which replaces the function with its own."""

    @functools.wraps(fn)
    def logged(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return logged


@_logged  # on top of offload: the module name now leads to ``logged``, not the original
@registry.offload("procs")
def buried(x: int) -> int:
    return x


def caller_only(x: int) -> int:
    return x


if multiprocessing.parent_process() is None:  # offloaded here; a spawned worker never is
    caller_only = registry.offload("procs")(caller_only)  # type: ignore[assignment]


@registry.offload("cpu")
def on_cpu(x: int) -> tuple[int, int]:
    """Runs on the built-in ``"cpu"`` pool."""
    return x * 3, os.getpid()


# -- Plain functions for ProcessPool's initializer and max_tasks_per_child ------
# Not offloaded: the option tests offload them through a registry of their own,
# or submit them.

#: In a worker process: how often ``remember_start`` ran there, and with what.
initializer_runs = 0
initializer_args: tuple[Any, ...] | None = None


def remember_start(*args: Any) -> None:
    """An initializer: record that it ran in this process, and its arguments."""
    global initializer_runs, initializer_args  # noqa: PLW0603 - what a worker's calls read
    initializer_runs += 1
    initializer_args = args


def read_start() -> tuple[int, int, tuple[Any, ...] | None]:
    """This process's pid, how often its initializer ran, and with what arguments."""
    return os.getpid(), initializer_runs, initializer_args


def refuse_start(message: str) -> None:
    """An initializer that raises."""
    raise LookupError(message)


def refuse_start_while(flag: Path) -> None:
    """An initializer that raises while ``flag`` exists: a service not yet up."""
    if flag.exists():
        raise ConnectionRefusedError(f"{flag.name} is still there")
    remember_start(flag.name)


def exit_at_start(code: int) -> None:
    """An initializer that ends its worker process."""
    os._exit(code)


def parent_only_start() -> None:
    """An initializer a spawned worker cannot load: its module drops it there."""


if multiprocessing.parent_process() is not None:  # a worker that imported this module afresh
    del parent_only_start


def hold_plain(started: Path, release: Path | None = None) -> int:
    """As ``hold``, not offloaded: report the pid in ``started``, wait for ``release``."""
    return _hold(started, release, ignore_sigterm=False)


# -- For the tests' side: waiting on workers without sleeping blindly ----------


async def started(path: Path) -> int:
    """Wait until a held call has written its pid to ``path``; return the pid."""
    ok = await asyncio.to_thread(_wait_for, path)
    assert ok, f"the call never started: {path} was not written"
    return int(await asyncio.to_thread(path.read_text))


def _exited(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def eventually(condition: Callable[[], bool]) -> bool:
    """Wait (up to WAIT) until ``condition()`` holds, for state no event reports."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def gone(pid: int) -> bool:
    """Wait (up to WAIT) until process ``pid`` has exited and been reaped."""
    return await eventually(lambda: _exited(pid))


@registry.offload("procs", coroutine=True)
def power_coroutine(x: int, *, exponent: int = 2) -> tuple[int, int]:
    return x**exponent, os.getpid()


class Solid:
    """The coroutine form in every binding kind, for a process pool."""

    faces = 6

    def __init__(self, size: int) -> None:
        self.size = size

    @registry.offload("procs", coroutine=True, cancel="wait")
    def volume(self) -> tuple[int, int]:
        return self.size**3, os.getpid()

    @registry.offload("procs", coroutine=True)
    @classmethod
    def describe(cls, prefix: str) -> tuple[str, int]:
        return f"{prefix}{cls.__name__}", cls.faces

    @registry.offload("procs", coroutine=True)
    @staticmethod
    def triple(x: int) -> tuple[int, int]:
        return 3 * x, os.getpid()
