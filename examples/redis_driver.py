"""A Tornado-friendly redis client: declarations over redis-py's sync ``redis.Redis``.

Two ways to run it, both over the same facades:

- ``connect(url)``: one ``redis.Redis`` shared by every task. redis-py's client is
  thread-safe: each command borrows a socket from the client's connection pool for the
  length of the command, and the commands run on a thread pool registered under
  ``EXECUTOR``, whose size bounds how many commands (and sockets) are in flight. Simple, and
  the one to use for blocking commands (``BLPOP``, ``XREAD BLOCK``), which hold a thread.
- ``await connect_lanes(url, n)``: ``n`` clients of one connection each, every one on a lane
  of its own (``offload.lane(LANES)``), so no thread ever waits for another's socket or for
  the pool's lock. It is the faster of the two under load; ``lanes.pick()`` hands out a
  client for a unit of work, and ``lanes.within(fn, ...)`` runs a whole unit in one hop.

An application re-points either name (``offload.register("redis_driver.io", ...)``,
``offload.register("redis_driver.lanes", offload.Lanes(16))``), before or after importing
this module.

    client = connect("redis://localhost:6379/0", decode_responses=True)
    await client.set("greeting", "hello")
    async with client.pipeline() as pipe:
        pipe.incr("hits").expire("hits", 60)        # buffered, on the caller's thread
        hits, _ = await pipe.execute()                # one round trip, on the pool
    async for key in client.scan_iter(match="user:*"):
        ...

    lanes = await connect_lanes("redis://localhost:6379/0", 4, decode_responses=True)
    await lanes.pick().incr("hits")                   # one command on the next lane
    hits = await lanes.within(lambda r: r.incr("hits") + int(r.get("bonus") or 0))
    await lanes.close()

What is declared how, and why:

- every command (``get``, ``incr``, ``eval``, ``xadd``, ..., about 400 of them) runs on the
  pool: ``run=["*"]`` takes every plain method of the class, so it follows the installed
  redis-py;
- ``scan_iter`` and its kin are generators: ``iterate=["*"]`` takes them, and their steps
  run on the pool too, one thread for an iteration's whole life;
- ``pipeline()``, ``lock()`` and ``client()`` only build objects, so they are called on the
  caller's thread; their results are facades in turn, chosen by type: on a pipeline,
  commands buffer (on the caller's thread) and ``execute()`` runs on the pool; a lock's
  ``acquire``/``release`` run on the pool; ``client()`` gives another ``AsyncRedis``.
- ``transaction(func, *watches)`` runs the whole WATCH/MULTI/EXEC retry loop on one pool
  thread, ``func`` included: it is the way to use WATCH (a pipeline facade's commands after
  ``watch()`` would run on the caller's thread, immediately, blocking the loop).
- ``client.connection_pool`` reads the sync client's pool.

``LEFT_OUT_REASONS`` says why the facade leaves out what it leaves out (``omit=``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis
import redis.client
import redis.lock

import offload

#: The executor name the client's commands run on.
EXECUTOR = "redis_driver.io"

# A library default: 16 threads, so at most 16 commands (and sockets) at once. An
# application's offload.register(EXECUTOR, ...) replaces it, whenever it runs.
offload.register(EXECUTOR, lambda: offload.ThreadPool(16, name="redis_driver"), default=True)

#: The name whose lanes ``connect_lanes`` clients run on, a lane (and a socket) each.
LANES = "redis_driver.lanes"

# A library default: eight lanes, twice connect_lanes' default of four (the best of 2, 4
# and 8 where it was measured, on two cores), so that two sets of clients (two servers, say)
# still get a thread per client. A lane's thread starts on its first call: lanes no client
# uses cost nothing. An application's offload.register(LANES, ...) replaces it.
offload.register(LANES, lambda: offload.Lanes(8, name="redis_lane"), default=True)

P = ParamSpec("P")
R = TypeVar("R")

#: Public names of ``redis.Redis`` the facade leaves out on purpose, and why. Names a given
#: redis-py release lacks are dropped below (``omit=`` refuses names the class lacks).
LEFT_OUT_REASONS = {
    # Class methods: build the sync client with them, then wrap it (connect() does).
    "from_url": "a class method",
    "from_pool": "a class method",
    # Objects that hold a connection of their own and read from it in a loop that nothing
    # can interrupt from another thread.
    "pubsub": "needs a reader of its own",
    "monitor": "needs a reader of its own",
    "keyspace_notifications": "needs a reader of its own",
    # A Script is called with the client; use eval/evalsha, which are commands.
    "register_script": "returns a sync callable",
    # The module command groups (RedisJSON, search, time series, ...): objects whose commands
    # block; each would need a facade of its own.
    **dict.fromkeys(
        ["bf", "cf", "cms", "ft", "json", "tdigest", "topk", "ts", "vset"], "a module group"
    ),
}
LEFT_OUT = sorted(name for name in LEFT_OUT_REASONS if hasattr(redis.Redis, name))

#: A pipeline's own methods that talk to the server; every other command only buffers.
PIPELINE_IO = [
    name
    for name in (
        "execute",
        "watch",
        "unwatch",
        "reset",
        "discard",
        "immediate_execute_command",
        "load_scripts",
        "parse_response",
        "close",
    )
    if hasattr(redis.client.Pipeline, name)
]


class AsyncPipeline(
    offload.Facade[redis.client.Pipeline],
    wraps=redis.client.Pipeline,
    executor=EXECUTOR,
    run=PIPELINE_IO,
    sync=["*"],
    attrs=["UNWATCH_COMMANDS"],
    # Nested pipelines, locks, WATCH loops and scans make no sense on a buffer: use the client.
    omit=[*LEFT_OUT, "pipeline", "lock", "client", "transaction", "*scan_iter"],
):
    """A redis pipeline: commands buffer on the caller's thread, ``execute()`` runs on the pool.

    ``async with client.pipeline() as pipe:`` resets the pipeline (on the pool) at the end.
    """


class AsyncLock(
    offload.Facade[redis.lock.Lock],
    wraps=redis.lock.Lock,
    executor=EXECUTOR,
    run=["*"],
    omit=["register_scripts", "LUA_*", "lua_*"],  # the Lua scripts the lock registers itself
):
    """A redis lock: ``acquire``, ``release``, ``extend`` and ``async with`` run on the pool.

    redis-py keeps a lock's token in a ``threading.local`` unless ``thread_local=False``: a
    lock acquired on one pool thread and released on another would not find its token. Ask
    for ``client.lock(name, thread_local=False)`` when you call ``acquire``/``release``
    yourself.
    """


class AsyncRedis(
    offload.Facade[redis.Redis],
    wraps=redis.Redis,
    executor=EXECUTOR,
    run=["*"],
    sync=["pipeline", "lock", "client"],
    iterate=["*"],  # scan_iter and its kin: keys cross to the loop up to 256 at a time
    prefetch=256,
    attrs=["connection_pool"],
    wrap=[AsyncPipeline, AsyncLock],
    omit=LEFT_OUT,
):
    """A redis client whose commands run on the ``redis_driver.io`` pool, or on its lane."""


def connect(
    url: str = "redis://localhost:6379/0",
    *,
    executor: Executor | str | None = None,
    **kwargs: Any,
) -> AsyncRedis:
    """A client for ``url``; ``kwargs`` go to ``redis.Redis.from_url``.

    Nothing connects yet: redis-py opens sockets on the first command, on the pool. Pass
    ``executor`` to use another executor than ``EXECUTOR`` for this client.
    """
    return AsyncRedis(redis.Redis.from_url(url, **kwargs), executor=executor)


class RedisLanes:
    """``n`` redis clients of one connection each, each on a lane of ``LANES``.

    ``pick()`` deals them out round-robin. Round-robin rather than least busy: a unit of
    work is a few commands, all about as long, so turns spread them evenly, at the cost of a
    counter; knowing which lane is least busy would take a count kept around every call.
    The price is that a slow unit (a big ``SCAN``, a Lua script) delays the units dealt to
    its lane after it: keep blocking commands (``BLPOP``) on a ``connect()`` client.
    """

    def __init__(self, clients: list[AsyncRedis]) -> None:
        if not clients:
            raise ValueError("RedisLanes needs at least one client")
        self.clients = tuple(clients)
        self._turns: Iterator[AsyncRedis] = itertools.cycle(self.clients)

    def pick(self) -> AsyncRedis:
        """The next client, round-robin: use it for one unit of work (its commands, or
        ``offload.within(client, fn)``)."""
        return next(self._turns)

    def within(
        self, fn: Callable[Concatenate[redis.Redis, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[R]:
        """``fn(sync_client, *args, **kwargs)`` on the next lane: a unit of work in one hop."""
        return offload.within(self.pick(), fn, *args, **kwargs)

    async def close(self) -> None:
        """Close every client's connection, each on its lane; the lanes stay with the name."""
        await asyncio.gather(*(client.close() for client in self.clients))


async def connect_lanes(
    url: str = "redis://localhost:6379/0", n: int = 4, **kwargs: Any
) -> RedisLanes:
    """``n`` clients for ``url``, each with one connection, on a lane of ``LANES`` of its own.

    ``kwargs`` go to ``redis.Redis.from_url``. Each client is made on its lane, with
    ``single_connection_client=True`` unless told otherwise: it keeps one socket, opened
    there now (so this raises if the server is unreachable), rather than checking a socket
    out of its pool for every command, which polls the socket each time. The lanes are the
    name's: while there are no more live clients than lanes, each has a thread to itself;
    past that, clients share lanes, which stays correct (redis-py's clients are thread-safe).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"connect_lanes needs a positive int of clients, got {n!r}")
    kwargs.setdefault("single_connection_client", True)

    async def one() -> AsyncRedis:
        lane = offload.lane(LANES)
        sync_client = await offload.offload(redis.Redis.from_url, executor=lane)(url, **kwargs)
        return AsyncRedis(sync_client, executor=lane)

    made = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    clients = [client for client in made if isinstance(client, AsyncRedis)]
    failed = [error for error in made if isinstance(error, BaseException)]
    if failed:
        await asyncio.gather(*(client.close() for client in clients))
        raise failed[0]
    return RedisLanes(clients)
