"""The exceptions offload raises, and the messages that say what to do."""

from __future__ import annotations

import pickle
import signal
from concurrent.futures.process import BrokenProcessPool
from typing import Any


class UnknownExecutorError(LookupError):
    """No executor is registered under the requested name.

    Raised synchronously when a decorated function is called, because names are
    resolved at call time.

    Examples:
        >>> import offload
        >>> registry = offload.Registry()
        >>> try:
        ...     registry.get_executor("gpu")
        ... except offload.UnknownExecutorError as exc:
        ...     print(exc)
        no executor is registered as 'gpu' (registered: 'cpu', 'default', 'io');
        register one with offload.register('gpu', executor_or_factory)
    """

    def __init__(self, name: str, registered: tuple[str, ...]) -> None:
        listing = ", ".join(repr(n) for n in registered) or "none"
        super().__init__(
            f"no executor is registered as {name!r} (registered: {listing}); "
            f"register one with offload.register({name!r}, executor_or_factory)"
        )
        self.name = name
        self.registered = registered


class ExecutorShutdownError(RuntimeError):
    """The executor behind a name was shut down, so it takes no new calls.

    Register a new executor under the name (``replace=True``) to use it again.

    Examples:
        >>> import offload
        >>> registry = offload.Registry()
        >>> registry.shutdown()
        >>> try:
        ...     registry.get_executor("io")
        ... except offload.ExecutorShutdownError as exc:
        ...     print(exc)
        the executor 'io' was shut down and takes no new calls;
        register a new one with register('io', executor_or_factory, replace=True)
    """


class WorkerDiedError(BrokenProcessPool):
    """The worker process running a call died before it returned.

    It died from ``os._exit``, a crash or a signal. ``exitcode`` is the
    process's exit code as ``multiprocessing`` reports it: negative for a signal
    (``-9`` for ``SIGKILL``), or ``None`` when the executor does not say.
    ``signal`` names the signal, if any, and ``pid`` the worker's process id. A subclass of
    ``concurrent.futures.process.BrokenProcessPool``, so existing handlers
    still catch it.

    Examples:
        >>> import offload
        >>> err = offload.WorkerDiedError("the worker died", exitcode=-9)
        >>> err.signal
        <Signals.SIGKILL: 9>
    """

    def __init__(
        self, message: str, exitcode: int | None = None, *, pid: int | None = None
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        #: The process id of the worker that died, where the executor says.
        self.pid = pid

    def __reduce__(self) -> Any:
        return _rebuild_worker_died, (str(self), self.exitcode, self.pid)

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the worker, or ``None``."""
        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode)
        except ValueError:
            return None


def _rebuild_worker_died(message: str, exitcode: int | None, pid: int | None) -> WorkerDiedError:
    return WorkerDiedError(message, exitcode, pid=pid)


class InitializerError(BrokenProcessPool):
    """A worker process's initializer raised, so the call sent to that worker never ran.

    [`ProcessPool`][offload.ProcessPool] runs its ``initializer`` once in each
    worker process, before the worker's first call. If it raises, the call the
    worker was started for fails with this error, whose ``__cause__`` is the
    initializer's exception (with the worker's traceback as its own cause), and
    the worker exits. The pool stays usable: the next call starts a new worker,
    which runs the initializer again. ``pid`` is the process id of the worker
    whose initializer failed. A subclass of
    ``concurrent.futures.process.BrokenProcessPool``, which the standard pool
    raises when an initializer fails, so existing handlers still catch it.

    Examples:
        >>> import offload
        >>> err = offload.InitializerError("the initializer failed", pid=1234)
        >>> err.pid
        1234
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        #: The process id of the worker whose initializer raised.
        self.pid = pid

    def __reduce__(self) -> Any:
        return _rebuild_initializer_error, (str(self), self.pid)


def _rebuild_initializer_error(message: str, pid: int | None) -> InitializerError:
    return InitializerError(message, pid=pid)


class NotPicklableError(pickle.PicklingError):
    """A call could not travel to or from a worker process.

    A process executor pickles the function (by reference: its module and
    name), the arguments and the result. This error says which of them failed
    and why; the original error is its ``__cause__``. The pool stays usable.

    Examples:
        >>> import offload, pickle
        >>> issubclass(offload.NotPicklableError, pickle.PicklingError)
        True
    """


class OverloadedError(RuntimeError):
    """A name with ``max_pending`` and ``when_full="fail"`` is full: the call was refused.

    Raised synchronously by the call, before anything is queued, so a flood
    costs no memory. ``name`` and ``max_pending`` say which bound was hit.

    Examples:
        >>> import asyncio, threading, offload
        >>> registry = offload.Registry()
        >>> registry.register("db", offload.ThreadPool(1), max_pending=1, when_full="fail")
        >>> gate = threading.Event()
        >>> wait = registry.offload("db")(gate.wait)
        >>> async def main():
        ...     first = wait()
        ...     try:
        ...         wait()
        ...     except offload.OverloadedError as exc:
        ...         print(exc.name, exc.max_pending)
        ...     gate.set()
        ...     await first
        >>> asyncio.run(main())
        db 1
        >>> registry.shutdown()
    """

    def __init__(self, name: str, max_pending: int) -> None:
        super().__init__(
            f"the executor {name!r} already has max_pending={max_pending} calls queued or "
            "running, so this call was refused (when_full='fail'); retry later, shed the "
            "load, or register the name with when_full='wait' to queue calls instead"
        )
        self.name = name
        self.max_pending = max_pending


def describe_exit(exitcode: int | None) -> str:
    """``exitcode`` in words: "exit code 3", "killed by SIGKILL" or "".

    Examples:
        >>> describe_exit(-9), describe_exit(3), describe_exit(None)
        ('killed by SIGKILL', 'exit code 3', 'exit code unknown')
    """
    if exitcode is None:
        return "exit code unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def name_of(what: object) -> str:
    """A callable's qualified name, for messages."""
    name = getattr(what, "__qualname__", None)
    return name if isinstance(name, str) else repr(what)


def no_running_loop(what: object) -> RuntimeError:
    """The error for an offloaded callable called with no running event loop."""
    name = getattr(what, "__qualname__", None) or repr(what)
    return RuntimeError(
        f"{name} was called with no running event loop: offload returns a Future "
        "bound to the running loop. Call it from a coroutine or callback on the "
        "loop (async def, @gen.coroutine, an IOLoop callback), or call "
        f"{name}.__wrapped__(...) for the plain synchronous call."
    )
