"""Conversations in a SQLite file (WAL mode), through aiosqlite's own thread.

The schema is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` are
applied in order at :meth:`SQLiteStore.open`, each in one transaction. Opening
also closes the books on replies a crash left streaming: their checkpointed
text stays, marked ``finish_reason = "error"``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from .store import Conversation, StoredMessage, export_document, new_id, title_of

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
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = "id, role, content, created_at, finish_reason, usage"


class StoreCorrupt(Exception):
    """The database file failed its integrity check or is newer than this code."""


class SQLiteStore:
    """A :class:`~gateway.store.ConversationStore` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self.recovered = 0

    async def open(self) -> None:
        """Open (creating the file and its directory), migrate, recover."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON", "busy_timeout = 5000"):
                await db.execute(f"PRAGMA {pragma}")
            await _migrate(db)
            cursor = await db.execute(
                "UPDATE messages SET finish_reason = 'error' WHERE role = 'assistant' AND finish_reason IS NULL"
            )
            self.recovered = cursor.rowcount
        except BaseException:
            await db.close()
            raise
        self._db = db

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def create(self) -> Conversation:
        now = time.time()
        conv = Conversation(new_id(), "", now, now)
        await self.db.execute(
            "INSERT INTO conversations (id, title, created_at, updated_at) VALUES (?, '', ?, ?)",
            (conv.id, now, now),
        )
        return conv

    async def get(self, conversation_id: str) -> Conversation | None:
        async with self.db.execute(
            "SELECT id, title, created_at, updated_at FROM conversations WHERE id = ?", (conversation_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return Conversation(*row) if row else None

    async def add(self, conversation_id: str, message: StoredMessage) -> bool:
        async with _transaction(self.db):
            cursor = await self.db.execute(
                f"INSERT OR IGNORE INTO messages (conversation_id, {_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, *_row(message), message.created_at),
            )
            if cursor.rowcount != 1:
                return False
            await self._touch(conversation_id, message)
        return True

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        async with _transaction(self.db):
            await self.db.execute(
                f"INSERT INTO messages (conversation_id, {_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (conversation_id, id) DO UPDATE SET content = excluded.content,"
                " finish_reason = excluded.finish_reason, usage = excluded.usage, updated_at = excluded.updated_at",
                (conversation_id, *_row(message), time.time()),
            )
            await self._touch(conversation_id, message)

    async def _touch(self, conversation_id: str, message: StoredMessage) -> None:
        title = title_of(message.content) if message.role == "user" else ""
        cursor = await self.db.execute(
            "UPDATE conversations SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
            (time.time(), title, conversation_id),
        )
        if cursor.rowcount != 1:
            raise KeyError(conversation_id)

    async def history(self, conversation_id: str, limit: int, before: str | None = None) -> list[StoredMessage]:
        query = f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = ?"
        args: tuple[Any, ...] = (conversation_id,)
        if before is not None:
            query += " AND pos < (SELECT pos FROM messages WHERE conversation_id = ? AND id = ?)"
            args += (conversation_id, before)
        async with self.db.execute(query + " ORDER BY pos DESC LIMIT ?", (*args, limit)) as cursor:
            rows = await cursor.fetchall()
        return [_message(row) for row in reversed(list(rows))]

    async def prune(self, older_than: float) -> int:
        """Delete conversations not updated for ``older_than`` seconds; return how many."""
        cursor = await self.db.execute("DELETE FROM conversations WHERE updated_at < ?", (time.time() - older_than,))
        return cursor.rowcount

    async def export(self, conversation_id: str) -> dict[str, Any] | None:
        """A conversation and all its messages, as plain data."""
        conv = await self.get(conversation_id)
        if conv is None:
            return None
        messages = await self.history(conversation_id, -1)
        return export_document(conv, messages)

    async def integrity_check(self) -> str:
        async with self.db.execute("PRAGMA integrity_check") as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else "no answer"


async def _migrate(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreCorrupt(f"the database is at schema version {version}; this gateway knows up to {SCHEMA_VERSION}")
    for number in range(version + 1, SCHEMA_VERSION + 1):
        await db.executescript(f"BEGIN;\n{MIGRATIONS[number - 1]}\nPRAGMA user_version = {number};\nCOMMIT;")


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on error."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def __aenter__(self) -> None:
        await self.db.execute("BEGIN IMMEDIATE")

    async def __aexit__(self, kind: object, exc: object, tb: object) -> None:
        await self.db.execute("ROLLBACK" if kind else "COMMIT")


def _row(m: StoredMessage) -> tuple[Any, ...]:
    usage = orjson.dumps(dict(m.usage)).decode() if m.usage else None
    return (m.id, m.role, m.content, m.created_at, m.finish_reason, usage)


def _message(row: Any) -> StoredMessage:
    msg_id, role, content, created_at, finish_reason, usage = row
    parsed: Mapping[str, int] | None = orjson.loads(usage) if usage else None
    return StoredMessage(msg_id, role, content, created_at, finish_reason, parsed)
