"""The example sqlite3 driver and notes app: real HTTP, the real driver, a real database file."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

import pytest
from examples import notes_app, sqlite_driver
from tornado import gen
from tornado.httpclient import HTTPResponse
from tornado.ioloop import PeriodicCallback
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application

import offload
from tests.conftest import WAIT

ROOT = Path(__file__).resolve().parent.parent


class Heartbeat:
    """Ticks on the loop every few milliseconds and records the worst lateness."""

    INTERVAL = 0.005

    def __init__(self) -> None:
        self.ticks = 0
        self.worst_lag = 0.0
        self._last = time.monotonic()
        self._callback = PeriodicCallback(self._tick, self.INTERVAL * 1000)

    def _tick(self) -> None:
        now = time.monotonic()
        self.worst_lag = max(self.worst_lag, now - self._last - self.INTERVAL)
        self._last = now
        self.ticks += 1

    def __enter__(self) -> Self:
        self._last = time.monotonic()
        self._callback.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._callback.stop()


async def until(condition: Any) -> None:
    """Poll ``condition`` on the loop, giving up after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await gen.sleep(0.001)


class NotesAppTest(AsyncHTTPTestCase):
    """The notes app served over HTTP from a database file in a temporary directory."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.db_path = str(Path(self.tmp.name) / "notes.sqlite3")
        super().setUp()

    def get_app(self) -> Application:
        self.pool = self.io_loop.run_sync(lambda: notes_app.open_database(self.db_path, size=4))
        return notes_app.make_app(self.pool)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.pool.close)
        super().tearDown()
        self.tmp.cleanup()

    async def call(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = None if payload is None else json.dumps(payload)
        if body is None and method in ("POST", "PUT"):
            body = ""
        response: HTTPResponse = await self.http_client.fetch(
            self.get_url(path), method=method, body=body, raise_error=False
        )
        return response.code, json.loads(response.body) if response.body else None

    def on_disk(self, sql: str) -> list[Any]:
        """Read the database file with plain sqlite3, bypassing the app."""
        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    @gen_test(timeout=WAIT)
    async def test_notes_round_trip_through_http(self) -> None:
        """Create, read, update, list and delete a note over HTTP; the file holds the result."""
        assert await self.call("POST", "/notes", {"title": "first", "body": "hello"}) == (
            201,
            {"id": 1},
        )
        assert await self.call("GET", "/notes/1") == (
            200,
            {"id": 1, "title": "first", "body": "hello"},
        )
        assert await self.call("PUT", "/notes/1", {"title": "renamed"}) == (200, {"id": 1})
        assert await self.call("POST", "/notes", {"title": "second"}) == (201, {"id": 2})
        code, notes = await self.call("GET", "/notes")
        assert code == 200
        assert notes == [
            {"id": 1, "title": "renamed", "body": ""},
            {"id": 2, "title": "second", "body": ""},
        ]
        assert await self.call("DELETE", "/notes/1") == (204, None)
        assert (await self.call("GET", "/notes/1"))[0] == 404
        assert self.on_disk("SELECT id, title FROM notes") == [(2, "second")]

    @gen_test(timeout=WAIT)
    async def test_a_failed_batch_rolls_back_entirely(self) -> None:
        """A batch whose third note breaks a constraint leaves nothing of the batch behind."""
        await self.call("POST", "/notes", {"title": "before"})
        code, error = await self.call(
            "POST", "/notes/batch", [{"title": "a"}, {"title": "b"}, {"title": ""}]
        )
        assert code == 400
        assert "CHECK constraint failed" in error["error"]
        assert self.on_disk("SELECT title FROM notes") == [("before",)]
        assert await self.call("POST", "/notes/batch", [{"title": "a"}, {"title": "b"}]) == (
            201,
            {"ids": [2, 3]},
        )
        assert self.on_disk("SELECT title FROM notes ORDER BY id") == [("before",), ("a",), ("b",)]

    @gen_test(timeout=WAIT)
    async def test_bad_input_is_a_client_error(self) -> None:
        """Malformed JSON and a note without a title are 400s, not 500s."""
        response = await self.http_client.fetch(
            self.get_url("/notes"), method="POST", body="{not json", raise_error=False
        )
        assert response.code == 400
        assert (await self.call("POST", "/notes", {"body": "no title"}))[0] == 400
        assert self.on_disk("SELECT count(*) FROM notes") == [(0,)]

    @gen_test(timeout=WAIT)
    async def test_the_loop_stays_responsive_while_the_database_blocks(self) -> None:
        """While one insert is held mid-write and 23 requests wait, the heartbeat keeps ticking."""
        release = threading.Event()
        lock = threading.Lock()
        blocked = [0]

        def hold() -> int:
            with lock:
                blocked[0] += 1
            release.wait(WAIT)
            return 0

        for conn in self.pool.connections:  # an insert now blocks its thread until released
            await conn.create_function("hold", 0, hold)
            await conn.execute(
                "CREATE TEMP TRIGGER hold_insert AFTER INSERT ON notes BEGIN SELECT hold(); END"
            )

        with Heartbeat() as heartbeat:
            requests = [
                gen.convert_yielded(self.call("POST", "/notes", {"title": f"note {n}"}))
                for n in range(24)
            ]
            # One writer at a time in sqlite: the others wait for its lock on their threads.
            await until(lambda: blocked[0] == 1)
            ticks_while_blocked = heartbeat.ticks
            await until(lambda: heartbeat.ticks >= ticks_while_blocked + 5)
            assert not any(request.done() for request in requests)  # all still waiting meanwhile
            release.set()
            responses = await gen.multi(requests)

        assert [code for code, _ in responses] == [201] * 24
        assert sorted(body["id"] for _, body in responses) == list(range(1, 25))
        assert self.on_disk("SELECT count(*) FROM notes") == [(24,)]
        assert heartbeat.worst_lag < 1.0  # generous: a blocked loop would stall for WAIT seconds


async def test_each_connection_keeps_to_its_own_thread(tmp_path: Path) -> None:
    """Connections get a thread each; sqlite3's same-thread check stays on and never fires."""
    first = await sqlite_driver.connect(str(tmp_path / "t.sqlite3"))
    second = await sqlite_driver.connect(str(tmp_path / "t.sqlite3"))
    try:
        where = "SELECT 1"
        assert first._executor is not second._executor
        assert isinstance(first._executor, offload.AffineThread)
        cursor = await first.execute(where)
        assert isinstance(cursor, sqlite_driver.AsyncCursor)
        assert cursor._executor is first._executor
        assert await cursor.fetchall() == [(1,)]
        with pytest.raises(sqlite3.ProgrammingError, match="thread"):
            first.__wrapped__.execute(where)  # from the loop thread: refused, as it should be
    finally:
        await first.close()
        await second.close()
    assert not first._executor.is_current()


async def test_cursor_iteration_interleaves_with_other_queries(tmp_path: Path) -> None:
    """``async for`` over a cursor lets the same connection run other statements between rows."""
    conn = await sqlite_driver.connect(str(tmp_path / "t.sqlite3"))
    try:
        await conn.execute("CREATE TABLE t (x)")
        await conn.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
        total = 0
        async for (x,) in await conn.execute("SELECT x FROM t ORDER BY x"):
            total += x
            if x % 10 == 0:
                await conn.execute("SELECT count(*) FROM t")
        assert total == sum(range(100))
    finally:
        await conn.close()


async def test_a_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    """``async with conn.transaction()`` commits on success and rolls back on an exception."""
    conn = await sqlite_driver.connect(str(tmp_path / "t.sqlite3"))
    try:
        await conn.execute("CREATE TABLE t (x NOT NULL)")
        async with conn.transaction():
            await conn.execute("INSERT INTO t VALUES (1)")

        async def write_two_rows_the_second_bad() -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (2)")
                await conn.execute("INSERT INTO t VALUES (NULL)")

        with pytest.raises(sqlite3.IntegrityError):
            await write_two_rows_the_second_bad()
        cursor = await conn.execute("SELECT x FROM t")
        assert await cursor.fetchall() == [(1,)]
        assert not conn.in_transaction
    finally:
        await conn.close()


async def test_a_dump_is_iterated_on_the_connections_thread(tmp_path: Path) -> None:
    """``iterdump()`` returns a generator whose steps query the connection: ``iterate=``
    steps it on the connection's thread, where sqlite3's same-thread check lets it through."""
    conn = await sqlite_driver.connect(str(tmp_path / "t.sqlite3"))
    try:
        await conn.execute("CREATE TABLE t (x)")
        await conn.execute("INSERT INTO t VALUES (42)")
        dump = [line async for line in conn.iterdump()]
        assert "CREATE TABLE t (x);" in dump
        assert 'INSERT INTO "t" VALUES(42);' in dump
    finally:
        await conn.close()


def test_the_driver_facades_are_complete() -> None:
    """The driver's facades cover every public attribute of sqlite3's classes."""
    # Against the running Python's sqlite3, which gained Connection.getconfig/setconfig in 3.12.
    offload.assert_parity(sqlite_driver.AsyncConnection)
    offload.assert_parity(sqlite_driver.AsyncCursor)
    offload.assert_parity(sqlite_driver.AsyncTransaction)


async def test_connection_config_runs_on_the_connections_thread(tmp_path: Path) -> None:
    """``getconfig``/``setconfig`` are offloaded: sqlite3's same-thread check lets them through."""
    if sys.version_info < (3, 12):  # a version check, so that mypy for 3.11 skips the rest too
        pytest.skip("sqlite3 has getconfig/setconfig from Python 3.12")
    conn = await sqlite_driver.connect(str(tmp_path / "t.sqlite3"))
    try:
        triggers = sqlite3.SQLITE_DBCONFIG_ENABLE_TRIGGER
        await conn.setconfig(triggers, False)  # noqa: FBT003  # its enable is positional-only
        assert await conn.getconfig(triggers) is False
        await conn.setconfig(triggers, True)  # noqa: FBT003  # as above
        assert await conn.getconfig(triggers) is True
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "command",
    [["-m", "examples.notes_app"], ["examples/notes_app.py"]],
    ids=["module", "script"],
)
def test_the_app_starts_from_its_command(tmp_path: Path, command: list[str]) -> None:
    """The documented command serves the app; Ctrl-C stops it cleanly."""
    db = tmp_path / "notes.sqlite3"
    proc = subprocess.Popen(  # noqa: S603  # our own interpreter and example
        [sys.executable, *command, "--port", "0", "--db", str(db)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("notes: http://localhost:"), banner
        url = banner.split()[1]
        note = b'{"title": "from the command"}'
        request = urllib.request.Request(url, data=note, method="POST")  # noqa: S310  # http, printed by the app
        with urllib.request.urlopen(request, timeout=WAIT) as response:  # noqa: S310  # as above
            assert response.status == 201
        with urllib.request.urlopen(url, timeout=WAIT) as response:  # noqa: S310  # as above
            assert json.load(response) == [{"id": 1, "title": "from the command", "body": ""}]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
        if proc.stdout is not None:
            proc.stdout.close()
    assert db.exists()
