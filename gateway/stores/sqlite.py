"""Conversations in a SQLite file (WAL mode), on one dedicated thread.

Each store operation is one function run on that thread, as one transaction:
one hop off the event loop per operation, never a blocked loop.

The schema is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` are
applied in order at :meth:`SQLiteStore.open`, each in one transaction. Opening
also closes the books on replies a crash left streaming: their checkpointed
text stays, marked ``finish_reason = "error"``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .base import (
    Conversation,
    ConversationNotFound,
    OpenReport,
    StoredMessage,
    StoreUnusable,
    export_document,
    new_id,
    newest_within,
    title_of,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "StoreCorrupt"]

MIGRATIONS: tuple[str, ...] = (
    # 1: conversations and their messages, in insertion order (pos).
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE messages (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,
        finish_reason TEXT,
        usage TEXT,
        created_at REAL NOT NULL,
        UNIQUE (conversation_id, id)
    );
    CREATE INDEX messages_by_conversation ON messages(conversation_id, pos);
    """,
    # 2: when a message was last written (checkpoints), and pruning by age.
    """
    ALTER TABLE messages ADD COLUMN updated_at REAL;
    UPDATE messages SET updated_at = created_at;
    CREATE INDEX conversations_by_age ON conversations(updated_at);
    """,
    # 3: the model that wrote an assistant message (NULL before this version).
    """
    ALTER TABLE messages ADD COLUMN model TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = "id, role, content, created_at, finish_reason, usage, model"


class StoreCorrupt(StoreUnusable):
    """The database file is newer than this code, or failed its integrity check."""


T = TypeVar("T")


class SQLiteStore:
    """A :class:`~gateway.stores.ConversationStore` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def open(self, *, recover: bool = True) -> OpenReport:
        """Open (creating the file and its directory), migrate, and with ``recover``
        mark replies a crash left streaming as ended. Tools that run beside a live
        gateway (export, prune) open with ``recover=False``."""
        if self._thread is not None:
            return OpenReport()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        try:
            return OpenReport(recovered=await self._run(self._open, recover))
        except sqlite3.DatabaseError as exc:  # not a database, unreadable, locked for good
            await self.close()
            raise StoreCorrupt(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    def _open(self, recover: bool) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn = conn
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA foreign_keys = ON")
        version = _version(conn)
        if version > SCHEMA_VERSION:
            raise StoreCorrupt(f"the database is at schema version {version}; this gateway knows up to {SCHEMA_VERSION}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        for number in range(version + 1, SCHEMA_VERSION + 1):
            conn.executescript(f"BEGIN;\n{MIGRATIONS[number - 1]}\nPRAGMA user_version = {number};\nCOMMIT;")
        if not recover:
            return 0
        cursor = conn.execute(
            "UPDATE messages SET finish_reason = 'error' WHERE role = 'assistant' AND finish_reason IS NULL"
        )
        return cursor.rowcount

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise RuntimeError("the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the store is not open")
        return self._conn

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(thread, self._conn.close)
            self._conn = None
        thread.shutdown(wait=True)

    async def create(self, conversation_id: str | None = None) -> Conversation:
        return await self._run(self._create, conversation_id or new_id())

    def _create(self, conversation_id: str) -> Conversation:
        now = time.time()
        self.conn.execute(
            "INSERT OR IGNORE INTO conversations (id, title, created_at, updated_at) VALUES (?, '', ?, ?)",
            (conversation_id, now, now),
        )
        conv = self._get(conversation_id)
        assert conv is not None
        return conv

    async def get(self, conversation_id: str) -> Conversation | None:
        return await self._run(self._get, conversation_id)

    def _get(self, conversation_id: str) -> Conversation | None:
        row = self.conn.execute(
            "SELECT id, title, created_at, updated_at FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        return Conversation(*row) if row else None

    async def add(self, conversation_id: str, message: StoredMessage) -> bool:
        return await self._run(self._write, conversation_id, message, False)

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        await self._run(self._write, conversation_id, message, True)

    def _write(self, conversation_id: str, message: StoredMessage, upsert: bool) -> bool:
        """Insert (or with ``upsert`` replace) a message and touch its conversation, atomically."""
        conn = self.conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            title = title_of(message.content) if message.role == "user" else ""
            touched = conn.execute(
                "UPDATE conversations SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
                (now, title, conversation_id),
            ).rowcount
            if touched != 1:
                raise ConversationNotFound(conversation_id)
            insert = f"INSERT {'' if upsert else 'OR IGNORE '}INTO messages (conversation_id, {_COLUMNS}, updated_at)"
            insert += " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            if upsert:
                insert += (
                    " ON CONFLICT (conversation_id, id) DO UPDATE SET content = excluded.content,"
                    " finish_reason = excluded.finish_reason, usage = excluded.usage, model = excluded.model,"
                    " updated_at = excluded.updated_at"
                )
            added = conn.execute(insert, (conversation_id, *_row(message), now)).rowcount == 1
            conn.execute("COMMIT" if added or upsert else "ROLLBACK")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return added

    async def delete(self, conversation_id: str, message_id: str) -> bool:
        cursor = await self._run(
            self.conn.execute, "DELETE FROM messages WHERE conversation_id = ? AND id = ?", (conversation_id, message_id)
        )
        return bool(cursor.rowcount)

    async def history(
        self, conversation_id: str, limit: int, before: str | None = None, *, max_bytes: int | None = None
    ) -> list[StoredMessage]:
        return await self._run(self._history, conversation_id, limit, before, max_bytes)

    def _history(
        self, conversation_id: str, limit: int, before: str | None, max_bytes: int | None
    ) -> list[StoredMessage]:
        query = f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = ?"
        args: tuple[Any, ...] = (conversation_id,)
        if before is not None:
            query += " AND pos < (SELECT pos FROM messages WHERE conversation_id = ? AND id = ?)"
            args += (conversation_id, before)
        cursor = self.conn.execute(query + " ORDER BY pos DESC LIMIT ?", (*args, limit))
        try:  # rows are read one at a time: a byte-bounded page does not load the rest
            return list(reversed(newest_within(map(_message, cursor), max_bytes)))
        finally:
            cursor.close()

    async def prune(self, older_than: float) -> int:
        """Delete conversations not updated for ``older_than`` seconds; return how many."""
        cursor = await self._run(
            self.conn.execute, "DELETE FROM conversations WHERE updated_at < ?", (time.time() - older_than,)
        )
        return int(cursor.rowcount)

    async def export(self, conversation_id: str) -> dict[str, Any] | None:
        """A conversation and all its messages, as plain data."""
        conv = await self.get(conversation_id)
        if conv is None:
            return None
        return export_document(conv, await self.history(conversation_id, -1))

    async def integrity_check(self) -> str:
        row = await self._run(lambda: self.conn.execute("PRAGMA integrity_check").fetchone())
        return str(row[0]) if row else "no answer"


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0


def _row(m: StoredMessage) -> tuple[Any, ...]:
    usage = orjson.dumps(dict(m.usage)).decode() if m.usage else None
    return (m.id, m.role, m.content, m.created_at, m.finish_reason, usage, m.model)


def _message(row: Any) -> StoredMessage:
    msg_id, role, content, created_at, finish_reason, usage, model = row
    parsed: Mapping[str, int] | None = orjson.loads(usage) if usage else None
    return StoredMessage(msg_id, role, content, created_at, finish_reason, parsed, model)
