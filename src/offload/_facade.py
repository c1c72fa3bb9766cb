"""Facades: an async class over a blocking one, made from a short declaration.

A facade instance holds a sync instance as ``__wrapped__`` and an executor.
What the declaration lists (checked and resolved by ``_declare``) decides what
each attribute becomes (built by ``_members``):

- ``run``: a method returning a Future; the sync method runs on the executor.
- ``sync``: a method called as is, on the caller's thread.
- ``iterate``: a method returning an async iterator (``OffloadedIterator``);
  the call and every step of the iterator it returns run on the executor.
- ``contexts``: a method returning an async context manager; the call and the
  ``__enter__`` of the manager it returns run in one job, ``__exit__`` on the
  same thread (``_context``).
- ``attrs``: a passthrough of an instance attribute or a class-level value.
- ``wrap``: the facade class a result goes into, by method or by the result's
  type (the nearest class in its MRO), sharing the parent's executor
  (connection -> cursor). It applies to the results of declared methods, the
  items of ``iterate`` methods and the values ``__enter__`` gives. A result of
  the facade's own sync class becomes a facade of its class; the wrapped
  object itself comes back as the facade itself.

Public data descriptors of the sync class (properties, slots) pass through as
they are. ``__iter__`` becomes ``__aiter__`` (see ``aiterate``; a DB-API
cursor, one with ``fetchmany``, is read a burst of rows per call) and
``__enter__``/``__exit__`` become ``__aenter__``/``__aexit__`` (see
``acontext``). Anything the class body defines itself wins. Setting a public
attribute the facade does not define is an error: it would land on the facade,
not on the sync object; names starting with ``_`` are free for a subclass's
own state.

While a task is inside ``async with facade:``, or a block of one of its
``contexts`` methods, on a pool, the context holds a thread (see ``_context``),
and that task's calls on the same facade run on that thread: a redis-py
``Lock``'s ``extend`` needs the token its ``acquire`` left in a
``threading.local``. Other tasks' calls, and facades made from it, go to the
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
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ._affinity import HeldThread
from ._declare import Declaration, defines, resolve
from ._decorator import ExecutorSpec, check_spec
from ._interrupt import Interrupt, guarded
from ._iterate import PREFETCH, OffloadedIterator, route, running_loop
from ._members import (
    _aenter,
    _aexit,
    _aiter,
    _attribute,
    _Inside,
    _method,
    _passthrough,
    _results_go_to,
)
from ._route import route_to

S = TypeVar("S")
T = TypeVar("T")

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
    then the sync class's names by what they are:

    - ``run``: methods that block; each returns a Future, and runs on the executor;
    - ``sync``: methods that do no I/O, called on the caller's thread;
    - ``iterate``: methods returning an iterator (generators); each returns an
      ``async for`` iterator whose call and steps run on the executor;
    - ``contexts``: methods returning a context manager (``@contextmanager``
      ones); each returns an ``async with`` manager whose call, ``__enter__``
      and ``__exit__`` run on one thread of the executor;
    - ``attrs``: instance attributes and class-level values (constants,
      exception classes), passed through for reading, setting and deleting;
    - ``omit``: names left out on purpose (``assert_parity`` accepts them).

    A name with ``*``, ``?`` or ``[`` is a pattern over the sync class's public
    names that takes only names of its keyword's shape, so ``run=["*"]`` is
    every plain method not listed elsewhere or omitted. A name a keyword cannot
    serve (a generator in ``run=``, a constant in ``sync=``) is refused when
    the class is defined, with the keyword that fits.

    ``wrap`` gives the facade class results go into: a mapping of method names
    to facade classes, or a list of facade classes, each taking the results
    whose type is its ``wraps=`` (the nearest class in the result's MRO wins).
    A mapping's classes count by type too. ``prefetch`` is how many items an
    iteration reads ahead, and ``on_cancel`` what interrupts a blocked call
    (the name of a method of the sync object, or a callable taking it).

    Instances take the sync instance, and optionally an ``executor`` that
    overrides the class's for this instance and the facades made from it (one
    thread per connection, say). For a subclass's own methods,
    ``self._executor`` is the instance's executor and ``self._run(fn, *args,
    **kwargs)`` runs ``fn`` there, returning a Future. (The leading underscore
    keeps these names clear of the sync class's, as in
    ``namedtuple._replace``; attributes a subclass sets on its instances start
    with ``_`` too.)

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

        Generators, context managers and attributes:

        >>> import contextlib
        >>> class Store:
        ...     Error = LookupError  # a class hung on the class, as DB-API drivers do
        ...     def __init__(self):
        ...         self.data = {"a": 1, "b": 2}
        ...         self.name = "main"  # an instance attribute
        ...     def get(self, key):
        ...         return self.data[key]
        ...     def scan(self):
        ...         yield from sorted(self.data)  # each step would block
        ...     @contextlib.contextmanager
        ...     def batch(self):
        ...         saved = dict(self.data)
        ...         try:
        ...             yield self
        ...         except BaseException:
        ...             self.data = saved
        ...             raise
        >>> class AsyncStore(
        ...     offload.Facade[Store], wraps=Store, executor="io",
        ...     run=["get"], iterate=["scan"], contexts=["batch"], attrs=["Error", "name"],
        ... ):
        ...     pass
        >>> async def main():
        ...     store = AsyncStore(Store())
        ...     keys = [key async for key in store.scan()]
        ...     async with store.batch() as same:
        ...         value = await store.get("b")
        ...     return keys, same is store, value, store.name, store.Error
        >>> asyncio.run(main())
        (['a', 'b'], True, 2, 'main', <class 'LookupError'>)
        >>> AsyncStore(Store()).colour = "red"
        Traceback (most recent call last):
        AttributeError: AsyncStore has no attribute 'colour' to set: ...
    """

    __wrapped__: S
    _executor: ExecutorSpec
    _offload_wraps: ClassVar[type]
    _offload_executor: ClassVar[ExecutorSpec] = "default"
    _offload_prefetch: ClassVar[int] = PREFETCH
    _offload_on_cancel: ClassVar[str | Callable[[Any], object] | None] = None
    #: Each declared name and its keyword, this class's and its facade bases'.
    _offload_declared: ClassVar[Mapping[str, str]] = types.MappingProxyType({})
    #: Names of the sync class left out on purpose (``omit=``).
    _offload_omitted: ClassVar[frozenset[str]] = frozenset()
    #: Sync classes to the facade classes their instances are returned as.
    _offload_results: ClassVar[Mapping[type, type[Facade[Any]]]] = types.MappingProxyType({})
    #: Result types seen, to the facade class each went into (or None).
    _offload_seen: ClassVar[dict[type, type[Facade[Any]] | None]]
    #: What interrupts this instance's blocked calls, bound to its sync object.
    _interrupt: Interrupt | None = None
    _entered: dict[asyncio.Task[Any] | None, list[_Inside]]

    if TYPE_CHECKING:  # the generated attributes are unknown to type checkers

        def __aiter__(self) -> OffloadedIterator[Any]: ...
        async def __aenter__(self) -> Any: ...
        async def __aexit__(self, *exc_info: object) -> bool: ...

    def __init__(self, wrapped: S, *, executor: ExecutorSpec | None = None) -> None:
        cls = type(self)
        wraps = getattr(cls, "_offload_wraps", None)
        if wraps is None:
            raise TypeError(f"{cls.__qualname__} declares no wraps=SyncClass")
        if not isinstance(wrapped, wraps):
            raise TypeError(
                f"{cls.__qualname__} wraps {wraps.__qualname__} objects, got {wrapped!r}"
            )
        setter = object.__setattr__
        setter(self, "__wrapped__", wrapped)
        setter(
            self,
            "_executor",
            check_spec(executor) if executor is not None else cls._offload_executor,
        )
        on_cancel = cls._offload_on_cancel
        if on_cancel is not None:
            setter(self, "_interrupt", _bind(on_cancel, wrapped))
        # The contexts each task is inside, innermost last, with the thread their
        # calls go to (held by the outermost, on a pool).
        setter(self, "_entered", {})

    def __init_subclass__(
        cls,
        *,
        wraps: type | None = None,
        executor: ExecutorSpec | None = None,
        run: Iterable[str] = (),
        sync: Iterable[str] = (),
        iterate: Iterable[str] = (),
        contexts: Iterable[str] = (),
        attrs: Iterable[str] = (),
        omit: Iterable[str] = (),
        wrap: WrapSpec | None = None,
        prefetch: int | None = None,
        on_cancel: str | Callable[[Any], object] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if executor is not None:
            cls._offload_executor = check_spec(executor)
        if prefetch is not None:
            if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
                raise ValueError(f"prefetch must be a positive int, got {prefetch!r}")
            cls._offload_prefetch = prefetch
        if on_cancel is not None:
            _check_on_cancel(cls, wraps or getattr(cls, "_offload_wraps", None), on_cancel)
            cls._offload_on_cancel = on_cancel
        lists = {
            "run": run,
            "sync": sync,
            "iterate": iterate,
            "contexts": contexts,
            "attrs": attrs,
        }
        if wraps is not None:
            _declare(cls, wraps, lists, wrap, omit)
        elif any(lists.values()) or wrap or omit:
            raise TypeError(f"{cls.__qualname__} lists names but no wraps=SyncClass")
        elif hasattr(cls, "_offload_wraps"):  # a subclass that adds methods of its own
            _results_go_to(cls, {cls._offload_wraps: cls})

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} wrapping {self.__wrapped__!r}>"

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and not hasattr(type(self), name):
            raise AttributeError(_undeclared(self, name, "to set"), name=name, obj=self)
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called once the usual lookup failed.
        if hasattr(type(self), name):  # a passthrough raised AttributeError: show its own
            return object.__getattribute__(self, name)
        if name.startswith("_"):
            message = f"{type(self).__qualname__!r} object has no attribute {name!r}"
        else:
            message = _undeclared(self, name, "to read")
        raise AttributeError(message, name=name, obj=self)

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
        """The thread the current task's calls go to inside ``async with`` on a pool.

        The block is ``async with self`` or one over a ``contexts=`` method's manager.
        """
        inside = self._entered.get(asyncio.current_task())
        return inside[-1].thread if inside else None


#: What ``wrap=`` takes: method names to facade classes, or facade classes (by type).
WrapSpec = Mapping[str, type[Facade[Any]]] | Iterable[type[Facade[Any]]]


def _undeclared(facade: Facade[Any], name: str, what: str) -> str:
    cls = type(facade)
    wraps = cls._offload_wraps.__qualname__
    return (
        f"{cls.__qualname__} has no attribute {name!r} {what}: a facade passes through only "
        f"what it declares. List {name!r} in attrs= to reach {wraps}'s attribute, or use "
        f"facade.__wrapped__.{name}; a subclass's own state takes a name starting with '_'"
    )


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


def _is_facade_class(target: object) -> bool:
    return (
        isinstance(target, type)
        and issubclass(target, Facade)
        and hasattr(target, "_offload_wraps")
    )


def _declare(
    cls: type[Facade[Any]],
    wraps: type,
    lists: Mapping[str, Iterable[str]],
    wrap: object,
    omit: Iterable[str],
) -> None:
    inherited = cls._offload_declared
    declaration: Declaration = resolve(
        cls.__qualname__,
        wraps,
        lists,
        wrap,
        omit,
        # A pattern leaves alone what the class body, or a base's, defines.
        defined=lambda name: hasattr(cls, name) and name not in inherited,
        is_facade=_is_facade_class,
    )
    cls._offload_wraps = wraps
    cls._offload_declared = types.MappingProxyType({**inherited, **declaration.declared})
    cls._offload_omitted = cls._offload_omitted | declaration.omitted
    _results_go_to(cls, {wraps: cls, **declaration.by_type})
    taken = set(vars(cls))  # what the class body defines wins
    for name, keyword in declaration.declared.items():
        if name in taken:
            continue
        if keyword == "attrs":
            setattr(cls, name, _attribute(wraps, name))
        else:
            target = declaration.by_method.get(name)
            setattr(cls, name, _method(cls, wraps, name, keyword, target))
    taken.update(declaration.declared, declaration.omitted)
    for name in dir(wraps):
        public = not name.startswith("_") and name not in taken
        if public and inspect.isdatadescriptor(inspect.getattr_static(wraps, name)):
            setattr(cls, name, _passthrough(wraps, name))
    if defines(wraps, "__iter__") and "__aiter__" not in taken:
        cls.__aiter__ = _aiter  # type: ignore[method-assign]
    if defines(wraps, "__enter__") and "__aenter__" not in taken:
        cls.__aenter__ = _aenter  # type: ignore[method-assign]
        cls.__aexit__ = _aexit  # type: ignore[method-assign]


# -- facade() ----------------------------------------------------------------------

_cache: dict[tuple[Any, ...], type[Facade[Any]]] = {}
_cache_lock = threading.Lock()


def facade(
    wraps: type[S],
    *,
    executor: ExecutorSpec = "default",
    run: Iterable[str] = (),
    sync: Iterable[str] = (),
    iterate: Iterable[str] = (),
    contexts: Iterable[str] = (),
    attrs: Iterable[str] = (),
    omit: Iterable[str] = (),
    wrap: WrapSpec | None = None,
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

        A pattern takes every name of its shape: here ``run=["*"]`` is every
        plain method (``walk``, a generator, is for ``iterate=``). A result of
        the facade's own sync class comes back as a facade too.

        >>> class Node:
        ...     def __init__(self, name, children=()):
        ...         self.name, self.children = name, list(children)
        ...     def child(self, index):
        ...         return self.children[index]
        ...     def walk(self):
        ...         yield self.name
        ...         for child in self.children:
        ...             yield from child.walk()
        >>> AsyncNode = offload.facade(
        ...     Node, executor="io", run=["*"], iterate=["walk"], attrs=["name"]
        ... )
        >>> async def main():
        ...     root = AsyncNode(Node("root", [Node("leaf")]))
        ...     leaf = await root.child(0)
        ...     return type(leaf).__name__, leaf.name, [name async for name in root.walk()]
        >>> asyncio.run(main())
        ('AsyncNode', 'leaf', ['root', 'leaf'])

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
    lists = {
        "run": tuple(run),
        "sync": tuple(sync),
        "iterate": tuple(iterate),
        "contexts": tuple(contexts),
        "attrs": tuple(attrs),
        "omit": tuple(omit),
    }
    wrap_key: Any = None
    if isinstance(wrap, Mapping):
        wrap = dict(wrap)
        wrap_key = ("by method", tuple(sorted(wrap.items(), key=repr)))
    elif wrap is not None and not isinstance(wrap, str):
        wrap = tuple(wrap)
        wrap_key = ("by type", frozenset(wrap))
    key = (
        wraps,
        executor,
        *(tuple(sorted(names, key=repr)) for names in lists.values()),
        wrap_key,
        prefetch,
        on_cancel,
        name,
    )
    with _cache_lock:
        made = _cache.get(key)
        if made is None:
            module = sys._getframe(1).f_globals.get("__name__", __name__)
            keywords = {"wraps": wraps, "executor": executor, **lists, "wrap": wrap}
            made = types.new_class(
                name or f"Async{wraps.__name__}",
                (Facade,),
                {**keywords, "prefetch": prefetch, "on_cancel": on_cancel},
                lambda namespace: namespace.update(__module__=module),
            )
            _cache[key] = made
    return made
