"""The PostgreSQL store's specifics, on a real server: migrations under a lock, a newer
schema refused, connection failures reported without the password, a server restart
survived. The contract itself is tested with the other stores in test_stores.py."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from pgserver import PASSWORD, PgBouncer, PgServer
from ports import free_port

from gateway.stores import StoredMessage, StoreUnavailable, StoreUnusable
from gateway.stores.postgres import PostgresStore
from gateway.stores.postgres_schema import MIGRATIONS, SCHEMA_VERSION


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
    return [r[0] for r in rows]


def schema_version(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM gateway_schema").fetchone()
    assert row is not None
    return int(row[0])


async def test_gateways_starting_at_once_migrate_an_empty_database_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        conv = await stores[0].create()
        assert await stores[3].get(conv.id) == conv
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert tables(pg_url) == ["conversations", "gateway_schema", "messages", "usage"]
    assert schema_version(pg_url) == SCHEMA_VERSION


async def test_a_newer_schema_is_refused_and_left_alone(pg_url: str) -> None:
    first = PostgresStore(pg_url)
    await first.open()
    conv = await first.create()
    await first.close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE gateway_schema SET version = 99")
    with pytest.raises(StoreUnusable) as info:
        await PostgresStore(pg_url).open()
    assert str(info.value) == f"the database is at schema version 99; this gateway knows up to {SCHEMA_VERSION}"
    assert schema_version(pg_url) == 99
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT id FROM conversations").fetchall() == [(conv.id,)]


async def test_a_password_from_a_file_is_used_and_never_shown(pg_server: PgServer) -> None:
    url = pg_server.url(pg_server.create_database(), password=False)
    store = PostgresStore(url, password=PASSWORD)
    await store.open()
    await store.close()
    wrong = PostgresStore(url, password="not-the-password-42", connect_timeout=2)
    with pytest.raises(StoreUnavailable) as info:
        await wrong.open()
    text = f"{info.value} {info.value.__cause__!r}"
    assert "not-the-password-42" not in str(info.value)
    assert PASSWORD not in text


async def test_an_unreachable_server_is_unavailable_not_a_crash() -> None:
    store = PostgresStore(f"postgresql://gateway:secret-pw-xyz@127.0.0.1:{free_port()}/gateway", connect_timeout=2)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert "secret-pw-xyz" not in str(info.value)


async def test_the_store_works_again_after_postgres_restarts(pg_server: PgServer, pg_url: str) -> None:
    store = PostgresStore(pg_url, min_size=2, max_size=4)
    await store.open()
    try:
        conv = await store.create()
        await store.add(conv.id, StoredMessage("u1", "user", "before"))
        await asyncio.to_thread(pg_server.pg_ctl, "restart")
        # The pooled connections died with the server: each is checked before use and replaced.
        assert await store.add(conv.id, StoredMessage("u2", "user", "after")) is True
        assert [m.content for m in await store.history(conv.id, 10)] == ["before", "after"]
    finally:
        await store.close()


async def test_a_down_server_makes_operations_unavailable_then_they_recover(pg_server: PgServer, pg_url: str) -> None:
    store = PostgresStore(pg_url, connect_timeout=2)
    await store.open()
    try:
        conv = await store.create()
        await asyncio.to_thread(pg_server.pg_ctl, "stop")
        try:
            with pytest.raises(StoreUnavailable):
                await store.add(conv.id, StoredMessage("u1", "user", "while down"))
        finally:
            await asyncio.to_thread(pg_server.pg_ctl, "start")
        assert await store.add(conv.id, StoredMessage("u1", "user", "back")) is True
        assert [m.content for m in await store.history(conv.id, 10)] == ["back"]
    finally:
        await store.close()


async def test_statements_run_under_the_configured_timeout(pg_url: str) -> None:
    store = PostgresStore(pg_url, statement_timeout=1.5)
    await store.open()
    try:
        async with store._connection() as conn:
            row = await (await conn.execute("SHOW statement_timeout")).fetchone()
        assert row == ("1500ms",)
    finally:
        await store.close()


async def test_behind_pgbouncer_in_transaction_mode(pg_server: PgServer, pg_bouncer: PgBouncer) -> None:
    """With ``pgbouncer = true``: no prepared statements, no session settings, and every
    statement works however PgBouncer shares its server connections; without it PgBouncer
    refuses the session setting, and the error says so."""
    url = pg_bouncer.url(pg_server.create_database())
    refused = PostgresStore(url, connect_timeout=2)
    with pytest.raises(StoreUnavailable) as info:
        await refused.open()
    assert "unsupported startup parameter" in str(info.value) and PASSWORD not in str(info.value)
    store = PostgresStore(url, pgbouncer=True, max_size=8)
    await store.open()
    try:
        conv = await store.create()
        for i in range(10):  # the same statements, far past psycopg's prepare threshold
            await store.add(conv.id, StoredMessage(f"u{i}", "user", f"m{i}"))
        pages = await asyncio.gather(*(store.history(conv.id, 5) for _ in range(40)))
        assert all([m.content for m in page] == [f"m{i}" for i in range(5, 10)] for page in pages)
    finally:
        await store.close()


async def test_a_url_libpq_refuses_is_unusable_and_never_quoted(pg_server: PgServer) -> None:
    url = pg_server.url("postgres") + "?no_such_parameter=1"
    with pytest.raises(StoreUnusable) as info:
        await PostgresStore(url).open()
    assert "libpq" in str(info.value) and PASSWORD not in str(info.value) and "no_such" not in str(info.value)


async def test_a_schema_set_up_the_server_refuses_is_unusable_with_its_reason(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE conversations (something_else int)")  # not ours
    with pytest.raises(StoreUnusable) as info:
        await PostgresStore(pg_url).open()
    assert "already exists" in str(info.value) and "SQLSTATE 42P07" in str(info.value)


async def test_create_returns_the_row_a_concurrent_creator_commits(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        with psycopg.connect(pg_url) as other:
            other.execute("INSERT INTO conversations VALUES ('x', 'theirs', now(), now())")  # not committed
            creating = asyncio.create_task(store.create("x"))
            with psycopg.connect(pg_url, autocommit=True) as watch:
                for _ in range(500):  # until our INSERT waits on their row lock (bounded)
                    row = watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    ).fetchone()
                    if row and row[0]:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the create never waited for the other transaction")
            other.commit()
        conv = await creating
        assert (conv.id, conv.title) == ("x", "theirs")
    finally:
        await store.close()


async def test_migration_2_leaves_old_conversations_to_nobody(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a database of schema 1, by hand
        conn.execute("CREATE TABLE gateway_schema (version integer NOT NULL)")
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO gateway_schema VALUES (1)")
        conn.execute("INSERT INTO conversations VALUES ('c1', 'old', to_timestamp(100), to_timestamp(200))")
        conn.execute(
            "INSERT INTO messages (conversation_id, id, role, content, created_at, updated_at)"
            " VALUES ('c1', 'u1', 'user', 'old question', to_timestamp(101), to_timestamp(101))"
        )
    store = PostgresStore(pg_url)
    await store.open()
    try:
        conv = await store.get("c1")
        assert conv is not None and (conv.owner, conv.title, conv.updated_at) == ("", "old", 200.0)
        assert [m.content for m in await store.history("c1", -1)] == ["old question"]
    finally:
        await store.close()
    assert schema_version(pg_url) == SCHEMA_VERSION


async def test_migration_4_adds_the_reasoning_and_keeps_the_rest(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a database of schema 3, by hand
        conn.execute("CREATE TABLE gateway_schema (version integer NOT NULL)")
        for statement in (s for migration in MIGRATIONS[:3] for s in migration):
            conn.execute(statement)
        conn.execute("INSERT INTO gateway_schema VALUES (3)")
        conn.execute("INSERT INTO conversations VALUES ('c3', 'v3', to_timestamp(100), to_timestamp(200), 'jwt:bob')")
        conn.execute(
            "INSERT INTO messages (conversation_id, id, role, content, finish_reason, usage, model, created_at,"
            " updated_at) VALUES ('c3', 'u1', 'user', 'a v3 question', NULL, NULL, 'model-1', to_timestamp(101),"
            " to_timestamp(101)), ('c3', 'a1', 'assistant', 'a v3 answer 🙂', 'stop', '{\"prompt_tokens\": 3}',"
            " 'model-1', to_timestamp(102), to_timestamp(103))"
        )
    store = PostgresStore(pg_url)
    await store.open()
    try:
        conv = await store.get("c3")
        assert conv is not None and (conv.title, conv.owner, conv.updated_at) == ("v3", "jwt:bob", 200.0)
        assert await store.history("c3", -1) == [
            StoredMessage("u1", "user", "a v3 question", 101.0, None, None, "model-1", None),
            StoredMessage("a1", "assistant", "a v3 answer 🙂", 102.0, "stop", {"prompt_tokens": 3}, "model-1", None),
        ]
        doc = await store.export("c3")
        assert doc is not None and all("reasoning" not in m for m in doc["messages"])
        await store.save("c3", StoredMessage("a2", "assistant", "new", 104.0, "stop", reasoning="new thoughts"))
        assert (await store.history("c3", 1))[0].reasoning == "new thoughts"
    finally:
        await store.close()
    assert schema_version(pg_url) == SCHEMA_VERSION
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT reasoning FROM messages WHERE id IN ('u1', 'a1')").fetchall() == [(None,), (None,)]


async def test_migration_5_makes_what_was_stored_one_branch(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a database of schema 4, by hand
        conn.execute("CREATE TABLE gateway_schema (version integer NOT NULL)")
        for statement in (s for migration in MIGRATIONS[:4] for s in migration):
            conn.execute(statement)
        conn.execute("INSERT INTO gateway_schema VALUES (4)")
        conn.execute(
            "INSERT INTO conversations (id, title, created_at, updated_at, owner) VALUES"
            " ('c4', 'v4', to_timestamp(100), to_timestamp(200), 'jwt:bob'),"
            " ('d4', 'other', to_timestamp(100), to_timestamp(300), 'jwt:bob'),"
            " ('e4', 'empty', to_timestamp(100), to_timestamp(100), 'jwt:bob')"
        )
        rows = [  # two conversations' messages interleaved, as two chats at once leave them
            ("c4", "u1", "user", "first", None), ("d4", "x1", "user", "elsewhere", None),
            ("c4", "a1", "assistant", "an answer 🙂", "stop"), ("c4", "u2", "user", "second", None),
            ("d4", "y1", "assistant", "there", "stop"), ("c4", "a2", "assistant", "cut", "length"),
        ]
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO messages (conversation_id, id, role, content, finish_reason, reasoning, created_at,"
                " updated_at) VALUES (%s, %s, %s, %s, %s, 'thought', to_timestamp(101), to_timestamp(102))",
                rows,
            )
    store = PostgresStore(pg_url)
    await store.open()
    try:
        history = await store.history("c4", -1)
        assert [(m.id, m.parent_id, m.siblings) for m in history] == [
            ("u1", "", ()), ("a1", "u1", ()), ("u2", "a1", ()), ("a2", "u2", ()),  # one branch: no versions
        ]
        assert [(m.content, m.finish_reason, m.reasoning) for m in history] == [
            (r[3], r[4], "thought") for r in rows if r[0] == "c4"
        ]
        assert [(m.id, m.parent_id) for m in await store.messages("d4")] == [("x1", ""), ("y1", "x1")]
        convs = [await store.get(c) for c in ("c4", "d4", "e4")]
        assert [(c.active, c.system_prompt, c.title, c.updated_at) for c in convs if c] == [
            ("a2", "", "v4", 200.0), ("y1", "", "other", 300.0), ("", "", "empty", 100.0),
        ]
        appended = await store.append("c4", StoredMessage("u3", "user", "third"), create=False, history=-1)
        assert appended is not None and [m.id for m in appended.messages] == ["u1", "a1", "u2", "a2", "u3"]
    finally:
        await store.close()
    assert schema_version(pg_url) == SCHEMA_VERSION
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (7,)
        assert conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'messages_by_parent'").fetchone() == (
            "CREATE INDEX messages_by_parent ON public.messages USING btree (conversation_id, parent_id, pos)",
        )
