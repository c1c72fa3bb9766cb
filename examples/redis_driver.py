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

from concurrent.futures import Executor
from typing import Any

import redis
import redis.client
import redis.lock

import offload

#: The executor name the client's commands run on.
EXECUTOR = "redis_driver.io"

# A library default: 16 threads, so at most 16 commands (and sockets) at once. An
# application's offload.register(EXECUTOR, ...) replaces it, whenever it runs.
offload.register(EXECUTOR, lambda: offload.ThreadPool(16, name="redis_driver"), default=True)

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
    iterate=["*"],
    attrs=["connection_pool"],
    wrap=[AsyncPipeline, AsyncLock],
    omit=LEFT_OUT,
):
    """A redis client whose commands run on the ``redis_driver.io`` pool."""


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
