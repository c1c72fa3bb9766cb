"""What the promise tests run: plain functions every kind of worker can import by name.

Threads, worker processes (fork, spawn, forkserver) and Dask workers all reach
these by module and name, so one body serves every executor kind. Calls are
ordered with files, which every kind of worker can see: a held call announces
itself by writing a file, and waits until another file appears.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import offload

P = ParamSpec("P")
T = TypeVar("T")

#: How long a worker waits for a file before giving up, as conftest.WAIT.
WAIT = 10.0

#: Where a call ran: the process and the thread.
Where = tuple[int, str]


def where() -> Where:
    """The process and thread this runs on."""
    return os.getpid(), threading.current_thread().name


def wait_for(path: Path, timeout: float = WAIT) -> bool:
    """Wait until ``path`` exists; false if it did not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def announce(path: Path) -> None:
    """Write where this runs to ``path`` whole: a reader never sees half of it."""
    partial = path.with_name(path.name + ".partial")
    pid, thread = where()
    partial.write_text(f"{pid}\n{thread}")
    partial.replace(path)


def read_where(path: Path) -> Where:
    """What ``announce`` wrote."""
    pid, thread = path.read_text().split("\n")
    return int(pid), thread


def hold(started: Path, release: Path, finished: Path | None = None) -> Where:
    """Announce the start in ``started``, wait for ``release``, mark ``finished``, return."""
    announce(started)
    wait_for(release)
    if finished is not None:
        announce(finished)
    return where()


def mark(path: Path) -> Where:
    """Leave ``path`` behind: the proof that this call ran."""
    announce(path)
    return where()


def meet(folder: Path, index: int, count: int) -> Where:
    """Arrive at a barrier of ``count`` calls in ``folder``; return once all have arrived.

    Only ``count`` workers running at once can all arrive, so a barrier as wide
    as a pool proves that every worker has finished what it took before.
    """
    announce(folder / f"arrived{index}")
    deadline = time.monotonic() + WAIT
    while len(list(folder.glob("arrived*[0-9]"))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only some of {count} calls met in {folder}")
        time.sleep(0.002)
    return where()


class Boom(ValueError):  # noqa: N818 - what the call does, as a test reads it
    """What ``boom`` raises."""


def echo(value: T) -> T:
    """Return ``value``."""
    return value


def boom(message: str) -> None:
    """Raise Boom."""
    raise Boom(message)


class Token:
    """An argument whose lifetime a test follows with a weak reference."""

    def __init__(self, label: str) -> None:
        self.label = label


def touch_token(token: Token, path: Path) -> str:
    """Mark ``path`` and return the token's label."""
    announce(path)
    return token.label


def ran_after(earlier: Path, path: Path) -> bool:
    """Mark ``path``; whether ``earlier`` existed when this call started."""
    before = earlier.exists()
    announce(path)
    return before


def gated(release: Path, count: int) -> Iterator[int]:
    """Yield 1 to ``count`` once ``release`` exists."""
    wait_for(release)
    yield from range(1, count + 1)


def scheduler_keys(dask_scheduler: Any) -> list[str]:
    """On a Dask scheduler (``client.run_on_scheduler``): the keys of the tasks it knows."""
    return [str(key) for key in list(dask_scheduler.tasks)]


def worker_keys(dask_worker: Any) -> list[str]:
    """On a Dask worker (``client.run``): the keys of the tasks it knows."""
    return [str(key) for key in list(dask_worker.state.tasks)]


# -- What a worker may raise or return that is hard to bring back ---------------


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """An exception that refuses attribute assignment, even ``__traceback__``."""

    code: int


class UnpicklableError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str = "holds a lock") -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class UnprintableError(Exception):
    """An exception that can be neither pickled nor printed."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")

    def __repr__(self) -> str:
        raise RuntimeError("this exception has no repr either")


class Detonation(BaseException):
    """What unpickling a ``Poison`` raises: not an Exception, so ``except Exception`` misses it."""


class Abort(BaseException):
    """A BaseException subclass a worker raises."""


def _detonate() -> None:
    raise Detonation("a result that blows up as it is unpickled")


class Poison:
    """A result that pickles in the worker and raises Detonation as it is unpickled."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _detonate, ()


def raise_frozen() -> None:
    """Raise an exception that refuses attribute assignment."""
    raise FrozenError(3)


def raise_unpicklable() -> None:
    """Raise an exception that cannot be pickled."""
    raise UnpicklableError


def raise_unprintable() -> None:
    """Raise an exception that can be neither pickled nor printed."""
    raise UnprintableError


def return_poison() -> Poison:
    """Return a result whose unpickling raises a BaseException."""
    return Poison()


def raise_abort() -> None:
    """Raise a BaseException subclass."""
    raise Abort("abort")


def raise_system_exit() -> None:
    """Raise SystemExit (on a thread it must fail the call, nothing else)."""
    raise SystemExit(3)


# -- An executor offload knows nothing about ------------------------------------


class Foreign(Executor):
    """A plain Executor that runs jobs on threads of its own, through a private pool.

    It is not a ThreadPoolExecutor, so offload sees nothing but ``submit`` and
    ``shutdown``.
    """

    def __init__(self, max_workers: int = 2, name: str = "foreign") -> None:
        self._inner = ThreadPoolExecutor(max_workers, thread_name_prefix=name)
        self.max_workers = max_workers

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._inner.shutdown(wait=wait, cancel_futures=cancel_futures)


# -- A misuse: classmethod stacked above offload ----------------------------------

#: The registry of ``Misordered``; the test points ``"procs"`` at a process pool.
registry = offload.Registry()


class Misordered:
    """``@classmethod`` above ``@offload``: the wrong order for a process pool."""

    @classmethod
    @registry.offload("procs")
    def describe(cls, x: int) -> str:
        return f"{cls.__name__} {x}"
