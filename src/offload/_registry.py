"""Executors by name: registration, lazy creation, shutdown and fork safety."""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
import weakref
from asyncio import Future
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, ParamSpec, TypeVar, Union, cast, overload

from ._decorator import ExecutorSpec, Offloader, decorate
from ._dispatch import sends_by_pickle
from ._errors import ExecutorShutdownError, UnknownExecutorError
from ._foreign import broken_hooks
from ._monitor import ExecutorStats, Monitor, WhenFull, check_bounds
from ._pool import ThreadPool, default_thread_count
from ._process import START_METHOD_VARIABLE, ProcessPool

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: What ``register`` takes: an Executor, or a zero-argument factory making one.
ExecutorOrFactory = Union[Executor, Callable[[], Executor]]

#: Threads in the built-in ``"io"`` pool: blocking I/O mostly waits, so more
#: threads than cores pay off.
IO_THREADS = 64


def _size_from_env(name: str, fallback: int) -> int:
    variable = f"OFFLOAD_{name.upper()}_WORKERS"
    raw = os.environ.get(variable)
    if raw is None:
        return fallback
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{variable} must be a positive integer, got {raw!r}")
    return size


def _builtin_pool(name: str, fallback: Callable[[], int]) -> Callable[[], Executor]:
    def make() -> Executor:
        return ThreadPool(_size_from_env(name, fallback()), name=f"offload-{name}")

    make.__qualname__ = f"builtin {name!r} pool"
    return make


def _cpu_pool() -> Executor:
    """The built-in ``"cpu"`` pool: a process per core, started as configured."""
    method = os.environ.get(START_METHOD_VARIABLE) or None
    try:
        return ProcessPool(
            _size_from_env("cpu", os.cpu_count() or 1), start_method=method, name="offload-cpu"
        )
    except ValueError as exc:
        if method is not None and str(exc).startswith("start_method"):
            raise ValueError(f"{START_METHOD_VARIABLE}: {exc}") from None
        raise


_cpu_pool.__qualname__ = "builtin 'cpu' pool"


def _sends_by_pickle(executor_or_factory: object) -> bool:
    """Whether what a name is registered with pickles calls with the standard pickle."""
    if isinstance(executor_or_factory, Executor):
        return sends_by_pickle(executor_or_factory)
    if executor_or_factory is _cpu_pool:
        return True
    return isinstance(executor_or_factory, type) and issubclass(
        executor_or_factory, (ProcessPool, ProcessPoolExecutor)
    )


class _Entry:
    """One name: its executor (made lazily from its factory) and its state."""

    __slots__ = ("closed", "executor", "factory", "is_default", "lock", "monitor", "name")

    def __init__(
        self,
        name: str,
        executor: Executor | None,
        factory: Callable[[], Executor] | None,
        is_default: bool,
    ) -> None:
        self.name = name
        self.executor = executor
        self.factory = factory
        self.is_default = is_default
        self.closed = False
        self.lock = threading.Lock()
        self.monitor = Monitor(name)  # the registry swaps in the name's own

    def create(self) -> Executor:
        with self.lock:  # first calls may race: the factory runs exactly once
            if self.closed:
                raise ExecutorShutdownError(
                    f"the executor {self.name!r} was shut down and takes no new calls; register "
                    f"a new one with register({self.name!r}, executor_or_factory, replace=True)"
                )
            if self.executor is None and self.factory is not None:
                executor = self.factory()
                if not isinstance(executor, Executor):
                    raise TypeError(
                        f"the factory registered as {self.name!r} returned {executor!r}, "
                        "not a concurrent.futures.Executor"
                    )
                self.executor = self.monitor.executor = executor
            return cast("Executor", self.executor)

    def drop_broken(self, executor: Executor) -> bool:
        """Forget ``executor`` if it is this entry's and a factory can replace it."""
        with self.lock:
            if self.executor is not executor or self.factory is None:
                return False
            self.executor = None  # the factory makes a new one on the next call
        executor.shutdown(wait=False)
        return True

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        if self.factory is not None:
            self.executor = None  # made anew on first use in the child


_registries: weakref.WeakSet[Registry] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for registry in list(_registries):
        registry._lock = threading.RLock()
        for entry in registry._entries.values():
            entry.after_fork()
        for monitor in registry._monitors.values():
            monitor.after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


def _replace_broken(executor: Executor) -> bool:
    replaced = False
    for registry in list(_registries):
        for entry in list(registry._entries.values()):
            replaced = entry.drop_broken(executor) or replaced
    return replaced


broken_hooks.append(_replace_broken)


class Registry:
    """Executors by name; ``offload`` looks names up here at call time.

    The module-level ``offload``, ``register``, ``get_executor`` and
    ``shutdown`` use one shared registry. Make your own for tests, or for a
    library that wants defaults nobody else can see.

    A name resolves, in this order, to:

    1. the executor an application registered with ``register(name, ...)``;
    2. else the default a library registered with ``register(name, ..., default=True)``;
    3. else nothing: ``UnknownExecutorError``.

    An application's registration replaces a default without ``replace=True``,
    whichever was imported first, and a default never replaces anything.
    ``"default"`` and ``"io"`` (thread pools) and ``"cpu"`` (a
    [`ProcessPool`][offload.ProcessPool] with a process per core) are built-in
    defaults, each made on first use.

    Example:
        >>> import offload
        >>> registry = offload.Registry()
        >>> registry.register("db", lambda: offload.ThreadPool(4, name="db"))
        >>> registry.get_executor("db")
        <offload.ThreadPool 'db' max_workers=4 0 threads>
        >>> registry.shutdown()
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._monitors: dict[str, Monitor] = {}
        self.register("default", _builtin_pool("default", default_thread_count), default=True)
        self.register("io", _builtin_pool("io", lambda: IO_THREADS), default=True)
        self.register("cpu", _cpu_pool, default=True)
        _registries.add(self)

    def __repr__(self) -> str:
        return f"<offload.Registry names={self.names()!r}>"

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted.

        Example:
            >>> import offload
            >>> offload.Registry().names()
            ('cpu', 'default', 'io')
        """
        return tuple(sorted(self._entries))

    def register(
        self,
        name: str,
        executor_or_factory: ExecutorOrFactory,
        *,
        replace: bool = False,
        default: bool = False,
        max_pending: int | None = None,
        when_full: WhenFull = "wait",
        warn_after: float | None = 1.0,
    ) -> None:
        """Make ``name`` resolve to an executor.

        Args:
            name: The name decorated functions use, such as ``"db"`` or
                ``"mydriver.io"``.
            executor_or_factory: An ``Executor``, or a zero-argument callable
                that makes one. A factory runs on first use, exactly once even
                when the first calls race, and again in a child after ``fork``.
                A process pool made by a factory is made anew when it breaks
                (a worker died), so the next call through the name succeeds.
            replace: Replace an executor already registered under ``name``.
                Calls already running on the old one finish there; an old one
                made from a factory is shut down without waiting.
            default: Register a library default: it is used only while no
                application registers ``name``, and registering it again, or
                over an existing name, does nothing.
            max_pending: Bound the calls queued or running on the executor
                through this name; ``None`` means no bound. Calls past the
                bound follow ``when_full``.
            when_full: ``"wait"``: the call's Future waits its turn, first
                come first served, without blocking the loop. ``"fail"``: the
                call raises [`OverloadedError`][offload.OverloadedError] at once.
            warn_after: Log a warning (logger ``"offload"``) when a call waits
                longer than this many seconds for a worker, at most once every
                10 s per name; ``None`` turns it off.

        Raises:
            ValueError: ``name`` is taken and neither ``replace`` nor
                ``default`` was given; or an option is out of range.
            TypeError: ``name`` is not a non-empty string, or
                ``executor_or_factory`` is neither an Executor nor callable.

        Example:
            >>> import offload
            >>> from concurrent.futures import ThreadPoolExecutor
            >>> registry = offload.Registry()
            >>> registry.register("db", ThreadPoolExecutor(2))
            >>> registry.register("db", offload.ThreadPool(8), replace=True, max_pending=1000)
            >>> registry.shutdown()
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"an executor name must be a non-empty str, got {name!r}")
        check_bounds(max_pending, when_full, warn_after)
        if isinstance(executor_or_factory, Executor):
            entry = _Entry(name, executor_or_factory, None, default)
        elif callable(executor_or_factory):
            entry = _Entry(name, None, executor_or_factory, default)
        else:
            raise TypeError(
                f"register({name!r}, ...) needs a concurrent.futures.Executor or a "
                f"zero-argument factory returning one, got {executor_or_factory!r}"
            )
        with self._lock:
            old = self._entries.get(name)
            if old is not None:
                if default:
                    return
                if not (replace or old.is_default):
                    raise ValueError(
                        f"an executor is already registered as {name!r}; "
                        "pass replace=True to replace it"
                    )
            # A name keeps its counters (and its waiting calls) across replacements.
            monitor = entry.monitor = self._monitors.setdefault(name, entry.monitor)
            monitor.executor = entry.executor
            monitor.configure(max_pending, when_full, warn_after)
            self._entries[name] = entry
        if old is not None and old.factory is not None and old.executor is not None:
            old.executor.shutdown(wait=False)

    def _sends_by_pickle(self, name: str) -> bool:
        """Whether ``name`` is known now to be a process pool (for decoration-time checks)."""
        entry = self._entries.get(name)
        if entry is None:
            return False
        return _sends_by_pickle(entry.executor if entry.executor is not None else entry.factory)

    def get_executor(self, name: str = "default") -> Executor:
        """The executor registered as ``name``, creating it on first use.

        Raises:
            UnknownExecutorError: nothing is registered as ``name``.
            ExecutorShutdownError: the name was shut down.

        Example:
            >>> import offload
            >>> offload.Registry().get_executor("io").max_workers
            64
        """
        return self._route(name)[0]

    def _route(self, name: str) -> tuple[Executor, Monitor]:
        """The executor for a call through ``name``, and the monitor that counts it."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise UnknownExecutorError(name, self.names()) from None
        executor = entry.executor
        return (executor if executor is not None else entry.create()), entry.monitor

    def stats(self) -> dict[str, ExecutorStats]:
        """Each name's counters and timings, as plain data (JSON-ready).

        See [`ExecutorStats`][offload.ExecutorStats] for what each field means.
        Only calls made through a name are counted; a call to an ``Executor``
        passed directly is not.

        Example:
            >>> import asyncio, json, offload
            >>> registry = offload.Registry()
            >>> async def main():
            ...     await registry.offload("io")(abs)(-1)
            >>> asyncio.run(main())
            >>> io = registry.stats()["io"]
            >>> wait = io["wait"]
            >>> io["submitted"], io["completed"], wait["samples"]
            (1, 1, 1)
            >>> _ = json.dumps(registry.stats())
            >>> registry.shutdown()
        """
        with self._lock:
            monitors = list(self._monitors.values())
        return {monitor.name: monitor.snapshot() for monitor in sorted(monitors, key=_by_name)}

    def shutdown(
        self, wait: bool = True, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Shut down every executor in the registry.

        Every registered executor is shut down, whether the registry made it or
        it was handed over with ``register``. Later calls through these names
        raise ``ExecutorShutdownError`` until a name is registered again.

        Args:
            wait: Wait for running and queued calls to finish.
            cancel_futures: Cancel calls that have not started; they never run.
            timeout: With ``wait``, give up after this many seconds and warn
                (``RuntimeWarning``) naming the executors still running.

        Example:
            >>> import offload
            >>> registry = offload.Registry()
            >>> registry.shutdown(timeout=5.0)
            >>> registry.names()
            ('cpu', 'default', 'io')
        """
        with self._lock:
            executors: dict[str, Executor] = {}
            for name, entry in self._entries.items():
                with entry.lock:
                    entry.closed = True
                    if entry.executor is not None:
                        executors[name] = entry.executor
                    entry.executor = None
            monitors = list(self._monitors.values())
        for monitor in monitors:  # calls waiting for a slot will never get one
            monitor.fail_waiting(functools.partial(_shut_down, monitor.name))
        for executor in executors.values():
            _stop(executor, cancel_futures)
        if not wait:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        stuck = {
            name: executor
            for name, executor in executors.items()
            if not _wait_for(executor, deadline)
        }
        if stuck:
            for name, executor in stuck.items():
                if isinstance(executor, ThreadPool):
                    executor._give_up(functools.partial(_gave_up, name, timeout))
            listing = ", ".join(f"{name!r} ({executor!r})" for name, executor in stuck.items())
            warnings.warn(
                f"offload shutdown gave up after {timeout}s; still running: {listing}",
                RuntimeWarning,
                stacklevel=2,
            )

    @overload
    def offload(
        self,
        fn: classmethod[T, P, R],
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
    ) -> classmethod[T, P, Future[R]]: ...
    @overload
    def offload(
        self,
        fn: staticmethod[P, R],
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
    ) -> staticmethod[P, Future[R]]: ...
    @overload
    def offload(
        self,
        fn: Callable[P, R],
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
    ) -> Callable[P, Future[R]]: ...
    @overload
    def offload(
        self, executor: ExecutorSpec | None = None, /, *, timeout: float | None = None
    ) -> Offloader: ...
    @overload
    def offload(
        self, /, *, executor: ExecutorSpec | None = None, timeout: float | None = None
    ) -> Offloader: ...
    def offload(self, fn: Any = None, /, executor: Any = None, timeout: Any = None) -> Any:
        """The ``offload`` decorator, resolving names in this registry.

        It takes the same forms and options (``executor``, ``timeout``) as the
        module-level [`offload`][offload.offload].

        Example:
            >>> import asyncio, offload
            >>> registry = offload.Registry()
            >>> @registry.offload("io")
            ... def double(x):
            ...     return 2 * x
            >>> async def main():
            ...     return await double(21)
            >>> asyncio.run(main())
            42
            >>> registry.shutdown()
        """
        return decorate(self, fn, executor, timeout)


def _by_name(monitor: Monitor) -> str:
    return monitor.name


def _shut_down(name: str) -> ExecutorShutdownError:
    return ExecutorShutdownError(
        f"the executor {name!r} was shut down while this call waited for a max_pending slot"
    )


def _gave_up(name: str, timeout: float | None) -> ExecutorShutdownError:
    return ExecutorShutdownError(
        f"shutdown gave up on the executor {name!r} after {timeout}s with this call still "
        "queued or running; a running thread cannot be stopped and runs on, but its "
        "outcome is dropped"
    )


def _stop(executor: Executor, cancel_futures: bool) -> None:
    try:
        executor.shutdown(wait=False, cancel_futures=cancel_futures)
    except TypeError:  # an executor with the pre-3.9 signature, such as loky's
        executor.shutdown(wait=False)


def _wait_for(executor: Executor, deadline: float | None) -> bool:
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    if isinstance(executor, (ThreadPool, ProcessPool)):
        return executor._join(remaining)
    if remaining is None:
        executor.shutdown(wait=True)
        return True
    waiter = threading.Thread(target=executor.shutdown, name="offload-shutdown", daemon=True)
    waiter.start()
    waiter.join(remaining)
    return not waiter.is_alive()
