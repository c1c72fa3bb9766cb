"""The Tornado app the drivers benchmark loads: one client variant per process.

``python -m benchmarks.driver_app --variant driver --port N --redis URL --pg CONNINFO``
serves the workloads over one variant of the clients (see ``VARIANTS``) until it is killed.
``benchmarks/drivers.py`` starts one process per variant and setting, so that the load
generator, the harness and each server have a GIL of their own.

Every workload is a *unit of work* written twice with the same commands: ``run`` awaits the
commands one by one on any async client (redis.asyncio and psycopg's ``AsyncConnection``, or
offload's facades over redis-py and psycopg's sync clients), and ``sync`` is the same work
as one blocking function, for the variants that send a whole unit of work to the
connection's thread in one hop. A unit checks what it read and raises if it is wrong: the
handler then answers 500, which the harness counts as an error.

``GET /_bench/lag`` answers the event loop's lag since the previous read (how late a timer
that fires every 5 ms ran: percentiles and maximum, in ms) and starts a new window.
``GET /_bench/handovers`` answers how often a thread wakes the loop in one request of each
workload, counted before the load (see ``count_handovers``). ``GET /_bench/idle`` answers
once no request is in flight: wrk's last requests run on after it stops, and would load
the next sample.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
import redis.asyncio
import tornado.web
from examples import pg_driver, redis_driver
from tornado.httpserver import HTTPServer

import offload

#: Keys ``scan:0`` ... of the scan workload, and rows of the cursor scan's table.
SCAN_KEYS = 1000
SCAN_ROWS = 1000
#: Accounts of the transaction workload; a transfer goes from an odd one to the next.
ACCOUNTS = 1000
#: Keys the command and pipeline workloads cycle through.
HOT_KEYS = 100
#: Connections of every PostgreSQL pool, native or offload's; lanes of the lane variants.
POOL_SIZE = 4
#: How often the lag probe's timer fires, in seconds.
LAG_INTERVAL = 0.005
#: Requests run one by one to count the handovers of each workload.
HANDOVER_REQUESTS = 5


# ---- the units of work ------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One request's work: awaited command by command (``run``), or as one call (``sync``)."""

    run: Callable[..., Awaitable[Any]]
    sync: Callable[..., Any]


async def redis_commands(r: Any, key: str) -> int:
    await r.incr(key)
    seen = await r.get(key)
    await r.set(f"{key}:last", seen)
    await r.expire(key, 60)
    return int(seen)


def redis_commands_sync(r: redis.Redis, key: str) -> int:
    r.incr(key)
    seen = r.get(key)
    r.set(f"{key}:last", seen)  # type: ignore[arg-type]
    r.expire(key, 60)
    return int(seen)  # type: ignore[arg-type]


async def redis_pipeline(r: Any, key: str) -> int:
    async with r.pipeline() as pipe:
        pipe.incr(key).get(key).set(f"{key}:last", "x").expire(key, 60)
        _, seen, _, _ = await pipe.execute()
    return int(seen)


def redis_pipeline_sync(r: redis.Redis, key: str) -> int:
    with r.pipeline() as pipe:
        pipe.incr(key).get(key).set(f"{key}:last", "x").expire(key, 60)
        _, seen, _, _ = pipe.execute()
    return int(seen)


def _counted(found: int, expected: int, what: str) -> int:
    if found != expected:
        raise RuntimeError(f"found {found} {what}, expected {expected}")
    return found


async def redis_scan(r: Any) -> int:
    found = 0
    async for _ in r.scan_iter(match="scan:*", count=100):
        found += 1
    return _counted(found, SCAN_KEYS, "keys")


def redis_scan_sync(r: redis.Redis) -> int:
    found = sum(1 for _ in r.scan_iter(match="scan:*", count=100))
    return _counted(found, SCAN_KEYS, "keys")


SELECT_SOURCE = "SELECT balance FROM accounts WHERE id = %s FOR UPDATE"
DEBIT = "UPDATE accounts SET balance = balance - 1 WHERE id = %s"
CREDIT = "UPDATE accounts SET balance = balance + 1 WHERE id = %s"
RECORD = "INSERT INTO ledger (src, dst, amount) VALUES (%s, %s, 1)"
SCAN = "SELECT id, n FROM scan_rows"


async def pg_transaction(conn: Any, src: int, dst: int) -> int:
    async with conn.transaction():  # src < dst: rows are locked in one order, no deadlocks
        cursor = await conn.execute(SELECT_SOURCE, (src,))
        (balance,) = await cursor.fetchone()
        await conn.execute(DEBIT, (src,))
        await conn.execute(CREDIT, (dst,))
        await conn.execute(RECORD, (src, dst))
    return int(balance)


def pg_transaction_sync(conn: psycopg.Connection[Any], src: int, dst: int) -> int:
    with conn.transaction():
        row = conn.execute(SELECT_SOURCE, (src,)).fetchone()
        conn.execute(DEBIT, (src,))
        conn.execute(CREDIT, (dst,))
        conn.execute(RECORD, (src, dst))
    assert row is not None
    return int(row[0])


async def pg_cursor_scan(conn: Any) -> int:
    total = 0
    async with conn.transaction(), conn.cursor("scan") as cursor:
        await cursor.execute(SCAN)
        async for row in cursor:
            total += row[1]
    return _counted(total, SCAN_ROWS * (SCAN_ROWS - 1) // 2, "as the sum of n")


def pg_cursor_scan_sync(conn: psycopg.Connection[Any]) -> int:
    total = 0
    with conn.transaction(), conn.cursor("scan") as cursor:
        cursor.execute(SCAN)
        for row in cursor:
            total += row[1]
    return _counted(total, SCAN_ROWS * (SCAN_ROWS - 1) // 2, "as the sum of n")


class Empty:
    """The sync client of the ``empty`` workload: ``call()`` does nothing."""

    def call(self) -> None:
        """Nothing, on the thread it is sent to."""


class NativeEmpty:
    """The native client of the ``empty`` workload: ``await call()`` does nothing."""

    async def call(self) -> None:
        """Nothing, on the loop."""


async def empty_calls(client: Any) -> int:
    for _ in range(4):
        await client.call()
    return 4


def empty_calls_sync(client: Empty) -> int:
    for _ in range(4):
        client.call()
    return 4


REDIS_COMMANDS = Unit(redis_commands, redis_commands_sync)
REDIS_PIPELINE = Unit(redis_pipeline, redis_pipeline_sync)
REDIS_SCAN = Unit(redis_scan, redis_scan_sync)
PG_TRANSACTION = Unit(pg_transaction, pg_transaction_sync)
PG_CURSOR_SCAN = Unit(pg_cursor_scan, pg_cursor_scan_sync)
EMPTY_CALLS = Unit(empty_calls, empty_calls_sync)


# ---- one hop per unit of work, and lanes ------------------------------------------------


class LaneSet:
    """Facades dealt to requests round-robin, each on a thread of its own."""

    def __init__(self, clients: list[offload.Facade[Any]]) -> None:
        self.clients = clients
        self._turns: Iterator[offload.Facade[Any]] = itertools.cycle(clients)

    def pick(self) -> offload.Facade[Any]:
        """The next lane's client."""
        return next(self._turns)


def make_lanes(
    count: int, sync_client: Callable[[], Any], facade: type[Any], name: str, executor: str
) -> LaneSet:
    """``count`` lanes: a thread each, with a sync client of its own.

    ``executor="lanes"``: an ``offload.Lanes(count)`` registered as ``name``, and a lane
    handle per client (the public way: the calls count under the name). ``"pool"``: an
    ``offload.ThreadPool(1)`` per client, unnamed, for comparison.
    """
    if executor == "lanes":
        offload.register(name, offload.Lanes(count, name=name), replace=True)
        return LaneSet([facade(sync_client(), executor=offload.lane(name)) for _ in range(count)])
    return LaneSet(
        [
            facade(sync_client(), executor=offload.ThreadPool(1, name=f"{name}-{number}"))
            for number in range(count)
        ]
    )


EmptyFacade = offload.facade(Empty, executor=redis_driver.EXECUTOR, run=["call"])


# ---- the variants -----------------------------------------------------------------------


@dataclass
class Settings:
    redis_url: str
    conninfo: str
    lanes: int
    pg: bool
    #: Lanes of an ``offload.Lanes`` under a name ("lanes") or one-worker ThreadPools ("pool").
    lane_executor: str = "lanes"
    #: A lane's redis client: one connection ("single") or redis-py's pool of them ("pooled").
    lane_connection: str = "single"


class Native:
    """redis.asyncio and psycopg's AsyncConnection: no threads at all."""

    async def start(self, settings: Settings) -> None:
        self.redis = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
        self.empty: Any = NativeEmpty()
        if settings.pg:
            conns = [
                await psycopg.AsyncConnection.connect(settings.conninfo, autocommit=True)
                for _ in range(POOL_SIZE)
            ]
            # The driver's own small pool, lending psycopg's AsyncConnections instead of
            # facades: both variants borrow connections the same way.
            self.pool = pg_driver.Pool(settings.conninfo, conns)  # type: ignore[arg-type]

    async def on_redis(self, unit: Unit, *args: Any) -> Any:
        return await unit.run(self.redis, *args)

    async def on_pg(self, unit: Unit, *args: Any) -> Any:
        async with self.pool.connection() as conn:
            return await unit.run(conn, *args)

    async def on_empty(self, unit: Unit) -> Any:
        return await unit.run(self.empty)


class Driver(Native):
    """examples/redis_driver.py and examples/pg_driver.py as shipped: a hop per call."""

    async def start(self, settings: Settings) -> None:
        self.redis = redis_driver.connect(settings.redis_url, decode_responses=True)
        self.empty = EmptyFacade(Empty())
        if settings.pg:
            self.pool = await pg_driver.open_pool(settings.conninfo, size=POOL_SIZE)


class OneHop(Driver):
    """The shipped drivers, a unit of work per hop (on the pool, or on the connection's thread)."""

    async def on_redis(self, unit: Unit, *args: Any) -> Any:
        return await offload.within(self.redis, unit.sync, *args)

    async def on_pg(self, unit: Unit, *args: Any) -> Any:
        async with self.pool.connection() as conn:
            return await offload.within(conn, unit.sync, *args)

    async def on_empty(self, unit: Unit) -> Any:
        return await offload.within(self.empty, unit.sync)


class Lanes(Driver):
    """redis: ``redis_driver.connect_lanes``, one connection per lane; a hop per command.

    PostgreSQL has no row of its own: the driver's connections have a thread each already,
    and a transaction holds its connection, so lanes without one hop are the driver's path.
    """

    async def start(self, settings: Settings) -> None:
        await super().start(settings)

        single = settings.lane_connection == "single"

        def client() -> redis.Redis:
            return redis.Redis.from_url(
                settings.redis_url, decode_responses=True, single_connection_client=single
            )

        kind = settings.lane_executor
        self.lanes: LaneSet | redis_driver.RedisLanes
        if kind == "lanes":  # the driver's own: clients on lanes of redis_driver.LANES
            self.lanes = await redis_driver.connect_lanes(
                settings.redis_url,
                settings.lanes,
                decode_responses=True,
                single_connection_client=single,
            )
        else:
            self.lanes = make_lanes(
                settings.lanes, client, redis_driver.AsyncRedis, "bench.redis", kind
            )
        self.empty_lanes = make_lanes(settings.lanes, Empty, EmptyFacade, "bench.empty", kind)

    async def on_redis(self, unit: Unit, *args: Any) -> Any:
        return await unit.run(self.lanes.pick(), *args)

    async def on_empty(self, unit: Unit) -> Any:
        return await unit.run(self.empty_lanes.pick())


class LanesOneHop(Lanes):
    """Lanes, a whole unit of work per hop; PostgreSQL's units dealt to the pool's connections.

    A unit of work that runs whole on a connection's thread needs no borrowing: it queues
    behind the connection's other units, so the pool's connections are dealt round-robin.
    """

    async def start(self, settings: Settings) -> None:
        await super().start(settings)
        if settings.pg:
            self.pg_lanes = LaneSet(list(self.pool.connections))

    async def on_redis(self, unit: Unit, *args: Any) -> Any:
        return await offload.within(self.lanes.pick(), unit.sync, *args)

    async def on_pg(self, unit: Unit, *args: Any) -> Any:
        return await offload.within(self.pg_lanes.pick(), unit.sync, *args)

    async def on_empty(self, unit: Unit) -> Any:
        return await offload.within(self.empty_lanes.pick(), unit.sync)


VARIANTS: dict[str, type[Native]] = {
    "native": Native,
    "driver": Driver,
    "hop": OneHop,
    "lanes": Lanes,
    "lanes-hop": LanesOneHop,
}


# ---- the app ----------------------------------------------------------------------------


class LagProbe:
    """How late a timer that should fire every ``LAG_INTERVAL`` seconds runs, in a window."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.late: list[float] = []
        self._arm(self.loop.time())

    def _arm(self, now: float) -> None:
        self.loop.call_at(now + LAG_INTERVAL, self._tick, now + LAG_INTERVAL)

    def _tick(self, due: float) -> None:
        now = self.loop.time()
        self.late.append(max(0.0, now - due))
        self._arm(now)

    def window(self) -> dict[str, float | int]:
        """The window's figures, in ms; a new window starts."""
        late, self.late = sorted(self.late), []
        if not late:
            return {"ticks": 0}

        def at(share: float) -> float:
            return round(late[min(len(late) - 1, int(share * len(late)))] * 1000, 3)

        return {"ticks": len(late), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


class InFlight:
    """The requests the app is working on: wrk's last ones run on after it stops."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self.idle.set()


class Info(tornado.web.RequestHandler):
    def initialize(self, probe: LagProbe, handovers: dict[str, float], busy: InFlight) -> None:
        self.probe = probe
        self.handovers = handovers
        self.busy = busy

    async def get(self, what: str) -> None:
        if what == "idle":  # once the requests in flight are done
            await self.busy.idle.wait()
            answer: dict[str, Any] = {"busy": self.busy.count}
        elif what == "lag":
            answer = self.probe.window()
        else:
            answer = self.handovers
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(answer))


class Work(tornado.web.RequestHandler):
    def initialize(
        self, work: Callable[[], Awaitable[Any]], busy: InFlight, fail_every: int
    ) -> None:
        self.work = work
        self.busy = busy
        self.fail_every = fail_every

    async def get(self) -> None:
        self.busy.enter()
        try:
            result = await self.work()
        finally:
            self.busy.leave()
        if self.fail_every and next(_requests) % self.fail_every == 0:
            raise RuntimeError("an injected failure (--fail-every)")
        self.finish(str(result))


_requests = itertools.count(1)


def workloads(variant: Native, settings: Settings) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Path -> one request's work."""
    hot = itertools.cycle(f"hot:{number}" for number in range(HOT_KEYS))
    pairs = itertools.cycle((src, src + 1) for src in range(1, ACCOUNTS, 2))
    work: dict[str, Callable[[], Awaitable[Any]]] = {
        "/redis/commands": lambda: variant.on_redis(REDIS_COMMANDS, next(hot)),
        "/redis/pipeline": lambda: variant.on_redis(REDIS_PIPELINE, next(hot)),
        "/redis/scan": lambda: variant.on_redis(REDIS_SCAN),
        "/empty": lambda: variant.on_empty(EMPTY_CALLS),
    }
    if settings.pg:
        work["/pg/transaction"] = lambda: variant.on_pg(PG_TRANSACTION, *next(pairs))
        work["/pg/scan"] = lambda: variant.on_pg(PG_CURSOR_SCAN)
    return work


async def count_handovers(work: dict[str, Callable[[], Awaitable[Any]]]) -> dict[str, float]:
    """Per path, how often a thread wakes the loop in a request run alone.

    Every handover from a thread back to the loop goes through ``call_soon_threadsafe``
    (offload's deliveries, an iterator's wake-ups, a context's entry). Counted once, before
    the load, with the loop's method replaced for the count only: the load runs unwatched.
    Under load several deliveries share a wake-up, so these are upper bounds.
    """
    loop = asyncio.get_running_loop()
    calls = 0
    send = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return send(*args, **kwargs)

    found = {}
    for path, run in work.items():
        await run()  # threads started, connections opened
        calls = 0
        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        try:
            for _ in range(HANDOVER_REQUESTS):
                await run()
        finally:
            del loop.call_soon_threadsafe
        found[path] = calls / HANDOVER_REQUESTS
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.driver_app", description=__doc__)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True, help="the redis URL")
    parser.add_argument("--pg", help="the PostgreSQL connection string; none: no pg routes")
    parser.add_argument("--lanes", type=int, default=POOL_SIZE, help="lanes of lane variants")
    parser.add_argument("--lane-executor", choices=["lanes", "pool"], default="lanes")
    parser.add_argument("--lane-connection", choices=["single", "pooled"], default="single")
    parser.add_argument("--threads", type=int, help="threads of the redis driver's pool")
    parser.add_argument("--switchinterval", type=float, help="sys.setswitchinterval, seconds")
    parser.add_argument("--cpu", type=int, help="run the whole process on this CPU only")
    parser.add_argument("--fail-every", type=int, default=0, help="answer 500 every N requests")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    settings = Settings(
        args.redis,
        args.pg or "",
        args.lanes,
        pg=bool(args.pg),
        lane_executor=args.lane_executor,
        lane_connection=args.lane_connection,
    )
    variant = VARIANTS[args.variant]()
    await variant.start(settings)
    work = workloads(variant, settings)
    handovers = await count_handovers(work)
    busy = InFlight()
    info = {"probe": LagProbe(), "handovers": handovers, "busy": busy}
    app = tornado.web.Application(
        [
            (r"/_bench/(lag|handovers|idle)", Info, info),
            *(
                (path, Work, {"work": run, "busy": busy, "fail_every": args.fail_every})
                for path, run in work.items()
            ),
        ],
        log_function=lambda _: None,  # no access log: its cost is not the clients'
    )
    server = HTTPServer(app)
    server.listen(args.port, "127.0.0.1")
    await asyncio.Event().wait()  # until the harness stops the process


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cpu is not None:  # before any thread starts: threads inherit the mask
        os.sched_setaffinity(0, {args.cpu})
    if args.switchinterval is not None:
        sys.setswitchinterval(args.switchinterval)
    if args.threads is not None:  # an application's own registration, as the driver allows
        offload.register(
            redis_driver.EXECUTOR, lambda: offload.ThreadPool(args.threads, name="redis_driver")
        )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
