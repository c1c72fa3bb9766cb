"""A small visit counter: Tornado in front, redis behind through the redis-py driver.

Run it with ``python -m examples.redis_app --port 8888 --redis redis://localhost:6379/0``
from the repository root (``python examples/redis_app.py`` works too), then::

    curl -X POST localhost:8888/visits/home -d 'from curl'
    curl localhost:8888/visits/home
    curl -X POST localhost:8888/events/home -d '["opened", "scrolled"]'
    curl 'localhost:8888/keys?match=visits:*'

The app serves from the driver's lanes (``connect_lanes``): four clients of one connection
each, each on a thread of its own, dealt to requests in turn; a visit's four commands go to
its client's thread in one hop (``offload.within``). The loop only waits. While redis is
unreachable the handlers answer 503 at once (redis refuses the connection, or the client's
timeouts end the wait); once it is back, the client reconnects on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import redis
import redis.backoff
import redis.exceptions
import redis.retry
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.log import app_log
from tornado.netutil import bind_sockets

if not __package__:  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.redis_driver import AsyncRedis, RedisLanes, connect_lanes

#: How long a visit counter lives after its last visit, in seconds.
TTL = 3600
#: How many events a list keeps.
KEEP = 100
#: Errors that mean "redis is unreachable": a 503, not a 500.
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


#: How many lanes (clients of one connection, a thread each) the app serves from.
LANES = 4


async def make_client(url: str, lanes: int = LANES) -> RedisLanes:
    """Clients that give up quickly: a web request should fail fast rather than hang."""
    return await connect_lanes(
        url,
        lanes,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        # Two quick retries cover a server that restarted (the pooled socket is dead, a new
        # one works); a server that is down still fails within a fraction of a second.
        retry=redis.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.2, base=0.02), 2),
    )


class Handler(tornado.web.RequestHandler):
    """JSON out; redis being unreachable is a 503."""

    @property
    def lanes(self) -> RedisLanes:
        """The application's clients."""
        lanes: RedisLanes = self.settings["redis"]
        return lanes

    @property
    def redis(self) -> AsyncRedis:
        """A client for this request's unit of work: the next lane's."""
        return self.lanes.pick()

    def send(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def body_json(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except ValueError:
            raise tornado.web.HTTPError(400, reason="the body is not JSON") from None

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, UNAVAILABLE):  # expected while redis is down: no traceback
            app_log.warning("redis unavailable: %s", value)
        else:
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:  # noqa: ARG002  # Tornado's signature
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, UNAVAILABLE):
            self.set_status(503)
            self.finish({"error": f"redis unavailable: {exc}"})
            return
        reason = (
            exc.reason
            if isinstance(exc, tornado.web.HTTPError) and exc.reason
            else "internal error"
        )
        self.finish({"error": reason})


def visit(client: redis.Redis, name: str, note: str) -> tuple[int, str]:
    """Count a visit and keep its note: four commands, plain sync redis-py code."""
    count_key, last_key = f"visits:{name}", f"last:{name}"
    visits = client.incr(count_key)
    client.set(last_key, note)
    last = client.get(last_key)
    client.expire(count_key, TTL)
    return visits, last  # type: ignore[return-value]  # decode_responses: int and str


class VisitsHandler(Handler):
    """POST counts a visit (four commands, one hop to a lane); GET reads the count."""

    async def post(self, name: str) -> None:
        note = self.request.body.decode(errors="replace")
        visits, last = await self.lanes.within(visit, name, note)
        self.send({"name": name, "visits": visits, "last": last})

    async def get(self, name: str) -> None:
        visits = await self.redis.get(f"visits:{name}")
        self.send({"name": name, "visits": int(visits or 0)})


class EventsHandler(Handler):
    """POST appends a list of events, keeps the last ``KEEP``: one pipeline, one round trip."""

    async def post(self, name: str) -> None:
        events = self.body_json()
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) for e in events)
        ):
            raise tornado.web.HTTPError(400, reason="send a non-empty JSON list of strings")
        key = f"events:{name}"
        async with self.redis.pipeline() as pipe:  # MULTI/EXEC: all of it, or none
            pipe.rpush(key, *events).ltrim(key, -KEEP, -1).llen(key)
            _, _, length = await pipe.execute()
        self.send({"name": name, "length": length})


class KeysHandler(Handler):
    """GET lists the keys matching ``?match=`` (default ``*``), scanned a batch at a time."""

    async def get(self) -> None:
        match = self.get_argument("match", "*")
        keys = [key async for key in self.redis.scan_iter(match=match, count=100)]
        self.send(sorted(keys))


def make_app(lanes: RedisLanes) -> tornado.web.Application:
    """The application, serving from ``lanes``."""
    return tornado.web.Application(
        [
            (r"/visits/([\w-]+)", VisitsHandler),
            (r"/events/([\w-]+)", EventsHandler),
            (r"/keys", KeysHandler),
        ],
        redis=lanes,
    )


async def serve(port: int, url: str) -> None:
    """Serve until interrupted."""
    lanes = await make_client(url)
    sockets = bind_sockets(port, "localhost")  # port 0: any free port, printed below
    server = HTTPServer(make_app(lanes))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    print(f"visits: http://localhost:{port}/visits/home (redis {url})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()
        await lanes.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument("--redis", default="redis://localhost:6379/0", help="the redis URL")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        asyncio.run(serve(args.port, args.redis))


if __name__ == "__main__":
    main()
