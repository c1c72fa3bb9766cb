"""Executors by name: registration, lazy creation, shutdown and fork safety."""

from __future__ import annotations

import functools
import heapq
import os
import threading
import warnings
import weakref
from asyncio import Future
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, Literal, ParamSpec, TypeVar, Union, cast, overload

from ._bound import Bound, check_bounds
from ._decorator import Cancel, CoroutineOffloader, ExecutorSpec, Offloader, decorate
from ._errors import ExecutorShutdownError, UnknownExecutorError
from ._kinds import broken_hooks, kind_of, wait_for_all
from ._lanes import Lane
from ._pool import ThreadPool, default_thread_count, shutdown_hooks, usable_cpus
from ._process import START_METHOD_VARIABLE, ProcessPool
from ._route import Route
from ._stats import ExecutorStats, Stats, WhenFull, snapshot

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
            _size_from_env("cpu", usable_cpus()), start_method=method, name="offload-cpu"
        )
    except ValueError as exc:
        if method is not None and str(exc).startswith("start_method"):
            raise ValueError(f"{START_METHOD_VARIABLE}: {exc}") from None
        raise


_cpu_pool.__qualname__ = "builtin 'cpu' pool"


def _sends_by_pickle(executor_or_factory: object) -> bool:
    """Whether what a name is registered with pickles calls with the standard pickle."""
    if isinstance(executor_or_factory, Executor):
        return kind_of(executor_or_factory).pickles
    if executor_or_factory is _cpu_pool:
        return True
    return isinstance(executor_or_factory, type) and issubclass(
        executor_or_factory, (ProcessPool, ProcessPoolExecutor)
    )


class _Entry:
    """One registration of a name: its executor (made lazily from its factory) and route."""

    __slots__ = (
        "bound",
        "closed",
        "executor",
        "factory",
        "is_default",
        "lock",
        "name",
        "route",
        "stats",
    )

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
        self.route: Route | None = None
        # The name's, shared by each of its registrations; set by the registry.
        self.stats: Stats = Stats(name)
        self.bound: Bound | None = None

    def create(self) -> Route:
        """The route to this entry's executor, making the executor on first use."""
        with self.lock:  # first calls may race: the factory runs exactly once
            if self.closed:
                raise ExecutorShutdownError(
                    f"the executor {self.name!r} was shut down and takes no new calls; register "
                    f"a new one with register({self.name!r}, executor_or_factory, replace=True)"
                )
            if self.route is None:
                executor = self.executor
                if executor is None:
                    executor = cast("Callable[[], Executor]", self.factory)()
                    if not isinstance(executor, Executor) or isinstance(executor, Lane):
                        raise TypeError(
                            f"the factory registered as {self.name!r} returned {executor!r}, "
                            f"not a concurrent.futures.Executor{_NOT_A_LANE}"
                        )
                    self.executor = executor
                self.route = Route(executor, stats=self.stats, bound=self.bound)
            return self.route

    def forget(self, executor: Executor) -> bool:
        """Forget ``executor`` if it is this entry's and a factory can replace it."""
        # Looked at first without the lock, which a factory may hold while it runs
        # (and shuts some other pool down): only this pool's entries are locked.
        if self.executor is not executor:
            return False
        with self.lock:
            if self.executor is not executor or self.factory is None:
                return False
            self.executor = self.route = None  # the factory makes a new one on the next call
        return True

    def drop_broken(self, executor: Executor) -> bool:
        """Forget a broken ``executor`` if it is this entry's and a factory can replace it."""
        if not self.forget(executor):
            return False
        # Not here: this runs inside the broken pool's own callback, which since
        # Python 3.12 holds the lock its shutdown takes.
        threading.Thread(
            target=executor.shutdown, kwargs={"wait": False}, name="offload-replace", daemon=True
        ).start()
        return True

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        if self.factory is not None:
            self.executor = self.route = None  # made anew on first use in the child


def _entry_for(name: str, executor_or_factory: object, default: bool) -> _Entry:
    """A registration of ``name``, or a clear error for what cannot be registered."""
    if isinstance(executor_or_factory, Lane):
        raise TypeError(
            f"register({name!r}, {executor_or_factory!r}): a lane handle is not an "
            f"executor of its own{_NOT_A_LANE}"
        )
    if isinstance(executor_or_factory, Executor):
        return _Entry(name, executor_or_factory, None, default)
    if callable(executor_or_factory):
        return _Entry(name, None, executor_or_factory, default)
    raise TypeError(
        f"register({name!r}, ...) needs a concurrent.futures.Executor or a "
        f"zero-argument factory returning one, got {executor_or_factory!r}"
    )


_registries: weakref.WeakSet[Registry] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for registry in list(_registries):
        registry._lock = threading.RLock()
        for entry in registry._entries.values():
            entry.after_fork()
        for stats in registry._stats.values():
            stats.after_fork()
        for bound in registry._bounds.values():
            bound.after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_reset_after_fork)


def _replace_broken(executor: Executor) -> bool:
    replaced = False
    for registry in list(_registries):
        for entry in list(registry._entries.values()):
            replaced = entry.drop_broken(executor) or replaced
    return replaced


broken_hooks.append(_replace_broken)


def _replace_shut_down(pool: ThreadPool) -> None:
    # A pool shut down from outside the registry (the registry forgets its own
    # first): as asyncio.run does to the loop's default executor as it ends.
    for registry in list(_registries):
        for entry in list(registry._entries.values()):
            entry.forget(pool)


shutdown_hooks.append(_replace_shut_down)


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

    Examples:
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
        # Per name, kept across its registrations: its counters and its bound.
        self._stats: dict[str, Stats] = {}
        self._bounds: dict[str, Bound] = {}
        # Per name, the lane handle indexes dealt so far and those given back since.
        self._lanes_dealt: dict[str, int] = {}
        self._lanes_free: dict[str, list[int]] = {}
        self.register("default", _builtin_pool("default", default_thread_count), default=True)
        self.register("io", _builtin_pool("io", lambda: IO_THREADS), default=True)
        self.register("cpu", _cpu_pool, default=True)
        _registries.add(self)

    def __repr__(self) -> str:
        return f"<offload.Registry names={self.names()!r}>"

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted.

        Examples:
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

        Examples:
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
        entry = _entry_for(name, executor_or_factory, default)
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
            # A name keeps its counters and its line of waiting calls across
            # replacements: once a slot frees, a waiting call goes to the new executor.
            stats = entry.stats = self._stats.setdefault(name, entry.stats)
            if name not in self._bounds:
                self._bounds[name] = Bound(name, functools.partial(self._route, name))
            entry.bound = self._bounds[name]
            stats.warn_after = float("inf") if warn_after is None else float(warn_after)
            if entry.executor is not None:
                entry.route = Route(entry.executor, stats=stats, bound=entry.bound)
            self._entries[name] = entry
        entry.bound.configure(max_pending, when_full)
        if old is not None and old.factory is not None and old.executor is not None:
            kind_of(old.executor).stop(cancel_futures=False)  # what it holds still runs

    def _sends_by_pickle(self, name: str) -> bool:
        """Whether ``name`` is known now to be a process pool (for decoration-time checks)."""
        entry = self._entries.get(name)
        if entry is None:
            return False
        if entry.route is not None:
            return entry.route.kind.pickles
        return _sends_by_pickle(entry.executor if entry.executor is not None else entry.factory)

    def get_executor(self, name: str = "default") -> Executor:
        """The executor registered as ``name``, creating it on first use.

        Raises:
            UnknownExecutorError: nothing is registered as ``name``.
            ExecutorShutdownError: the name was shut down.

        Examples:
            >>> import offload
            >>> offload.Registry().get_executor("io").max_workers
            64
        """
        return self._route(name).executor

    def _route(self, name: str) -> Route:
        """The route of a call through ``name``, made with its executor on first use."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise UnknownExecutorError(name, self.names()) from None
        route = entry.route
        return route if route is not None else entry.create()

    def lane(self, name: str) -> Lane:
        """A handle on one lane of ``name``: its calls run on one thread, as the name's calls.

        ``name`` is meant to be registered with a [`Lanes`][offload.Lanes]; the
        handle's calls run on its lane ``index mod n`` there, counted in the
        name's statistics and bounded by its ``max_pending``. Each handle gets
        the lowest index no live handle of the name holds, so while there are
        no more live handles than lanes, each has a lane of its own. See
        [`Lane`][offload.Lane] for what re-pointing the name does. The name is
        looked up at each call, as a named call's is, so it may be registered
        after the handle is made.

        Raises:
            TypeError: ``name`` is not a non-empty string.

        Examples:
            >>> import offload
            >>> registry = offload.Registry()
            >>> registry.register("kv", lambda: offload.Lanes(2, name="kv"))
            >>> first, second = registry.lane("kv"), registry.lane("kv")
            >>> first.index, second.index
            (0, 1)
            >>> del first  # its index goes to the next handle
            >>> registry.lane("kv").get_executor()
            <offload.AffineThread 'kv_0' not started>
            >>> registry.shutdown()
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"a lane needs an executor name, a non-empty str; got {name!r}")
        with self._lock:
            free = self._lanes_free.get(name)
            if free:
                index = heapq.heappop(free)
            else:
                index = self._lanes_dealt.get(name, 0)
                self._lanes_dealt[name] = index + 1
        handle = Lane(self, name, index)
        weakref.finalize(handle, self._lane_freed, name, index).atexit = False
        return handle

    def _lane_freed(self, name: str, index: int) -> None:
        with self._lock:
            heapq.heappush(self._lanes_free.setdefault(name, []), index)

    def stats(self) -> dict[str, ExecutorStats]:
        """Each name's counters and timings, as plain data (JSON-ready).

        See [`ExecutorStats`][offload.ExecutorStats] for what each field means.
        Only calls made through a name are counted; a call to an ``Executor``
        passed directly is not.

        Examples:
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
            names = sorted(self._stats)
            parts = [(self._stats[n], self._entries.get(n), self._bounds[n]) for n in names]
        return {
            stats.name: snapshot(
                stats,
                None if entry is None else entry.executor,
                bound.limit,
                bound.when_full,
                bound.waiting(),
            )
            for stats, entry, bound in parts
        }

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

        Examples:
            >>> import offload
            >>> registry = offload.Registry()
            >>> registry.shutdown(timeout=5.0)
            >>> registry.names()
            ('cpu', 'default', 'io')
        """
        with self._lock:
            kinds = {}
            for name, entry in self._entries.items():
                with entry.lock:
                    entry.closed = True
                    if entry.route is not None:
                        kinds[name] = entry.route.kind
                    entry.executor = entry.route = None
            bounds = list(self._bounds.values())
        for bound in bounds:  # calls waiting for a slot will never get one
            bound.fail_waiting(functools.partial(_shut_down, bound.name))
        for kind in kinds.values():
            kind.stop(cancel_futures)
        if not wait:
            return
        stuck = wait_for_all(kinds, timeout)
        if stuck:
            for name, kind in stuck.items():
                kind.give_up(functools.partial(_gave_up, name, timeout))
            listing = ", ".join(f"{name!r} ({kind.executor!r})" for name, kind in stuck.items())
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
        coroutine: Literal[False] = False,
    ) -> classmethod[T, P, Future[R]]: ...
    @overload
    def offload(
        self,
        fn: staticmethod[P, R],
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
        coroutine: Literal[False] = False,
    ) -> staticmethod[P, Future[R]]: ...
    @overload
    def offload(
        self,
        fn: Callable[P, R],
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
        coroutine: Literal[False] = False,
    ) -> Callable[P, Future[R]]: ...
    @overload
    def offload(
        self,
        executor: ExecutorSpec | None = None,
        /,
        *,
        timeout: float | None = None,
        coroutine: Literal[False] = False,
    ) -> Offloader: ...
    @overload
    def offload(
        self,
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
        coroutine: Literal[False] = False,
    ) -> Offloader: ...
    @overload
    def offload(
        self,
        fn: classmethod[T, P, R],
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
        coroutine: Literal[True],
        cancel: Cancel = "abandon",
    ) -> classmethod[T, P, Coroutine[Any, Any, R]]: ...
    @overload
    def offload(
        self,
        fn: staticmethod[P, R],
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
        coroutine: Literal[True],
        cancel: Cancel = "abandon",
    ) -> staticmethod[P, Coroutine[Any, Any, R]]: ...
    @overload
    def offload(
        self,
        fn: Callable[P, R],
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
        coroutine: Literal[True],
        cancel: Cancel = "abandon",
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def offload(
        self,
        executor: ExecutorSpec | None = None,
        /,
        *,
        timeout: float | None = None,
        coroutine: Literal[True],
        cancel: Cancel = "abandon",
    ) -> CoroutineOffloader: ...
    @overload
    def offload(
        self,
        /,
        *,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
        coroutine: Literal[True],
        cancel: Cancel = "abandon",
    ) -> CoroutineOffloader: ...
    def offload(
        self,
        fn: Callable[..., Any]
        | classmethod[Any, ..., Any]
        | staticmethod[..., Any]
        | ExecutorSpec
        | None = None,
        /,
        executor: ExecutorSpec | None = None,
        timeout: float | None = None,
        coroutine: bool = False,
        cancel: Cancel = "abandon",
    ) -> Any:
        """The ``offload`` decorator, resolving names in this registry.

        It takes the same forms and options (``executor``, ``timeout``,
        ``coroutine``, ``cancel``) as the module-level [`offload`][offload.offload].

        Examples:
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
        return decorate(self, fn, executor, timeout, coroutine, cancel)


_NOT_A_LANE = (
    "; a lane handle (offload.lane(name)) pins calls to a lane of the executor registered "
    "under a name: register the executor itself, such as offload.Lanes(n), and hand out "
    "handles with offload.lane(name)"
)


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
