"""The example psycopg driver and its Tornado app: real HTTP, real psycopg, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from examples import pg_app, pg_driver
from tornado import gen
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application

import offload
from tests.conftest import WAIT, lane_thread, repointed
from tests.servers import PostgresServer
from tests.test_sqlite_example import Heartbeat, until

ACCOUNTS = [(1, "ann", 100), (2, "bob", 100), (3, "cy", 0)]


def reset(server: PostgresServer) -> None:
    """Drop the example's tables and start again from the schema and three accounts."""
    with psycopg.connect(server.conninfo, autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS transfers, accounts")
        for statement in pg_app.SCHEMA:
            admin.execute(statement)
        admin.cursor().executemany(
            "INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)", ACCOUNTS
        )


def thread_name(_conn: psycopg.Connection[Any]) -> str:
    """Where a unit of work runs (for ``offload.within``)."""
    return threading.current_thread().name


@pytest.fixture
def admin(postgres_server: PostgresServer) -> Iterator[psycopg.Connection[Any]]:
    """A plain sync connection, to look at the database behind the app's back."""
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def conn(postgres_server: PostgresServer) -> AsyncIterator[pg_driver.AsyncConnection]:
    """A driver connection on its own thread, to a freshly reset database."""
    reset(postgres_server)
    made = await pg_driver.connect(postgres_server.conninfo)
    yield made
    await made.close()


class BankAppTest(AsyncHTTPTestCase):
    """The bank served over HTTP from a pool of two connections to the session's PostgreSQL."""

    POOL_SIZE = 2
    server: PostgresServer

    @pytest.fixture(autouse=True)
    def _server(self, postgres_server: PostgresServer) -> None:
        self.server = postgres_server
        reset(postgres_server)

    def get_app(self) -> Application:
        conninfo = self.server.conninfo
        self.pool = self.io_loop.run_sync(
            lambda: pg_app.open_database(conninfo, size=self.POOL_SIZE)
        )
        return pg_app.make_app(self.pool)

    def get_http_client(self) -> AsyncHTTPClient:
        return AsyncHTTPClient(force_instance=True, max_clients=64)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.pool.close)
        del self.pool  # its connections' lanes go back to the name for the next test
        super().tearDown()

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.server.conninfo, autocommit=True)

    def balances(self) -> dict[int, int]:
        with self.admin() as admin:
            return dict(admin.execute("SELECT id, balance FROM accounts").fetchall())

    async def call(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = None if payload is None else json.dumps(payload)
        if body is None and method == "POST":
            body = ""
        response: HTTPResponse = await self.http_client.fetch(
            self.get_url(path), method=method, body=body, raise_error=False, request_timeout=WAIT
        )
        text = response.body.decode() if response.body else ""
        if response.headers.get("Content-Type") == "application/x-ndjson":
            return response.code, [json.loads(line) for line in text.splitlines()]
        return response.code, json.loads(text) if text else None

    async def transfer(self, source: int, target: int, amount: int) -> tuple[int, Any]:
        return await self.call(
            "POST", "/transfers", {"from": source, "to": target, "amount": amount}
        )

    @gen_test(timeout=WAIT)
    async def test_accounts_are_listed_and_opened(self) -> None:
        """GET /accounts returns the rows; POST opens one; a duplicate id is a 400."""
        code, accounts = await self.call("GET", "/accounts")
        assert code == 200
        assert accounts == [{"id": i, "owner": o, "balance": b} for i, o, b in ACCOUNTS]
        assert await self.call("POST", "/accounts", {"id": 4, "owner": "di", "balance": 5}) == (
            201,
            {"id": 4},
        )
        assert (await self.call("POST", "/accounts", {"id": 4, "owner": "x", "balance": 0}))[
            0
        ] == 400
        assert self.balances()[4] == 5

    @gen_test(timeout=WAIT)
    async def test_a_transfer_commits_both_sides_or_neither(self) -> None:
        """A transfer moves money in one transaction; an overdraft rolls all of it back."""
        assert await self.transfer(1, 2, 30) == (201, {"balances": {"1": 70, "2": 130}})
        code, error = await self.transfer(3, 1, 1)  # cy has nothing
        assert code == 400
        assert "balance" in error["error"]  # the CHECK constraint named in the message
        assert (await self.transfer(1, 9, 1))[0] == 404
        assert (await self.transfer(1, 1, 1))[0] == 400
        assert self.balances() == {1: 70, 2: 130, 3: 0}
        with self.admin() as admin:
            ledger = admin.execute("SELECT source, target, amount FROM transfers").fetchall()
        assert ledger == [(1, 2, 30)]  # the refused ones left nothing behind

    @gen_test(timeout=WAIT)
    async def test_concurrent_opposite_transfers_keep_the_total(self) -> None:
        """40 transfers at once, half each way: all succeed, no deadlock, the total is kept."""
        requests = [self.transfer(1, 2, 1) if n % 2 else self.transfer(2, 1, 1) for n in range(40)]
        responses = await gen.multi(requests)
        assert [code for code, _ in responses] == [201] * 40
        assert self.balances() == {1: 100, 2: 100, 3: 0}

    @gen_test(timeout=WAIT)
    async def test_the_ledger_streams_from_a_server_side_cursor(self) -> None:
        """GET /transfers returns every row, in order, fetched a batch at a time."""
        count = pg_app.BATCH * 3 + 17
        with self.admin() as admin:
            admin.execute(
                "INSERT INTO transfers (source, target, amount)"
                " SELECT 1, 2, n FROM generate_series(1, %s) AS n",
                (count,),
            )
        code, lines = await self.call("GET", "/transfers")
        assert code == 200
        assert [line["amount"] for line in lines] == list(range(1, count + 1))

    @gen_test(timeout=WAIT * 2)
    async def test_a_backend_terminated_mid_transaction_fails_its_request_cleanly(self) -> None:
        """A transfer waiting on a row lock whose backend is terminated: a prompt 503, then 201s."""
        with self.admin() as blocker, self.admin() as admin:
            blocker.execute("BEGIN")
            blocker.execute("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")
            waiting = gen.convert_yielded(self.transfer(1, 2, 10))
            # Find the app's backend once it waits for the row lock the blocker holds.
            query = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            found: list[int] = []

            def app_is_waiting() -> bool:
                found[:] = [pid for (pid,) in admin.execute(query).fetchall()]
                return bool(found)

            await until(app_is_waiting)
            admin.execute("SELECT pg_terminate_backend(%s, %s)", (found[0], int(WAIT * 1000)))
            code, error = await waiting
            blocker.execute("ROLLBACK")
        assert code == 503
        assert error["error"].startswith("database unavailable")
        assert self.balances() == {1: 100, 2: 100, 3: 0}  # the server rolled it back
        # The dropped connection is replaced on its next borrow: every request succeeds again.
        for _ in range(self.POOL_SIZE + 1):
            assert (await self.transfer(1, 2, 10))[0] == 201
        assert self.balances() == {1: 70, 2: 130, 3: 0}

    @gen_test(timeout=WAIT * 2)
    async def test_idle_connections_the_server_dropped_fail_once_each_then_reconnect(
        self,
    ) -> None:
        """Every pooled backend terminated while idle: one 503 per connection, then 200s."""
        pids = [conn.info.backend_pid for conn in self.pool.connections]
        with self.admin() as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s, %s)", (pid, int(WAIT * 1000)))
        lanes = [conn._executor for conn in self.pool.connections]
        codes = [(await self.call("GET", "/accounts"))[0] for _ in range(self.POOL_SIZE * 2)]
        assert codes == [503] * self.POOL_SIZE + [200] * self.POOL_SIZE
        new_pids = {conn.info.backend_pid for conn in self.pool.connections}
        assert not new_pids & set(pids)
        # Each reopened connection kept the dead one's lane, and runs on its thread.
        assert [conn._executor for conn in self.pool.connections] == lanes
        for conn, lane in zip(self.pool.connections, lanes, strict=True):
            assert await offload.within(conn, thread_name) == lane_thread(lane)

    @gen_test(timeout=WAIT * 2)
    async def test_statements_run_under_the_connections_name_while_a_transfer_waits(
        self,
    ) -> None:
        """A transfer blocked on a row lock is one call running under ``pg_driver.connections``."""
        before = offload.stats()[pg_driver.CONNECTIONS]
        with self.admin() as blocker, self.admin() as admin:
            blocker.execute("BEGIN")
            blocker.execute("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")
            waiting = gen.convert_yielded(self.transfer(1, 2, 10))
            query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            await until(lambda: admin.execute(query).fetchone() == (1,))
            during = offload.stats()[pg_driver.CONNECTIONS]
            blocker.execute("ROLLBACK")  # the transfer gets the row lock
            assert await waiting == (201, {"balances": {"1": 90, "2": 110}})
        assert during["running"] == 1  # the whole transfer: one hop, still on its lane
        assert during["completed"] == before["completed"]
        after = offload.stats()[pg_driver.CONNECTIONS]
        assert after["completed"] - before["completed"] == 1
        assert after["running"] == 0

    @gen_test(timeout=WAIT)
    async def test_each_pooled_connection_keeps_to_its_own_lane_under_load(self) -> None:
        """40 concurrent transfers: each connection's calls stay on its lane, one per connection."""
        conns = list(self.pool.connections)
        lanes = [conn._executor for conn in conns]
        assert all(isinstance(lane, offload.Lane) for lane in lanes)
        threads = [lane_thread(lane) for lane in lanes]
        assert len(set(threads)) == self.POOL_SIZE  # a thread each
        requests = [self.transfer(1, 2, 1) if n % 2 else self.transfer(2, 1, 1) for n in range(40)]
        assert [code for code, _ in await gen.multi(requests)] == [201] * 40
        assert self.pool.connections == conns
        assert [await offload.within(conn, thread_name) for conn in conns] == threads

    @gen_test(timeout=WAIT)
    async def test_the_app_keeps_working_when_the_connections_name_is_repointed(self) -> None:
        """``register(CONNECTIONS, Lanes(1), replace=True)``: the pool's calls move there."""
        assert (await self.transfer(1, 2, 10))[0] == 201
        with repointed(
            pg_driver.CONNECTIONS,
            offload.Lanes(1, name="pg-repointed"),
            then=lambda: offload.Lanes(8, name="pg-conn"),
        ):
            threads = {await offload.within(conn, thread_name) for conn in self.pool.connections}
            assert threads == {"pg-repointed_0"}  # both connections share the one lane
            assert await self.transfer(1, 2, 10) == (201, {"balances": {"1": 80, "2": 120}})
            code, accounts = await self.call("GET", "/accounts")
            assert code == 200
            assert [a["balance"] for a in accounts] == [80, 120, 0]
            code, ledger = await self.call("GET", "/transfers")
            assert (code, len(ledger)) == (200, 2)

    @gen_test(timeout=WAIT * 2)
    async def test_requests_fail_fast_while_the_server_is_down_and_recover(self) -> None:
        """With PostgreSQL stopped: 503s, no hang; started again on its port: 200s."""
        self.server.stop()
        try:
            codes = [(await self.call("GET", "/accounts"))[0] for _ in range(self.POOL_SIZE + 1)]
        finally:
            self.server.start(same_port=True)
        assert codes == [503] * (self.POOL_SIZE + 1)
        assert (await self.call("GET", "/accounts"))[0] == 200


async def test_a_server_side_cursor_lets_the_connection_run_other_statements(
    conn: pg_driver.AsyncConnection,
) -> None:
    """``async for`` over a named cursor gives the thread back between batches."""
    seen = 0
    async with conn.transaction(), conn.cursor("numbers") as cursor:
        assert isinstance(cursor, pg_driver.AsyncServerCursor)
        cursor.itersize = 50
        await cursor.execute("SELECT n FROM generate_series(1, 500) AS n")
        async for (n,) in cursor:
            seen += n
            if n % 100 == 0:  # the same connection, mid-iteration: the cursor is on the server
                names = await (await conn.execute("SELECT name FROM pg_cursors")).fetchall()
                assert ("numbers",) in names
    assert seen == sum(range(1, 501))


async def test_a_client_cursor_and_the_connection_keep_to_its_thread(
    conn: pg_driver.AsyncConnection,
) -> None:
    """Statements run on the connection's lane; cursors made from it share that lane."""
    lane = conn._executor
    assert isinstance(lane, offload.Lane)
    assert lane.name == pg_driver.CONNECTIONS
    cursor = conn.cursor()
    assert type(cursor) is pg_driver.AsyncCursor
    assert cursor._executor is lane
    thread = await offload.within(conn, lambda _conn: threading.current_thread().name)
    assert thread == lane_thread(lane)
    assert thread.startswith("pg-conn_")
    await cursor.execute("SELECT owner FROM accounts ORDER BY id")
    assert [row async for row in cursor] == [("ann",), ("bob",), ("cy",)]
    streamed = [row async for row in cursor.stream("SELECT id FROM accounts ORDER BY id")]
    assert streamed == [(1,), (2,), (3,)]


async def test_a_transaction_block_rolls_back_on_error(conn: pg_driver.AsyncConnection) -> None:
    """``async with conn.transaction()`` commits, or rolls back and re-raises the error."""
    async with conn.transaction():
        await conn.execute("UPDATE accounts SET balance = 1 WHERE id = 3")

    async def overdraw() -> None:
        async with conn.transaction():
            await conn.execute("UPDATE accounts SET balance = 50 WHERE id = 2")
            await conn.execute("UPDATE accounts SET balance = -1 WHERE id = 1")

    with pytest.raises(psycopg.errors.CheckViolation):
        await overdraw()
    cursor = await conn.execute("SELECT id, balance FROM accounts ORDER BY id")
    assert await cursor.fetchall() == [(1, 100), (2, 100), (3, 1)]
    with pytest.raises(conn.IntegrityError):  # the DB-API classes, on the facade as on psycopg
        await conn.execute("INSERT INTO accounts VALUES (1, 'again', 0)")


async def test_cancel_interrupts_a_running_statement(
    conn: pg_driver.AsyncConnection, admin: psycopg.Connection[Any]
) -> None:
    """``await conn.cancel()`` runs beside the busy connection's thread and stops its query."""
    with Heartbeat() as heartbeat:
        sleeping = asyncio.ensure_future(conn.execute("SELECT pg_sleep(%s)", (WAIT * 3,)))
        query = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
        await until(lambda: admin.execute(query).fetchone() == (1,))
        ticks = heartbeat.ticks
        await until(lambda: heartbeat.ticks >= ticks + 3)  # the loop runs while it sleeps
        assert not sleeping.done()
        await conn.cancel()
        with pytest.raises(psycopg.errors.QueryCanceled):
            await sleeping
    cursor = await conn.execute("SELECT 1")  # the connection is still usable
    assert await cursor.fetchone() == (1,)


def test_the_driver_facades_are_complete() -> None:
    """The facades cover psycopg's Connection, cursors, Copy and Pipeline but for LEFT_OUT."""
    for facade_class in (
        pg_driver.AsyncConnection,
        pg_driver.AsyncCursor,
        pg_driver.AsyncServerCursor,
        pg_driver.AsyncCopy,
        pg_driver.AsyncPipeline,
    ):
        offload.assert_parity(facade_class)
    assert pg_driver.AsyncConnection._offload_omitted == {"connect"} == set(pg_driver.LEFT_OUT)


async def test_copy_writes_and_reads_rows_on_the_connections_thread(
    conn: pg_driver.AsyncConnection, admin: psycopg.Connection[Any]
) -> None:
    """``async with cursor.copy(...)`` gives an AsyncCopy: rows written, then read back."""
    cursor = conn.cursor()
    async with cursor.copy("COPY accounts (id, owner, balance) FROM STDIN") as copy:
        assert isinstance(copy, pg_driver.AsyncCopy)
        for row in [(4, "di", 5), (5, "ed", 6)]:
            await copy.write_row(row)
    query = "SELECT id, owner, balance FROM accounts WHERE id > 3 ORDER BY id"
    assert admin.execute(query).fetchall() == [(4, "di", 5), (5, "ed", 6)]
    async with cursor.copy("COPY (SELECT id, owner FROM accounts ORDER BY id) TO STDOUT") as copy:
        copy.set_types(["int4", "text"])
        rows = [row async for row in copy.rows()]
    assert rows == [(1, "ann"), (2, "bob"), (3, "cy"), (4, "di"), (5, "ed")]


async def test_a_copy_block_that_raises_writes_nothing(
    conn: pg_driver.AsyncConnection, admin: psycopg.Connection[Any]
) -> None:
    """An error in the block reaches the Copy's ``__exit__``, which aborts the COPY."""

    async def copy_then_fail() -> None:
        async with conn.cursor().copy("COPY accounts (id, owner, balance) FROM STDIN") as copy:
            await copy.write_row((6, "fay", 1))
            raise ValueError("the input was bad")

    with pytest.raises(ValueError, match="the input was bad"):
        await copy_then_fail()
    assert admin.execute("SELECT count(*) FROM accounts").fetchone() == (3,)
    cursor = await conn.execute("SELECT 1")  # the connection left COPY mode
    assert await cursor.fetchone() == (1,)


async def test_pipeline_mode_runs_statements_before_one_sync(
    conn: pg_driver.AsyncConnection,
) -> None:
    """``async with conn.pipeline()`` gives an AsyncPipeline; results arrive after sync()."""
    update = "UPDATE accounts SET balance = balance + 1 WHERE id = %s RETURNING balance"
    async with conn.pipeline() as pipeline:
        assert isinstance(pipeline, pg_driver.AsyncPipeline)
        cursors = [await conn.execute(update, (account,)) for account in (1, 2)]
        await pipeline.sync()
        assert [await cursor.fetchone() for cursor in cursors] == [(101,), (101,)]


async def test_notifies_are_iterated_on_the_connections_thread(
    conn: pg_driver.AsyncConnection, admin: psycopg.Connection[Any]
) -> None:
    """``async for`` over ``notifies()`` receives what another session sends with NOTIFY."""
    await conn.execute("LISTEN offload_test")
    admin.execute("NOTIFY offload_test, 'first'")
    admin.execute("NOTIFY offload_test, 'second'")
    received = [note.payload async for note in conn.notifies(timeout=WAIT, stop_after=2)]
    assert received == ["first", "second"]
    await conn.execute("UNLISTEN *")  # the generator let go of the connection's lock


async def test_psycopgs_attributes_pass_through(conn: pg_driver.AsyncConnection) -> None:
    """attrs=: the DB-API classes on the class and instance; pgconn and row_factory too."""
    assert pg_driver.AsyncConnection.IntegrityError is psycopg.IntegrityError
    assert conn.Error is psycopg.Error
    assert conn.pgconn is conn.__wrapped__.pgconn
    conn.row_factory = psycopg.rows.dict_row  # set on the sync connection: its cursors use it
    try:
        cursor = await conn.execute("SELECT 1 AS one")
        assert await cursor.fetchone() == {"one": 1}
    finally:
        conn.row_factory = psycopg.rows.tuple_row
    with pytest.raises(AttributeError, match="AsyncConnection has no attribute 'prepare_thresh'"):
        conn.prepare_thresh = 3  # a typo of prepare_threshold: not silently kept on the facade


async def test_a_transaction_on_a_pool_runs_its_statements_on_the_thread_it_holds(
    postgres_server: PostgresServer,
) -> None:
    """On a pool, ``async with conn.transaction()`` holds a thread, and the task's calls on
    the connection run on it: with one thread in the pool, none of them waits for another.
    (Cursors made from the connection go to the pool, as facades made from a facade do.)"""
    reset(postgres_server)
    pool = offload.ThreadPool(1, name="one-pg-thread")
    conn = await pg_driver.connect(postgres_server.conninfo, executor=pool)
    try:
        async with conn.transaction():
            held = await conn._run(threading.get_ident)
            await conn.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
            await conn.execute("UPDATE accounts SET balance = 200 WHERE id = 2")
            assert await conn._run(threading.get_ident) == held
        cursor = await conn.execute("SELECT balance FROM accounts WHERE id < 3 ORDER BY id")
        assert await cursor.fetchall() == [(0,), (200,)]  # committed
    finally:
        await conn.close()
        pool.shutdown()
