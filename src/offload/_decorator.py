"""The ``offload`` decorator: calling the wrapped callable returns a Future."""

from __future__ import annotations

import asyncio
import functools
import inspect
from asyncio import Future
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from types import MethodType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, Union, overload

import wrapt

from ._errors import no_running_loop
from ._kinds import kind_of
from ._lanes import Lane
from ._pickling import local_function_error
from ._route import Route
from ._timeouts import check_timeout
from ._watch import Watch, to_the_end

if TYPE_CHECKING:
    from ._registry import Registry

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: Where an offloaded call runs: a registered name, or an Executor used as is (a lane
#: handle, ``offload.lane(name)``, is an Executor whose calls go through its name).
ExecutorSpec = Union[str, Executor]

_get_running_loop = asyncio._get_running_loop


class Offloader(Protocol):
    """What ``offload(...)`` returns when given options: the decorator itself.

    Examples:
        >>> import asyncio, offload
        >>> on_io = offload.offload("io", timeout=5.0)  # an Offloader
        >>> shout = on_io(str.upper)
        >>> async def main():
        ...     return await shout("hi")
        >>> asyncio.run(main())
        'HI'
    """

    @overload
    def __call__(self, fn: classmethod[T, P, R], /) -> classmethod[T, P, Future[R]]: ...
    @overload
    def __call__(self, fn: staticmethod[P, R], /) -> staticmethod[P, Future[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, Future[R]]: ...


class CoroutineOffloader(Protocol):
    """What ``offload(..., coroutine=True)`` returns: a decorator making ``async def`` functions.

    Examples:
        >>> import asyncio, inspect, offload
        >>> as_coroutine = offload.offload("io", coroutine=True)  # a CoroutineOffloader
        >>> shout = as_coroutine(str.upper)
        >>> inspect.iscoroutinefunction(shout)
        True
        >>> async def main():
        ...     async with asyncio.TaskGroup() as group:
        ...         task = group.create_task(shout("hi"))
        ...     return task.result()
        >>> asyncio.run(main())
        'HI'
    """

    @overload
    def __call__(
        self, fn: classmethod[T, P, R], /
    ) -> classmethod[T, P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: staticmethod[P, R], /) -> staticmethod[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


#: What a cancelled coroutine form does: return at once ("abandon") or once the work is over.
Cancel = Literal["abandon", "wait"]


if TYPE_CHECKING:
    _Wrapper = wrapt.FunctionWrapper[..., Any]
else:
    # wrapt's classes take type arguments only from 2.1.2; at run time the plain
    # class serves every wrapt the project supports.
    _Wrapper = wrapt.FunctionWrapper

#: What wrapt passes as ``wrapped`` for ``Class.method(instance, ...)``.
_ClassCall = type(wrapt.PartialCallableObjectProxy(print))


class OffloadedFunction(_Wrapper):
    """A callable wrapped by ``offload``; ``__wrapped__`` is the sync original."""

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        # wrapt's generic call works out the bound instance, which offload's
        # wrapper never reads; calling the wrapper directly costs 40% less.
        # Methods still bind through wrapt's bound wrapper, in C.
        # (wrapt's stubs type _self_wrapper for its class-decorator forms too.)
        return self._self_wrapper(self.__wrapped__, None, args, kwargs)  # type: ignore[call-arg,arg-type]

    def __repr__(self) -> str:
        return f"<offloaded {self.__wrapped__!r}>"


def check_spec(spec: object) -> ExecutorSpec:
    """``spec`` if it names an executor or is one; else a TypeError."""
    if isinstance(spec, Executor) or (isinstance(spec, str) and spec):
        return spec
    if isinstance(spec, type) and issubclass(spec, Executor):
        raise _executor_class(spec)
    raise TypeError(
        "the executor must be a registered name (str) or a concurrent.futures.Executor, "
        f"got {spec!r}"
    )


def _executor_class(cls: type) -> TypeError:
    return TypeError(
        f"{cls.__name__} is an Executor class, not an executor: pass an instance, "
        f"offload(executor={cls.__name__}(...)), or register a factory under a name, "
        f"offload.register('name', lambda: {cls.__name__}(...)), and offload('name')"
    )


def _is_async(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, functools.partial):
        return False
    call = type(fn).__call__  # an object with an async __call__
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def _check_target(fn: object) -> None:
    func = fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn
    if isinstance(func, OffloadedFunction):
        raise TypeError(f"{func!r} is already offloaded; decorate the original function once")
    if isinstance(func, type) and issubclass(func, Executor):
        raise _executor_class(func)
    if inspect.isgeneratorfunction(func):
        raise TypeError(
            f"{func!r} is a generator function: offloading it would only make the "
            "generator on a thread, and every step of it would then run on the loop. "
            "Use offload.agenerator instead, which runs each step on the executor "
            "and gives an async iterator"
        )
    if not callable(func):
        raise TypeError(
            f"offload() needs a callable to wrap, or an executor name or Executor; got {fn!r}"
        )
    if _is_async(func):
        raise TypeError(
            f"{func!r} is async: it does not block the loop, so await it directly "
            "instead of offloading it"
        )


def wrap(registry: Registry, fn: Any, spec: ExecutorSpec, timeout: float | None = None) -> Any:
    """Wrap ``fn`` so each call runs on the executor ``spec`` names."""
    _check_target(fn)
    _check_travels(registry, fn, spec)
    if isinstance(spec, str):
        run_offloaded = _through_name(registry, spec, timeout)
    elif isinstance(spec, Lane):
        run_offloaded = _through_lane(spec, timeout)
    else:
        run_offloaded = _to_executor(spec, timeout)
    return OffloadedFunction(fn, run_offloaded)


_Runner = Callable[[Any, Any, Any, Any], "Future[Any]"]

# Each runner below repeats the same few lines (the running loop, a class-call's bound
# method) on purpose: this is every call's path, and a shared helper would add a Python
# call to each.


def _through_name(registry: Registry, name: str, timeout: float | None) -> _Runner:
    # Looked up at every call, so an application can re-point the name.
    entries = registry._entries

    def run_offloaded(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Future[Any]:
        loop = _get_running_loop()
        if loop is None:
            raise no_running_loop(wrapped)
        if instance is not None and type(wrapped) is _ClassCall:
            # Class.method(instance, ...): a bound method, as instance.method(...)
            # gives, so a process pool can send the instance with the call.
            wrapped = MethodType(wrapped.__wrapped__, instance)
        entry = entries.get(name)
        route = None if entry is None else entry.route
        if route is None:
            route = registry._route(name)  # first use, or an unknown name
        return route.call(loop, wrapped, args, kwargs, timeout)

    return run_offloaded


def _through_lane(lane: Lane, timeout: float | None) -> _Runner:
    # The name's route, pinned to the handle's lane: looked up at every call too.
    route_now = lane._route_now

    def run_offloaded(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Future[Any]:
        loop = _get_running_loop()
        if loop is None:
            raise no_running_loop(wrapped)
        if instance is not None and type(wrapped) is _ClassCall:
            wrapped = MethodType(wrapped.__wrapped__, instance)
        return route_now().call(loop, wrapped, args, kwargs, timeout)

    return run_offloaded


def _to_executor(executor: Executor, timeout: float | None) -> _Runner:
    route = Route(executor)  # no name, so no statistics or bound

    def run_offloaded(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Future[Any]:
        loop = _get_running_loop()
        if loop is None:
            raise no_running_loop(wrapped)
        if instance is not None and type(wrapped) is _ClassCall:
            wrapped = MethodType(wrapped.__wrapped__, instance)
        return route.call(loop, wrapped, args, kwargs, timeout)

    return run_offloaded


def _route_now(registry: Registry, spec: ExecutorSpec) -> Callable[[], Route]:
    """The route a call made now takes: a name's current one, or the executor's own."""
    if isinstance(spec, str):
        return functools.partial(registry._route, spec)
    if isinstance(spec, Lane):
        return spec._route_now
    route = Route(spec)
    return lambda: route


def _check_travels(registry: Registry, fn: Any, spec: ExecutorSpec) -> None:
    """A lambda or nested function bound for a process pool fails at decoration time."""
    if isinstance(spec, str):
        if not registry._sends_by_pickle(spec):
            return
        where = f"the process pool named {spec!r}"
    elif isinstance(spec, Lane):
        if not spec._registry._sends_by_pickle(spec.name):
            return
        where = f"the process pool named {spec.name!r}"
    elif kind_of(spec).pickles:
        where = repr(spec)
    else:
        return
    func = fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn
    error = local_function_error(func, where)
    if error is not None:
        raise error


def decorate(  # noqa: PLR0917 - the decorator's options, passed on
    registry: Registry,
    target: Any,
    executor: Any,
    timeout: Any = None,
    coroutine: Any = False,
    cancel: Any = "abandon",
) -> Any:
    """Sort out the decorator's forms: bare, with options, or a plain call."""
    seconds = check_timeout(timeout)
    as_coroutine = _check_form(coroutine, cancel)
    if target is None or isinstance(target, (str, Executor)):
        if target is not None and executor is not None:
            raise TypeError("give the executor once: offload('io') or offload(executor='io')")
        chosen = target if target is not None else executor
        spec = "default" if chosen is None else check_spec(chosen)
        if as_coroutine:
            return lambda fn: coroutine_form(registry, fn, spec, seconds, cancel)
        return lambda fn: wrap(registry, fn, spec, seconds)
    spec = "default" if executor is None else check_spec(executor)
    if as_coroutine:
        return coroutine_form(registry, target, spec, seconds, cancel)
    return wrap(registry, target, spec, seconds)


def _check_form(coroutine: object, cancel: object) -> bool:
    """Whether the coroutine form was asked for; a clear error for options that do not fit."""
    if not isinstance(coroutine, bool):
        raise TypeError(f"coroutine must be True or False, got {coroutine!r}")
    if cancel not in ("abandon", "wait"):
        raise ValueError(f"cancel must be 'abandon' or 'wait', got {cancel!r}")
    if cancel == "wait" and not coroutine:
        raise ValueError(
            "cancel='wait' needs coroutine=True: a Future is done the moment it is "
            "cancelled, so only a coroutine can wait for the work to be over; use "
            "offload(..., coroutine=True, cancel='wait')"
        )
    return coroutine


def coroutine_form(
    registry: Registry, fn: Any, spec: ExecutorSpec, timeout: float | None, cancel: str
) -> Any:
    """``fn`` as an ``async def`` function whose calls await the offloaded call.

    It is a real coroutine function, so ``inspect.iscoroutinefunction`` is
    true and frameworks that look for one find it; it binds as a method as any
    function does, and a classmethod or staticmethod stays one. Its
    ``__offloaded__`` is the Future form it awaits, which is how a worker
    process finds the original by name.
    """
    descriptor = type(fn) if isinstance(fn, (classmethod, staticmethod)) else None
    func = fn.__func__ if descriptor is not None else fn
    offloaded = wrap(registry, func, spec, timeout)
    if cancel == "wait":
        # The route is looked up here, as the wrapper would, because how a
        # given-up call ends depends on the kind of executor it was sent to.
        route_now = _route_now(registry, spec)

        async def call(*args: Any, **kwargs: Any) -> Any:
            """Run the call on the executor; if given up, return once its work is over."""
            route, loop = route_now(), asyncio.get_running_loop()
            watch = Watch(loop, gated=route.kind.ends_unstarted_in_run)
            try:
                route.call(loop, func, args, kwargs, timeout, watch=watch)
            except BaseException:
                watch.forget()  # refused: it was never sent
                raise
            return await to_the_end(watch)

    else:

        async def call(*args: Any, **kwargs: Any) -> Any:
            """Run the call on the executor and return its result."""
            return await offloaded(*args, **kwargs)

    functools.update_wrapper(call, func)  # __wrapped__ is the sync original, as on the Future form
    call.__offloaded__ = offloaded  # type: ignore[attr-defined]
    return call if descriptor is None else descriptor(call)
