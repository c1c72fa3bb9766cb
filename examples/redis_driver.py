"""A Tornado-friendly redis client: declarations over redis-py's sync ``redis.Redis``.

redis-py's client is thread-safe: every command borrows a socket from the client's
connection pool for the length of the command. So the facade needs no thread per
connection; its commands run on a thread pool registered under ``EXECUTOR``, and the pool's
size bounds how many commands (and sockets) are in flight at once. An application points the
name at a pool of its own with ``offload.register("redis_driver.io", ...)``, before or after
importing this module.

    client = connect("redis://localhost:6379/0", decode_responses=True)
    await client.set("greeting", "hello")
    async with client.pipeline() as pipe:
        pipe.incr("hits").expire("hits", 60)        # buffered, on the caller's thread
        hits, _ = await pipe.execute()                # one round trip, on the pool
    async for key in client.scan_iter(match="user:*"):
        ...

What is declared how, and why:

- every command (``get``, ``incr``, ``eval``, ``xadd``, ..., about 400 of them) runs on the
  pool: the list is derived from the class, so it follows the installed redis-py;
- ``scan_iter`` and its kin return generators: their steps run on the pool too, one thread
  for an iteration's whole life (see ``examples/glue.py``);
- ``pipeline()`` and ``lock()`` only build objects, so they are called on the caller's
  thread; their results are facades in turn: on a pipeline, commands buffer (on the caller's
  thread) and ``execute()`` runs on the pool; a lock's ``acquire``/``release`` run on the pool.
- ``transaction(func, *watches)`` runs the whole WATCH/MULTI/EXEC retry loop on one pool
  thread, ``func`` included: it is the way to use WATCH (a pipeline facade's commands after
  ``watch()`` would run on the caller's thread, immediately, blocking the loop).

``LEFT_OUT`` lists what the facade does not offer, each with its reason.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import redis
import redis.client
import redis.lock

import offload
from examples.glue import iterating, plain_methods

#: The executor name the client's commands run on.
EXECUTOR = "redis_driver.io"

# A library default: 16 threads, so at most 16 commands (and sockets) at once. An
# application's offload.register(EXECUTOR, ...) replaces it, whenever it runs.
offload.register(EXECUTOR, lambda: offload.ThreadPool(16, name="redis_driver"), default=True)

#: Public names of ``redis.Redis`` the facade leaves out on purpose (the parity test ignores
#: exactly these). Names a given redis-py release lacks are dropped below.
LEFT_OUT_REASONS = {
    # Class methods: build the sync client with them, then wrap it (connect() does).
    "from_url": "a class method",
    "from_pool": "a class method",
    # A second client over the same pool: wrap it yourself, AsyncRedis(client.client()).
    "client": "returns a sync client",
    # Objects that hold a connection of their own and read from it in a loop.
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

#: Methods that return generators: stepped on the pool by the facade (see ``iterating``).
ITERATORS = ["scan_iter", "sscan_iter", "hscan_iter", "zscan_iter"]

#: Built on the caller's thread, wrapped in a facade below.
BUILDERS = ["pipeline", "lock"]

COMMANDS = plain_methods(redis.Redis, exclude={*LEFT_OUT, *ITERATORS, *BUILDERS})

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

#: What a pipeline facade leaves out besides ``LEFT_OUT``: nested pipelines, locks, WATCH
#: loops and scans make no sense on a buffer (use the client for them).
PIPELINE_LEFT_OUT = sorted({*LEFT_OUT, *ITERATORS, *BUILDERS, "transaction"})
PIPELINE_CONSTANTS = ["UNWATCH_COMMANDS"]

#: Lock attributes that are Lua scripts the lock registers for itself, not API.
LOCK_INTERNALS = [
    name
    for name in dir(redis.lock.Lock)
    if name.startswith(("LUA_", "lua_")) or name == "register_scripts"
]


class AsyncPipeline(
    offload.Facade[redis.client.Pipeline],
    wraps=redis.client.Pipeline,
    executor=EXECUTOR,
    run=PIPELINE_IO,
    sync=plain_methods(redis.client.Pipeline, exclude={*PIPELINE_IO, *PIPELINE_LEFT_OUT}),
):
    """A redis pipeline: commands buffer on the caller's thread, ``execute()`` runs on the pool.

    ``async with client.pipeline() as pipe:`` resets the pipeline (on the pool) at the end.
    """


class AsyncLock(
    offload.Facade[redis.lock.Lock],
    wraps=redis.lock.Lock,
    executor=EXECUTOR,
    run=plain_methods(redis.lock.Lock, exclude=set(LOCK_INTERNALS)),
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
    run=COMMANDS,
    sync=BUILDERS,
    wrap={"pipeline": AsyncPipeline, "lock": AsyncLock},
):
    """A redis client whose commands run on the ``redis_driver.io`` pool."""

    scan_iter = iterating(redis.Redis, "scan_iter")
    sscan_iter = iterating(redis.Redis, "sscan_iter")
    hscan_iter = iterating(redis.Redis, "hscan_iter")
    zscan_iter = iterating(redis.Redis, "zscan_iter")


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
