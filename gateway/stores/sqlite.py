"""Conversations in a SQLite file (WAL mode), on one dedicated thread.

Each store operation is one function run on that thread, never on the event loop.
Operations that arrive together share a hop off the loop, and the writes among
them (new conversations, messages, checkpoints) share one transaction: a burst of
messages is one commit (:mod:`.sqlite_batch`).

The schema is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` are
applied in order at :meth:`SQLiteStore.open`, each in one transaction (the
schema and the mapping of messages to rows are in :mod:`.sqlite_schema`). Opening
also closes the books on replies a crash left streaming: their checkpointed
text stays, marked ``finish_reason = "error"``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from .base import (
    UNOWNED,
    Branch,
    Conversation,
    ConversationNotFound,
    MessageNotFound,
    OpenReport,
    Page,
    StoredMessage,
    UsageEntry,
    UsageTotal,
    descendants,
    export_document,
    leaf_under,
    new_id,
    newest_within,
    title_of,
    with_siblings,
)
from .listing import page_cursor, parse_cursor
from .sqlite_batch import Batcher, Undo
from .sqlite_schema import (
    COLUMNS,
    CONVERSATION_COLUMNS,
    INSERT_MESSAGE,
    MIGRATIONS,
    RECORD_USAGE,
    REOPEN,
    SCHEMA_VERSION,
    SIBLINGS,
    UPSERT_MESSAGE,
    USAGE,
    StoreCorrupt,
    branch_query,
    conversations_query,
    end_interrupted,
    history_query,
    message_row,
    migrate,
    restore,
    row_message,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "StoreCorrupt"]

T = TypeVar("T")


class SQLiteStore:
    """A :class:`~gateway.stores.ConversationStore` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._batcher: Batcher | None = None

    async def open(self, *, recover: bool = True) -> OpenReport:
        """Open (creating the file and its directory), migrate, and with ``recover``
        mark replies a crash left streaming as ended. Tools that run beside a live
        gateway (export, prune) open with ``recover=False``."""
        if self._batcher is not None:
            return OpenReport()
        self._batcher = Batcher(lambda: self.conn)
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
        migrate(conn)
        return end_interrupted(conn) if recover else 0

    async def _run(self, fn: Callable[..., T], *args: Any, grouped: bool = False) -> T:
        if self._batcher is None:
            raise RuntimeError("the store is not open")
        return await self._batcher.run(fn, *args, grouped=grouped)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the store is not open")
        return self._conn

    async def close(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.close(self._close_connection)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def create(self, conversation_id: str | None = None, *, owner: str = UNOWNED) -> Conversation:
        return await self._run(self._create, conversation_id or new_id(), owner, grouped=True)

    def _create(self, conversation_id: str, owner: str) -> Conversation:
        now = time.time()
        self.conn.execute(
            "INSERT OR IGNORE INTO conversations (id, title, created_at, updated_at, owner) VALUES (?, '', ?, ?, ?)",
            (conversation_id, now, now, owner),
        )
        conv = self._get(conversation_id)
        assert conv is not None
        return conv

    async def get(self, conversation_id: str) -> Conversation | None:
        return await self._run(self._get, conversation_id)

    def _get(self, conversation_id: str) -> Conversation | None:
        row = self.conn.execute(
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        return Conversation(*row) if row else None

    async def add(self, conversation_id: str, message: StoredMessage) -> bool:
        return await self._run(self._write, conversation_id, message, False, grouped=True)

    async def append(
        self, conversation_id: str, message: StoredMessage, *, create: bool, history: int, owner: str = UNOWNED,
        after: str | None = None,
    ) -> Branch | None:
        return await self._run(
            self._append, conversation_id, message, owner if create else None, history, after, grouped=True
        )

    def _append(
        self, conversation_id: str, message: StoredMessage, create_for: str | None, limit: int, after: str | None
    ) -> Branch:
        if create_for is not None:
            self._create(conversation_id, create_for)
        conv = self._get(conversation_id)
        if conv is None:
            raise ConversationNotFound(conversation_id)
        if after is None:
            after = conv.active
        elif after and not self._has(conversation_id, after):
            raise MessageNotFound(after)
        message = replace(message, parent_id=after)
        try:
            self._write(conversation_id, message, False, active=message.id)
        except Undo:
            raise Undo(None) from None
        return Branch(self._branch(conversation_id, message.id, limit), conv.system_prompt)

    def _has(self, conversation_id: str, message_id: str) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM messages WHERE conversation_id = ? AND id = ?", (conversation_id, message_id)
        ).fetchone() is not None

    def _branch(self, conversation_id: str, last: str, limit: int) -> list[StoredMessage]:
        return [row_message(row) for row in reversed(self.conn.execute(*branch_query(conversation_id, last, limit)).fetchall())]

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        await self._run(self._write, conversation_id, message, True, grouped=True)

    def _write(self, conversation_id: str, message: StoredMessage, upsert: bool, active: str | None = None) -> bool:
        """Insert (or with ``upsert`` replace) a message and touch its conversation, in the
        batch's transaction; a message not added (its id taken) leaves nothing changed.
        The active branch ends with it if ``active`` is its id, or if it ended with its
        parent (a new message without one goes under the active branch's last)."""
        conn = self.conn
        row = conn.execute("SELECT active FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise ConversationNotFound(conversation_id)
        if active is None:
            stored = conn.execute(
                "SELECT parent_id FROM messages WHERE conversation_id = ? AND id = ?", (conversation_id, message.id)
            ).fetchone()
            if not message.parent_id:
                message = replace(message, parent_id=stored[0] if stored else row[0])
            elif stored is None and not self._has(conversation_id, message.parent_id):
                return False  # its branch was deleted meanwhile: it would be out of every branch
        insert = UPSERT_MESSAGE if upsert else INSERT_MESSAGE
        now = time.time()
        added = conn.execute(insert, (conversation_id, *message_row(message), now)).rowcount == 1
        if not (added or upsert):
            raise Undo(False)
        title = title_of(message.content) if message.role == "user" else ""
        conn.execute(
            "UPDATE conversations SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END,"
            " active = CASE WHEN ? IS NOT NULL OR active = ? THEN ? ELSE active END WHERE id = ?",
            (now, title, active, message.parent_id, message.id, conversation_id),
        )
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
        cursor = self.conn.execute(*history_query(conversation_id, limit, before))
        try:  # rows are read one at a time: a byte-bounded page does not load the rest
            branch = list(reversed(newest_within(map(row_message, cursor), max_bytes)))
        finally:
            cursor.close()
        parents = sorted({m.parent_id for m in branch})
        children: list[tuple[str, str]] = []
        for i in range(0, len(parents), 500):
            chunk = parents[i : i + 500]
            query = SIBLINGS.format(", ".join("?" * len(chunk)))
            children += self.conn.execute(query, (conversation_id, *chunk)).fetchall()
        return with_siblings(branch, children)

    async def branch(self, conversation_id: str, message_id: str, limit: int) -> Branch | None:
        return await self._run(self._branch_to, conversation_id, message_id, limit)

    def _branch_to(self, conversation_id: str, message_id: str, limit: int) -> Branch | None:
        conv = self._get(conversation_id)
        if conv is None:
            return None
        if not limit:
            return Branch([], conv.system_prompt) if self._has(conversation_id, message_id) else None
        messages = self._branch(conversation_id, message_id, limit)  # empty: no such message
        return Branch(messages, conv.system_prompt) if messages else None

    async def messages(self, conversation_id: str) -> list[StoredMessage]:
        return await self._run(self._messages, conversation_id)

    def _messages(self, conversation_id: str) -> list[StoredMessage]:
        rows = self.conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY pos", (conversation_id,)
        ).fetchall()
        return [row_message(row) for row in rows]

    async def select(self, conversation_id: str, message_id: str, *, descend: bool = True) -> str | None:
        return await self._run(self._select, conversation_id, message_id, descend, grouped=True)

    def _select(self, conversation_id: str, message_id: str, descend: bool) -> str | None:
        if not self._has(conversation_id, message_id):
            return None
        leaf = leaf_under(self._tree(conversation_id), message_id) if descend else message_id
        self.conn.execute("UPDATE conversations SET active = ? WHERE id = ?", (leaf, conversation_id))
        return leaf

    def _tree(self, conversation_id: str) -> list[StoredMessage]:
        """Every message's place in the tree (ids and parents only), in the order added."""
        rows = self.conn.execute(
            "SELECT id, parent_id FROM messages WHERE conversation_id = ? ORDER BY pos", (conversation_id,)
        ).fetchall()
        return [StoredMessage(mid, "user", "", 0.0, parent_id=parent) for mid, parent in rows]

    async def delete_branch(self, conversation_id: str, message_id: str) -> bool:
        return await self._run(self._delete_branch, conversation_id, message_id, grouped=True)

    def _delete_branch(self, conversation_id: str, message_id: str) -> bool:
        conv = self._get(conversation_id)
        tree = self._tree(conversation_id) if conv is not None else []
        target = next((m for m in tree if m.id == message_id), None)
        if conv is None or target is None:
            return False
        gone = descendants(tree, message_id)
        self.conn.executemany(
            "DELETE FROM messages WHERE conversation_id = ? AND id = ?", [(conversation_id, mid) for mid in gone]
        )
        if conv.active in gone:
            remaining = [m for m in tree if m.id not in gone]
            leaf = leaf_under(remaining, target.parent_id)
            self.conn.execute("UPDATE conversations SET active = ? WHERE id = ?", (leaf, conversation_id))
        return True

    async def set_system_prompt(self, conversation_id: str, system_prompt: str, *, owner: str) -> bool:
        cursor = await self._run(
            self.conn.execute, "UPDATE conversations SET system_prompt = ? WHERE id = ? AND owner = ?",
            (system_prompt, conversation_id, owner), grouped=True,
        )
        return bool(cursor.rowcount)

    async def conversations(self, owner: str, *, limit: int, after: str | None = None, query: str = "") -> Page:
        start = parse_cursor(after, float) if after is not None else None
        rows = await self._run(lambda: self.conn.execute(*conversations_query(owner, limit + 1, start, query)).fetchall())
        page = [Conversation(*row) for row in rows[:limit]]
        return page, page_cursor(page[-1].updated_at, page[-1].id) if len(rows) > limit and page else None

    async def rename(self, conversation_id: str, title: str, *, owner: str) -> bool:
        cursor = await self._run(
            self.conn.execute, "UPDATE conversations SET title = ? WHERE id = ? AND owner = ?",
            (title, conversation_id, owner), grouped=True,
        )
        return bool(cursor.rowcount)

    async def remove(self, conversation_id: str, *, owner: str | None = None) -> bool:
        cursor = await self._run(
            self.conn.execute, "DELETE FROM conversations WHERE id = ? AND (? IS NULL OR owner = ?)",
            (conversation_id, owner, owner), grouped=True,
        )
        return bool(cursor.rowcount)

    async def claim(self, conversation_id: str, owner: str, *, previous: str) -> bool:
        cursor = await self._run(
            self.conn.execute, "UPDATE conversations SET owner = ? WHERE id = ? AND owner = ?",
            (owner, conversation_id, previous), grouped=True,
        )
        return bool(cursor.rowcount)

    async def record_usage(self, entry: UsageEntry) -> None:
        e = entry
        await self._run(
            self.conn.execute, RECORD_USAGE,
            (e.subject, e.conversation_id, e.reply_id, e.model, e.prompt_tokens, e.completion_tokens,
             int(e.estimated), e.created_at),
            grouped=True,
        )

    async def usage(self, subject: str | None, since: float) -> list[UsageTotal]:
        rows = await self._run(lambda: self.conn.execute(USAGE, (since, subject, subject)).fetchall())
        return [UsageTotal(*row) for row in rows]

    async def prune(self, older_than: float) -> int:
        """Delete conversations not updated for ``older_than`` seconds; return how many."""
        cursor = await self._run(
            self.conn.execute, "DELETE FROM conversations WHERE updated_at < ?", (time.time() - older_than,)
        )
        return int(cursor.rowcount)

    async def reopen(self, conversation_id: str, message_id: str, content: str) -> bool:
        cursor = await self._run(
            self.conn.execute, REOPEN, (time.time(), conversation_id, message_id, content), grouped=True
        )
        return bool(cursor.rowcount)

    async def end_stale(self, older_than: float) -> int:
        cursor = await self._run(
            self.conn.execute,
            "UPDATE messages SET finish_reason = 'error'"
            " WHERE role = 'assistant' AND finish_reason IS NULL AND updated_at < ?",
            (time.time() - older_than,),
        )
        return int(cursor.rowcount)

    async def export(self, conversation_id: str) -> dict[str, Any] | None:
        """A conversation and all its messages, as plain data."""
        conv = await self.get(conversation_id)
        if conv is None:
            return None
        return export_document(conv, await self.messages(conversation_id))

    async def ids(self, after: str | None, limit: int) -> list[str]:
        rows = await self._run(
            lambda: self.conn.execute(
                "SELECT id FROM conversations WHERE id > ? ORDER BY id LIMIT ?", (after or "", limit)
            ).fetchall()
        )
        return [row[0] for row in rows]

    async def restore(self, conversation: Conversation, messages: Sequence[StoredMessage]) -> bool:
        return await self._run(restore, self.conn, conversation, list(messages))

    async def integrity_check(self) -> str:
        row = await self._run(lambda: self.conn.execute("PRAGMA integrity_check").fetchone())
        return str(row[0]) if row else "no answer"
