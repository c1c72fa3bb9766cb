"""A drop-in for ``tornado.concurrent.run_on_executor``."""

from __future__ import annotations

from asyncio import Future
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, ParamSpec, TypeVar, overload

import wrapt

from ._api import default_registry
from ._decorator import OffloadedFunction, _check_target, _get_running_loop
from ._errors import no_running_loop
from ._route import route_to

P = ParamSpec("P")
R = TypeVar("R")


class _TornadoOffloaded(OffloadedFunction):
    # The drop-in reads the bound instance (for its executor attribute), so it
    # keeps wrapt's call, which finds it even on an already bound method.
    __call__ = wrapt.FunctionWrapper.__call__


@overload
def run_on_executor(fn: Callable[P, R], /) -> Callable[P, Future[R]]: ...
@overload
def run_on_executor(
    *, executor: str = "executor"
) -> Callable[[Callable[P, R]], Callable[P, Future[R]]]: ...
def run_on_executor(*args: Any, **kwargs: Any) -> Any:
    """Tornado's ``run_on_executor``, with contextvars and cancel-before-start.

    It takes exactly Tornado's forms: ``@run_on_executor``,
    ``@run_on_executor()`` and ``@run_on_executor(executor="attr")``. The
    executor is read from that attribute of ``self`` (or of the class, for a
    classmethod) on every call. Beyond Tornado:

    - the attribute may hold a registered name instead of an Executor;
    - on a plain function or staticmethod, where there is no ``self``, the call
      runs on the registry's ``"default"`` executor instead of failing;
    - the caller's contextvars are copied into the worker, and a call cancelled
      before it starts never runs.

    Examples:
        >>> import asyncio
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> from offload import run_on_executor
        >>> class Client:
        ...     executor = ThreadPoolExecutor(2)
        ...     @run_on_executor
        ...     def fetch(self, key):
        ...         return key.upper()
        >>> async def main():
        ...     return await Client().fetch("k")
        >>> asyncio.run(main())
        'K'
        >>> Client.executor.shutdown()
    """
    unknown = set(kwargs) - {"executor"}
    if unknown:
        raise TypeError(f"run_on_executor() got unexpected keyword arguments: {sorted(unknown)}")
    attribute = kwargs.get("executor", "executor")
    if not isinstance(attribute, str):
        raise TypeError(
            "run_on_executor(executor=...) names the attribute holding the executor, "
            f"as a str; got {attribute!r}. To pass an Executor itself, use offload(executor=...)"
        )
    if len(args) > 1:
        raise ValueError(f"run_on_executor() expected 1 argument, got {len(args)}")
    if args and kwargs:
        raise ValueError("run_on_executor() takes a function or keyword options, not both")

    def decorator(fn: Any) -> Any:
        _check_target(fn)

        def run_offloaded(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Future[Any]:
            loop = _get_running_loop()
            if loop is None:
                raise no_running_loop(wrapped)
            if instance is None:
                executor: Executor | str = "default"
            else:
                executor = getattr(instance, attribute)
            route = (
                default_registry._route(executor)
                if isinstance(executor, str)
                else route_to(executor)
            )
            return route.call(loop, wrapped, args, kwargs)

        return _TornadoOffloaded(fn, run_offloaded)

    return decorator(args[0]) if args else decorator
