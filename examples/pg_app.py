"""A small bank: Tornado in front, PostgreSQL behind through the psycopg driver.

Run it with ``python -m examples.pg_app --port 8888 --dsn "host=localhost dbname=bank"``
from the repository root (``python examples/pg_app.py`` works too), then::

    curl -X POST localhost:8888/accounts -d '{"id": 1, "owner": "ann", "balance": 100}'
    curl -X POST localhost:8888/accounts -d '{"id": 2, "owner": "bob", "balance": 0}'
    curl -X POST localhost:8888/transfers -d '{"from": 1, "to": 2, "amount": 30}'
    curl localhost:8888/accounts
    curl localhost:8888/transfers

Every statement runs on its pooled connection's lane, a thread of the driver's
``pg_driver.connections`` that the connection keeps; the loop only waits. A transfer
that would overdraw is refused by the database (a CHECK constraint): 400. A connection the
server dropped fails its request with 503, and is replaced for the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.log import app_log
from tornado.netutil import bind_sockets

if not __package__:  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import offload
from examples.pg_driver import AsyncConnection, Pool, open_pool

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS accounts (
        id integer PRIMARY KEY,
        owner text NOT NULL,
        balance bigint NOT NULL CHECK (balance >= 0)
    )""",
    """CREATE TABLE IF NOT EXISTS transfers (
        id bigserial PRIMARY KEY,
        source integer NOT NULL REFERENCES accounts,
        target integer NOT NULL REFERENCES accounts,
        amount bigint NOT NULL CHECK (amount > 0)
    )""",
]

#: Lines written between flushes while the ledger streams out (the cursor's facade reads
#: up to 256 rows a round trip).
BATCH = 200


class Handler(tornado.web.RequestHandler):
    """JSON in, JSON out; rejected data is a 400, a lost connection a 503."""

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """Borrow a connection from the pool for the block; map database errors to HTTP."""
        pool: Pool = self.settings["pool"]
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.IntegrityError as exc:
            raise tornado.web.HTTPError(400, reason=f"rejected: {exc}".splitlines()[0]) from exc
        except psycopg.OperationalError as exc:
            app_log.warning("database unavailable: %s", exc)
            reason = f"database unavailable: {exc}".splitlines()[0]
            raise tornado.web.HTTPError(503, reason=reason) from exc

    def body_json(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except ValueError:
            raise tornado.web.HTTPError(400, reason="the body is not JSON") from None

    def send(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:  # noqa: ARG002  # Tornado's signature
        exc = kwargs.get("exc_info", (None, None, None))[1]
        reason = (
            exc.reason
            if isinstance(exc, tornado.web.HTTPError) and exc.reason
            else "internal error"
        )
        self.finish({"error": reason})


def whole(payload: Any, key: str) -> int:
    """``payload[key]`` as an int, or a 400 saying what was expected."""
    value = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise tornado.web.HTTPError(400, reason=f"{key!r} must be an integer")
    return value


class AccountsHandler(Handler):
    """GET lists the accounts (a query returning rows); POST opens one."""

    async def get(self) -> None:
        async with self.connection() as conn:
            cursor = await conn.execute("SELECT id, owner, balance FROM accounts ORDER BY id")
            rows = await cursor.fetchall()
        self.send([{"id": i, "owner": owner, "balance": balance} for i, owner, balance in rows])

    async def post(self) -> None:
        account = self.body_json()
        account_id, balance = whole(account, "id"), whole(account, "balance")
        owner = account.get("owner")
        if not isinstance(owner, str) or not owner:
            raise tornado.web.HTTPError(400, reason="'owner' must be a non-empty string")
        async with self.connection() as conn:
            await conn.execute(
                "INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)",
                (account_id, owner, balance),
            )
        self.send({"id": account_id}, status=201)


class NoSuchAccountError(LookupError):
    """A transfer named an account that does not exist."""


def transfer(
    conn: psycopg.Connection[Any], source: int, target: int, amount: int
) -> dict[str, int]:
    """Move ``amount`` in one transaction; the balances after it. Plain sync psycopg code."""
    with conn.transaction():
        # Lock both rows in id order, so that opposite transfers cannot deadlock.
        locked = conn.execute(
            "SELECT id FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            ([source, target],),
        ).fetchall()
        if len(locked) != len({source, target}):
            raise NoSuchAccountError
        update = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
        conn.execute(update, (-amount, source))  # below zero: CHECK fails, rollback
        conn.execute(update, (amount, target))
        conn.execute(
            "INSERT INTO transfers (source, target, amount) VALUES (%s, %s, %s)",
            (source, target, amount),
        )
        rows = conn.execute(
            "SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id",
            ([source, target],),
        ).fetchall()
    return {str(i): balance for i, balance in rows}


class TransfersHandler(Handler):
    """POST moves money in one transaction; GET streams the ledger from a server-side cursor."""

    async def post(self) -> None:
        """The whole transaction is one hop to the connection's thread (``offload.within``)."""
        body = self.body_json()
        source, target = whole(body, "from"), whole(body, "to")
        amount = whole(body, "amount")
        if source == target:
            raise tornado.web.HTTPError(400, reason="'from' and 'to' must differ")
        async with self.connection() as conn:
            try:
                balances = await offload.within(conn, transfer, source, target, amount)
            except NoSuchAccountError:
                raise tornado.web.HTTPError(404, reason="no such account") from None
        self.send({"balances": balances}, status=201)

    async def get(self) -> None:
        """One JSON object per line, written out a batch at a time: memory stays flat."""
        self.set_header("Content-Type", "application/x-ndjson")
        async with (
            self.connection() as conn,
            conn.transaction(),  # a server-side cursor lives in a transaction
            conn.cursor("ledger") as cursor,
        ):
            await cursor.execute("SELECT id, source, target, amount FROM transfers ORDER BY id")
            written = 0
            async for i, source, target, amount in cursor:
                line = {"id": i, "from": source, "to": target, "amount": amount}
                self.write(json.dumps(line) + "\n")
                written += 1
                if written % BATCH == 0:
                    await self.flush()
        self.finish()


def make_app(pool: Pool) -> tornado.web.Application:
    """The application, serving from ``pool``."""
    return tornado.web.Application(
        [(r"/accounts", AccountsHandler), (r"/transfers", TransfersHandler)], pool=pool
    )


async def open_database(conninfo: str, *, size: int = 4) -> Pool:
    """Open the pool and create the tables if needed."""
    pool = await open_pool(conninfo, size=size)
    async with pool.connection() as conn:
        for statement in SCHEMA:
            await conn.execute(statement)
    return pool


async def serve(port: int, conninfo: str) -> None:
    """Serve until interrupted."""
    pool = await open_database(conninfo)
    sockets = bind_sockets(port, "localhost")  # port 0: any free port, printed below
    server = HTTPServer(make_app(pool))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    print(f"bank: http://localhost:{port}/accounts", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument("--dsn", default="", help="libpq connection string (default: libpq's)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        asyncio.run(serve(args.port, args.dsn))


if __name__ == "__main__":
    main()
