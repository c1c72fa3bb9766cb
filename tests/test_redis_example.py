"""The example redis-py driver and its Tornado app: real HTTP and redis-py, a real redis-server."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.exceptions
from examples import redis_app, redis_driver
from tornado import gen
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application

import offload
from tests.conftest import WAIT, hold, lane_thread, repointed
from tests.servers import RedisServer, free_port
from tests.test_sqlite_example import Heartbeat, until


def sync_client(server: RedisServer) -> redis.Redis:
    """A plain redis-py client, to look at the server behind the app's back."""
    return redis.Redis.from_url(server.url, decode_responses=True)


def thread_name(_client: redis.Redis) -> str:
    """Where a unit of work runs (for ``offload.within``)."""
    return threading.current_thread().name


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis_driver.AsyncRedis]:
    """The driver's client on an emptied server; its sockets are closed afterwards."""
    with sync_client(redis_server) as plain:
        plain.flushall()
    made = redis_driver.connect(redis_server.url, decode_responses=True)
    yield made
    made.__wrapped__.close()


class RedisAppTest(AsyncHTTPTestCase):
    """The visit counter served over HTTP, in front of the session's redis-server."""

    server: RedisServer

    @pytest.fixture(autouse=True)
    def _server(self, redis_server: RedisServer) -> None:
        self.server = redis_server
        with sync_client(redis_server) as plain:
            plain.flushall()

    def get_app(self) -> Application:
        url = self.server.url
        self.lanes = self.io_loop.run_sync(lambda: redis_app.make_client(url))
        return redis_app.make_app(self.lanes)

    def get_http_client(self) -> AsyncHTTPClient:
        return AsyncHTTPClient(force_instance=True, max_clients=64)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.lanes.close)
        del self.lanes  # their lanes go back to the name for the next test
        super().tearDown()

    async def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        if body is None and method == "POST":
            body = ""
        response: HTTPResponse = await self.http_client.fetch(
            self.get_url(path), method=method, body=body, raise_error=False, request_timeout=WAIT
        )
        return response.code, json.loads(response.body) if response.body else None

    @gen_test(timeout=WAIT)
    async def test_a_visit_runs_four_commands_and_is_counted(self) -> None:
        """POST /visits/<name> increments, stores the body, reads it back and sets an expiry."""
        assert await self.call("POST", "/visits/home", "first") == (
            200,
            {"name": "home", "visits": 1, "last": "first"},
        )
        assert await self.call("POST", "/visits/home", "second") == (
            200,
            {"name": "home", "visits": 2, "last": "second"},
        )
        assert await self.call("GET", "/visits/home") == (200, {"name": "home", "visits": 2})
        with sync_client(self.server) as plain:
            assert plain.get("last:home") == "second"
            assert 0 < plain.ttl("visits:home") <= redis_app.TTL

    @gen_test(timeout=WAIT)
    async def test_events_go_in_one_pipeline_and_are_trimmed(self) -> None:
        """POST /events/<name> appends and trims in one MULTI/EXEC; bad input is a 400."""
        assert await self.call("POST", "/events/feed", json.dumps(["a", "b"])) == (
            200,
            {"name": "feed", "length": 2},
        )
        many = [f"e{n}" for n in range(150)]
        assert await self.call("POST", "/events/feed", json.dumps(many)) == (
            200,
            {"name": "feed", "length": redis_app.KEEP},
        )
        with sync_client(self.server) as plain:
            assert plain.lrange("events:feed", 0, -1) == many[-redis_app.KEEP :]
        assert (await self.call("POST", "/events/feed", json.dumps([1, 2])))[0] == 400
        assert (await self.call("POST", "/events/feed", "[]"))[0] == 400

    @gen_test(timeout=WAIT)
    async def test_keys_are_scanned_across_several_batches(self) -> None:
        """GET /keys?match= returns every matching key, though SCAN hands them out in batches."""
        wanted = [f"visits:{n}" for n in range(250)]
        with sync_client(self.server) as plain:
            plain.mset(dict.fromkeys(wanted, 1))
            plain.mset({f"other:{n}": 1 for n in range(50)})
        assert await self.call("GET", "/keys?match=visits:*") == (200, sorted(wanted))
        code, everything = await self.call("GET", "/keys")
        assert code == 200
        assert len(everything) == 300

    @gen_test(timeout=WAIT)
    async def test_fifty_concurrent_visits_are_each_counted_once(self) -> None:
        """50 requests at once all succeed, and see the counts 1 to 50, each exactly once."""
        responses = await gen.multi(
            [self.call("POST", "/visits/busy", f"visitor {n}") for n in range(50)]
        )
        assert [code for code, _ in responses] == [200] * 50
        assert sorted(body["visits"] for _, body in responses) == list(range(1, 51))
        assert await self.call("GET", "/visits/busy") == (200, {"name": "busy", "visits": 50})

    @gen_test(timeout=WAIT * 2)
    async def test_the_app_answers_503_while_redis_is_down_and_recovers(self) -> None:
        """Killed redis: requests fail at once with 503; restarted on its port: they succeed."""
        assert (await self.call("POST", "/visits/home", "before"))[0] == 200
        self.server.kill()
        try:
            code, body = await self.call("POST", "/visits/home", "while down")
            assert code == 503
            assert body["error"].startswith("redis unavailable")
            assert (await self.call("GET", "/keys"))[0] == 503  # the scan's error, in order
            assert (await self.call("POST", "/events/feed", '["x"]'))[0] == 503
        finally:
            self.server.start(same_port=True)
        # The pooled sockets died with the old server; the client reconnects by itself.
        assert await self.call("POST", "/visits/home", "after") == (
            200,
            {"name": "home", "visits": 1, "last": "after"},  # no persistence: counting anew
        )
        assert (await self.call("GET", "/keys?match=visits:*")) == (200, ["visits:home"])

    @gen_test(timeout=WAIT)
    async def test_requests_run_under_the_lanes_name(self) -> None:
        """With every lane held, a visit queues under ``redis_driver.lanes`` until one frees."""
        before = offload.stats()[redis_driver.LANES]
        started, release = threading.Event(), threading.Event()
        held = [
            offload.within(client, lambda _r: hold(started, release)())
            for client in self.lanes.clients
        ]
        lanes = len(held)
        try:
            await until(lambda: offload.stats()[redis_driver.LANES]["running"] == lanes)
            visiting = gen.convert_yielded(self.call("POST", "/visits/queued", "x"))
            await until(lambda: offload.stats()[redis_driver.LANES]["queued"] == 1)
            assert not visiting.done()
        finally:
            release.set()
        assert await visiting == (200, {"name": "queued", "visits": 1, "last": "x"})
        assert all(await asyncio.gather(*held))
        after = offload.stats()[redis_driver.LANES]
        assert after["completed"] - before["completed"] == lanes + 1  # the visit: one hop
        assert after["running"] == after["queued"] == 0

    @gen_test(timeout=WAIT)
    async def test_each_lane_keeps_one_thread_and_one_socket_under_load(self) -> None:
        """50 concurrent visits: each client stays on its thread and socket; none is opened."""
        clients = self.lanes.clients

        def where(sync_client: redis.Redis) -> tuple[str, int]:
            return threading.current_thread().name, sync_client.client_id()

        placed = [await offload.within(client, where) for client in clients]
        assert [name for name, _ in placed] == [lane_thread(c._executor) for c in clients]
        assert len({name for name, _ in placed}) == len(clients) == redis_app.LANES
        assert len({socket for _, socket in placed}) == len(clients)
        with sync_client(self.server) as plain:
            sockets = len(plain.client_list())
            responses = await gen.multi(
                [self.call("POST", "/visits/busy", f"visitor {n}") for n in range(50)]
            )
            assert [code for code, _ in responses] == [200] * 50
            assert len(plain.client_list()) == sockets  # the lanes' sockets served them all
        assert [await offload.within(client, where) for client in clients] == placed

    @gen_test(timeout=WAIT)
    async def test_the_app_keeps_working_when_the_lanes_name_is_repointed(self) -> None:
        """``register(LANES, Lanes(2), replace=True)``: the clients' calls move there, and work."""
        assert (await self.call("POST", "/visits/home", "before"))[0] == 200
        with repointed(
            redis_driver.LANES,
            offload.Lanes(2, name="redis-repointed"),
            then=lambda: offload.Lanes(8, name="redis_lane"),
        ):
            threads = [await offload.within(c, thread_name) for c in self.lanes.clients]
            assert {name.rsplit("_", 1)[0] for name in threads} == {"redis-repointed"}
            assert await self.call("POST", "/visits/home", "after") == (
                200,
                {"name": "home", "visits": 2, "last": "after"},
            )
            assert (await self.call("POST", "/events/feed", '["x"]'))[0] == 200
            assert await self.call("GET", "/keys?match=visits:*") == (200, ["visits:home"])


async def test_connect_lanes_refuses_a_count_that_is_not_positive(
    redis_server: RedisServer,
) -> None:
    """``connect_lanes(url, 0)`` says what it needs, before it connects anything."""
    with pytest.raises(ValueError, match="positive int of clients, got 0"):
        await redis_driver.connect_lanes(redis_server.url, 0)


async def test_connect_lanes_raises_when_the_server_is_unreachable() -> None:
    """Each client connects on its lane at once: no server, redis-py's ConnectionError."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(redis.exceptions.ConnectionError):
        await redis_driver.connect_lanes(url, 2, socket_connect_timeout=1)


async def test_commands_run_on_the_drivers_pool(client: redis_driver.AsyncRedis) -> None:
    """The client's commands run on threads of the ``redis_driver.io`` pool, not the loop's."""
    threads: list[str] = []

    def body(pipe: Any) -> None:
        threads.append(threading.current_thread().name)
        pipe.multi()
        pipe.set("k", "v")

    await client.transaction(body, "k")
    assert threads
    assert threads[0].startswith("redis_driver")
    assert threads[0] != threading.current_thread().name


async def test_a_client_can_be_given_an_executor_of_its_own(redis_server: RedisServer) -> None:
    """``connect(executor=...)`` beats the registered name, for that client only."""
    pool = offload.ThreadPool(2, name="own-redis")
    own = redis_driver.connect(redis_server.url, executor=pool)
    try:
        seen: list[str] = []
        await own.transaction(lambda _pipe: seen.append(threading.current_thread().name))
        assert seen[0].startswith("own-redis")
    finally:
        own.__wrapped__.close()
        pool.shutdown()


async def test_watch_transactions_stay_consistent_under_contention(
    client: redis_driver.AsyncRedis,
) -> None:
    """20 concurrent read-modify-write transactions (WATCH/MULTI/EXEC) lose no update."""

    def add_one(pipe: Any) -> None:
        value = int(pipe.get("total") or 0)  # after WATCH: immediate, on the pool's thread
        pipe.multi()
        pipe.set("total", value + 1)

    await asyncio.gather(*(client.transaction(add_one, "total") for _ in range(20)))
    assert await client.get("total") == "20"


async def test_the_loop_keeps_running_while_a_command_blocks(
    client: redis_driver.AsyncRedis, redis_server: RedisServer
) -> None:
    """A BLPOP waiting on the server holds a pool thread, not the loop: a heartbeat ticks on."""
    with Heartbeat() as heartbeat:
        popped = asyncio.ensure_future(client.blpop(["queue"], timeout=WAIT))
        await until(lambda: heartbeat.ticks >= 5)
        assert not popped.done()
        with sync_client(redis_server) as plain:
            plain.rpush("queue", "job")
        assert tuple(await popped) == ("queue", "job")  # a list or a tuple, by redis-py release
    assert heartbeat.worst_lag < 1.0


async def test_scans_iterate_on_the_pool(client: redis_driver.AsyncRedis) -> None:
    """``scan_iter``, ``hscan_iter``, ``sscan_iter`` and ``zscan_iter`` work with ``async for``."""
    await client.mset({f"s:{n}": n for n in range(30)})
    await client.hset("h", mapping={"a": 1, "b": 2})
    await client.sadd("set", "x", "y")
    await client.zadd("z", {"m": 1.0})
    assert sorted([key async for key in client.scan_iter(match="s:*", count=7)]) == sorted(
        f"s:{n}" for n in range(30)
    )
    assert dict([item async for item in client.hscan_iter("h")]) == {"a": "1", "b": "2"}
    assert sorted([member async for member in client.sscan_iter("set")]) == ["x", "y"]
    assert [item async for item in client.zscan_iter("z")] == [("m", 1.0)]
    assert redis_driver.AsyncRedis.scan_iter.__doc__ == redis.Redis.scan_iter.__doc__


async def test_a_lock_without_thread_local_works_through_the_pool(
    client: redis_driver.AsyncRedis,
) -> None:
    """``lock(thread_local=False)``: acquire, contend, release and ``async with`` all work."""
    name = f"lock:{uuid.uuid4().hex}"
    first = client.lock(name, timeout=WAIT, thread_local=False)
    second = client.lock(name, timeout=WAIT, thread_local=False)
    assert isinstance(first, redis_driver.AsyncLock)
    assert await first.acquire(blocking=False)
    assert not await second.acquire(blocking=False)  # held by first
    assert await first.owned()
    await first.release()
    assert await second.acquire(blocking=False)
    await second.release()
    async with client.lock(name, timeout=WAIT, thread_local=False):
        assert await client.exists(name) == 1
    assert await client.exists(name) == 0


# The token is missing on the other thread: AttributeError from redis-py's threading.local
# (LockError should a redis-py release check first). Only these count as the expected
# failure; a server that cannot start still fails the test.
async def test_async_with_releases_a_thread_local_lock(redis_server: RedisServer) -> None:
    """``async with client.lock(name)`` releases redis-py's thread-local lock: the block keeps
    the thread that entered it, so another call on the pool takes the other thread, and the
    exit finds its token."""
    pool = offload.ThreadPool(2, name="lock-test")
    own = redis_driver.connect(redis_server.url, executor=pool)
    name = f"lock:{uuid.uuid4().hex}"
    started, release = threading.Event(), threading.Event()

    def occupy() -> bool:
        started.set()
        return release.wait(WAIT)

    try:
        async with own.lock(name, timeout=WAIT):
            busy = offload.offload(occupy, executor=pool)()  # the thread the block did not take
            assert await asyncio.to_thread(started.wait, WAIT)
        release.set()
        assert await busy
        assert await own.exists(name) == 0
    finally:
        release.set()
        own.__wrapped__.delete(name)
        own.__wrapped__.close()
        pool.shutdown()


def test_the_driver_facades_are_complete() -> None:
    """The facades cover redis-py's client, pipeline and lock; what they omit is on purpose."""
    offload.assert_parity(redis_driver.AsyncRedis)
    offload.assert_parity(redis_driver.AsyncPipeline)
    offload.assert_parity(redis_driver.AsyncLock)
    assert redis_driver.AsyncRedis._offload_omitted == set(redis_driver.LEFT_OUT)
    declared = redis_driver.AsyncRedis._offload_declared
    commands = [name for name, keyword in declared.items() if keyword == "run"]
    assert len(commands) > 300  # run=["*"]: every command of the installed redis-py
    assert {name for name, keyword in declared.items() if keyword == "iterate"} == {
        "scan_iter",
        "sscan_iter",
        "hscan_iter",
        "zscan_iter",
    }


async def test_client_gives_another_facade_on_the_same_executor(
    client: redis_driver.AsyncRedis,
) -> None:
    """``client()`` returns a redis.Redis: by its type it comes back as an AsyncRedis."""
    single = client.client()
    try:
        assert type(single) is redis_driver.AsyncRedis
        assert single._executor == client._executor
        assert await single.ping() is True
    finally:
        single.__wrapped__.close()


async def test_instance_attributes_pass_through_when_declared(
    client: redis_driver.AsyncRedis,
) -> None:
    """``connection_pool`` (attrs=) reads and sets the sync client's; an undeclared set fails."""
    pool = client.__wrapped__.connection_pool
    assert client.connection_pool is pool
    client.connection_pool = pool  # lands on the sync client, not on the facade
    assert "connection_pool" not in vars(client)
    with pytest.raises(AttributeError, match=r"AsyncRedis has no attribute 'response_cb'"):
        client.response_cb = {}
    assert not hasattr(client.__wrapped__, "response_cb")


async def test_a_pipeline_buffers_on_the_callers_thread(client: redis_driver.AsyncRedis) -> None:
    """Pipeline commands chain and buffer without a round trip; ``execute`` sends them all."""
    pipe = client.pipeline()
    assert isinstance(pipe, redis_driver.AsyncPipeline)
    assert pipe.set("a", 1).incr("a") is pipe  # buffered: the facade itself comes back
    assert await client.get("a") is None  # nothing sent yet
    assert await pipe.execute() == [True, 2]
    assert await client.get("a") == "2"


async def test_redis_errors_reach_the_caller_as_themselves(
    client: redis_driver.AsyncRedis,
) -> None:
    """A command the server rejects raises redis-py's own ResponseError in the coroutine."""
    await client.set("text", "not a number")
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
        await client.incr("text")
