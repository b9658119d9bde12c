"""The PostgreSQL store's schema: its tables, their migrations, and its statements (pure).

The schema version is the one row of ``gateway_schema``; :data:`MIGRATIONS` are
applied in order, all in one transaction taken under an advisory lock, so gateways
starting at once against an empty database apply them once. Times are
``timestamptz`` (readable by people and by ``psql``), exchanged as epoch seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import StoredMessage, StoreUnusable, title_of
from .listing import like_pattern

__all__ = [
    "CLAIM",
    "CREATE",
    "DELETE",
    "GET",
    "IDS",
    "INSERT",
    "LOCK",
    "MIGRATIONS",
    "PRUNE",
    "END_STALE",
    "RECORD_USAGE",
    "RECOVER",
    "REMOVE",
    "RENAME",
    "RESTORE_CONVERSATION",
    "RESTORE_MESSAGE",
    "SCHEMA_VERSION",
    "UPSERT",
    "USAGE",
    "StoreTooNew",
    "conversations_query",
    "history_query",
    "message_params",
    "row_message",
]

# Any constant that is the same for every gateway: the key of the migration lock.
LOCK = 0x6761_7465_7761_79  # "gateway"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: conversations and their messages, in insertion order (pos), as in SQLite's
    # schema 3: the text of a reply, how it ended, its usage and its model.
    (
        """
        CREATE TABLE conversations (
            id text PRIMARY KEY,
            title text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        )
        """,
        "CREATE INDEX conversations_by_age ON conversations (updated_at)",
        """
        CREATE TABLE messages (
            pos bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            conversation_id text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            id text NOT NULL,
            role text NOT NULL CHECK (role IN ('user', 'assistant')),
            content text NOT NULL,
            finish_reason text,
            usage jsonb,
            model text,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            UNIQUE (conversation_id, id)
        )
        """,
        "CREATE INDEX messages_by_conversation ON messages (conversation_id, pos)",
    ),
    # 2: whose conversation it is (those from before have none yet: ''), and a
    # subject's conversations newest first.
    (
        "ALTER TABLE conversations ADD COLUMN owner text NOT NULL DEFAULT ''",
        "CREATE INDEX conversations_by_owner ON conversations (owner, updated_at DESC, id DESC)",
    ),
    # 3: the usage ledger: one row per reply, kept when its conversation is deleted.
    (
        """
        CREATE TABLE usage (
            pos bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            subject text NOT NULL,
            conversation_id text NOT NULL,
            reply_id text NOT NULL,
            model text NOT NULL,
            prompt_tokens integer NOT NULL,
            completion_tokens integer NOT NULL,
            estimated boolean NOT NULL,
            created_at timestamptz NOT NULL
        )
        """,
        "CREATE INDEX usage_by_time ON usage (created_at)",
        "CREATE INDEX usage_by_subject ON usage (subject, created_at)",
    ),
    # 4: a reply's reasoning (its thinking), kept apart from its text (NULL before this version).
    ("ALTER TABLE messages ADD COLUMN reasoning text",),
)

RECORD_USAGE = """
INSERT INTO usage (subject, conversation_id, reply_id, model, prompt_tokens, completion_tokens, estimated, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))
"""
USAGE = """
SELECT subject, model, count(*), sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint,
       count(*) FILTER (WHERE estimated)
FROM usage WHERE created_at >= to_timestamp(%(since)s) AND (%(subject)s::text IS NULL OR subject = %(subject)s)
GROUP BY subject, model ORDER BY subject, model
"""
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = "id, role, content, extract(epoch FROM created_at)::float8, finish_reason, usage, model, reasoning"

_CONVERSATION = "id, title, extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8, owner"

# The conversation, created if absent. DO UPDATE (a no-op) rather than DO NOTHING: it waits
# for a concurrent creator to commit and then returns that row, which a second SELECT in the
# same statement could not see (its snapshot is older).
CREATE = f"""
INSERT INTO conversations (id, title, created_at, updated_at, owner)
VALUES (%(id)s, '', to_timestamp(%(now)s), to_timestamp(%(now)s), %(owner)s)
ON CONFLICT (id) DO UPDATE SET id = excluded.id
RETURNING {_CONVERSATION}
"""

GET = f"SELECT {_CONVERSATION} FROM conversations WHERE id = %s"
RENAME = "UPDATE conversations SET title = %s WHERE id = %s AND owner = %s"
REMOVE = "DELETE FROM conversations WHERE id = %(id)s AND (%(owner)s::text IS NULL OR owner = %(owner)s)"
CLAIM = "UPDATE conversations SET owner = %s WHERE id = %s AND owner = %s"

_NEW_ROW = """
    SELECT %(cid)s, %(id)s, %(role)s, %(content)s, to_timestamp(%(created_at)s), %(finish_reason)s,
           %(usage)s, %(model)s, %(reasoning)s, to_timestamp(%(now)s)
    WHERE EXISTS (SELECT 1 FROM conversations WHERE id = %(cid)s)
"""
_INSERT_INTO = (
    "INSERT INTO messages (conversation_id, id, role, content, created_at, finish_reason, usage, model, reasoning,"
    " updated_at)"
)
_TOUCH = """
    UPDATE conversations
    SET updated_at = to_timestamp(%(now)s), title = CASE WHEN title = '' THEN %(title)s ELSE title END
    WHERE id = %(cid)s
"""

# A new message; nothing written (not even the conversation touched) if its id is taken.
# Answers (conversation exists, message added).
INSERT = f"""
WITH added AS ({_INSERT_INTO} {_NEW_ROW} ON CONFLICT (conversation_id, id) DO NOTHING RETURNING 1),
touched AS ({_TOUCH} AND EXISTS (SELECT 1 FROM added) RETURNING 1)
SELECT EXISTS (SELECT 1 FROM conversations WHERE id = %(cid)s), EXISTS (SELECT 1 FROM added)
"""

# A user's message added, and (if it was) the history it ends, in one statement: rows of
# (conversation exists, message added, then a history_query row or NULLs), newest first.
# The earlier messages are read in the statement's snapshot, without the new one, which
# comes from the insert itself. %(earlier)s: how many earlier messages (NULL: all).
APPEND = f"""
WITH added AS (
    {_INSERT_INTO} {_NEW_ROW} ON CONFLICT (conversation_id, id) DO NOTHING
    RETURNING pos, {_COLUMNS}
),
touched AS ({_TOUCH} AND EXISTS (SELECT 1 FROM added) RETURNING 1),
flags AS (
    SELECT EXISTS (SELECT 1 FROM conversations WHERE id = %(cid)s) AS found, EXISTS (SELECT 1 FROM added) AS added
)
SELECT flags.found, flags.added, m.* FROM flags LEFT JOIN (
    SELECT * FROM added
    UNION ALL
    (SELECT pos, {_COLUMNS} FROM messages WHERE conversation_id = %(cid)s ORDER BY pos DESC LIMIT %(earlier)s)
) m ON flags.added
ORDER BY m.pos DESC NULLS LAST
"""

# A message inserted or replaced. A reply's writes are ordered: a final text (one with a
# finish_reason) is never replaced, and a checkpoint never replaces a longer text.
# Answers (conversation exists, message written).
UPSERT = f"""
WITH written AS (
    {_INSERT_INTO} {_NEW_ROW}
    ON CONFLICT (conversation_id, id) DO UPDATE SET
        content = excluded.content, finish_reason = excluded.finish_reason, usage = excluded.usage,
        model = excluded.model, reasoning = excluded.reasoning, updated_at = excluded.updated_at
    WHERE messages.role = 'user' OR (
        messages.finish_reason IS NULL AND (
            excluded.finish_reason IS NOT NULL OR char_length(excluded.content) >= char_length(messages.content)))
    RETURNING 1
),
touched AS ({_TOUCH} RETURNING 1)
SELECT EXISTS (SELECT 1 FROM touched), EXISTS (SELECT 1 FROM written)
"""

DELETE = "DELETE FROM messages WHERE conversation_id = %s AND id = %s"
IDS = "SELECT id FROM conversations WHERE id > %s ORDER BY id LIMIT %s"
RESTORE_CONVERSATION = """
INSERT INTO conversations (id, title, created_at, updated_at, owner)
VALUES (%s, %s, to_timestamp(%s), to_timestamp(%s), %s)
ON CONFLICT (id) DO NOTHING RETURNING 1
"""
RESTORE_MESSAGE = f"{_INSERT_INTO} VALUES (%s, %s, %s, %s, to_timestamp(%s), %s, %s, %s, %s, to_timestamp(%s))"
PRUNE = "DELETE FROM conversations WHERE updated_at < to_timestamp(%s)"
RECOVER = "UPDATE messages SET finish_reason = 'error' WHERE role = 'assistant' AND finish_reason IS NULL"
END_STALE = RECOVER + " AND created_at < to_timestamp(%s)"


class StoreTooNew(StoreUnusable):
    """The database's schema is newer than this code."""


def conversations_query(owner: str, limit: int, after: tuple[int, str] | None, query: str) -> tuple[str, dict[str, Any]]:
    """``limit`` of ``owner``'s conversations, newest first, after the position ``after``
    (microseconds since the epoch, exact, and an id), whose title or a message contains
    ``query``. Each row: the conversation's columns, then its own position."""
    args: dict[str, Any] = {"owner": owner, "limit": limit}
    where = "owner = %(owner)s"
    if after is not None:
        where += " AND (updated_at, id) < ('epoch'::timestamptz + %(us)s * interval '1 microsecond', %(after_id)s)"
        args |= {"us": after[0], "after_id": after[1]}
    if query:
        where += (
            " AND (title ILIKE %(pattern)s ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m"
            " WHERE m.conversation_id = c.id AND m.content ILIKE %(pattern)s ESCAPE '\\'))"
        )
        args["pattern"] = like_pattern(query)
    position = "(extract(epoch FROM updated_at) * 1000000)::bigint"
    return (
        f"SELECT {_CONVERSATION}, {position} FROM conversations c WHERE {where}"
        " ORDER BY updated_at DESC, id DESC LIMIT %(limit)s",
        args,
    )


def history_query(
    conversation_id: str, limit: int, before: str | None, max_bytes: int | None
) -> tuple[str, dict[str, Any]]:
    """The newest ``limit`` messages (all if negative) before message ``before``, newest
    first; with ``max_bytes``, only those :func:`~gateway.stores.base.newest_within` would
    keep (counted in the database: the rest never leaves it)."""
    args: dict[str, Any] = {"cid": conversation_id, "limit": limit if limit >= 0 else None}
    where = "conversation_id = %(cid)s"
    if before is not None:
        where += " AND pos < (SELECT pos FROM messages WHERE conversation_id = %(cid)s AND id = %(before)s)"
        args["before"] = before
    page = f"SELECT pos, {_COLUMNS}, octet_length(content) + coalesce(octet_length(reasoning), 0) AS size" \
        f" FROM messages WHERE {where}" \
        " ORDER BY pos DESC LIMIT %(limit)s"
    if max_bytes is None:
        return f"SELECT * FROM ({page}) page ORDER BY pos DESC", args
    # A message is kept while the text of those before it, but the one just before, fits.
    args["max_bytes"] = max_bytes
    return f"""
        SELECT * FROM (
            SELECT *, coalesce(sum(size) OVER (ORDER BY pos DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 2 PRECEDING), 0)
                AS before_last
            FROM ({page}) page
        ) counted
        WHERE before_last <= %(max_bytes)s
        ORDER BY pos DESC
    """, args


def message_params(conversation_id: str, m: StoredMessage, now: float, usage: Any) -> dict[str, Any]:
    """The parameters of :data:`INSERT` and :data:`UPSERT` for ``m`` (``usage`` adapted)."""
    return {
        "cid": conversation_id, "id": m.id, "role": m.role, "content": m.content, "created_at": m.created_at,
        "finish_reason": m.finish_reason, "usage": usage, "model": m.model, "reasoning": m.reasoning,
        "now": now, "title": title_of(m.content) if m.role == "user" else "",
    }


def row_message(row: Any) -> StoredMessage:
    """The message of a :func:`history_query` row."""
    _pos, msg_id, role, content, created_at, finish_reason, usage, model, reasoning = row[:9]
    parsed: Mapping[str, int] | None = dict(usage) if usage else None
    return StoredMessage(msg_id, role, content, created_at, finish_reason, parsed, model, reasoning)

