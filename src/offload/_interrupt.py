"""Interrupts: what makes blocked work return when its caller gives up on it.

A thread cannot be stopped from outside, but most blocking clients have a call
that makes their blocked call return early: sqlite3's
``Connection.interrupt``, psycopg's ``cancel_safe``, a socket's ``shutdown``, an
Event the source waits on. offload calls it when the caller gives up on work
that is running: a facade call cancelled (``asyncio.wait_for`` and
``asyncio.timeout`` cancel too), or an iterator closed early.

Where it runs: on a thread started for it. Not on the worker, which is the very
thread that is blocked; not on the executor, whose threads may all be blocked;
not on the loop, since an interrupt may block (psycopg's opens a connection to
the server). Giving up is rare, so a thread per interrupt costs little.

What it may hit: the work waits for its interrupt to return before it ends, so
an interrupt started for one call never lands on the next call on the same
connection made after the first one's job ended. Its errors are logged on the
``offload`` logger and go no further: the caller who gave up is gone, and the
work ends as it would have.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from ._route import Route

logger = logging.getLogger("offload")

Interrupt = Callable[[], object]

_PENDING, _RUNNING, _OVER = range(3)


def check_interrupt(interrupt: object, what: str = "interrupt") -> Interrupt | None:
    """``interrupt`` if it is None or callable, else a clear error."""
    if interrupt is not None and not callable(interrupt):
        raise TypeError(
            f"{what} must be a callable taking no arguments (such as connection.interrupt) "
            f"or None, got {interrupt!r}"
        )
    return interrupt


class Interrupting:
    """One interrupt, on a thread of its own; ``wait()`` returns once it has."""

    __slots__ = ("done",)

    def __init__(self, interrupt: Interrupt, why: str) -> None:
        self.done = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(interrupt, why), name="offload-interrupt", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no new threads: the interpreter is shutting down
            logger.warning("could not start the interrupt %r (%s)", interrupt, why)
            self.done.set()

    def _run(self, interrupt: Interrupt, why: str) -> None:
        try:
            interrupt()
        except BaseException:
            logger.exception(
                "the interrupt %r, called because %s, raised; the work it was to stop runs on",
                interrupt,
                why,
            )
        finally:
            self.done.set()

    def wait(self) -> None:
        """Return once the interrupt has returned or raised."""
        self.done.wait()


class Guard:
    """A facade call with an interrupt: interrupted if its caller gives up while it runs."""

    __slots__ = ("interrupt", "interrupting", "lock", "state")

    def __init__(self, interrupt: Interrupt) -> None:
        self.interrupt = interrupt
        self.lock = threading.Lock()
        self.state = _PENDING
        self.interrupting: Interrupting | None = None

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """On the worker: run ``fn``, then wait for an interrupt it may have drawn."""
        with self.lock:
            if self.state == _OVER:  # given up before it started
                raise asyncio.CancelledError
            self.state = _RUNNING
        try:
            return fn(*args, **kwargs)
        finally:
            with self.lock:
                self.state = _OVER
                interrupting = self.interrupting
            if interrupting is not None:
                interrupting.wait()

    def settled(self, _future: asyncio.Future[Any]) -> None:
        """On the loop, once the caller's Future is done: interrupt the call if it still runs.

        The worker marks the call over before it hands its outcome to the loop,
        so a call still running when its Future is done was given up.
        """
        with self.lock:
            if self.state == _RUNNING:
                self.interrupting = Interrupting(self.interrupt, "its caller gave up on the call")
            else:
                self.state = _OVER


def guarded(  # noqa: PLR0917 - a call's parts, as Route.call takes them
    route: Route,
    loop: asyncio.AbstractEventLoop,
    interrupt: Interrupt,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> asyncio.Future[Any]:
    """Send ``fn(*args, **kwargs)`` on ``route``; ``interrupt`` it if given up while it runs."""
    guard = Guard(interrupt)
    future = route.call(loop, guard.run, (fn, *args), kwargs)
    future.add_done_callback(guard.settled)
    return future
