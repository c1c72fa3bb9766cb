"""The module-level API: the shared registry and its functions."""

from __future__ import annotations

from asyncio import Future
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, Literal, ParamSpec, TypeVar, overload

from ._decorator import Cancel, CoroutineOffloader, ExecutorSpec, Offloader, decorate
from ._lanes import Lane
from ._registry import ExecutorOrFactory, Registry
from ._stats import ExecutorStats, WhenFull

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: The registry behind the module-level functions.
default_registry = Registry()


@overload
def offload(
    fn: classmethod[T, P, R],
    /,
    *,
    executor: ExecutorSpec | None = None,
    timeout: float | None = None,
    coroutine: Literal[False] = False,
) -> classmethod[T, P, Future[R]]: ...
@overload
def offload(
    fn: staticmethod[P, R],
    /,
    *,
    executor: ExecutorSpec | None = None,
    timeout: float | None = None,
    coroutine: Literal[False] = False,
) -> staticmethod[P, Future[R]]: ...
@overload
def offload(
    fn: Callable[P, R],
    /,
    *,
    executor: ExecutorSpec | None = None,
    timeout: float | None = None,
    coroutine: Literal[False] = False,
) -> Callable[P, Future[R]]: ...
@overload
def offload(
    executor: ExecutorSpec | None = None,
    /,
    *,
    timeout: float | None = None,
    coroutine: Literal[False] = False,
) -> Offloader: ...
@overload
def offload(
    *,
    executor: ExecutorSpec | None = None,
    timeout: float | None = None,
    coroutine: Literal[False] = False,
) -> Offloader: ...
@overload
def offload(
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
    executor: ExecutorSpec | None = None,
    /,
    *,
    timeout: float | None = None,
    coroutine: Literal[True],
    cancel: Cancel = "abandon",
) -> CoroutineOffloader: ...
@overload
def offload(
    *,
    executor: ExecutorSpec | None = None,
    timeout: float | None = None,
    coroutine: Literal[True],
    cancel: Cancel = "abandon",
) -> CoroutineOffloader: ...
def offload(
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
    """Make a blocking callable return a Future that runs it on an executor.

    Forms: ``@offload``, ``@offload()``, ``@offload("io")``,
    ``@offload(executor="io")``, and the plain call ``offload(fn)`` or
    ``offload(fn, executor="io")`` to wrap a callable you do not own. It wraps
    functions, methods, classmethods and staticmethods (put ``@offload`` above
    ``@classmethod``), callable objects and bound methods.

    Calling the result returns an ``asyncio.Future`` (Tornado's Future) on the
    running loop: ``await`` it, ``yield`` it from ``@gen.coroutine``, or pass it
    to ``gen.multi`` or ``asyncio.gather``. The original stays reachable as
    ``__wrapped__`` for the plain synchronous call.

    Args:
        fn: The callable to wrap; omit it to get a decorator.
        executor: A name looked up in the registry on every call (so it may be
            registered or re-pointed later), or an ``Executor`` used as is.
            Defaults to ``"default"``. ``"cpu"`` runs calls in worker
            processes (see [`ProcessPool`][offload.ProcessPool]).
        timeout: Seconds after which the Future fails with ``TimeoutError``.
            On a [`ProcessPool`][offload.ProcessPool] the worker running the call is
            terminated; a thread runs on (it may ask [`cancelled`][offload.cancelled]).
        coroutine: Make an ``async def`` function instead, whose calls are
            coroutines: for ``TaskGroup.create_task``, ``asyncio.create_task``,
            and frameworks that check ``inspect.iscoroutinefunction``. It
            binds as a method, and stays a classmethod or staticmethod.
        cancel: With ``coroutine=True``, what a cancelled call does.
            ``"abandon"`` (the default, as a Future does) raises
            ``CancelledError`` at once and lets the work run on, its outcome
            dropped. ``"wait"`` raises it only once the work is over: the
            thread has returned, or the worker process was stopped. A timeout
            then raises ``TimeoutError`` once the work is over, too.

    Raises:
        TypeError: ``fn`` is not callable, is async (await it directly
            instead), or ``executor`` is neither a name nor an Executor; or
            ``fn`` is a lambda or nested function bound for a process pool.
        ValueError: ``cancel`` is not ``"abandon"`` or ``"wait"``, or is
            ``"wait"`` without ``coroutine=True``.

    Examples:
        >>> import asyncio, time
        >>> from offload import offload
        >>> @offload("io")
        ... def slow_square(x):
        ...     time.sleep(0.01)
        ...     return x * x
        >>> async def main():
        ...     return await asyncio.gather(slow_square(2), slow_square(3))
        >>> asyncio.run(main())
        [4, 9]
        >>> nap = offload(time.sleep)  # a function you do not own
        >>> async def rest():
        ...     await nap(0.01)
        >>> asyncio.run(rest())
        >>> @offload("io", coroutine=True, cancel="wait")
        ... def backup(path):
        ...     time.sleep(0.01)
        ...     return f"saved {path}"
        >>> async def nightly():
        ...     async with asyncio.TaskGroup() as group:
        ...         task = group.create_task(backup("/srv"))
        ...     return task.result()
        >>> asyncio.run(nightly())
        'saved /srv'
    """
    return decorate(default_registry, fn, executor, timeout, coroutine, cancel)


def register(
    name: str,
    executor_or_factory: ExecutorOrFactory,
    *,
    replace: bool = False,
    default: bool = False,
    max_pending: int | None = None,
    when_full: WhenFull = "wait",
    warn_after: float | None = 1.0,
) -> None:
    """Register an executor, or a factory for one, under ``name``.

    See [`Registry.register`][offload.Registry.register] for the arguments, the
    lookup order and the bound on pending calls.

    Examples:
        >>> import offload
        >>> offload.register("db", lambda: offload.ThreadPool(4, name="offload-db"))
        >>> offload.get_executor("db").max_workers
        4
        >>> offload.register("db", offload.ThreadPool(4), replace=True, max_pending=100)
    """
    default_registry.register(
        name,
        executor_or_factory,
        replace=replace,
        default=default,
        max_pending=max_pending,
        when_full=when_full,
        warn_after=warn_after,
    )


def lane(name: str) -> Lane:
    """A handle on one lane of ``name`` in the shared registry, for one connection's calls.

    Register a [`Lanes`][offload.Lanes] under the name, and give each
    connection a handle: pass it as the ``executor`` of the connection's
    calls (``offload``, ``aiterate``, ``acontext``, a facade's ``executor=``).
    They run on one thread, the handle's lane, and count and are bounded as
    the name's calls. See [`Registry.lane`][offload.Registry.lane] and
    [`Lane`][offload.Lane].

    Examples:
        >>> import asyncio, threading, offload
        >>> offload.register(
        ...     "mydriver.lanes", lambda: offload.Lanes(4, name="mydriver"), default=True
        ... )
        >>> conn_lane = offload.lane("mydriver.lanes")
        >>> where = offload.offload(lambda: threading.current_thread().name, executor=conn_lane)
        >>> async def main():
        ...     return {await where() for _ in range(3)}
        >>> asyncio.run(main()) == {conn_lane.get_executor().name}
        True
        >>> offload.stats()["mydriver.lanes"]["completed"]
        3
    """
    return default_registry.lane(name)


def stats() -> dict[str, ExecutorStats]:
    """Each name's counters and timings in the shared registry, as plain data.

    See [`Registry.stats`][offload.Registry.stats] and
    [`ExecutorStats`][offload.ExecutorStats]; serve them over HTTP with
    [`StatsHandler`][offload.StatsHandler].

    Examples:
        >>> import offload
        >>> io = offload.stats()["io"]
        >>> io["name"], io["max_pending"]
        ('io', None)
    """
    return default_registry.stats()


def get_executor(name: str = "default") -> Executor:
    """The executor registered as ``name``, created on first use.

    Examples:
        >>> import offload
        >>> offload.get_executor("io")
        <offload.ThreadPool 'offload-io' max_workers=64 ...>
    """
    return default_registry.get_executor(name)


def shutdown(wait: bool = True, cancel_futures: bool = False, timeout: float | None = None) -> None:
    """Shut down every executor in the shared registry.

    See [`Registry.shutdown`][offload.Registry.shutdown]. Call it once as your
    application exits.

    Examples:
        >>> import offload
        >>> offload.shutdown(timeout=10.0)  # doctest: +SKIP
    """
    default_registry.shutdown(wait=wait, cancel_futures=cancel_futures, timeout=timeout)
