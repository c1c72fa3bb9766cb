"""Lanes: affine threads under one name, and lane handles that pin calls to one of them.

A driver over a blocking client that gives each connection a thread of its own
(an ``AffineThread`` per connection) gets thread affinity, but those threads
are invisible to the registry: no statistics, no ``max_pending``, and an
application cannot re-point them. ``Lanes(n)`` is n affine threads as one
executor, registered under a name like any other; a lane handle,
``registry.lane(name)``, is an ``Executor`` whose calls go through the name's
route (counted, bounded, timed out as the name's) and always run on one of its
threads: lane ``index mod n`` of the ``Lanes`` the name points at when the call
is sent.

A handle finds its route at each call: the name's route now (looked up as a
named call looks it up), and from it a route to the handle's lane, made once
per handle and per route the name leads to (``Route.pinned``). That route
carries the handle's index, so a call that waited for a slot is handed to the
lane of its own handle in the route the name leads to when the slot frees
(``Route.to_lane``), even if the name was re-pointed meanwhile.

Indexes are dealt as file descriptors are: the lowest one no live handle of the
name holds. So while a name has no more live handles than lanes, each handle
has a lane of its own, and a connection that replaces a closed one gets the
closed one's lane.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from concurrent.futures import Future as ConcurrentFuture
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ._affinity import AffineThread, end_dropped
from ._errors import ExecutorShutdownError
from ._pool import Job

if TYPE_CHECKING:
    from ._registry import Registry
    from ._route import Route

P = ParamSpec("P")
T = TypeVar("T")

_numbers = itertools.count()


class Lanes(Executor):
    """An executor of ``n`` affine threads, its lanes: an ``AffineThread`` per connection, by name.

    Each lane is an [`AffineThread`][offload.AffineThread]: it runs its jobs one
    at a time, in order, on one thread for its whole life, named
    ``f"{name}_{i}"`` and started on its first job; a job that waits for
    another job on its own lane raises [`DeadlockError`][offload.DeadlockError].
    Register it under a name and give each connection a
    [`lane`][offload.lane] of that name: the connection's calls then run on one
    lane, and show in the name's statistics, are bounded by its
    ``max_pending`` and follow the name when it is re-pointed.

    Calls through the name itself, and ``submit``, go to the least loaded lane
    (``submit`` from a lane never picks that lane), so for work with no
    affinity ``Lanes`` is also a pool of ``n`` threads.

    Args:
        n: How many lanes (threads).
        name: The prefix of the lanes' thread names.

    Raises:
        ValueError: ``n`` is not a positive int.
        TypeError: ``name`` is neither None nor a non-empty str.

    Examples:
        >>> import asyncio, threading, offload
        >>> registry = offload.Registry()
        >>> registry.register("kv.lanes", lambda: offload.Lanes(2, name="kv"), max_pending=100)
        >>> first, second = registry.lane("kv.lanes"), registry.lane("kv.lanes")
        >>> where = lambda: threading.current_thread().name
        >>> async def main():
        ...     on_first = registry.offload(where, executor=first)
        ...     on_second = registry.offload(where, executor=second)
        ...     return [await on_first(), await on_second(), await on_first()]
        >>> asyncio.run(main())
        ['kv_0', 'kv_1', 'kv_0']
        >>> registry.stats()["kv.lanes"]["completed"]
        3
        >>> registry.shutdown()
    """

    def __init__(self, n: int, *, name: str | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Lanes needs a positive int of lanes, got {n!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"a Lanes name must be a non-empty str or None, got {name!r}")
        self._name = name or f"offload-lanes{next(_numbers)}"
        self._threads = tuple(AffineThread(name=f"{self._name}_{i}") for i in range(n))
        self._closed = False

    @property
    def threads(self) -> tuple[AffineThread, ...]:
        """The lanes, in order: lane ``i`` is ``threads[i]``."""
        return self._threads

    @property
    def max_workers(self) -> int:
        """How many lanes (threads) there are."""
        return len(self._threads)

    @property
    def name(self) -> str:
        """The prefix of the lanes' thread names."""
        return self._name

    def __repr__(self) -> str:
        if self._closed:
            state = "shut down"
        else:
            started = sum(1 for thread in self._threads if thread._started)
            state = f"{started} started"
        return f"<offload.Lanes {self._name!r} {len(self._threads)} lanes, {state}>"

    def _least_loaded(self, current: threading.Thread | None = None) -> AffineThread:
        """The first lane with the fewest jobs queued or running; not ``current``'s.

        A lane's load, jobs queued less jobs run, is read without its lock:
        each count has one writer, and the jobs run are read first, so the
        load read is never less than the true one. A busy lane never looks
        idle, so calls sent one after another to idle lanes go to different lanes.
        """
        best, least = self._threads[0], -1
        for thread in self._threads:
            if thread._thread is current:
                continue
            line = thread._line
            done = line.done  # first, so that the load read is never too low
            load = line.queued - done
            if not load:
                return thread
            if least < 0 or load < least:
                best, least = thread, load
        return best

    def _put(self, job: Job) -> None:
        """Queue a call on the least loaded lane; the fast path for calls through the name."""
        if self._closed:
            raise ExecutorShutdownError(f"the lanes {self._name!r} were shut down")
        self._least_loaded()._put(job)

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> ConcurrentFuture[T]:
        """Queue ``fn(*args, **kwargs)`` on the least loaded lane; return its Future."""
        if self._closed:
            raise ExecutorShutdownError(f"the lanes {self._name!r} were shut down")
        return self._least_loaded(threading.current_thread()).submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut every lane down; optionally cancel the queued jobs; optionally wait.

        Queued jobs still run unless ``cancel_futures`` is true. Waiting skips
        the lane of the calling code, if it runs on one.
        """
        self._closed = True
        # Every lane closed before any dropped call ends: a slot it gives back
        # cannot let a waiting call into a lane that is still open.
        dropped = [job for thread in self._threads for job in thread._close(cancel_futures)]
        end_dropped(dropped)
        if wait:
            self._join()

    def _join(self, timeout: float | None = None) -> bool:
        """Wait for the lanes of a shut-down executor; true if all have ended in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not thread._join(remaining):
                return False
        return True

    def _give_up(self, error: Callable[[], BaseException]) -> None:
        """After a shutdown that timed out: fail every call still queued or running."""
        for thread in self._threads:
            thread._give_up(error)


class Lane(Executor):
    """A handle on one lane of a name: its calls go through the name, and run on one thread.

    Made by [`offload.lane(name)`][offload.lane] (or
    [`Registry.lane`][offload.Registry.lane]). Pass it wherever an executor is
    taken: ``offload(executor=...)``, ``aiterate``, ``acontext``, a facade's
    ``executor=``. Its calls are the name's calls: counted in the name's
    statistics, bounded by its ``max_pending`` and ``when_full``, and a
    ``timeout=`` works as on the name. They run on lane ``index mod n`` of the
    [`Lanes`][offload.Lanes] the name points at when each call is sent, so
    what a connection makes on its first call (a sqlite3 connection, a
    client's socket) is used on the same thread by every later call.

    If the application re-points the name (``register(..., replace=True)``)
    at another ``Lanes`` of ``m`` lanes, the handle's later calls run on its
    lane ``index mod m`` there: still one thread, but a new one, so objects
    made on the old thread stay behind. If it points the name at any other
    executor (a ``ThreadPool``, say), the calls simply go there, with no
    affinity: that is the application's choice.

    A handle owns no thread: ``shutdown`` does nothing (the name's executor
    is shut down through the registry), and dropping it frees its index for
    the next handle of the name.

    Examples:
        >>> import asyncio, sqlite3, offload
        >>> registry = offload.Registry()
        >>> registry.register("db.lanes", lambda: offload.Lanes(4, name="db"))
        >>> lane = registry.lane("db.lanes")
        >>> lane
        <offload.Lane 0 of 'db.lanes'>
        >>> async def main():
        ...     conn = await registry.offload(sqlite3.connect, executor=lane)(":memory:")
        ...     query = registry.offload(conn.execute, executor=lane)  # same thread
        ...     cursor = await query("SELECT 6 * 7")
        ...     row = await registry.offload(cursor.fetchone, executor=lane)()
        ...     await registry.offload(conn.close, executor=lane)()
        ...     return row
        >>> asyncio.run(main())
        (42,)
        >>> lane.get_executor()
        <offload.AffineThread 'db_0' running>
        >>> registry.stats()["db.lanes"]["completed"]
        4
        >>> registry.shutdown()
    """

    def __init__(self, registry: Registry, name: str, index: int) -> None:
        self._registry = registry
        self._name = name
        self._index = index
        # The name's route seen last, and this handle's route made from it.
        self._pinned: tuple[Route | None, Route | None] = (None, None)

    @property
    def name(self) -> str:
        """The registered name whose lane this is."""
        return self._name

    @property
    def index(self) -> int:
        """The handle's index: its calls run on lane ``index mod n``."""
        return self._index

    def __repr__(self) -> str:
        return f"<offload.Lane {self._index} of {self._name!r}>"

    def _route_now(self) -> Route:
        """The route of a call sent now: the name's route, pinned to this handle's lane.

        Raises:
            UnknownExecutorError: nothing is registered as the name.
            ExecutorShutdownError: the name was shut down.
        """
        registry = self._registry
        entry = registry._entries.get(self._name)
        parent = None if entry is None else entry.route
        if parent is None:
            parent = registry._route(self._name)  # first use, or an unknown name
        seen, route = self._pinned
        if seen is parent:
            return route  # type: ignore[return-value]  # set with seen
        route = parent.pinned(self._index)
        self._pinned = (parent, route)
        return route

    @property
    def _offload_route(self) -> Route:
        """Where ``route_to`` finds an executor's route: for a handle, looked up now."""
        return self._route_now()

    def get_executor(self) -> Executor:
        """The executor this handle's calls go to now: its lane, made on first use.

        Examples:
            >>> import offload
            >>> registry = offload.Registry()
            >>> registry.register("kv", offload.Lanes(3, name="kv"))
            >>> lanes = [registry.lane("kv") for _ in range(4)]
            >>> [lane.get_executor().name for lane in lanes]
            ['kv_0', 'kv_1', 'kv_2', 'kv_0']
            >>> registry.shutdown()
        """
        return self._route_now().executor

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> ConcurrentFuture[T]:
        """Queue ``fn(*args, **kwargs)`` on the handle's lane now; return its Future.

        As any ``submit``, it bypasses the name's statistics and bound; offload
        sends its own calls through the name.
        """
        return self.get_executor().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing: a handle owns no thread, and its lane is shared with other handles.

        The name's executor is shut down through the registry
        ([`offload.shutdown`][offload.shutdown]), or replaced with ``register``.
        """
