"""What the names a facade declares become: methods, passthroughs, and async for and with.

``_facade._declare`` decides, from a resolved declaration, which name gets which
member; this module builds them and holds what they run:

- **Results** (``_rewrap``): the facade a sync result goes into, by method or by
  type (the nearest class in its MRO, remembered per facade class).
- **Generated methods and attributes**: a ``run`` method sends ``_call_wrapped``
  where the facade's calls go; ``sync`` calls it in place; ``iterate`` returns an
  ``OffloadedIterator`` over ``_items``; ``contexts`` returns a ``_Block``. Each
  takes the sync method's name, docstring and signature (``_describe``).
  ``attrs`` and public data descriptors become passthroughs.
- **The protocols**: ``__aiter__`` (a DB-API cursor is read a chunk per
  ``fetchmany``) and ``__aenter__``/``__aexit__``, and the blocks of
  ``contexts`` methods, which record in the facade's ``_entered`` the thread a
  task's calls go to inside the block (``_Inside``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import _AsyncContext
from ._iterate import OffloadedIterator, route, running_loop

if TYPE_CHECKING:
    from ._affinity import HeldThread
    from ._facade import Facade

T = TypeVar("T")

#: Result types whose facade class a facade class remembers (past it, each is looked up).
_SEEN_LIMIT = 256
_UNSEEN: Any = object()


class _Inside:
    """One ``async with`` a task is inside: its context, and where its calls go."""

    __slots__ = ("context", "own", "task", "thread")

    def __init__(
        self,
        context: _AsyncContext[Any],
        thread: HeldThread | None,
        task: asyncio.Task[Any] | None,
        *,
        own: bool,
    ) -> None:
        self.context = context
        self.thread = thread
        self.task = task
        self.own = own  # the facade itself entered, not a contexts= method's manager


# -- Results -----------------------------------------------------------------------


def _results_go_to(cls: type[Facade[Any]], by_type: Mapping[type, type[Facade[Any]]]) -> None:
    """Add to the facade classes results of ``cls``'s methods go into, by their type."""
    cls._offload_results = types.MappingProxyType({**cls._offload_results, **by_type})
    cls._offload_seen = {}


def _rewrap(parent: Facade[Any], result: Any, target: type[Facade[Any]] | None) -> Any:
    """The facade a sync result is returned as: the parent itself, a new facade, or as is."""
    if result is parent.__wrapped__:
        return parent
    if target is None or not isinstance(result, target._offload_wraps):
        target = _facade_for(type(parent), type(result))
        if target is None:
            return result
    child = target(result, executor=parent._executor)
    if child._interrupt is None:  # interrupting the parent ends the child's calls too
        object.__setattr__(child, "_interrupt", parent._interrupt)
    return child


def _facade_for(cls: type[Facade[Any]], kind: type) -> type[Facade[Any]] | None:
    """The facade class a result of type ``kind`` goes into: the nearest in its MRO."""
    seen = cls._offload_seen
    found = seen.get(kind, _UNSEEN)
    if found is _UNSEEN:
        results = cls._offload_results
        found = next((results[klass] for klass in kind.__mro__ if klass in results), None)
        if len(seen) < _SEEN_LIMIT:  # a dict write: safe from any thread
            seen[kind] = found
    return found  # type: ignore[no-any-return]


def _call_wrapped(parent: Facade[Any], name: str, args: Any, kwargs: Any, target: Any) -> Any:
    result = getattr(parent.__wrapped__, name)(*args, **kwargs)
    if type(result) is types.GeneratorType:
        result.close()
        raise TypeError(
            f"{type(parent).__qualname__}.{name}() returned a generator, whose steps would "
            f"block the event loop's thread: declare {name!r} in iterate="
        )
    return _rewrap(parent, result, target)


def _items(parent: Facade[Any], name: str, args: Any, kwargs: Any, target: Any) -> Iterator[Any]:
    """An iterate= method's iterator: called, stepped and closed on the producer's thread."""
    source = iter(getattr(parent.__wrapped__, name)(*args, **kwargs))
    try:
        for item in source:
            yield _rewrap(parent, item, target)
    except GeneratorExit:  # left early: close the method's iterator (a generator's finally)
        close = getattr(source, "close", None)
        if close is not None:
            close()
        raise


# -- Generated methods and attributes ---------------------------------------------


def _method(
    cls: type, wraps: type, name: str, keyword: str, target: type[Facade[Any]] | None
) -> Any:
    if keyword == "run":

        def method(self: Facade[Any], /, *args: Any, **kwargs: Any) -> Any:
            loop = running_loop(method)
            if self._entered or self._interrupt is not None:
                return self._send(loop, _call_wrapped, (self, name, args, kwargs, target), {})
            call_args = (self, name, args, kwargs, target)
            return route(self._executor).call(loop, _call_wrapped, call_args, {})

    elif keyword == "sync":

        def method(self: Facade[Any], /, *args: Any, **kwargs: Any) -> Any:
            return _call_wrapped(self, name, args, kwargs, target)

    elif keyword == "iterate":

        def method(self: Facade[Any], /, *args: Any, **kwargs: Any) -> Any:
            executor = (self._thread_now() if self._entered else None) or self._executor
            return OffloadedIterator(
                functools.partial(_items, self, name, args, kwargs, target),
                executor,
                self._offload_prefetch,
                interrupt=self._interrupt,
            )

    else:

        def method(self: Facade[Any], /, *args: Any, **kwargs: Any) -> Any:
            return _Block(self, name, args, kwargs, target)

    _describe(method, cls, wraps, name, keyword)
    return method


#: How each keyword's method presents the sync method's return annotation.
_RETURNS = {
    "run": "Future[{}]",
    "iterate": "AsyncIterator[{}]",
    "contexts": "AbstractAsyncContextManager[{}]",
}


def _describe(method: Any, cls: type, wraps: type, name: str, keyword: str) -> None:
    """Give a generated method the sync one's name, docstring and signature."""
    original = inspect.getattr_static(wraps, name)
    method.__name__ = name
    method.__qualname__ = f"{cls.__qualname__}.{name}"
    method.__module__ = cls.__module__
    method.__doc__ = getattr(original, "__doc__", None)
    method.__wrapped__ = original
    try:
        signature = inspect.signature(original)
    except (TypeError, ValueError):
        text = getattr(original, "__text_signature__", None)
        if text:
            method.__text_signature__ = text
        return
    returns = signature.return_annotation
    if keyword in _RETURNS and returns is not signature.empty:
        text = _annotation(returns)
        if keyword != "run":  # Iterator[X], Generator[X, ...]: the items' type
            text = _first_argument(text)
        signature = signature.replace(
            return_annotation=_RETURNS[keyword].format(text) if text else _RETURNS[keyword][:-4]
        )
    method.__signature__ = signature


def _annotation(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _first_argument(text: str) -> str:
    """``X`` of ``Iterator[X]`` or ``Generator[X, None, None]``; empty if there is none."""
    opening = text.find("[")
    if opening < 0 or not text.endswith("]"):
        return ""
    depth = 0
    for index in range(opening + 1, len(text) - 1):
        char = text[index]
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            return text[opening + 1 : index].strip()
    return text[opening + 1 : -1].strip()


def _passthrough(wraps: type, name: str) -> property:
    def get(self: Facade[Any]) -> Any:
        return getattr(self.__wrapped__, name)

    def assign(self: Facade[Any], value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    def delete(self: Facade[Any]) -> None:
        delattr(self.__wrapped__, name)

    return property(
        get, assign, delete, getattr(inspect.getattr_static(wraps, name), "__doc__", None)
    )


def _attribute(wraps: type, name: str) -> Any:
    """An ``attrs=`` name: a property, on the class the sync class's own value if it has one."""
    if inspect.isdatadescriptor(inspect.getattr_static(wraps, name, None)):
        return _passthrough(wraps, name)
    return _Attribute(wraps, name)


class _Attribute:
    """An instance attribute or class-level value of the sync class, reached through a facade."""

    def __init__(self, wraps: type, name: str) -> None:
        self.wraps = wraps
        self.name = name
        self.__doc__ = f"The sync object's {name!r}, read, set and deleted through the facade."

    def __repr__(self) -> str:
        return f"<passthrough of {self.wraps.__qualname__}.{self.name}>"

    def __get__(self, facade: Facade[Any] | None, owner: type | None = None) -> Any:
        if facade is None:  # on the class: the sync class's value, as on the sync class
            return getattr(self.wraps, self.name, self)
        return getattr(facade.__wrapped__, self.name)

    def __set__(self, facade: Facade[Any], value: Any) -> None:
        setattr(facade.__wrapped__, self.name, value)

    def __delete__(self, facade: Facade[Any]) -> None:
        delattr(facade.__wrapped__, self.name)


# -- The protocols: async for, async with ------------------------------------------


def _each(iterable: Iterable[T]) -> Iterator[T]:
    # A generator of our own: leaving the loop early closes it, not the sync object.
    yield from iterable


def _aiter(self: Facade[Any]) -> OffloadedIterator[Any]:
    wrapped = self.__wrapped__
    executor = (self._thread_now() if self._entered else None) or self._executor
    fetchmany = getattr(wrapped, "fetchmany", None)
    if callable(fetchmany):  # a DB-API cursor: a burst of rows per call
        return OffloadedIterator(
            lambda: fetchmany,
            executor,
            self._offload_prefetch,
            interrupt=self._interrupt,
            chunks=True,
        )
    return OffloadedIterator(
        lambda: _each(wrapped), executor, self._offload_prefetch, interrupt=self._interrupt
    )


async def _enter(
    facade: Facade[Any], manager: Any, convert: Callable[[Any], Any], *, own: bool
) -> tuple[Any, _Inside]:
    """Enter ``manager`` for ``facade``: on the thread the task holds already, if it holds one."""
    task = asyncio.current_task()
    inside = facade._entered.get(task)
    outer = inside[-1].thread if inside else None  # nested: on the thread already held
    context = _AsyncContext(manager, outer or facade._executor, convert)
    value = await context.__aenter__()
    entry = _Inside(context, outer or context.held, task, own=own)
    facade._entered.setdefault(task, []).append(entry)
    return value, entry


async def _leave(facade: Facade[Any], entry: _Inside, exc_info: Any) -> bool:
    inside = facade._entered.get(entry.task, [])
    if entry in inside:
        inside.remove(entry)
        if not inside:
            del facade._entered[entry.task]
    return await entry.context.__aexit__(*exc_info)


async def _aenter(self: Facade[Any]) -> Any:
    value, _ = await _enter(self, self.__wrapped__, lambda v: _rewrap(self, v, None), own=True)
    return value


async def _aexit(self: Facade[Any], *exc_info: Any) -> bool:
    inside = self._entered.get(asyncio.current_task(), [])
    entry = next((entry for entry in reversed(inside) if entry.own), None)
    if entry is None:
        raise RuntimeError(f"__aexit__ on {self!r} without __aenter__ in this task")
    return await _leave(self, entry, exc_info)


class _Made:
    """The context manager a contexts= method returns, made on the thread that enters it."""

    __slots__ = ("call", "manager", "what")

    def __init__(self, what: str, call: Callable[[], Any]) -> None:
        self.what = what
        self.call = call
        self.manager: Any = None

    def __repr__(self) -> str:
        return f"<the context manager of {self.what}>"

    def __enter__(self) -> Any:
        manager = self.call()
        kind = type(manager)
        if not (hasattr(kind, "__enter__") and hasattr(kind, "__exit__")):
            raise TypeError(
                f"{self.what} returned {manager!r}, which is not a context manager; "
                "declare the method in run= or sync="
            )
        self.manager = manager
        return manager.__enter__()

    def __exit__(self, *exc_info: object) -> Any:
        return self.manager.__exit__(*exc_info)


class _Block(AbstractAsyncContextManager[Any]):
    """What a contexts= method returns: one ``async with`` over the manager the method makes."""

    def __init__(self, parent: Facade[Any], name: str, args: Any, kwargs: Any, target: Any) -> None:
        what = f"{type(parent).__qualname__}.{name}()"
        self._parent = parent
        self._target = target
        call = functools.partial(_call_for_block, parent.__wrapped__, name, args, kwargs)
        self._manager = _Made(what, call)
        self._inside: _Inside | None = None
        self._used = False

    def __repr__(self) -> str:
        return f"<async context of {self._manager.what}>"

    async def __aenter__(self) -> Any:
        if self._used:
            raise RuntimeError(
                f"{self._manager.what} was entered already; call it again for each async with"
            )
        self._used = True
        parent, target = self._parent, self._target
        value, self._inside = await _enter(
            parent, self._manager, lambda v: _rewrap(parent, v, target), own=False
        )
        return value

    async def __aexit__(self, *exc_info: object) -> bool:
        inside, self._inside = self._inside, None
        if inside is None:
            raise RuntimeError(f"__aexit__ on {self!r} without __aenter__")
        return await _leave(self._parent, inside, exc_info)


def _call_for_block(wrapped: Any, name: str, args: Any, kwargs: Any) -> Any:
    return getattr(wrapped, name)(*args, **kwargs)
