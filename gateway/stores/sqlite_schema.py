"""The SQLite store's schema: its tables, their migrations, and how messages map to rows.

The schema is versioned with ``PRAGMA user_version``: :func:`migrate` applies
:data:`MIGRATIONS` in order, each in one transaction, and refuses a file newer
than this code. :data:`INSERT_MESSAGE` and :data:`UPSERT_MESSAGE` take the
conversation id, :func:`message_row` and the write time; the rows of
:func:`history_query` (or any selected with :data:`COLUMNS`) read back with
:func:`row_message`. :func:`end_interrupted` ends the replies a crash left streaming;
:func:`restore` writes a copied conversation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson

from .base import Conversation, StoredMessage, StoreUnusable
from .listing import like_pattern

__all__ = [
    "COLUMNS",
    "CONVERSATION_COLUMNS",
    "INSERT_MESSAGE",
    "MIGRATIONS",
    "RECORD_USAGE",
    "SCHEMA_VERSION",
    "UPSERT_MESSAGE",
    "REOPEN",
    "SIBLINGS",
    "USAGE",
    "StoreCorrupt",
    "branch_query",
    "conversations_query",
    "end_interrupted",
    "history_query",
    "message_row",
    "migrate",
    "restore",
    "row_message",
]

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
    # 4: whose conversation it is (those from before have none yet: ''), and a
    # subject's conversations newest first.
    """
    ALTER TABLE conversations ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    CREATE INDEX conversations_by_owner ON conversations(owner, updated_at, id);
    """,
    # 5: the usage ledger: one row per reply, kept when its conversation is deleted.
    """
    CREATE TABLE usage (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        subject TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        reply_id TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX usage_by_time ON usage(created_at);
    CREATE INDEX usage_by_subject ON usage(subject, created_at);
    """,
    # 6: a reply's reasoning (its thinking), kept apart from its text (NULL before this version).
    """
    ALTER TABLE messages ADD COLUMN reasoning TEXT;
    """,
    # 7: messages form a tree (each follows its parent; '' for a first message) and the
    # conversation remembers its active branch's last message and its own instructions.
    # What was stored before is one branch, each message following the previous one.
    """
    ALTER TABLE messages ADD COLUMN parent_id TEXT NOT NULL DEFAULT '';
    UPDATE messages SET parent_id = coalesce((SELECT p.id FROM messages p
        WHERE p.conversation_id = messages.conversation_id AND p.pos < messages.pos ORDER BY p.pos DESC LIMIT 1), '');
    CREATE INDEX messages_by_parent ON messages(conversation_id, parent_id, pos);
    ALTER TABLE conversations ADD COLUMN active TEXT NOT NULL DEFAULT '';
    ALTER TABLE conversations ADD COLUMN system_prompt TEXT NOT NULL DEFAULT '';
    UPDATE conversations SET active = coalesce((SELECT m.id FROM messages m
        WHERE m.conversation_id = conversations.id ORDER BY m.pos DESC LIMIT 1), '');
    """,
)

RECORD_USAGE = (
    "INSERT INTO usage (subject, conversation_id, reply_id, model, prompt_tokens, completion_tokens, estimated,"
    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
USAGE = (
    "SELECT subject, model, count(*), sum(prompt_tokens), sum(completion_tokens), sum(estimated) FROM usage"
    " WHERE created_at >= ? AND (? IS NULL OR subject = ?) GROUP BY subject, model ORDER BY subject, model"
)
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = "id, role, content, created_at, finish_reason, usage, model, reasoning, parent_id"

INSERT_MESSAGE = (
    f"INSERT OR IGNORE INTO messages (conversation_id, {COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_MESSAGE = (
    f"INSERT INTO messages (conversation_id, {COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (conversation_id, id) DO UPDATE SET content = excluded.content,"
    " finish_reason = excluded.finish_reason, usage = excluded.usage, model = excluded.model,"
    " reasoning = excluded.reasoning, updated_at = excluded.updated_at"
    # A reply's writes are ordered: never over a final text (a continuation reopens it
    # first: REOPEN), never a shorter checkpoint.
    " WHERE messages.role = 'user' OR (messages.finish_reason IS NULL AND"
    " (excluded.finish_reason IS NOT NULL OR length(excluded.content) >= length(messages.content)))"
)
# A reply cut short, with no message after it, unfinished again for its continuation.
REOPEN = (
    "UPDATE messages SET finish_reason = NULL, updated_at = ? WHERE conversation_id = ? AND id = ?"
    " AND role = 'assistant' AND content = ? AND finish_reason IN ('length', 'error', 'cancelled')"
    " AND NOT EXISTS (SELECT 1 FROM messages c WHERE c.conversation_id = messages.conversation_id"
    " AND c.parent_id = messages.id)"
)


class StoreCorrupt(StoreUnusable):
    """The database file is newer than this code, or failed its integrity check."""


def migrate(conn: sqlite3.Connection) -> None:
    """Set up a fresh connection (WAL mode) and bring its file to :data:`SCHEMA_VERSION`.

    Raises:
        StoreCorrupt: If the file is at a schema version newer than this code; it is left as it was.
    """
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    version = _version(conn)
    if version > SCHEMA_VERSION:
        raise StoreCorrupt(f"the database is at schema version {version}; this gateway knows up to {SCHEMA_VERSION}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for number in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(f"BEGIN;\n{MIGRATIONS[number - 1]}\nPRAGMA user_version = {number};\nCOMMIT;")


def end_interrupted(conn: sqlite3.Connection) -> int:
    """Mark the replies a crash left streaming as ended (``finish_reason = "error"``),
    keeping their checkpointed text; return how many there were."""
    cursor = conn.execute(
        "UPDATE messages SET finish_reason = 'error' WHERE role = 'assistant' AND finish_reason IS NULL"
    )
    return cursor.rowcount


def restore(conn: sqlite3.Connection, conv: Conversation, messages: list[StoredMessage]) -> bool:
    """Write ``conv`` as given and its messages in one transaction, unless its id is taken."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        created = conn.execute(
            "INSERT OR IGNORE INTO conversations (id, title, created_at, updated_at, owner, active, system_prompt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (conv.id, conv.title, conv.created_at, conv.updated_at, conv.owner, conv.active, conv.system_prompt),
        ).rowcount == 1
        if created:
            conn.executemany(INSERT_MESSAGE, [(conv.id, *message_row(m), conv.updated_at) for m in messages])
        conn.execute("COMMIT" if created else "ROLLBACK")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return created


CONVERSATION_COLUMNS = "id, title, created_at, updated_at, owner, active, system_prompt"


def conversations_query(owner: str, limit: int, after: tuple[float, str] | None, query: str) -> tuple[str, tuple[Any, ...]]:
    """The query, and its arguments, for ``limit`` of ``owner``'s conversations, newest
    first, after the position ``after``, whose title or a message contains ``query``."""
    sql = f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE owner = ?"
    args: tuple[Any, ...] = (owner,)
    if after is not None:
        sql += " AND (updated_at < ? OR (updated_at = ? AND id < ?))"
        args += (after[0], after[0], after[1])
    if query:
        sql += (
            " AND (title LIKE ? ESCAPE '\\' OR EXISTS"
            " (SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content LIKE ? ESCAPE '\\'))"
        )
        args += (like_pattern(query), like_pattern(query))
    return sql + " ORDER BY updated_at DESC, id DESC LIMIT ?", (*args, limit)


_BRANCH = f"""
WITH RECURSIVE branch(id, depth) AS (
    SELECT ?, 0
    UNION ALL
    SELECT m.parent_id, b.depth + 1 FROM branch b JOIN messages m ON m.conversation_id = ? AND m.id = b.id
    WHERE m.parent_id != '' AND b.depth < 1000000 LIMIT ?
)
SELECT {", ".join("m." + c for c in COLUMNS.split(", "))} FROM branch b
JOIN messages m ON m.conversation_id = ? AND m.id = b.id ORDER BY b.depth
"""


def branch_query(conversation_id: str, last: str, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The query, and its arguments, for the ``limit`` newest messages (all if negative)
    of the branch ending with message ``last``, newest first, as :data:`COLUMNS`."""
    return _BRANCH, (last, conversation_id, limit, conversation_id)


def history_query(conversation_id: str, limit: int, before: str | None) -> tuple[str, tuple[Any, ...]]:
    """The query, and its arguments, for the newest ``limit`` messages of the active branch
    (of the branch ending just before the message ``before`` if given), newest first, as
    :data:`COLUMNS`."""
    if before is None:
        start = "(SELECT active FROM conversations WHERE id = ?)"
        args: tuple[Any, ...] = (conversation_id,)
    else:
        start = "(SELECT parent_id FROM messages WHERE conversation_id = ? AND id = ?)"
        args = (conversation_id, before)
    return _BRANCH.replace("SELECT ?, 0", f"SELECT {start}, 0", 1), (*args, conversation_id, limit, conversation_id)


SIBLINGS = "SELECT parent_id, id FROM messages WHERE conversation_id = ? AND parent_id IN ({}) ORDER BY pos"


def message_row(m: StoredMessage) -> tuple[Any, ...]:
    """The values of :data:`COLUMNS` for ``m``."""
    usage = orjson.dumps(dict(m.usage)).decode() if m.usage else None
    return (m.id, m.role, m.content, m.created_at, m.finish_reason, usage, m.model, m.reasoning, m.parent_id)


def row_message(row: Any) -> StoredMessage:
    """The message a row selected with :data:`COLUMNS` holds."""
    msg_id, role, content, created_at, finish_reason, usage, model, reasoning, parent_id = row
    parsed: Mapping[str, int] | None = orjson.loads(usage) if usage else None
    return StoredMessage(msg_id, role, content, created_at, finish_reason, parsed, model, reasoning, parent_id)


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0
