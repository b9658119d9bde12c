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
    "APPEND",
    "BRANCH",
    "CLAIM",
    "CREATE",
    "DELETE",
    "DELETE_MESSAGES",
    "GET",
    "IDS",
    "INSERT",
    "LOCK",
    "LOCK_CONVERSATION",
    "MAKE_ACTIVE",
    "MESSAGES",
    "MIGRATIONS",
    "PRUNE",
    "END_STALE",
    "RECORD_USAGE",
    "RECOVER",
    "REOPEN",
    "REMOVE",
    "RENAME",
    "RESTORE_CONVERSATION",
    "RESTORE_MESSAGE",
    "SCHEMA_VERSION",
    "SET_ACTIVE",
    "SET_SYSTEM_PROMPT",
    "TREE",
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
    # 5: messages form a tree (each follows its parent; '' for a first message) and the
    # conversation remembers its active branch's last message and its own instructions.
    # What was stored before is one branch, each message following the previous one: one
    # pass over the table (a window), the index built after it.
    (
        "ALTER TABLE messages ADD COLUMN parent_id text NOT NULL DEFAULT ''",
        """
        UPDATE messages SET parent_id = previous.id
        FROM (SELECT pos, lag(id) OVER (PARTITION BY conversation_id ORDER BY pos) AS id FROM messages) previous
        WHERE messages.pos = previous.pos AND previous.id IS NOT NULL
        """,
        "CREATE INDEX messages_by_parent ON messages (conversation_id, parent_id, pos)",
        "ALTER TABLE conversations ADD COLUMN active text NOT NULL DEFAULT ''",
        "ALTER TABLE conversations ADD COLUMN system_prompt text NOT NULL DEFAULT ''",
        """
        UPDATE conversations c SET active = last.id
        FROM (SELECT DISTINCT ON (conversation_id) conversation_id, id FROM messages
              ORDER BY conversation_id DESC, pos DESC) last
        WHERE c.id = last.conversation_id
        """,
    ),
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


def _columns(table: str = "") -> str:
    """The columns :func:`row_message` reads (after ``pos``), of ``table`` if named."""
    t = f"{table}." if table else ""
    return (
        f"{t}id, {t}role, {t}content, extract(epoch FROM {t}created_at)::float8 AS created_at, {t}finish_reason,"
        f" {t}usage, {t}model, {t}reasoning, {t}parent_id"
    )


def _names(table: str) -> str:
    """The names :func:`_columns` gives its columns, of ``table`` (a CTE that selected them)."""
    return ", ".join(f"{table}.{c}" for c in (
        "id", "role", "content", "created_at", "finish_reason", "usage", "model", "reasoning", "parent_id"
    ))


_COLUMNS = _columns()

_CONVERSATION = (
    "id, title, extract(epoch FROM created_at)::float8, extract(epoch FROM updated_at)::float8, owner, active,"
    " system_prompt"
)

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
SET_SYSTEM_PROMPT = "UPDATE conversations SET system_prompt = %s WHERE id = %s AND owner = %s"
# The conversation's row locked (as its update would) for a change that reads its tree first:
# writes that would move its active branch meanwhile wait. Answers its active branch's last.
LOCK_CONVERSATION = "SELECT active FROM conversations WHERE id = %s FOR NO KEY UPDATE"
TREE = "SELECT id, parent_id FROM messages WHERE conversation_id = %s ORDER BY pos"
SET_ACTIVE = "UPDATE conversations SET active = %s WHERE id = %s"
# The branch ending with a message made the active one, if the conversation has the message.
MAKE_ACTIVE = """
UPDATE conversations SET active = %(id)s
WHERE id = %(cid)s AND EXISTS (SELECT 1 FROM messages WHERE conversation_id = %(cid)s AND id = %(id)s)
"""
MESSAGES = f"SELECT pos, {_COLUMNS} FROM messages WHERE conversation_id = %s ORDER BY pos"
DELETE_MESSAGES = "DELETE FROM messages WHERE conversation_id = %s AND id = ANY(%s)"


def _walk(start: str) -> str:
    """The CTE ``branch`` (of a ``WITH RECURSIVE``): the last %(limit)s messages (NULL: all)
    of the branch ending with message ``start`` (an SQL expression giving its id), from
    ``depth`` 1 (that message) up its parents, with ``pos`` and :func:`_columns`. With
    %(max_bytes)s, only those :func:`~gateway.stores.base.newest_within` would keep: the
    walk stops there (``newer``: the bytes of text of the messages below each). Each step
    goes to an older message (a lower ``pos``), so a parent link gone wrong ends a branch
    rather than loop."""
    size = "octet_length(m.content) + coalesce(octet_length(m.reasoning), 0)"
    return f"""
    branch AS (
        SELECT 1 AS depth, m.pos, {_columns("m")}, {size} AS size, 0::bigint AS newer
        FROM messages m
        WHERE m.conversation_id = %(cid)s AND m.id = {start} AND (%(limit)s::bigint IS NULL OR %(limit)s > 0)
        UNION ALL
        SELECT b.depth + 1, m.pos, {_columns("m")}, {size}, b.newer + b.size
        FROM branch b JOIN messages m ON m.conversation_id = %(cid)s AND m.id = b.parent_id AND m.pos < b.pos
        WHERE (%(limit)s::bigint IS NULL OR b.depth < %(limit)s)
          AND (%(max_bytes)s::bigint IS NULL OR b.newer <= %(max_bytes)s OR b.depth = 1)
    )"""


# The last %(limit)s messages (NULL: all) of the branch ending with message %(start)s, newest
# first, each row the conversation's instructions and the message (NULLs if there is no such
# message); no row if there is no such conversation.
BRANCH = f"""
WITH RECURSIVE {_walk("%(start)s::text")}
SELECT c.system_prompt, b.pos, {_names("b")}
FROM conversations c LEFT JOIN branch b ON true
WHERE c.id = %(cid)s
ORDER BY b.depth
"""

_INSERT_INTO = (
    "INSERT INTO messages (conversation_id, id, role, content, created_at, finish_reason, usage, model, reasoning,"
    " parent_id, updated_at)"
)


def _new_row(parent: str, source: str) -> str:
    """The values of a message written, under ``parent`` (SQL), one row per row of ``source``."""
    return f"""
    SELECT %(cid)s, %(id)s, %(role)s, %(content)s, to_timestamp(%(created_at)s), %(finish_reason)s,
           %(usage)s, %(model)s, %(reasoning)s, {parent}, to_timestamp(%(now)s)
    FROM {source}
    """


def _touch(active: str) -> str:
    """The conversation's update of a message written: its time, its title if it had none,
    and its active branch's last message, ``active`` (SQL)."""
    return f"""
    UPDATE conversations
    SET updated_at = to_timestamp(%(now)s), title = CASE WHEN title = '' THEN %(title)s ELSE title END,
        active = {active}
    WHERE id = %(cid)s
    """


# The conversation's row, locked as its update would lock it but before the message is
# written: a write that moves its active branch meanwhile is waited for, and read as it
# committed. No row if there is no such conversation.
_LOCKED = "conv AS (SELECT active, system_prompt FROM conversations WHERE id = %(cid)s FOR NO KEY UPDATE)"
# The parent of a new message: its own, or else the active branch's last message.
_PARENT = "CASE WHEN %(parent_id)s = '' THEN conv.active ELSE %(parent_id)s END"
# The active branch extended by the message when it ended with the message's parent.
_EXTENDED = "CASE WHEN active = {} THEN %(id)s ELSE active END"

# A new message; nothing written (not even the conversation touched) if its id is taken.
# Answers (conversation exists, message added).
INSERT = f"""
WITH {_LOCKED},
added AS ({_INSERT_INTO} {_new_row(_PARENT, "conv")} ON CONFLICT (conversation_id, id) DO NOTHING RETURNING parent_id),
touched AS ({_touch(_EXTENDED.format("(SELECT parent_id FROM added)"))} AND EXISTS (SELECT 1 FROM added) RETURNING 1)
SELECT EXISTS (SELECT 1 FROM conv), EXISTS (SELECT 1 FROM added)
"""

# A user's message added under %(after)s (NULL: the active branch's last message) and made
# the active branch's last, and (if it was added) the branch it ends, in one statement:
# rows of (conversation exists, its parent known, message added, the conversation's
# instructions, then the message's pos and :func:`_columns`, or NULLs), newest first.
# The earlier messages are read in the statement's snapshot, without the new one, which
# comes from the insert itself; %(limit)s: how many of them (NULL: all). "Parent known"
# is false when %(after)s is not a message of the conversation, or when, without it, the
# active branch changed after the snapshot (its last message may be one the snapshot
# does not hold): nothing is written, and the statement may be run again.
APPEND = f"""
WITH RECURSIVE seen AS (SELECT active FROM conversations WHERE id = %(cid)s),
{_LOCKED},
place AS (
    SELECT coalesce(%(after)s::text, active) AS parent, CASE
        WHEN %(after)s::text IS NULL THEN active = (SELECT active FROM seen)
        ELSE %(after)s = '' OR EXISTS (SELECT 1 FROM messages WHERE conversation_id = %(cid)s AND id = %(after)s)
    END AS known
    FROM conv
),
added AS (
    {_INSERT_INTO} {_new_row("place.parent", "place WHERE place.known")}
    ON CONFLICT (conversation_id, id) DO NOTHING
    RETURNING pos, {_COLUMNS}
),
touched AS ({_touch("%(id)s")} AND EXISTS (SELECT 1 FROM added) RETURNING 1),
{_walk("(SELECT parent FROM place WHERE EXISTS (SELECT 1 FROM added))")}
SELECT f.found, f.known, f.added, f.system_prompt, m.pos, {_names("m")} FROM (
    SELECT EXISTS (SELECT 1 FROM conv) AS found, coalesce((SELECT known FROM place), false) AS known,
           EXISTS (SELECT 1 FROM added) AS added, (SELECT system_prompt FROM conv) AS system_prompt
) f LEFT JOIN (
    SELECT 0 AS depth, pos, {_names("added")} FROM added
    UNION ALL
    SELECT depth, pos, {_names("branch")} FROM branch
) m ON f.added
ORDER BY m.depth NULLS LAST
"""

# A message inserted or replaced. A reply's writes are ordered: a final text (one with a
# finish_reason) is never replaced (a continuation reopens it first: REOPEN), and a
# checkpoint never replaces a longer text. A replaced message
# keeps its parent. Answers (conversation exists, message written).
UPSERT = f"""
WITH {_LOCKED},
stored AS (SELECT parent_id FROM messages WHERE conversation_id = %(cid)s AND id = %(id)s),
written AS (
    {_INSERT_INTO} {_new_row(_PARENT, "conv")}
    WHERE %(parent_id)s = '' OR EXISTS (SELECT 1 FROM stored)
        OR EXISTS (SELECT 1 FROM messages p WHERE p.conversation_id = %(cid)s AND p.id = %(parent_id)s)
    ON CONFLICT (conversation_id, id) DO UPDATE SET
        content = excluded.content, finish_reason = excluded.finish_reason, usage = excluded.usage,
        model = excluded.model, reasoning = excluded.reasoning, updated_at = excluded.updated_at
    WHERE messages.role = 'user' OR (
        messages.finish_reason IS NULL AND (
            excluded.finish_reason IS NOT NULL OR char_length(excluded.content) >= char_length(messages.content)))
    RETURNING parent_id
),
touched AS (
    {_touch(_EXTENDED.format("coalesce((SELECT parent_id FROM written), (SELECT parent_id FROM stored))"))}
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM touched), EXISTS (SELECT 1 FROM written)
"""

DELETE = "DELETE FROM messages WHERE conversation_id = %s AND id = %s"
IDS = "SELECT id FROM conversations WHERE id > %s ORDER BY id LIMIT %s"
RESTORE_CONVERSATION = """
INSERT INTO conversations (id, title, created_at, updated_at, owner, active, system_prompt)
VALUES (%s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s, %s)
ON CONFLICT (id) DO NOTHING RETURNING 1
"""
RESTORE_MESSAGE = f"{_INSERT_INTO} VALUES (%s, %s, %s, %s, to_timestamp(%s), %s, %s, %s, %s, %s, to_timestamp(%s))"
PRUNE = "DELETE FROM conversations WHERE updated_at < to_timestamp(%s)"
RECOVER = "UPDATE messages SET finish_reason = 'error' WHERE role = 'assistant' AND finish_reason IS NULL"
END_STALE = RECOVER + " AND updated_at < to_timestamp(%s)"
# A reply cut short, with no message after it, unfinished again for its continuation.
REOPEN = (
    "UPDATE messages m SET finish_reason = NULL, updated_at = now()"
    " WHERE m.conversation_id = %s AND m.id = %s AND m.role = 'assistant' AND m.content = %s"
    " AND m.finish_reason IN ('length', 'error', 'cancelled') AND NOT EXISTS"
    " (SELECT 1 FROM messages c WHERE c.conversation_id = m.conversation_id AND c.parent_id = m.id)"
)


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
    """The newest ``limit`` messages (all if negative) of the active branch, or of the
    branch ending just before message ``before``, newest first; with ``max_bytes``, only
    those :func:`~gateway.stores.base.newest_within` would keep (counted in the database:
    the rest is never read). Each row: pos, :func:`_columns`, then the ids of the
    message's siblings (itself among them), oldest first."""
    args: dict[str, Any] = {"cid": conversation_id, "limit": limit if limit >= 0 else None, "max_bytes": max_bytes}
    if before is None:
        start = "(SELECT active FROM conversations WHERE id = %(cid)s)"
    else:
        start = "(SELECT parent_id FROM messages WHERE conversation_id = %(cid)s AND id = %(before)s)"
        args["before"] = before
    siblings = (
        "array(SELECT s.id FROM messages s WHERE s.conversation_id = %(cid)s AND s.parent_id = b.parent_id"
        " ORDER BY s.pos)"
    )
    return f"WITH RECURSIVE {_walk(start)} SELECT b.pos, {_names('b')}, {siblings} FROM branch b ORDER BY b.depth", args


def message_params(conversation_id: str, m: StoredMessage, now: float, usage: Any) -> dict[str, Any]:
    """The parameters of :data:`INSERT` and :data:`UPSERT` for ``m`` (``usage`` adapted)."""
    return {
        "cid": conversation_id, "id": m.id, "role": m.role, "content": m.content, "created_at": m.created_at,
        "finish_reason": m.finish_reason, "usage": usage, "model": m.model, "reasoning": m.reasoning,
        "parent_id": m.parent_id, "now": now, "title": title_of(m.content) if m.role == "user" else "",
    }


def row_message(row: Any) -> StoredMessage:
    """The message of a row of pos and :func:`_columns` (the first ten of ``row``)."""
    _pos, msg_id, role, content, created_at, finish_reason, usage, model, reasoning, parent_id = row[:10]
    parsed: Mapping[str, int] | None = dict(usage) if usage else None
    return StoredMessage(msg_id, role, content, created_at, finish_reason, parsed, model, reasoning, parent_id)

