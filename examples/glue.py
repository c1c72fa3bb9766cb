"""Glue the redis-py and psycopg drivers need beyond what a facade declaration can say.

offload's ``Facade`` declares methods that run on the executor (``run=``), methods called
as they are (``sync=``) and the facade a method's result goes into (``wrap=``). Real client
libraries have a few more shapes; each function here makes a facade method for one of them,
through the public API only (``offload.agenerator``, ``offload.acontext``,
``offload.offload`` and a facade's ``_executor``):

- ``iterating``: a method that returns a generator (redis-py's ``scan_iter``, psycopg's
  ``Cursor.stream``). Declared in ``run=``, the generator would be made on a worker and then
  stepped on the event loop's thread, blocking it; here it is stepped on the executor.
- ``entering``: a method that returns a context manager of a class that has no facade
  (psycopg's ``transaction()``, made by ``contextlib.contextmanager``).
- ``elsewhere``: a method that must not queue behind the instance's other calls (psycopg's
  ``cancel()``, which interrupts the query its connection's thread is running).
- ``by_result_type``: a method whose result goes into one facade or another by its type
  (psycopg's ``cursor()`` gives a client-side or a server-side cursor).
- ``copy_classes``: classes hung on the sync class as attributes (the DB-API exceptions on
  psycopg's connection, ``conn.Error``); a facade neither passes them through nor lets them
  be declared.

Use them in a facade's class body: ``scan_iter = iterating(redis.Redis, "scan_iter")``. The
body's names win over the declaration, and each method keeps the sync one's name, docstring
and ``__wrapped__``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import offload


def _like(method: Callable[..., Any], wraps: type, name: str) -> Callable[..., Any]:
    original = getattr(wraps, name)
    method.__name__ = name
    method.__qualname__ = f"{wraps.__name__}.{name}"
    method.__doc__ = original.__doc__
    method.__wrapped__ = original  # type: ignore[attr-defined]
    return method


def iterating(wraps: type, name: str) -> Callable[..., AsyncIterator[Any]]:
    """A facade method for a generator-returning method: an ``async for`` iterator.

    The call and every step of the generator run on the facade's executor (one thread for
    the generator's whole life); see ``offload.agenerator``.
    """

    def method(self: offload.Facade[Any], /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        steps = offload.agenerator(self._executor)(getattr(self.__wrapped__, name))
        return steps(*args, **kwargs)

    return _like(method, wraps, name)


def entering(wraps: type, name: str) -> Callable[..., AbstractAsyncContextManager[Any]]:
    """A facade method for a context-manager-returning method: an ``async with`` manager.

    The sync method is called on the caller's thread (it must only build the manager), its
    ``__enter__`` and ``__exit__`` on the facade's executor; see ``offload.acontext``.
    """

    def method(
        self: offload.Facade[Any], /, *args: Any, **kwargs: Any
    ) -> AbstractAsyncContextManager[Any]:
        manager = getattr(self.__wrapped__, name)(*args, **kwargs)
        return offload.acontext(manager, executor=self._executor)

    return _like(method, wraps, name)


def elsewhere(wraps: type, name: str, executor: str) -> Callable[..., Any]:
    """A facade method that runs on ``executor`` instead of the facade's own executor."""

    def method(self: offload.Facade[Any], /, *args: Any, **kwargs: Any) -> Any:
        call = offload.offload(getattr(self.__wrapped__, name), executor=executor)
        return call(*args, **kwargs)

    return _like(method, wraps, name)


def by_result_type(
    wraps: type, name: str, facades: dict[type, type[offload.Facade[Any]]]
) -> Callable[..., Any]:
    """A facade method called on the caller's thread whose result goes into a facade by type.

    ``facades`` maps sync classes to facade classes, most specific first; the first class the
    result is an instance of wins, and the new facade shares the parent's executor. A result
    of no listed class is returned as it is.
    """

    def method(self: offload.Facade[Any], /, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.__wrapped__, name)(*args, **kwargs)
        for sync_class, facade_class in facades.items():
            if isinstance(result, sync_class):
                return facade_class(result, executor=self._executor)
        return result

    return _like(method, wraps, name)


def plain_methods(wraps: type, *, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The public plain methods of ``wraps``: no generators, class methods or constants."""
    names = []
    for name in dir(wraps):
        if name.startswith("_") or name in exclude:
            continue
        attribute = inspect.getattr_static(wraps, name)
        if inspect.isfunction(attribute) and not inspect.isgeneratorfunction(attribute):
            names.append(name)
    return names


def copy_classes(facade_class: type[offload.Facade[Any]], wraps: type) -> list[str]:
    """Copy the public class-valued attributes of ``wraps`` onto ``facade_class``; their names."""
    names = [
        name
        for name in dir(wraps)
        if not name.startswith("_")
        and isinstance(getattr(wraps, name), type)
        and name not in vars(facade_class)
    ]
    for name in names:
        setattr(facade_class, name, getattr(wraps, name))
    return names
