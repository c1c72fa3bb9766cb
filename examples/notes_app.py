"""A small notes service: Tornado in front, the sqlite3 driver behind.

Run it with ``python -m examples.notes_app --port 8888 --db notes.sqlite3``
from the repository root (``python examples/notes_app.py`` works too), then::

    curl -X POST localhost:8888/notes -d '{"title": "hello", "body": "world"}'
    curl localhost:8888/notes
    curl localhost:8888/notes/1
    curl -X DELETE localhost:8888/notes/1
    curl -X POST localhost:8888/notes/batch -d '[{"title": "a"}, {"title": "b"}]'

Every database call runs on a connection's own thread; the loop only waits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

if not __package__:  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.sqlite_driver import AsyncConnection, Pool, open_pool

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL CHECK (length(title) > 0),
    body TEXT NOT NULL DEFAULT ''
)
"""


async def insert_note(conn: AsyncConnection, note: Any) -> int:
    """Insert one note; sqlite's constraints reject a bad one."""
    if not isinstance(note, dict):
        raise sqlite3.IntegrityError("a note is a JSON object")
    cursor = await conn.execute(
        "INSERT INTO notes (title, body) VALUES (?, ?)", (note.get("title"), note.get("body", ""))
    )
    return int(cursor.lastrowid)


class Handler(tornado.web.RequestHandler):
    """JSON in, JSON out; a note the database rejects is a 400."""

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """Borrow a connection from the pool for the block."""
        pool: Pool = self.settings["pool"]
        try:
            async with pool.connection() as conn:
                yield conn
        except sqlite3.IntegrityError as exc:
            raise tornado.web.HTTPError(400, reason=f"note rejected: {exc}") from exc

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


class NotesHandler(Handler):
    """GET lists the notes; POST adds one."""

    async def get(self) -> None:
        async with self.connection() as conn:
            cursor = await conn.execute("SELECT id, title, body FROM notes ORDER BY id")
            notes = [{"id": i, "title": t, "body": b} async for i, t, b in cursor]
        self.send(notes)

    async def post(self) -> None:
        note = self.body_json()
        async with self.connection() as conn:
            note_id = await insert_note(conn, note)
        self.send({"id": note_id}, status=201)


class BatchHandler(Handler):
    """POST a list of notes: all are added, or none (one transaction)."""

    async def post(self) -> None:
        notes = self.body_json()
        if not isinstance(notes, list):
            raise tornado.web.HTTPError(400, reason="send a JSON list of notes")
        async with self.connection() as conn, conn.transaction():
            ids = [await insert_note(conn, note) for note in notes]
        self.send({"ids": ids}, status=201)


class NoteHandler(Handler):
    """GET, PUT or DELETE one note by id."""

    async def get(self, note_id: str) -> None:
        async with self.connection() as conn:
            cursor = await conn.execute(
                "SELECT id, title, body FROM notes WHERE id = ?", (int(note_id),)
            )
            row = await cursor.fetchone()
        if row is None:
            raise tornado.web.HTTPError(404, reason="no such note")
        self.send({"id": row[0], "title": row[1], "body": row[2]})

    async def put(self, note_id: str) -> None:
        note = self.body_json()
        if not isinstance(note, dict):
            raise tornado.web.HTTPError(400, reason="send a JSON object")
        async with self.connection() as conn:
            cursor = await conn.execute(
                "UPDATE notes SET title = ?, body = ? WHERE id = ?",
                (note.get("title"), note.get("body", ""), int(note_id)),
            )
        if cursor.rowcount == 0:
            raise tornado.web.HTTPError(404, reason="no such note")
        self.send({"id": int(note_id)})

    async def delete(self, note_id: str) -> None:
        async with self.connection() as conn:
            cursor = await conn.execute("DELETE FROM notes WHERE id = ?", (int(note_id),))
        if cursor.rowcount == 0:
            raise tornado.web.HTTPError(404, reason="no such note")
        self.set_status(204)
        self.finish()


def make_app(pool: Pool) -> tornado.web.Application:
    """The application, serving from ``pool``."""
    return tornado.web.Application(
        [
            (r"/notes", NotesHandler),
            (r"/notes/batch", BatchHandler),
            (r"/notes/([0-9]+)", NoteHandler),
        ],
        pool=pool,
    )


async def open_database(path: str, *, size: int = 4) -> Pool:
    """Open the pool and create the table if needed."""
    pool = await open_pool(path, size=size)
    async with pool.connection() as conn:
        await conn.execute(SCHEMA)
    return pool


async def serve(port: int, path: str) -> None:
    """Serve until interrupted."""
    pool = await open_database(path)
    sockets = bind_sockets(port, "localhost")  # port 0: any free port, printed below
    server = HTTPServer(make_app(pool))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    print(f"notes: http://localhost:{port}/notes (database {path})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument("--db", default="notes.sqlite3", help="the sqlite3 database file")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        asyncio.run(serve(args.port, args.db))


if __name__ == "__main__":
    main()
