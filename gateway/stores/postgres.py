"""Conversations in PostgreSQL, through psycopg 3's asyncio driver and a connection pool.

Every operation is one statement on a pooled connection in autocommit mode, so it is
atomic and the event loop never waits on the database; restore, and the changes that read
a conversation's tree first (select, delete_branch), are one short transaction. Opening
migrates the schema (:mod:`.postgres_schema`) under an advisory lock and, with
``recover``, ends the replies a crash left streaming. A database that cannot be reached, or a statement
that times out, raises :class:`~gateway.stores.base.StoreUnavailable`: nothing was
half-written, and the caller may try again. Neither the URL nor the password is
ever put in an error or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .base import (
    UNOWNED,
    Branch,
    Conversation,
    ConversationNotFound,
    MessageNotFound,
    OpenReport,
    Page,
    StoredMessage,
    StoreUnavailable,
    StoreUnusable,
    UsageEntry,
    UsageTotal,
    descendants,
    export_document,
    leaf_under,
    new_id,
)
from .listing import page_cursor, parse_cursor
from .postgres_schema import (
    APPEND,
    BRANCH,
    CLAIM,
    CREATE,
    DELETE,
    DELETE_MESSAGES,
    GET,
    IDS,
    INSERT,
    LOCK,
    LOCK_CONVERSATION,
    MAKE_ACTIVE,
    MESSAGES,
    MIGRATIONS,
    PRUNE,
    END_STALE,
    RECORD_USAGE,
    RECOVER,
    REOPEN,
    REMOVE,
    RENAME,
    RESTORE_CONVERSATION,
    RESTORE_MESSAGE,
    SCHEMA_VERSION,
    SET_ACTIVE,
    SET_SYSTEM_PROMPT,
    TREE,
    UPSERT,
    USAGE,
    StoreTooNew,
    conversations_query,
    history_query,
    message_params,
    row_message,
)

__all__ = ["PostgresStore", "StoreTooNew"]

_APPEND_TRIES = 5  # a user's message placed again after its conversation's active branch moved


class PostgresStore:
    """A :class:`~gateway.stores.ConversationStore` in a PostgreSQL database."""

    def __init__(
        self,
        url: str,
        *,
        password: str = "",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
        pgbouncer: bool = False,
    ) -> None:
        self._url = url
        self._sizes = (min_size, max_size)
        self._connect_timeout = connect_timeout
        self._kwargs = _connection_kwargs(password, connect_timeout, statement_timeout, pgbouncer)
        # The most one operation may take, seen from here: a frozen server or a silent
        # network must not hold a chat, a reply's end or the drain for minutes.
        self._bound = connect_timeout + (statement_timeout or 60.0) + 1.0
        self._pool: AsyncConnectionPool | None = None

    async def open(self, *, recover: bool = True) -> OpenReport:
        """Connect, migrate, and with ``recover`` end the replies a crash left streaming.
        The first connection is made directly, so that a failure says why (libpq's words)."""
        if self._pool is not None:
            return OpenReport()
        try:
            async with asyncio.timeout(self._bound):
                conn = await self._connect()
                async with conn:
                    await _migrate(conn)
                    recovered = (await conn.execute(RECOVER)).rowcount if recover else 0
        except TimeoutError as exc:
            raise StoreUnavailable(f"PostgreSQL did not answer within {self._bound:g} s") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(_reason(exc)) from exc
        except psycopg.Error as exc:  # the set-up refused: permissions, a clashing table, a standby
            raise StoreUnusable(f"PostgreSQL refused the schema set-up: {_server_reason(exc)}") from exc
        self._pool = AsyncConnectionPool(
            self._url, min_size=self._sizes[0], max_size=self._sizes[1], kwargs=self._kwargs, open=False,
            timeout=self._connect_timeout, name="gateway-store", check=AsyncConnectionPool.check_connection,
        )
        await self._pool.open(wait=False)
        return OpenReport(recovered=recovered)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(self._url, **self._kwargs)
        except psycopg.ProgrammingError:  # libpq's words would quote the URL
            raise StoreUnusable("the database URL is not one libpq accepts (its syntax or a parameter)") from None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        try:
            async with asyncio.timeout(self._bound), self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(f"no PostgreSQL connection within {self._connect_timeout:g} s") from exc
        except TimeoutError as exc:
            raise StoreUnavailable(f"PostgreSQL did not answer within {self._bound:g} s") from exc
        except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:  # down, or a standby
            raise StoreUnavailable(_reason(exc)) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def create(self, conversation_id: str | None = None, *, owner: str = UNOWNED) -> Conversation:
        async with self._connection() as conn:
            cursor = await conn.execute(CREATE, {"id": conversation_id or new_id(), "now": time.time(), "owner": owner})
            row = await cursor.fetchone()
        assert row is not None
        return Conversation(*row)

    async def get(self, conversation_id: str) -> Conversation | None:
        async with self._connection() as conn:
            row = await (await conn.execute(GET, (conversation_id,))).fetchone()
        return Conversation(*row) if row else None

    async def add(self, conversation_id: str, message: StoredMessage) -> bool:
        return await self._write(INSERT, conversation_id, message)

    async def append(
        self, conversation_id: str, message: StoredMessage, *, create: bool, history: int, owner: str = UNOWNED,
        after: str | None = None,
    ) -> Branch | None:
        """One statement (two for a new conversation): the message added and its branch read.
        Run again, rarely, if the active branch moved between the statement's snapshot and
        its lock on the conversation (see :data:`APPEND`)."""
        now = time.time()
        params = _params(conversation_id, message, now)
        limit = history - 1 if history > 0 else (0 if history == 0 else None)  # None: all
        params |= {"after": after, "limit": limit, "max_bytes": None}
        try:
            async with self._connection() as conn:
                if create:
                    await conn.execute(CREATE, {"id": conversation_id, "now": now, "owner": owner})
                for _ in range(_APPEND_TRIES):
                    rows = await (await conn.execute(APPEND, params)).fetchall()
                    found, known, added, system_prompt = rows[0][:4]
                    if known or not found or after is not None:
                        break
                else:
                    raise StoreUnavailable("the conversation kept changing while a message was added to it")
        except psycopg.errors.ForeignKeyViolation:  # the conversation was deleted meanwhile
            raise ConversationNotFound(conversation_id) from None
        if not found:
            raise ConversationNotFound(conversation_id)
        if not known:
            raise MessageNotFound(after)
        if not added:
            return None
        return Branch([row_message(row[4:]) for row in reversed(rows)] if history else [], system_prompt)

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        await self._write(UPSERT, conversation_id, message)

    async def _write(self, statement: str, conversation_id: str, message: StoredMessage) -> bool:
        params = _params(conversation_id, message, time.time())
        try:
            async with self._connection() as conn:
                row = await (await conn.execute(statement, params)).fetchone()
        except psycopg.errors.ForeignKeyViolation:  # the conversation was deleted meanwhile
            raise ConversationNotFound(conversation_id) from None
        assert row is not None
        exists, written = row
        if not exists:
            raise ConversationNotFound(conversation_id)
        return bool(written)

    async def delete(self, conversation_id: str, message_id: str) -> bool:
        async with self._connection() as conn:
            return (await conn.execute(DELETE, (conversation_id, message_id))).rowcount > 0

    async def history(
        self, conversation_id: str, limit: int, before: str | None = None, *, max_bytes: int | None = None
    ) -> list[StoredMessage]:
        query, args = history_query(conversation_id, limit, before, max_bytes)
        async with self._connection() as conn:
            rows = await (await conn.execute(query, args)).fetchall()
        return [
            replace(row_message(row), siblings=tuple(row[10])) if len(row[10]) > 1 else row_message(row)
            for row in reversed(rows)
        ]

    async def branch(self, conversation_id: str, message_id: str, limit: int) -> Branch | None:
        """One statement; with ``limit`` 0, the message alone read (to know that it exists)."""
        args = {"cid": conversation_id, "start": message_id, "limit": None if limit < 0 else limit or 1}
        async with self._connection() as conn:
            rows = await (await conn.execute(BRANCH, args | {"max_bytes": None})).fetchall()
        if not rows or rows[0][1] is None:
            return None
        return Branch([row_message(row[1:]) for row in reversed(rows)] if limit else [], rows[0][0])

    async def messages(self, conversation_id: str) -> list[StoredMessage]:
        async with self._connection() as conn:
            rows = await (await conn.execute(MESSAGES, (conversation_id,))).fetchall()
        return [row_message(row) for row in rows]

    async def select(self, conversation_id: str, message_id: str, *, descend: bool = True) -> str | None:
        """Without ``descend`` one statement; with it, a transaction that reads the tree
        with the conversation locked (no message is added under it meanwhile)."""
        if not descend:
            async with self._connection() as conn:
                changed = (await conn.execute(MAKE_ACTIVE, {"cid": conversation_id, "id": message_id})).rowcount
            return message_id if changed else None
        async with self._connection() as conn, conn.transaction():
            _, tree = await _locked_tree(conn, conversation_id)
            if all(m.id != message_id for m in tree):
                return None
            leaf = leaf_under(tree, message_id)
            await conn.execute(SET_ACTIVE, (leaf, conversation_id))
        return leaf

    async def delete_branch(self, conversation_id: str, message_id: str) -> bool:
        async with self._connection() as conn, conn.transaction():
            active, tree = await _locked_tree(conn, conversation_id)
            target = next((m for m in tree if m.id == message_id), None)
            if target is None:
                return False
            gone = descendants(tree, message_id)
            await conn.execute(DELETE_MESSAGES, (conversation_id, sorted(gone)))
            if active in gone:
                leaf = leaf_under([m for m in tree if m.id not in gone], target.parent_id)
                await conn.execute(SET_ACTIVE, (leaf, conversation_id))
        return True

    async def set_system_prompt(self, conversation_id: str, system_prompt: str, *, owner: str) -> bool:
        async with self._connection() as conn:
            return (await conn.execute(SET_SYSTEM_PROMPT, (system_prompt, conversation_id, owner))).rowcount > 0

    async def conversations(self, owner: str, *, limit: int, after: str | None = None, query: str = "") -> Page:
        start = parse_cursor(after, int) if after is not None else None
        statement, args = conversations_query(owner, limit + 1, (int(start[0]), start[1]) if start else None, query)
        async with self._connection() as conn:
            rows = await (await conn.execute(statement, args)).fetchall()
        page = [Conversation(*row[:7]) for row in rows[:limit]]
        return page, page_cursor(rows[limit - 1][7], rows[limit - 1][0]) if len(rows) > limit and page else None

    async def rename(self, conversation_id: str, title: str, *, owner: str) -> bool:
        async with self._connection() as conn:
            return (await conn.execute(RENAME, (title, conversation_id, owner))).rowcount > 0

    async def remove(self, conversation_id: str, *, owner: str | None = None) -> bool:
        async with self._connection() as conn:
            return (await conn.execute(REMOVE, {"id": conversation_id, "owner": owner})).rowcount > 0

    async def claim(self, conversation_id: str, owner: str, *, previous: str) -> bool:
        async with self._connection() as conn:
            return (await conn.execute(CLAIM, (owner, conversation_id, previous))).rowcount > 0

    async def record_usage(self, entry: UsageEntry) -> None:
        e = entry
        async with self._connection() as conn:
            await conn.execute(RECORD_USAGE, (
                e.subject, e.conversation_id, e.reply_id, e.model, e.prompt_tokens, e.completion_tokens,
                e.estimated, e.created_at,
            ))

    async def usage(self, subject: str | None, since: float) -> list[UsageTotal]:
        async with self._connection() as conn:
            rows = await (await conn.execute(USAGE, {"since": since, "subject": subject})).fetchall()
        return [UsageTotal(*row) for row in rows]

    async def prune(self, older_than: float) -> int:
        """Delete conversations not updated for ``older_than`` seconds; return how many."""
        async with self._connection() as conn:
            return (await conn.execute(PRUNE, (time.time() - older_than,))).rowcount

    async def reopen(self, conversation_id: str, message_id: str, content: str) -> bool:
        async with self._connection() as conn:
            return bool((await conn.execute(REOPEN, (conversation_id, message_id, content))).rowcount)

    async def end_stale(self, older_than: float) -> int:
        async with self._connection() as conn:
            return (await conn.execute(END_STALE, (time.time() - older_than,))).rowcount

    async def ids(self, after: str | None, limit: int) -> list[str]:
        async with self._connection() as conn:
            rows = await (await conn.execute(IDS, (after or "", limit))).fetchall()
        return [row[0] for row in rows]

    async def restore(self, conversation: Conversation, messages: Sequence[StoredMessage]) -> bool:
        conv = conversation
        async with self._connection() as conn, conn.transaction():
            created = await (await conn.execute(
                RESTORE_CONVERSATION,
                (conv.id, conv.title, conv.created_at, conv.updated_at, conv.owner, conv.active, conv.system_prompt),
            )).fetchone()
            if created is None:
                return False
            async with conn.cursor() as cursor:
                await cursor.executemany(RESTORE_MESSAGE, [_restored(conv, m) for m in messages])
        return True

    async def export(self, conversation_id: str) -> dict[str, Any] | None:
        conv = await self.get(conversation_id)
        if conv is None:
            return None
        return export_document(conv, await self.messages(conversation_id))


async def _migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    """Bring the database to :data:`SCHEMA_VERSION`, one gateway at a time."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
        encoding = await (await conn.execute("SELECT current_setting('server_encoding')")).fetchone()
        if encoding is None or encoding[0] != "UTF8":
            raise StoreUnusable(f"the database's encoding is {encoding[0] if encoding else '?'}; it must be UTF8")
        exists = await (await conn.execute("SELECT to_regclass('gateway_schema')")).fetchone()
        if exists is None or exists[0] is None:
            await conn.execute("CREATE TABLE gateway_schema (version integer NOT NULL)")
            await conn.execute("INSERT INTO gateway_schema VALUES (0)")
        row = await (await conn.execute("SELECT version FROM gateway_schema")).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreTooNew(
                f"the database is at schema version {version}; this gateway knows up to {SCHEMA_VERSION}"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                await conn.execute(statement)
            await conn.execute("UPDATE gateway_schema SET version = %s", (number,))


async def _locked_tree(conn: psycopg.AsyncConnection[Any], conversation_id: str) -> tuple[str, list[StoredMessage]]:
    """In a transaction: the conversation locked as its update would lock it, its active
    branch's last message and every message's place (ids and parents only), in the order
    added (no messages if there is no such conversation)."""
    row = await (await conn.execute(LOCK_CONVERSATION, (conversation_id,))).fetchone()
    if row is None:
        return "", []
    rows = await (await conn.execute(TREE, (conversation_id,))).fetchall()
    return row[0], [StoredMessage(mid, "user", "", 0.0, parent_id=parent) for mid, parent in rows]


def _params(conversation_id: str, message: StoredMessage, now: float) -> dict[str, Any]:
    """The statement parameters of a message write, its usage adapted to JSONB."""
    return message_params(conversation_id, message, now, Jsonb(dict(message.usage)) if message.usage else None)


def _restored(conv: Conversation, m: StoredMessage) -> tuple[Any, ...]:
    usage = Jsonb(dict(m.usage)) if m.usage else None
    return (
        conv.id, m.id, m.role, m.content, m.created_at, m.finish_reason, usage, m.model, m.reasoning, m.parent_id,
        conv.updated_at,
    )


def _connection_kwargs(password: str, connect_timeout: float, statement_timeout: float, pgbouncer: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(2, round(connect_timeout)),
        "application_name": "llm-ws-gateway",
        # A peer gone without a word (a crash, a cut network) is noticed in about 30 s.
        "keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5, "keepalives_count": 3,
    }
    if password:
        kwargs["password"] = password
    if pgbouncer:  # transaction pooling: no prepared statements, no session settings
        kwargs["prepare_threshold"] = None
    elif statement_timeout:
        kwargs["options"] = f"-c statement_timeout={round(statement_timeout * 1000)}"
    return kwargs


def _server_reason(exc: psycopg.Error) -> str:
    """The server's own words (never the URL) and the SQLSTATE."""
    primary = exc.diag.message_primary if exc.diag is not None else None
    return f"{primary or type(exc).__name__} (SQLSTATE {exc.sqlstate or '?'})"[:300]


def _reason(exc: psycopg.Error) -> str:
    """What went wrong, in one line; libpq's messages name the host, never the password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"PostgreSQL: {text}"[:300]
