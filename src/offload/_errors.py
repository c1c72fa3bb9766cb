"""The exceptions offload raises, and the messages that say what to do."""

from __future__ import annotations


class UnknownExecutorError(LookupError):
    """No executor is registered under the requested name.

    Raised synchronously when a decorated function is called, because names are
    resolved at call time.

    Example:
        >>> import offload
        >>> registry = offload.Registry()
        >>> try:
        ...     registry.get_executor("gpu")
        ... except offload.UnknownExecutorError as exc:
        ...     print(exc)
        no executor is registered as 'gpu' (registered: 'default', 'io');
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

    Example:
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


def no_running_loop(what: object) -> RuntimeError:
    """The error for an offloaded callable called with no running event loop."""
    name = getattr(what, "__qualname__", None) or repr(what)
    return RuntimeError(
        f"{name} was called with no running event loop: offload returns a Future "
        "bound to the running loop. Call it from a coroutine or callback on the "
        "loop (async def, @gen.coroutine, an IOLoop callback), or call "
        f"{name}.__wrapped__(...) for the plain synchronous call."
    )
