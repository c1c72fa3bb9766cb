"""Sending offloaded calls to other processes: by reference, never the wrapper.

A decorated function cannot be pickled as it is: the module attribute is the
wrapper, so pickle refuses the original (it is "not the same object") and the
wrapper has no ``__reduce__``. Even if the wrapper arrived, calling it in the
worker would submit the call again. So a call travels as a ``Ref``: the
module and qualified name where the *decorated* object lives, plus the instance
or class it was bound to. The worker looks the name up and calls its
``__wrapped__``, the original body. Anything that is not an offloaded function
(a builtin, a callable object, a ``functools.partial``) is pickled as it is.
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import sys
import traceback
from collections.abc import Callable
from types import FunctionType
from typing import Any

import wrapt

from ._call import restore, running_remotely
from ._errors import NotPicklableError, name_of

PROTOCOL = pickle.HIGHEST_PROTOCOL


def _lookup(module: str, qualname: str, *, load: bool = False) -> Any:
    """The object stored at ``module.qualname``, looking in class dicts, or None.

    With ``load``, as in a worker, the module is imported if it is not yet.
    """
    namespace = _namespace(module, qualname, load=load)
    if namespace is None:
        return None
    stored = namespace.get(qualname.rpartition(".")[2])
    # A coroutine form (offload(..., coroutine=True)) is a plain async function
    # that keeps the offloaded wrapper it awaits: that wrapper is what counts.
    form = _plain(stored)
    if isinstance(form, FunctionType):
        return getattr(form, "__offloaded__", stored)
    return stored


def _namespace(module: str, qualname: str, *, load: bool = False) -> Any:
    """The live mapping (a module's or a class's) that holds the last part of the name, or None."""
    if "<" in qualname:  # "<locals>", "<lambda>": nothing to look up
        return None
    obj: Any = sys.modules.get(module)
    if obj is None and load:
        obj = importlib.import_module(module)
    for part in qualname.split(".")[:-1]:
        if obj is None:
            return None
        # A class's __dict__ holds the decorated object itself; getattr would
        # run the descriptor protocol and hand back a bound wrapper.
        obj = vars(obj).get(part) if isinstance(obj, type) else getattr(obj, part, None)
    try:
        return vars(obj)
    except TypeError:  # None, or an object without a __dict__
        return None


def _plain(obj: Any) -> Any:
    return obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj


class Ref:
    """An offloaded function by name, bound to ``owner`` (an instance or class) if any."""

    __slots__ = ("module", "owner", "qualname")

    def __init__(self, module: str, qualname: str, owner: Any) -> None:
        self.module, self.qualname, self.owner = module, qualname, owner

    def __reduce__(self) -> tuple[type[Ref], tuple[str, str, Any]]:
        return Ref, (self.module, self.qualname, self.owner)

    def __repr__(self) -> str:
        return f"<offload.Ref {self.module}.{self.qualname}>"

    def resolve(self) -> Any:
        """The original, unwrapped callable, bound as it was in the caller."""
        stored = _lookup(self.module, self.qualname, load=True)
        if not isinstance(stored, wrapt.FunctionWrapper):
            raise LookupError(  # noqa: TRY004  # the name does not lead to an offloaded function
                f"{self.module}.{self.qualname} is not an offloaded function in this process; "
                "decorate it the same way in every process, not only in the caller"
            )
        original = stored.__wrapped__
        owner = self.owner
        if isinstance(original, classmethod):
            return original.__get__(None, owner)
        if isinstance(original, staticmethod):
            return original.__func__
        if owner is None:
            return original
        return original.__get__(owner, type(owner))


def ship_target(fn: Any) -> Any:
    """What to pickle for ``fn``: a ``Ref`` if it is offloaded, else ``fn`` itself.

    ``fn`` is what the wrapper received: the original function, or the
    original bound to its instance or class.
    """
    owner = None
    func = fn
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):  # a bound method
        func, owner = fn.__func__, fn.__self__
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        stored = _lookup(module, qualname)
        if isinstance(stored, wrapt.FunctionWrapper) and _plain(stored.__wrapped__) is func:
            return Ref(module, qualname, owner)
        inner = _plain(stored)
        if inner is not stored and isinstance(inner, wrapt.FunctionWrapper):
            raise NotPicklableError(
                f"{qualname} cannot be sent to a worker process: {type(stored).__name__} "
                "is applied on top of offload, so the name leads to the "
                f"{type(stored).__name__}, and a worker would call the offloaded wrapper "
                "again: apply offload last (outermost), @offload(...) above "
                f"@{type(stored).__name__}."
            )
    return fn


#: Per plain function: what a worker needs to find it, pickled, and its name;
#: then where its name leads (a namespace, a key) and what was there, so that
#: a cached answer is used only while the name still leads to the same object.
_shipped: dict[Callable[..., Any], tuple[bytes, str, Any, str, Any]] = {}
_SHIPPED_MAX = 1024


def ship(fn: Any, where: Callable[[], str]) -> tuple[Any, str]:
    """What to send for ``fn`` with each call, and its name; or a TypeError for a lambda.

    For a plain function the answer is worked out on its first call, with the
    target already pickled, so later calls neither look it up nor pickle it
    again, and each worker loads it once (``run_packed``). The answer holds as
    long as the function's module name leads where it did; rebinding that name
    (offloading a function later, reloading a module) is seen on the next
    call. A bound method is made per call, and its owner travels with each.
    ``where()`` names the executor for the error message.
    """
    plain = type(fn) is FunctionType
    if plain:
        entry = _shipped.get(fn)
        if entry is not None and entry[2].get(entry[3]) is entry[4]:
            return entry[0], entry[1]
    target = ship_target(fn)
    if target is fn:
        error = local_function_error(fn, where())
        if error is not None:
            raise error
    name = target.qualname if isinstance(target, Ref) else name_of(fn)
    if not plain:
        return target, name
    try:
        packed = pickle.dumps(target, PROTOCOL)
    except Exception:  # pack_call says why, for each call
        return target, name
    namespace = _namespace(fn.__module__, fn.__qualname__)
    key = fn.__qualname__.rpartition(".")[2]
    if namespace is not None:
        if len(_shipped) >= _SHIPPED_MAX:  # functions made at run time: keep a few
            _shipped.clear()
        _shipped[fn] = (packed, name, namespace, key, namespace.get(key))
    return packed, name


_LOCAL_FUNCTION_ADVICE = (
    "Define it at module level (or as a method of a module-level class), or run it on a "
    "thread executor such as 'default'."
)


def local_function_error(fn: Any, where: str, *, advice: str | None = None) -> TypeError | None:
    """The error for a lambda or nested function bound for a process, or None.

    ``advice``, if given, replaces the closing sentence that says what to do.
    """
    func = getattr(fn, "__func__", fn)
    qualname = getattr(func, "__qualname__", "")
    if not isinstance(qualname, str) or "<" not in qualname:
        return None
    kind = "a lambda" if "<lambda>" in qualname else "a function defined inside another function"
    return TypeError(
        f"{qualname} cannot run on {where}: a process executor pickles the function by "
        f"reference (its module and name), and {kind} has none a worker process could "
        f"import. {advice or _LOCAL_FUNCTION_ADVICE}"
    )


def call_original(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """In the worker: run the original body that ``target`` stands for."""
    fn = target.resolve() if isinstance(target, Ref) else target
    previous = running_remotely()  # offload.cancelled() is false here
    try:
        return fn(*args, **kwargs)
    finally:
        restore(previous)


class RemoteJob:
    """A call that runs ``call_original`` when called; what foreign pools unpickle."""

    __slots__ = ("args", "kwargs", "target")

    def __init__(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.target, self.args, self.kwargs = target, args, kwargs

    def __reduce__(self) -> tuple[type[RemoteJob], tuple[Any, ...]]:
        return RemoteJob, (self.target, self.args, self.kwargs)

    def __call__(self) -> Any:
        return call_original(self.target, self.args, self.kwargs)


# -- With the standard library's pickle: clear errors in both directions -------


def pack_call(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> bytes:
    """Pickle a call for a worker process, or raise ``NotPicklableError``.

    ``target`` may be bytes from ``ship``: the worker then loads it once,
    and later calls carry it at the cost of copying a few bytes.
    """
    try:
        return pickle.dumps((target, args, kwargs), PROTOCOL)
    except Exception as exc:
        try:
            pickle.dumps(target, PROTOCOL)
        except Exception:
            what = f"{name} itself cannot be pickled to send it"
            advice = (
                "A worker finds a function by its module and name, so that name must lead "
                "to it: define it at module level, and if other decorators wrap it, apply "
                "offload last (outermost)."
            )
        else:
            what = f"the arguments of {name} cannot be pickled to send them"
            advice = (
                "A process executor copies the arguments and the result between processes: "
                "pass picklable values, or run the call on a thread executor."
            )
        raise NotPicklableError(
            f"{what} to a worker process ({type(exc).__name__}: {exc}). {advice}"
        ) from exc


#: In a worker: each target from ``ship``, loaded and resolved.
_unpacked: dict[bytes, Any] = {}
_UNPACKED_MAX = 1024


def _unpack_target(packed: bytes) -> Any:
    target = pickle.loads(packed)  # noqa: S301  # our own call, from our parent
    fn = target.resolve() if isinstance(target, Ref) else target
    if len(_unpacked) >= _UNPACKED_MAX:
        _unpacked.clear()
    _unpacked[packed] = fn
    return fn


def run_packed(data: bytes | memoryview, name: str) -> Any:
    """In the worker: unpickle a call made by ``pack_call`` and run it."""
    try:
        target, args, kwargs = pickle.loads(data)  # noqa: S301  # our own call, from our parent
        if type(target) is bytes:
            target = _unpacked.get(target) or _unpack_target(target)
        elif isinstance(target, Ref):
            target = target.resolve()
    except Exception as exc:
        raise NotPicklableError(
            f"the worker process could not load {name} or its arguments "
            f"({type(exc).__name__}: {exc}). Under spawn and forkserver a worker imports "
            "the function's module by name: define it in an importable module, not in an "
            "interactive session."
        ) from exc
    return call_original(target, args, kwargs)


def pack_result(value: Any, name: str) -> bytes:
    """In the worker: pickle a result, or raise ``NotPicklableError``."""
    try:
        return pickle.dumps(value, PROTOCOL)
    except Exception as exc:
        raise NotPicklableError(
            f"the result of {name} cannot be pickled to send it back from the worker "
            f"process ({type(exc).__name__}: {exc}). Return picklable values from a call "
            "that runs in another process."
        ) from exc


def unpack_result(data: bytes | memoryview, name: str) -> Any:
    """In the caller: unpickle a result made by ``pack_result``."""
    try:
        return pickle.loads(data)  # noqa: S301  # from a worker we started
    except BaseException as exc:  # a BaseException too: it must fail the call, not the pool
        raise NotPicklableError(
            f"the result of {name} came back from the worker process but cannot be "
            f"unpickled here ({type(exc).__name__}: {exc})"
        ) from exc


class RemoteTraceback(Exception):  # noqa: N818  # it is a traceback, shown as a cause
    """The traceback of an exception raised in a worker process, as text."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def describe_exception(exc: BaseException) -> str:
    """``Type: message``, even for an exception whose ``str()`` raises."""
    try:
        message = str(exc)
    except BaseException:  # an exception that cannot be printed still fails its call
        message = "<its str() raised>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def pack_exception(exc: BaseException, name: str) -> bytes:
    """In the worker: pickle an exception with its traceback text.

    An exception that does not pickle is replaced by a ``RuntimeError`` that
    says what it was; nothing it does can stop the worker replying.
    """
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException:
        text = f"{describe_exception(exc)} (its traceback could not be formatted)\n"
    # The traceback travels as text. Sent as objects (as tblib, which Dask
    # installs, makes every pickle do), it would come back as frames in a cycle.
    exc.with_traceback(None)
    try:
        return pickle.dumps((exc, text), PROTOCOL)
    except BaseException as err:
        substitute = RuntimeError(
            f"{name} raised {describe_exception(exc)} in the worker process, and that exception "
            f"cannot be pickled ({describe_exception(err)})"
        )
        return pickle.dumps((substitute, text), PROTOCOL)


def unpack_exception(data: bytes | memoryview, name: str) -> BaseException:
    """In the caller: the exception a worker raised, its traceback as ``__cause__``.

    An exception that refuses the cause (a frozen dataclass) comes back without it.
    """
    try:
        exc: BaseException
        exc, text = pickle.loads(data)  # noqa: S301  # from a worker we started
    except BaseException as err:  # a BaseException too: fail the call, not the pool
        return NotPicklableError(
            f"{name} raised an exception in the worker process that cannot be unpickled "
            f"here ({describe_exception(err)})"
        )
    exc.with_traceback(None)  # see pack_exception: the text is the traceback
    if not isinstance(exc.__cause__, RemoteTraceback):
        # An exception that refuses attributes comes back as it is.
        with contextlib.suppress(BaseException):
            exc.__cause__ = RemoteTraceback(f'\n"""\n{text}"""')
    return exc


#: The first byte of a worker's reply: a result, or an exception.
RESULT, ERROR = b"r", b"e"


def run_shipment(data: bytes | memoryview, name: str) -> bytes:
    """In a worker process: run a packed call; its outcome, packed. It never raises.

    The one function a worker of either process pool runs a call with. The
    caller packs the call itself (``pack_call``), so a call that does not
    pickle fails alone and clearly before it reaches the pool. The worker
    unpickles it only here, where a failure fails this call instead of the
    pool, and sends the outcome back as bytes, which the caller unpickles
    (``unpack_reply``): an outcome the caller cannot load fails its call,
    where a standard pool would break. Plain bytes both ways cost the pool
    nothing to pickle.
    """
    try:
        return RESULT + pack_result(run_packed(data, name), name)
    except BaseException as exc:  # every outcome goes back to the caller
        return ERROR + pack_exception(exc, name)


def run_remote(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> bytes:
    """On a cluster worker: run the call; its outcome packed as ``run_shipment`` packs it.

    The arguments come by the cluster's own serialisation; the outcome goes
    back as bytes, so anything a call raises or returns fails only its call,
    with the same clear errors as on a process pool. It never raises.
    """
    try:
        return RESULT + pack_result(call_original(target, args, kwargs), name)
    except BaseException as exc:  # every outcome goes back to the caller
        return ERROR + pack_exception(exc, name)


def unpack_reply(reply: bytes, name: str) -> tuple[Any, BaseException | None]:
    """In the caller: a worker's reply as (result, None) or (None, exception)."""
    body = memoryview(reply)[1:]
    if reply[:1] == RESULT:
        try:
            return unpack_result(body, name), None
        except NotPicklableError as exc:
            return None, exc
    return None, unpack_exception(body, name)
