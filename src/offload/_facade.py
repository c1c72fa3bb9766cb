"""Facades: an async class over a blocking one, made from a short declaration.

A facade instance holds a sync instance as ``__wrapped__`` and an executor.
What the declaration lists decides what each attribute becomes:

- ``run``: a method returning a Future; the sync method runs on the executor.
- ``sync``: a method called as is, on the caller's thread.
- ``wrap``: for methods in either list, the facade class their result goes into,
  sharing the parent's executor (connection -> cursor). A method returning the
  wrapped object itself returns the facade itself.

Public data descriptors of the sync class (properties, slots) pass through as
they are. ``__iter__`` becomes ``__aiter__`` (see ``aiterate``; a DB-API
cursor, one with ``fetchmany``, is read a burst of rows per call) and
``__enter__``/``__exit__`` become ``__aenter__``/``__aexit__`` (see
``acontext``). Anything the class body defines itself wins.

While a task is inside ``async with facade:`` on a pool, the context holds a
thread (see ``_context``), and that task's calls on the same facade run on that
thread: a redis-py ``Lock``'s ``extend`` needs the token its ``acquire`` left in
a ``threading.local``. Other tasks' calls, and facades made from it, go to the
executor as usual.

``on_cancel`` names what interrupts the wrapped object's blocked call (see
``_interrupt``): it is called when a call is given up while it runs, or an
iteration is closed early. Facades made from it (``wrap=``) share it unless
their class names their own.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ._affinity import HeldThread
from ._context import _AsyncContext
from ._decorator import ExecutorSpec, check_spec
from ._interrupt import Interrupt, guarded
from ._iterate import PREFETCH, OffloadedIterator, route, running_loop
from ._route import route_to

S = TypeVar("S")
T = TypeVar("T")

#: Sync protocol methods and the async ones a facade offers for them.
PROTOCOL = {"__iter__": "__aiter__", "__enter__": "__aenter__", "__exit__": "__aexit__"}


if TYPE_CHECKING:

    class _FacadeType(type):
        # The generated attributes are unknown to type checkers: allow any.
        def __getattr__(cls, name: str) -> Any: ...

else:
    _FacadeType = type


class Facade(Generic[S], metaclass=_FacadeType):
    """Base class of async facades over a blocking class.

    Declare a facade with class keywords: ``wraps`` (the sync class),
    ``executor`` (a registered name or an Executor; ``"default"`` if omitted),
    ``run`` and ``sync`` (method names), ``wrap`` (method name -> facade
    class for its result), ``prefetch`` (rows an iteration reads ahead) and
    ``on_cancel`` (what interrupts a blocked call: the name of a method of the
    sync object, or a callable taking it). Instances take the sync instance,
    and optionally an ``executor`` that overrides the class's for this
    instance and the facades made from it (one thread per connection, say).

    For a subclass's own methods, ``self._executor`` is the instance's executor
    and ``self._run(fn, *args, **kwargs)`` runs ``fn`` there, returning a Future.
    (The leading underscore keeps these names clear of the sync class's, as in
    ``namedtuple._replace``.)

    Examples:
        >>> import asyncio, offload
        >>> class Counter:
        ...     def __init__(self):
        ...         self.value = 0
        ...     def add(self, n):
        ...         "Add n (blocking)."
        ...         self.value += n
        ...         return self.value
        >>> class AsyncCounter(offload.Facade[Counter], wraps=Counter, executor="io", run=["add"]):
        ...     pass
        >>> async def main():
        ...     counter = AsyncCounter(Counter())
        ...     return await counter.add(2), await counter.add(3)
        >>> asyncio.run(main())
        (2, 5)
        >>> AsyncCounter.add.__doc__
        'Add n (blocking).'
    """

    __wrapped__: S
    _executor: ExecutorSpec
    _offload_wraps: ClassVar[type]
    _offload_executor: ClassVar[ExecutorSpec] = "default"
    _offload_prefetch: ClassVar[int] = PREFETCH
    _offload_on_cancel: ClassVar[str | Callable[[Any], object] | None] = None
    #: What interrupts this instance's blocked calls, bound to its sync object.
    _interrupt: Interrupt | None = None

    if TYPE_CHECKING:  # the generated attributes are unknown to type checkers

        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...
        def __aiter__(self) -> OffloadedIterator[Any]: ...
        async def __aenter__(self) -> Any: ...
        async def __aexit__(self, *exc_info: object) -> bool: ...

    def __init__(self, wrapped: S, *, executor: ExecutorSpec | None = None) -> None:
        wraps = getattr(type(self), "_offload_wraps", None)
        if wraps is None:
            raise TypeError(f"{type(self).__qualname__} declares no wraps=SyncClass")
        if not isinstance(wrapped, wraps):
            raise TypeError(
                f"{type(self).__qualname__} wraps {wraps.__qualname__} objects, got {wrapped!r}"
            )
        self.__wrapped__ = wrapped
        self._executor = (
            check_spec(executor) if executor is not None else type(self)._offload_executor
        )
        on_cancel = type(self)._offload_on_cancel
        if on_cancel is not None:
            self._interrupt = _bind(on_cancel, wrapped)
        # The contexts each task is inside, innermost last, with the thread their
        # calls go to (held by the outermost, on a pool).
        self._entered: dict[asyncio.Task[Any] | None, list[_Inside]] = {}

    def __init_subclass__(
        cls,
        *,
        wraps: type | None = None,
        executor: ExecutorSpec | None = None,
        run: Iterable[str] = (),
        sync: Iterable[str] = (),
        wrap: Mapping[str, type[Facade[Any]]] | None = None,
        prefetch: int | None = None,
        on_cancel: str | Callable[[Any], object] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if executor is not None:
            cls._offload_executor = check_spec(executor)
        if prefetch is not None:
            cls._offload_prefetch = prefetch
        if on_cancel is not None:
            _check_on_cancel(cls, wraps or getattr(cls, "_offload_wraps", None), on_cancel)
            cls._offload_on_cancel = on_cancel
        if wraps is not None:
            _declare(cls, wraps, list(run), list(sync), dict(wrap or {}))
        elif run or sync or wrap:
            raise TypeError(f"{cls.__qualname__} lists methods but no wraps=SyncClass")

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} wrapping {self.__wrapped__!r}>"

    def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run ``fn(*args, **kwargs)`` on this facade's executor."""
        return self._send(running_loop(fn), fn, args, kwargs)

    def _send(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> asyncio.Future[Any]:
        """Send a call where this facade's calls go now, interrupted if given up while it runs."""
        thread = self._thread_now() if self._entered else None
        chosen = route(self._executor) if thread is None else route_to(thread)
        interrupt = self._interrupt
        if interrupt is None:
            return chosen.call(loop, fn, args, kwargs)
        return guarded(chosen, loop, interrupt, fn, args, kwargs)

    def _thread_now(self) -> HeldThread | None:
        """The thread the current task's calls go to, inside ``async with self`` on a pool."""
        inside = self._entered.get(asyncio.current_task())
        return inside[-1].thread if inside else None


class _Inside:
    """One ``async with`` a task is inside: its context, and where its calls go."""

    __slots__ = ("context", "thread")

    def __init__(self, context: _AsyncContext[Any], thread: HeldThread | None) -> None:
        self.context = context
        self.thread = thread


def _check_on_cancel(cls: type, wraps: type | None, on_cancel: object) -> None:
    if isinstance(on_cancel, str):
        if wraps is not None and not callable(getattr(wraps, on_cancel, None)):
            raise TypeError(
                f"on_cancel={on_cancel!r} for {cls.__qualname__}: "
                f"{getattr(wraps, '__qualname__', wraps)} has no method of that name"
            )
    elif not callable(on_cancel):
        raise TypeError(
            f"on_cancel takes the name of a method of the sync object (such as 'interrupt') "
            f"or a callable taking the sync object, got {on_cancel!r}"
        )


def _bind(on_cancel: str | Callable[[Any], object], wrapped: Any) -> Interrupt:
    if isinstance(on_cancel, str):
        method: Interrupt = getattr(wrapped, on_cancel)
        return method
    return functools.partial(on_cancel, wrapped)


def _check_declaration(
    cls: type[Facade[Any]], wraps: type, run: list[str], sync: list[str], wrap: dict[str, Any]
) -> None:
    if not isinstance(wraps, type):
        raise TypeError(f"wraps= takes the sync class, got {wraps!r}")
    unknown = [name for name in [*run, *sync] if not hasattr(wraps, name)]
    if unknown:
        raise TypeError(
            f"{wraps.__qualname__} has no attributes {unknown}, listed for {cls.__qualname__}"
        )
    both = set(run) & set(sync)
    if both:
        raise TypeError(f"{sorted(both)} listed in both run= and sync= for {cls.__qualname__}")
    stray = set(wrap) - set(run) - set(sync)
    if stray:
        raise TypeError(f"wrap= names {sorted(stray)}, which are in neither run= nor sync=")
    bad = {name: target for name, target in wrap.items() if not _is_facade_class(target)}
    if bad:
        raise TypeError(f"wrap= needs Facade subclasses declared with wraps=, got {bad}")


def _declare(
    cls: type[Facade[Any]], wraps: type, run: list[str], sync: list[str], wrap: dict[str, Any]
) -> None:
    _check_declaration(cls, wraps, run, sync, wrap)
    cls._offload_wraps = wraps
    taken = set(vars(cls))  # what the class body defines wins
    for names, offloaded in ((run, True), (sync, False)):
        for name in names:
            if name not in taken:
                setattr(cls, name, _method(cls, wraps, name, wrap.get(name), offloaded=offloaded))
    taken.update(run, sync)
    for name in dir(wraps):
        public = not name.startswith("_") and name not in taken
        if public and inspect.isdatadescriptor(inspect.getattr_static(wraps, name)):
            setattr(cls, name, _passthrough(wraps, name))
    if _defines(wraps, "__iter__") and "__aiter__" not in taken:
        cls.__aiter__ = _aiter  # type: ignore[method-assign]
    if _defines(wraps, "__enter__") and "__aenter__" not in taken:
        cls.__aenter__ = _aenter  # type: ignore[method-assign]
        cls.__aexit__ = _aexit  # type: ignore[method-assign]


def _is_facade_class(target: object) -> bool:
    return (
        isinstance(target, type)
        and issubclass(target, Facade)
        and hasattr(target, "_offload_wraps")
    )


def _defines(wraps: type, name: str) -> bool:
    return any(name in vars(klass) for klass in wraps.__mro__ if klass is not object)


def _rewrap(parent: Facade[Any], result: Any, target: type[Facade[Any]] | None) -> Any:
    """The facade a sync result is returned as: the parent itself, a new facade, or as is."""
    if result is parent.__wrapped__:
        return parent
    if target is not None and isinstance(result, target._offload_wraps):
        child = target(result, executor=parent._executor)
        if child._interrupt is None:  # interrupting the parent ends the child's calls too
            child._interrupt = parent._interrupt
        return child
    return result


def _call_wrapped(parent: Facade[Any], name: str, args: Any, kwargs: Any, target: Any) -> Any:
    return _rewrap(parent, getattr(parent.__wrapped__, name)(*args, **kwargs), target)


def _method(
    cls: type, wraps: type, name: str, target: type[Facade[Any]] | None, *, offloaded: bool
) -> Any:
    if offloaded:

        def method(self: Facade[Any], /, *args: Any, **kwargs: Any) -> Any:
            loop = running_loop(method)
            if self._entered or self._interrupt is not None:
                return self._send(loop, _call_wrapped, (self, name, args, kwargs, target), {})
            call_args = (self, name, args, kwargs, target)
            return route(self._executor).call(loop, _call_wrapped, call_args, {})

    else:

        def method(self: Facade[Any], /, *args: Any, **kwargs: Any) -> Any:
            return _call_wrapped(self, name, args, kwargs, target)

    original = inspect.getattr_static(wraps, name)
    method.__name__ = name
    method.__qualname__ = f"{cls.__qualname__}.{name}"
    method.__module__ = cls.__module__
    method.__doc__ = getattr(original, "__doc__", None)
    method.__wrapped__ = original  # type: ignore[attr-defined]
    try:
        signature = inspect.signature(original)
    except (TypeError, ValueError):
        text = getattr(original, "__text_signature__", None)
        if text:
            method.__text_signature__ = text  # type: ignore[attr-defined]
    else:
        if offloaded and signature.return_annotation is not signature.empty:
            signature = signature.replace(
                return_annotation=f"Future[{_annotation(signature.return_annotation)}]"
            )
        method.__signature__ = signature  # type: ignore[attr-defined]
    return method


def _annotation(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


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


async def _aenter(self: Facade[Any]) -> Any:
    task = asyncio.current_task()
    inside = self._entered.get(task)
    outer = inside[-1].thread if inside else None  # nested: on the thread already held
    context = _AsyncContext(
        self.__wrapped__, outer or self._executor, lambda value: _rewrap(self, value, None)
    )
    result = await context.__aenter__()
    self._entered.setdefault(task, []).append(_Inside(context, outer or context.held))
    return result


async def _aexit(self: Facade[Any], *exc_info: Any) -> bool:
    task = asyncio.current_task()
    inside = self._entered.get(task)
    if not inside:
        raise RuntimeError(f"__aexit__ on {self!r} without __aenter__ in this task")
    context = inside.pop().context
    if not inside:
        del self._entered[task]
    return await context.__aexit__(*exc_info)


_cache: dict[tuple[Any, ...], type[Facade[Any]]] = {}
_cache_lock = threading.Lock()


def facade(
    wraps: type[S],
    *,
    executor: ExecutorSpec = "default",
    run: Iterable[str] = (),
    sync: Iterable[str] = (),
    wrap: Mapping[str, type[Facade[Any]]] | None = None,
    prefetch: int = PREFETCH,
    on_cancel: str | Callable[[S], object] | None = None,
    name: str | None = None,
) -> type[Facade[S]]:
    """Make (or fetch from the cache) a ``Facade`` class over ``wraps``.

    The arguments are the class keywords of ``Facade``. The same
    arguments give back the same class, so code in different places that asks
    for a facade of one class shares it (and ``isinstance`` works across them).
    The class is named ``name``, by default ``"Async"`` plus the sync name.

    Examples:
        >>> import asyncio, io, offload
        >>> AsyncBytes = offload.facade(io.BytesIO, executor="io", run=["read", "write", "seek"])
        >>> offload.facade(io.BytesIO, executor="io", run=["read", "write", "seek"]) is AsyncBytes
        True
        >>> async def main():
        ...     buffer = AsyncBytes(io.BytesIO())
        ...     await buffer.write(b"hello")
        ...     await buffer.seek(0)
        ...     return await buffer.read(), buffer.closed
        >>> asyncio.run(main())
        (b'hello', False)

        ``on_cancel`` makes a given-up call return: here a query past its
        deadline is interrupted, and the connection's thread is free at once.

        >>> import sqlite3
        >>> AsyncConnection = offload.facade(
        ...     sqlite3.Connection, run=["execute"], on_cancel="interrupt"
        ... )
        >>> endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        >>> async def main():
        ...     thread = offload.AffineThread()
        ...     conn = AsyncConnection(sqlite3.connect(":memory:", check_same_thread=False),
        ...                            executor=thread)
        ...     try:
        ...         await asyncio.wait_for(conn.execute(endless + "SELECT count(*) FROM c"), 0.1)
        ...     except TimeoutError:
        ...         pass
        ...     row = (await conn.execute("SELECT 6 * 7")).fetchone()
        ...     conn.__wrapped__.close()
        ...     thread.shutdown()
        ...     return row
        >>> asyncio.run(main())
        (42,)
    """
    run, sync, wrap = tuple(run), tuple(sync), dict(wrap or {})
    key = (
        wraps,
        executor,
        tuple(sorted(run)),
        tuple(sorted(sync)),
        tuple(sorted(wrap.items())),
        prefetch,
        on_cancel,
        name,
    )
    with _cache_lock:
        made = _cache.get(key)
        if made is None:
            module = sys._getframe(1).f_globals.get("__name__", __name__)
            keywords = {
                "wraps": wraps,
                "executor": executor,
                "run": run,
                "sync": sync,
                "wrap": wrap,
            }
            made = types.new_class(
                name or f"Async{wraps.__name__}",
                (Facade,),
                {**keywords, "prefetch": prefetch, "on_cancel": on_cancel},
                lambda namespace: namespace.update(__module__=module),
            )
            _cache[key] = made
    return made


def assert_parity(facade_class: type[Facade[Any]], *, ignore: Iterable[str] = ()) -> None:
    """Assert that a facade offers every public attribute of its sync class.

    For use in a driver's own tests, so that a method added to the sync class
    cannot be forgotten in the facade. ``__iter__`` and ``__enter__`` count as
    offered when the facade has ``__aiter__`` and ``__aenter__``. Names in
    ``ignore`` are left out on purpose; a name there that the sync class lacks
    fails too, so the list stays honest.

    Examples:
        >>> import offload
        >>> class Store:
        ...     def get(self, key): ...
        ...     def put(self, key, value): ...
        ...     def keys(self): ...
        >>> offload.assert_parity(offload.facade(Store, run=["get", "put"]))
        Traceback (most recent call last):
        AssertionError: AsyncStore lacks 1 attribute(s) of Store: 'keys'; list them in
        run= or sync=, or in ignore= if left out on purpose
        >>> offload.assert_parity(offload.facade(Store, run=["get", "put"], sync=["keys"]))
    """
    wraps = facade_class._offload_wraps
    ignored = set(ignore)
    stale = sorted(name for name in ignored if not hasattr(wraps, name))
    if stale:
        raise AssertionError(f"ignore= lists {stale}, which {wraps.__qualname__} does not have")
    wanted = [name for name in dir(wraps) if not name.startswith("_")]
    wanted += [name for name in PROTOCOL if _defines(wraps, name)]
    missing = [
        name
        for name in wanted
        if name not in ignored and not hasattr(facade_class, PROTOCOL.get(name, name))
    ]
    if missing:
        listing = ", ".join(repr(name) for name in missing)
        raise AssertionError(
            f"{facade_class.__qualname__} lacks {len(missing)} attribute(s) of "
            f"{wraps.__qualname__}: {listing}; list them in run= or sync=, or in ignore= "
            "if left out on purpose"
        )
