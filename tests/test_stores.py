"""The ConversationStore contract, and SQLite's specifics.

The contract (conformance) tests run against every store: MemoryStore, SQLite on a
real file in ``tmp_path``, and PostgreSQL (a real server, a new database per test).
The rest are SQLite specifics: WAL, schema versions and migrations, crash recovery,
concurrency and a second reader of the file (PostgreSQL's are in test_postgres.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from gateway.stores import (
    Branch,
    Conversation,
    ConversationNotFound,
    ConversationStore,
    MessageNotFound,
    OpenReport,
    StoredMessage,
    UsageEntry,
    UsageTotal,
    title_of,
)
from gateway.store_copy import copy
from gateway.stores.memory import MemoryStore
from gateway.stores.postgres import PostgresStore
from gateway.stores.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, StoreCorrupt

UNICODE = "你好，世界 🙂👍🏽👨‍👩‍👧 e\u0301 \x01\x07\x1b[31mred\x1b[0m\t\r\n\u2028\u200b\ufeff\x7f end"
USAGE = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}

# -- helpers ------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "memory", "postgres", "pgbouncer"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    """A fresh, opened store of each kind (PostgreSQL: a new database, reached directly or
    through PgBouncer in transaction mode); closed at teardown."""
    s: ConversationStore
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "c.db")
    elif request.param == "postgres":
        s = PostgresStore(request.getfixturevalue("pg_url"))
    elif request.param == "pgbouncer":
        server, bouncer = request.getfixturevalue("pg_server"), request.getfixturevalue("pg_bouncer")
        s = PostgresStore(bouncer.url(server.create_database()), pgbouncer=True, max_size=8)
    else:
        s = MemoryStore(max_conversations=100, max_messages=1000)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "c.db")
    assert await s.open() == OpenReport(recovered=0)
    yield s
    await s.close()


@contextlib.contextmanager
def raw(path: Path, *, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    """A plain stdlib connection to the file, as another process would use (autocommit)."""
    target = f"file:{path}?mode=ro" if read_only else f"file:{path}"
    conn = sqlite3.connect(target, uri=True, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def scalar(conn: sqlite3.Connection, sql: str, *args: Any) -> Any:
    row = conn.execute(sql, args).fetchone()
    assert row is not None, sql
    return row[0]


def user(msg_id: str, content: str = "hello", created_at: float = 1000.0) -> StoredMessage:
    return StoredMessage(msg_id, "user", content, created_at)


def assistant(
    msg_id: str, content: str = "hi", finish_reason: str | None = "stop", usage: dict[str, int] | None = None,
    created_at: float = 1001.0, reasoning: str | None = None,
) -> StoredMessage:
    return StoredMessage(msg_id, "assistant", content, created_at, finish_reason, usage, reasoning=reasoning)


def message_rows(store: ConversationStore, conversation_id: str) -> int | None:
    """How many message rows the database holds for a conversation (None for MemoryStore)."""
    query = "SELECT count(*) FROM messages WHERE conversation_id = ?"
    if isinstance(store, PostgresStore):
        with psycopg.connect(store._url) as pg:
            row = pg.execute(query.replace("?", "%s"), (conversation_id,)).fetchone()
            assert row is not None
            return int(row[0])
    if not isinstance(store, SQLiteStore):
        return None
    with raw(store.path) as conn:
        return int(scalar(conn, query, conversation_id))


def spin_past(t: float) -> None:
    """Busy-wait (no sleep) until the wall clock reads later than ``t``: the next clock tick."""
    while time.time() <= t:
        pass


def build_v1(path: Path, *extra_sql: str) -> None:
    """A version-1 database built by hand, with one conversation of three messages."""
    with raw(path) as conn:
        conn.executescript(MIGRATIONS[0])
        for sql in extra_sql:
            conn.execute(sql)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO conversations VALUES ('c1', 'old title', 100.0, 200.0)")
        conn.executemany(
            "INSERT INTO messages (conversation_id, id, role, content, finish_reason, usage, created_at)"
            " VALUES ('c1', ?, ?, ?, ?, ?, ?)",
            [
                ("u1", "user", "old question", None, None, 101.0),
                ("a1", "assistant", "old answer 🙂", "stop", json.dumps(USAGE), 102.0),
                ("u2", "user", "follow-up", None, None, 103.0),
            ],
        )


V1_MESSAGES = [
    StoredMessage("u1", "user", "old question", 101.0),
    StoredMessage("a1", "assistant", "old answer 🙂", 102.0, "stop", USAGE),
    StoredMessage("u2", "user", "follow-up", 103.0),
]


def build_v5(path: Path) -> None:
    """A version-5 database built by hand: an owned conversation whose messages have models."""
    with raw(path) as conn:
        for migration in MIGRATIONS[:5]:
            conn.executescript(migration)
        conn.execute("PRAGMA user_version = 5")
        conn.execute("INSERT INTO conversations VALUES ('c5', 'v5 title', 100.0, 200.0, 'token:alice')")
        conn.executemany(
            "INSERT INTO messages (conversation_id, id, role, content, finish_reason, usage, created_at, updated_at,"
            " model) VALUES ('c5', ?, ?, ?, ?, ?, ?, ?, ?)",
            [(m.id, m.role, m.content, m.finish_reason, json.dumps(m.usage) if m.usage else None, m.created_at,
              m.created_at + 1, m.model) for m in V5_MESSAGES],
        )


V5_MESSAGES = [
    StoredMessage("u1", "user", "a v5 question", 101.0, model="model-1"),
    StoredMessage("a1", "assistant", "a v5 answer 🙂", 102.0, "stop", USAGE, "model-1"),
    StoredMessage("a2", "assistant", "cut short", 103.0, "length", None, "model-2"),
]


# -- the contract, against both stores -----------------------------------------


async def test_create_gives_distinct_hex_ids(store: ConversationStore) -> None:
    convs = [await store.create() for _ in range(20)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", c.id) for c in convs)
    assert len({c.id for c in convs}) == 20
    assert convs[0].title == ""
    assert convs[0].created_at == convs[0].updated_at
    assert await store.get(convs[0].id) == convs[0]


async def test_get_unknown_is_none(store: ConversationStore) -> None:
    await store.create()
    assert await store.get("0" * 32) is None
    assert await store.history("0" * 32, 10) == []


async def test_add_refuses_a_duplicate_id_and_keeps_the_first(store: ConversationStore) -> None:
    conv = await store.create()
    assert await store.add(conv.id, user("m1", "first")) is True
    before = await store.get(conv.id)
    assert await store.add(conv.id, user("m1", "second", created_at=2000.0)) is False
    assert await store.history(conv.id, 10) == [user("m1", "first")]
    assert await store.get(conv.id) == before  # not touched either
    assert message_rows(store, conv.id) in (1, None)


async def test_append_stores_the_message_and_returns_the_history_in_one_step(store: ConversationStore) -> None:
    assert await store.append("fresh", user("u1", "Hello there"), create=True, history=10) == Branch(
        [user("u1", "Hello there")]
    )
    conv = await store.get("fresh")
    assert conv is not None and conv.title == "Hello there"
    await store.save("fresh", assistant("a1"))
    for n in range(2, 5):
        appended = await store.append("fresh", user(f"u{n}", f"q{n}", created_at=1000.0 + n), create=False, history=3)
        assert appended is not None and appended.messages == await store.history("fresh", 3)
    appended = await store.append("fresh", user("u5", created_at=1005.0), create=False, history=3)
    assert appended is not None and [m.id for m in appended.messages] == ["u3", "u4", "u5"]
    appended = await store.append("fresh", user("u6", created_at=1006.0), create=False, history=-1)
    assert appended is not None and len(appended.messages) == 7


async def test_append_of_a_taken_id_writes_nothing(store: ConversationStore) -> None:
    await store.append("c", user("u1", "first"), create=True, history=10)
    before = await store.get("c")
    assert await store.append("c", user("u1", "second"), create=True, history=10) is None
    assert await store.history("c", 10) == [user("u1", "first")]
    assert await store.get("c") == before


async def test_append_to_a_missing_conversation(store: ConversationStore) -> None:
    with pytest.raises(ConversationNotFound):
        await store.append("nowhere", user("u1"), create=False, history=10)
    assert await store.get("nowhere") is None


async def test_writes_arriving_together_each_get_their_own_outcome(store: ConversationStore) -> None:
    """A burst of concurrent writes (SQLite commits them together): a duplicate id and a
    missing conversation fail alone, every other write stands."""
    convs = [await store.create() for _ in range(20)]
    taken = await store.create()
    await store.add(taken.id, user("taken", "first"))
    before = await store.get(taken.id)
    outcomes = await asyncio.gather(
        *(store.add(c.id, user(f"m{n}", f"hello {n}")) for n, c in enumerate(convs)),
        store.add(taken.id, user("taken", "second")),
        store.add("no-such-conversation", user("x", "lost")),
        *(store.create(f"new{n:02d}") for n in range(5)),
        *(store.append(f"app{n}", user("u", f"burst {n}"), create=True, history=5) for n in range(5)),
        return_exceptions=True,
    )
    assert outcomes[27:] == [Branch([user("u", f"burst {n}")]) for n in range(5)]
    outcomes = outcomes[:27]
    assert outcomes[:20] == [True] * 20
    assert outcomes[20] is False
    assert isinstance(outcomes[21], ConversationNotFound)
    assert [c.id for c in outcomes[22:]] == [f"new{n:02d}" for n in range(5)]  # type: ignore[union-attr]
    for n, c in enumerate(convs):
        assert await store.history(c.id, 10) == [user(f"m{n}", f"hello {n}")]
    assert await store.history(taken.id, 10) == [user("taken", "first")]
    assert await store.get(taken.id) == before  # the refused write changed nothing
    assert [await store.get(f"new{n:02d}") for n in range(5)] == list(outcomes[22:])


async def test_same_message_id_in_two_conversations_is_two_messages(store: ConversationStore) -> None:
    a, b = await store.create(), await store.create()
    assert await store.add(a.id, user("m1", "in a")) is True
    assert await store.add(b.id, user("m1", "in b")) is True
    assert [m.content for m in await store.history(a.id, 10)] == ["in a"]
    assert [m.content for m in await store.history(b.id, 10)] == ["in b"]


async def test_save_upserts_in_place(store: ConversationStore) -> None:
    conv = await store.create()
    await store.add(conv.id, user("u1"))
    await store.save(conv.id, assistant("a1", "par", finish_reason=None))
    await store.add(conv.id, user("u2", "next"))
    final = assistant("a1", "partial, then whole", finish_reason="length", usage=USAGE)
    await store.save(conv.id, final)
    history = await store.history(conv.id, 10)
    assert [m.id for m in history] == ["u1", "a1", "u2"]
    assert history[1] == final
    assert message_rows(store, conv.id) in (3, None)


async def test_a_replys_writes_are_ordered(store: ConversationStore) -> None:
    """A late write never undoes a newer one: no checkpoint over the final text, no
    shorter checkpoint over a longer one (several processes may write one day)."""
    conv = await store.create()
    await store.add(conv.id, user("u1"))
    await store.save(conv.id, assistant("a1", "once upon", finish_reason=None))
    await store.save(conv.id, assistant("a1", "once", finish_reason=None))  # an older checkpoint, late
    assert (await store.history(conv.id, 1))[0].content == "once upon"
    final = assistant("a1", "once upon a time", finish_reason="stop", usage=USAGE)
    await store.save(conv.id, final)
    await store.save(conv.id, assistant("a1", "once upon a", finish_reason=None))  # a checkpoint, late
    await store.save(conv.id, assistant("a1", "something else", finish_reason="error"))  # a second end
    assert (await store.history(conv.id, 1))[0] == final
    await store.save(conv.id, assistant("a1", "once upon a time, longer", finish_reason=None))  # late, longer
    assert (await store.history(conv.id, 1))[0] == final
    await store.save(conv.id, user("u1", "hi"))  # a user's message may be replaced, even by a shorter one
    assert (await store.history(conv.id, 2))[0].content == "hi"


@pytest.mark.parametrize(
    ("content", "title"),
    [
        ("  hello \n\t  world  ", "hello world"),
        ("x" * 80, "x" * 80),
        ("x" * 81, "x" * 79 + "…"),
        ("word " * 30, ("word " * 16)[:79] + "…"),
        ("   ", ""),
    ],
)
async def test_title_from_the_first_user_message(store: ConversationStore, content: str, title: str) -> None:
    conv = await store.create()
    await store.add(conv.id, user("u1", content))
    got = await store.get(conv.id)
    assert got is not None
    assert got.title == title
    assert len(got.title) <= 80


async def test_title_ignores_assistants_and_later_user_messages(store: ConversationStore) -> None:
    conv = await store.create()

    async def title() -> str:
        got = await store.get(conv.id)
        assert got is not None
        return got.title

    await store.save(conv.id, assistant("a0", "a greeting from the assistant"))
    assert await title() == ""
    await store.add(conv.id, user("u1", "the  question"))
    assert await title() == "the question"
    await store.add(conv.id, user("u2", "another question"))
    await store.save(conv.id, user("u1", "the question, edited"))
    assert await title() == "the question"


async def test_updated_at_moves_forward(store: ConversationStore) -> None:
    conv = await store.create()
    spin_past(conv.updated_at)
    t0 = time.time()
    await store.add(conv.id, user("u1"))
    after_add = await store.get(conv.id)
    assert after_add is not None
    assert after_add.updated_at >= t0 > conv.updated_at
    spin_past(after_add.updated_at)
    t1 = time.time()
    await store.save(conv.id, assistant("a1"))
    after_save = await store.get(conv.id)
    assert after_save is not None
    assert after_save.updated_at >= t1 > after_add.updated_at
    assert after_save.created_at == conv.created_at


async def test_history_returns_the_newest_oldest_first(store: ConversationStore) -> None:
    conv = await store.create()
    messages = [user(f"m{i}", f"text {i}", created_at=1000.0 + i) for i in range(10)]
    for m in messages:
        await store.add(conv.id, m)
    assert await store.history(conv.id, 100) == messages
    assert await store.history(conv.id, 10) == messages
    assert await store.history(conv.id, 3) == messages[-3:]
    assert await store.history(conv.id, 1) == messages[-1:]


async def test_history_pages_backwards_exactly(store: ConversationStore) -> None:
    conv = await store.create()
    for i in range(10):
        message = user(f"m{i}", f"q{i}", 1000.0 + i) if i % 2 == 0 else assistant(f"m{i}", f"a{i}", created_at=1000.0 + i)
        await store.add(conv.id, message)
    full = await store.history(conv.id, 100)
    assert [m.id for m in full] == [f"m{i}" for i in range(10)]

    page = await store.history(conv.id, 3)
    walked, sizes = list(page), [len(page)]
    while page and len(sizes) <= 10:  # bounded: a store that never runs out must fail, not hang
        page = await store.history(conv.id, 3, before=page[0].id)
        walked = page + walked
        sizes.append(len(page))
    assert walked == full
    assert sizes == [3, 3, 3, 1, 0]
    assert await store.history(conv.id, 3, before="m5") == full[2:5]
    assert await store.history(conv.id, 3, before="m0") == []


@pytest.mark.parametrize(
    ("max_bytes", "expected"),
    [
        (None, ["m0", "m1", "m2", "m3", "m4"]),
        (10_000, ["m0", "m1", "m2", "m3", "m4"]),  # everything fits
        (25, ["m1", "m2", "m3", "m4"]),  # m4+m3+m2 = 30 bytes pass 25 at m2; one more is read
        (15, ["m2", "m3", "m4"]),  # m4+m3 = 20 pass 15
        (9, ["m3", "m4"]),  # the newest passes at once; one more tells that older ones exist
    ],
)
async def test_history_reads_one_message_past_max_bytes(
    store: ConversationStore, max_bytes: int | None, expected: list[str]
) -> None:
    conv = await store.create()
    for i in range(5):
        await store.add(conv.id, user(f"m{i}", "é" * 5, created_at=1000.0 + i))  # 10 bytes each
    got = await store.history(conv.id, 100, max_bytes=max_bytes)
    assert [m.id for m in got] == expected
    assert [m.id for m in await store.history(conv.id, 100, before="m3", max_bytes=9)] == ["m1", "m2"]


async def test_history_before_unknown_is_empty(store: ConversationStore) -> None:
    conv = await store.create()
    other = await store.create()
    await store.add(conv.id, user("m1"))
    await store.add(other.id, user("elsewhere"))
    assert await store.history(conv.id, 10, before="nope") == []
    assert await store.history(conv.id, 10, before="elsewhere") == []  # another conversation's id


def written_ago(store: ConversationStore, conversation_id: str, message_id: str, seconds: float) -> None:
    """Make the message's last write ``seconds`` old, as a dead owner's last checkpoint is."""
    when = time.time() - seconds
    if isinstance(store, MemoryStore):
        store._entries[conversation_id].written[message_id] = when
    elif isinstance(store, PostgresStore):
        with psycopg.connect(store._url) as pg:
            pg.execute("UPDATE messages SET updated_at = to_timestamp(%s) WHERE conversation_id = %s AND id = %s",
                       (when, conversation_id, message_id))
    else:
        assert isinstance(store, SQLiteStore)
        with raw(store.path) as conn:
            conn.execute("UPDATE messages SET updated_at = ? WHERE conversation_id = ? AND id = ?",
                         (when, conversation_id, message_id))


async def test_end_stale_ends_only_replies_last_written_long_ago(store: ConversationStore) -> None:
    conv, now = await store.create(), time.time()
    await store.add(conv.id, user("u1", created_at=now - 7200))
    await store.save(conv.id, assistant("orphan", "half a reply", None, created_at=now - 3600))  # its owner died
    written_ago(store, conv.id, "orphan", 3600)
    await store.add(conv.id, user("u2", created_at=now - 3500))
    await store.save(conv.id, assistant("done", "whole", "stop", created_at=now - 3400))
    await store.add(conv.id, user("u3", created_at=now - 20))
    await store.save(conv.id, assistant("live", "streaming now", None, created_at=now - 10))
    await store.add(conv.id, user("u4", created_at=now - 7000))
    await store.save(conv.id, assistant("continued", "old, and going on", None, created_at=now - 7000))
    assert await store.end_stale(600) == 1
    assert await store.end_stale(600) == 0
    ended = {m.id: (m.content, m.finish_reason) for m in await store.messages(conv.id)}
    assert ended["orphan"] == ("half a reply", "error")
    assert ended["done"] == ("whole", "stop") and ended["live"] == ("streaming now", None)
    assert ended["continued"] == ("old, and going on", None)  # an old reply, written now: a continuation


async def test_only_a_reply_cut_short_with_nothing_after_it_reopens(store: ConversationStore) -> None:
    conv = await store.create()
    await store.add(conv.id, user("u1"))
    await store.save(conv.id, replace(assistant("a1", "cut", "length"), parent_id="u1"))
    await store.save(conv.id, replace(assistant("a1", "cut, rewritten late", None), parent_id="u1"))
    assert [m.content for m in await store.messages(conv.id)] == ["hello", "cut"]  # a final is never replaced
    assert await store.reopen(conv.id, "a1", "not its text") is False
    assert await store.reopen(conv.id, "u1", "hello") is False
    assert await store.reopen(conv.id, "a1", "cut") is True
    assert await store.reopen(conv.id, "a1", "cut") is False  # once: a second continuation is refused
    await store.save(conv.id, replace(assistant("a1", "cut and more", "stop"), parent_id="u1"))
    assert (await store.history(conv.id, 1))[0].content == "cut and more"
    await store.save(conv.id, replace(assistant("b1", "cut again", "cancelled"), parent_id="u1"))
    await store.save(conv.id, replace(user("u2"), parent_id="b1"))
    assert await store.reopen(conv.id, "b1", "cut again") is False  # a message follows it
    assert await store.reopen("missing", "a1", "cut") is False


async def test_prune_deletes_only_idle_conversations(store: ConversationStore) -> None:
    def age(conversation_id: str, seconds: float) -> None:
        if isinstance(store, SQLiteStore):
            with raw(store.path) as conn:
                conn.execute("UPDATE conversations SET updated_at = updated_at - ? WHERE id = ?", (seconds, conversation_id))
        elif isinstance(store, PostgresStore):
            with psycopg.connect(store._url) as pg:
                pg.execute(
                    "UPDATE conversations SET updated_at = updated_at - make_interval(secs => %s) WHERE id = %s",
                    (seconds, conversation_id),
                )
        else:
            assert isinstance(store, MemoryStore)
            entry = store._entries[conversation_id]  # only here: there is no other way to make one old
            entry.conversation = replace(entry.conversation, updated_at=entry.conversation.updated_at - seconds)

    old, recent, fresh = await store.create(), await store.create(), await store.create()
    for conv in (old, recent, fresh):
        await store.add(conv.id, user("m1"))
        await store.add(conv.id, assistant("m2"))
    age(old.id, 3600)
    age(recent.id, 30)

    assert await store.prune(60) == 1
    assert await store.get(old.id) is None
    assert await store.export(old.id) is None
    assert await store.history(old.id, 10) == []
    assert message_rows(store, old.id) in (0, None)  # the messages went with it
    for kept in (recent, fresh):
        assert await store.get(kept.id) is not None
        assert len(await store.history(kept.id, 10)) == 2
    assert await store.prune(60) == 0
    assert await store.prune(10) == 1  # now `recent` is idle enough
    assert await store.get(recent.id) is None
    assert await store.get(fresh.id) is not None


async def test_export_shape(store: ConversationStore) -> None:
    conv = await store.create()
    await store.add(conv.id, user("u1", "what is 2+2?", created_at=1000.5))
    await store.save(conv.id, assistant("a1", "4", usage=USAGE, created_at=1001.25))
    await store.save(conv.id, assistant("a2", "still going", finish_reason=None, created_at=1002.0))
    got = await store.get(conv.id)
    assert got is not None

    doc = await store.export(conv.id)
    assert doc == {
        "id": conv.id,
        "owner": "",
        "title": "what is 2+2?",
        "created_at": conv.created_at,
        "updated_at": got.updated_at,
        "active": "a2",
        "system_prompt": "",
        "messages": [
            {"id": "u1", "role": "user", "content": "what is 2+2?", "created_at": 1000.5,
             "finish_reason": None, "usage": None, "parent_id": ""},
            {"id": "a1", "role": "assistant", "content": "4", "created_at": 1001.25,
             "finish_reason": "stop", "usage": USAGE, "parent_id": "u1"},
            {"id": "a2", "role": "assistant", "content": "still going", "created_at": 1002.0,
             "finish_reason": None, "usage": None, "parent_id": "a1"},
        ],
    }
    assert orjson.loads(orjson.dumps(doc)) == doc  # plain data
    assert await store.export("0" * 32) is None


async def test_export_of_an_empty_conversation(store: ConversationStore) -> None:
    conv = await store.create()
    doc = await store.export(conv.id)
    assert doc is not None
    assert (doc["id"], doc["title"], doc["messages"]) == (conv.id, "", [])


@pytest.mark.parametrize("op", ["add", "save"])
@pytest.mark.parametrize("store", ["sqlite", "memory", "postgres", "pgbouncer"], indirect=True)
async def test_write_to_unknown_conversation_raises_not_found(store: ConversationStore, op: str) -> None:
    with pytest.raises(ConversationNotFound):
        await getattr(store, op)("0" * 32, user("m1"))


@pytest.mark.parametrize("op", ["add", "save"])
async def test_write_to_unknown_conversation_writes_nothing(store: ConversationStore, op: str) -> None:
    conv = await store.create()
    # IntegrityError is the SQLite bug above; what matters here is that nothing is written.
    with pytest.raises((ConversationNotFound, sqlite3.IntegrityError)):
        await getattr(store, op)("0" * 32, user("m1"))
    assert await store.get("0" * 32) is None
    assert await store.export("0" * 32) is None
    assert message_rows(store, "0" * 32) in (0, None)
    # The failed write's transaction is over: the store still works.
    assert await store.add(conv.id, user("m1")) is True
    assert await store.history(conv.id, 10) == [user("m1")]


async def test_unicode_and_usage_round_trip(store: ConversationStore) -> None:
    conv = await store.create()
    question = user("问题-1", UNICODE, created_at=1234.5678)
    answer = assistant("回答🙂", UNICODE[::-1], usage=USAGE, created_at=1234.9)
    await store.add(conv.id, question)
    await store.save(conv.id, answer)
    assert await store.history(conv.id, 10) == [question, answer]
    doc = await store.export(conv.id)
    assert doc is not None
    assert [m["content"] for m in doc["messages"]] == [UNICODE, UNICODE[::-1]]
    assert doc["messages"][1]["usage"] == USAGE
    assert doc["title"] == title_of(UNICODE)
    assert await store.history(conv.id, 10, before="回答🙂") == [question]


@pytest.mark.parametrize("store", ["sqlite", "memory", "postgres", "pgbouncer"], indirect=True)
async def test_concurrent_saves_all_land(store: ConversationStore) -> None:
    convs = [await store.create() for _ in range(10)]
    await asyncio.gather(*(
        store.save(convs[i % 10].id, user(f"m{i}", f"text {i}")) for i in range(200)
    ))
    for n, conv in enumerate(convs):
        history = await store.history(conv.id, 1000)
        assert sorted(m.id for m in history) == sorted(f"m{i}" for i in range(n, 200, 10))


async def test_event_loop_runs_while_writes_run(store: ConversationStore) -> None:
    """Each write waits on the store's thread without holding the loop: callbacks keep running."""
    loop = asyncio.get_running_loop()
    ticks = 0
    handle: asyncio.Handle | None = None

    def tick() -> None:
        nonlocal ticks, handle
        ticks += 1
        handle = loop.call_soon(tick)

    conv = await store.create()
    handle = loop.call_soon(tick)
    try:
        for i in range(300):
            await store.save(conv.id, user(f"m{i}"))
        during = ticks
    finally:
        handle.cancel()
    assert len(await store.history(conv.id, 1000)) == 300
    if isinstance(store, SQLiteStore | PostgresStore):
        assert during >= 300  # at least one loop turn per write, waiting on the thread or the socket
    else:
        assert during == 0  # MemoryStore never awaits: the sanity check that the counter means something


# -- SQLite specifics -----------------------------------------------------------


async def test_file_is_wal_at_the_current_schema(sqlite_store: SQLiteStore) -> None:
    with raw(sqlite_store.path) as conn:
        assert scalar(conn, "PRAGMA journal_mode") == "wal"
        assert scalar(conn, "PRAGMA user_version") == SCHEMA_VERSION
    assert await sqlite_store.integrity_check() == "ok"


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    first = SQLiteStore(path)
    await first.open()
    conv = await first.create()
    await first.add(conv.id, user("u1", UNICODE))
    await first.save(conv.id, assistant("a1", usage=USAGE))
    before = await first.export(conv.id)
    await first.close()
    with pytest.raises(RuntimeError, match="not open"):
        first.conn  # noqa: B018

    second = SQLiteStore(path)
    await second.open()
    try:
        assert await second.export(conv.id) == before
        assert before is not None
        assert await second.get(conv.id) == Conversation(
            before["id"], before["title"], before["created_at"], before["updated_at"], active="a1"
        )
        assert await second.add(conv.id, user("u2")) is True
        assert [m.id for m in await second.history(conv.id, 10)] == ["u1", "a1", "u2"]
    finally:
        await second.close()


async def test_open_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        assert path.is_file()
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()


async def test_open_twice_in_a_row(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    for n in range(3):
        store = SQLiteStore(path)
        await store.open()
        try:
            conv = await store.create()
            await store.add(conv.id, user("m1"))
            with raw(path) as conn:
                assert scalar(conn, "PRAGMA user_version") == SCHEMA_VERSION
                assert scalar(conn, "SELECT count(*) FROM conversations") == n + 1
        finally:
            await store.close()
    assert not Path(f"{path}-wal").exists()  # the last connection closed cleanly


async def test_open_on_an_open_store_keeps_one_connection(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = SQLiteStore(path)
    await store.open()
    first = store.conn
    try:
        await store.open()
        assert store.conn is first
        await store.close()
        # SQLite removes the -wal file when the last connection to the file closes.
        assert not Path(f"{path}-wal").exists()
    finally:
        await store.close()


# -- migrations -----------------------------------------------------------------


async def test_migrates_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    build_v1(path)
    store = SQLiteStore(path)
    report = await store.open()
    try:
        assert await store.history("c1", 10) == V1_MESSAGES
        assert await store.history("c1", 1, before="u2") == V1_MESSAGES[1:2]
        doc = await store.export("c1")
        assert doc is not None
        assert (doc["title"], doc["created_at"], doc["updated_at"]) == ("old title", 100.0, 200.0)
        assert [m["id"] for m in doc["messages"]] == ["u1", "a1", "u2"]
        assert report.recovered == 0
        with raw(path) as conn:
            assert scalar(conn, "PRAGMA user_version") == SCHEMA_VERSION
            rows = conn.execute("SELECT id, created_at, updated_at FROM messages ORDER BY pos").fetchall()
            assert rows == [("u1", 101.0, 101.0), ("a1", 102.0, 102.0), ("u2", 103.0, 103.0)]
            indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            assert "conversations_by_age" in indexes
            assert scalar(conn, "PRAGMA integrity_check") == "ok"
        # And the migrated database takes new writes after the old rows.
        await store.save("c1", assistant("a2", "new"))
        assert [m.id for m in await store.history("c1", 10)] == ["u1", "a1", "u2", "a2"]
    finally:
        await store.close()


async def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE future (x TEXT)")
        conn.execute("INSERT INTO future VALUES ('from a newer gateway')")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SQLiteStore(path)
    with pytest.raises(StoreCorrupt, match=f"version {SCHEMA_VERSION + 1}"):
        await store.open()
    with pytest.raises(RuntimeError, match="not open"):
        store.conn  # noqa: B018
    with raw(path) as conn:
        assert scalar(conn, "PRAGMA user_version") == SCHEMA_VERSION + 1
        assert conn.execute("SELECT x FROM future").fetchall() == [("from a newer gateway",)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"future"}


@pytest.mark.parametrize(
    ("obstacle", "error"),
    [
        # The first statement of migration 2 fails.
        ("ALTER TABLE messages ADD COLUMN updated_at REAL", "duplicate column"),
        # The last one fails, after ALTER TABLE and UPDATE succeeded: they must be undone.
        ("CREATE INDEX conversations_by_age ON conversations(created_at)", "already exists"),
    ],
)
async def test_failed_migration_is_rolled_back(tmp_path: Path, obstacle: str, error: str) -> None:
    path = tmp_path / "c.db"
    build_v1(path, obstacle)
    with raw(path) as conn:
        schema_before = sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
        columns_before = conn.execute("PRAGMA table_info(messages)").fetchall()
        rows_before = conn.execute("SELECT * FROM messages ORDER BY pos").fetchall()

    store = SQLiteStore(path)
    with pytest.raises(StoreCorrupt, match=error) as info:  # the start-up error: exit 2, not retried
        await store.open()
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)

    with raw(path) as conn:
        assert scalar(conn, "PRAGMA user_version") == 1
        assert sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()) == schema_before
        assert conn.execute("PRAGMA table_info(messages)").fetchall() == columns_before
        assert conn.execute("SELECT * FROM messages ORDER BY pos").fetchall() == rows_before
        assert conn.execute("SELECT * FROM conversations").fetchall() == [("c1", "old title", 100.0, 200.0)]


# -- crash recovery -------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ConversationStore]:
    """Each call makes a new store object on the same durable database (a process restart)."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "c.db")
    url = request.getfixturevalue("pg_url")
    return lambda: PostgresStore(url)


async def test_open_closes_replies_left_streaming(reopen: Callable[[], ConversationStore]) -> None:
    first = reopen()
    await first.open()
    conv = await first.create()
    await first.add(conv.id, user("u1", "tell me a story"))
    finished = assistant("a1", "once upon a time", usage=USAGE)
    await first.save(conv.id, finished)
    await first.add(conv.id, user("u2", "another"))
    await first.save(conv.id, assistant("a2", "there was a checkpoi", finish_reason=None))  # a checkpoint
    await first.close()  # ... and the process died before the final save

    second = reopen()
    report = await second.open()
    try:
        assert report.recovered == 1
        history = await second.history(conv.id, 10)
        assert history == [
            user("u1", "tell me a story"),
            finished,
            user("u2", "another"),
            assistant("a2", "there was a checkpoi", finish_reason="error"),
        ]
    finally:
        await second.close()

    third = reopen()
    report = await third.open()
    try:
        assert report.recovered == 0
        assert (await third.history(conv.id, 1))[0].finish_reason == "error"
    finally:
        await third.close()


async def test_a_tool_beside_a_live_gateway_recovers_nothing(reopen: Callable[[], ConversationStore]) -> None:
    live, tool = reopen(), reopen()
    await live.open()
    try:
        conv = await live.create()
        await live.add(conv.id, user("u1"))
        await live.save(conv.id, assistant("a1", "still streaming", finish_reason=None))
        assert await tool.open(recover=False) == OpenReport(recovered=0)
        assert (await tool.history(conv.id, 1))[0].finish_reason is None
        await tool.close()
    finally:
        await live.close()


# -- another reader of the file -------------------------------------------------


async def test_reader_sees_a_consistent_snapshot_while_the_store_writes(sqlite_store: SQLiteStore) -> None:
    conv = await sqlite_store.create()
    for i in range(5):
        await sqlite_store.add(conv.id, user(f"m{i}"))
    with raw(sqlite_store.path, read_only=True) as reader:
        reader.execute("BEGIN")
        assert scalar(reader, "SELECT count(*) FROM messages") == 5
        updated_before = scalar(reader, "SELECT updated_at FROM conversations")

        for i in range(5, 10):  # the writer is not blocked by the open read transaction
            await sqlite_store.add(conv.id, user(f"m{i}"))
        assert len(await sqlite_store.history(conv.id, 100)) == 10

        assert scalar(reader, "SELECT count(*) FROM messages") == 5  # same snapshot
        assert scalar(reader, "SELECT updated_at FROM conversations") == updated_before
        reader.execute("COMMIT")

        assert scalar(reader, "SELECT count(*) FROM messages") == 10
        assert scalar(reader, "SELECT updated_at FROM conversations") > updated_before


READER = r"""
import json, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, isolation_level=None)
db.execute("BEGIN")
convs = dict(db.execute("SELECT id, updated_at FROM conversations"))
rows = db.execute("SELECT conversation_id, id, updated_at FROM messages ORDER BY pos").fetchall()
db.execute("COMMIT")
print(json.dumps({"convs": convs, "rows": rows}))
"""


async def test_reader_process_while_the_store_writes(sqlite_store: SQLiteStore) -> None:
    conv = await sqlite_store.create()
    total, head = 200, 20
    for i in range(head):
        await sqlite_store.save(conv.id, user(f"m{i}"))

    async def write_rest() -> None:
        for i in range(head, total):
            await sqlite_store.save(conv.id, user(f"m{i}"))

    async def read_in_another_process() -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", READER, str(sqlite_store.path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err.decode()
        result: dict[str, Any] = json.loads(out)
        return result

    _, seen = await asyncio.gather(write_rest(), read_in_another_process())
    ids = [row[1] for row in seen["rows"]]
    assert head <= len(ids) <= total
    assert ids == [f"m{i}" for i in range(len(ids))]  # a prefix: whole commits, in order
    assert {row[0] for row in seen["rows"]} == {conv.id}
    assert set(seen["convs"]) == {conv.id}
    # Each save writes its message and the conversation's updated_at in one transaction.
    assert seen["convs"][conv.id] >= max(row[2] for row in seen["rows"])
    assert len(await sqlite_store.history(conv.id, 1000)) == total


async def test_an_assistant_message_keeps_its_model(store: ConversationStore) -> None:
    conv = await store.create()
    await store.add(conv.id, user("u1"))
    await store.save(conv.id, assistant("a1", "check", finish_reason=None))
    await store.save(conv.id, StoredMessage("a1", "assistant", "checked", 1001.0, "stop", None, "model-1"))
    stored = (await store.history(conv.id, 10))[-1]
    assert (stored.content, stored.finish_reason, stored.model) == ("checked", "stop", "model-1")
    doc = await store.export(conv.id)
    assert doc is not None and doc["messages"][-1]["model"] == "model-1" and "model" not in doc["messages"][0]


async def test_a_reply_keeps_its_reasoning_apart_from_its_text(store: ConversationStore) -> None:
    conv = await store.create()
    await store.add(conv.id, user("u1", "why is the sky blue?"))
    await store.save(conv.id, assistant("a1", "", None, reasoning="Rayleigh"))  # still thinking: no text yet
    await store.save(conv.id, assistant("a1", "", None, reasoning="Rayleigh scattering"))
    assert (await store.history(conv.id, 1))[0].reasoning == "Rayleigh scattering"
    await store.save(conv.id, assistant("a1", "Short", None, reasoning="Rayleigh scattering: short waves"))
    await store.save(conv.id, assistant("a1", "", None, reasoning="Rayleigh"))  # an older checkpoint, late
    checkpoint = (await store.history(conv.id, 1))[0]
    assert (checkpoint.content, checkpoint.reasoning) == ("Short", "Rayleigh scattering: short waves")
    final = assistant("a1", "Short wavelengths scatter most.", usage=USAGE, reasoning="Rayleigh scattering: 1/λ⁴")
    await store.save(conv.id, final)
    await store.save(conv.id, assistant("a1", "Short wavelengths", None, reasoning="late"))  # a checkpoint, late
    history = await store.history(conv.id, 10)
    assert history == [user("u1", "why is the sky blue?"), final]
    assert history[0].reasoning is None
    doc = await store.export(conv.id)
    assert doc is not None and orjson.loads(orjson.dumps(doc)) == doc
    assert "reasoning" not in doc["messages"][0]
    assert (doc["messages"][1]["content"], doc["messages"][1]["reasoning"]) == (final.content, final.reasoning)


@pytest.mark.parametrize("reasoning", [UNICODE, "思考 thinking 🤔 " * 8_000 + "end"], ids=["unicode", "long"])
async def test_reasoning_round_trips(store: ConversationStore, reasoning: str) -> None:
    conv = await store.create()
    await store.add(conv.id, user("u1"))
    await store.save(conv.id, assistant("a1", "partial", None, reasoning=reasoning[: len(reasoning) // 2]))
    answer = assistant("a1", UNICODE[::-1], reasoning=reasoning)
    await store.save(conv.id, answer)
    added = assistant("a2", "added", reasoning=reasoning[::-1])
    assert await store.add(conv.id, added) is True
    assert await store.history(conv.id, 10) == [user("u1"), answer, added]
    assert await store.history(conv.id, 1, before="a2") == [answer]
    doc = await store.export(conv.id)
    assert doc is not None and [m.get("reasoning") for m in doc["messages"]] == [None, reasoning, reasoning[::-1]]


async def test_migration_3_adds_the_model_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    build_v1(path)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert [m.model for m in await store.history("c1", 10)] == [None] * len(V1_MESSAGES)
        with raw(path) as conn:
            assert "model" in [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
    finally:
        await store.close()


async def test_migration_6_adds_the_reasoning_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    build_v5(path)
    with raw(path) as conn:
        rows_before = conn.execute("SELECT * FROM messages ORDER BY pos").fetchall()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.get("c5") == Conversation("c5", "v5 title", 100.0, 200.0, "token:alice", active="a2")
        history = await store.history("c5", 10)
        assert history == V5_MESSAGES and [m.reasoning for m in history] == [None, None, None]
        doc = await store.export("c5")
        assert doc is not None and all("reasoning" not in m for m in doc["messages"])
        with raw(path) as conn:
            assert scalar(conn, "PRAGMA user_version") == SCHEMA_VERSION
            rows = conn.execute("SELECT * FROM messages ORDER BY pos").fetchall()
            assert [row[: len(rows_before[0])] for row in rows] == rows_before
            columns = [r[1] for r in conn.execute("PRAGMA table_info(messages)")]
            assert [row[columns.index("reasoning")] for row in rows] == [None, None, None]
        await store.save("c5", assistant("a3", "new", reasoning="new thoughts"))
        assert (await store.history("c5", 1))[0].reasoning == "new thoughts"
    finally:
        await store.close()


# -- copies between stores (gateway store copy) ------------------------------------


async def test_restore_writes_a_conversation_as_given_once(store: ConversationStore) -> None:
    conv = Conversation("c" * 32, "an old chat", 1000.5, 2000.25, active="a2", system_prompt="Be brief.")
    messages = [user("u1", "old question", 1000.5),
                assistant("a1", "old answer", usage=USAGE, created_at=1001.5, reasoning="old thoughts 🤔"),
                assistant("a2", "cut", finish_reason=None, created_at=1002.5, reasoning="cut thoughts")]
    messages = [replace(m, parent_id=parent) for m, parent in zip(messages, ["", "u1", "u1"])]
    assert await store.restore(conv, messages) is True
    assert await store.get(conv.id) == conv
    assert await store.history(conv.id, -1) == [messages[0], messages[2]]
    assert [(m.id, m.parent_id) for m in await store.messages(conv.id)] == [("u1", ""), ("a1", "u1"), ("a2", "u1")]
    assert await store.restore(Conversation(conv.id, "other", 1.0, 2.0), [user("x")]) is False
    assert await store.get(conv.id) == conv and await store.messages(conv.id) == messages


async def test_ids_page_through_every_conversation_in_order(store: ConversationStore) -> None:
    made = sorted([(await store.create()).id for _ in range(7)])
    pages, after = [], None
    while page := await store.ids(after, 3):
        pages.append(page)
        after = page[-1]
    assert pages == [made[0:3], made[3:6], made[6:7]]


async def test_copy_between_stores_is_complete_and_idempotent(store: ConversationStore) -> None:
    source = MemoryStore(max_conversations=100, max_messages=1000)
    for i in range(5):
        conv = await source.create()
        await source.add(conv.id, user(f"u{i}", f"question {i}"))
        await source.save(conv.id, assistant(f"a{i}", f"answer {i}", usage=USAGE))
    quiet: list[str] = []
    first = await copy(source, store, quiet.append)
    assert (first.conversations, first.messages, first.present, first.verified, first.mismatched) == (5, 10, 0, 5, [])
    second = await copy(source, store, quiet.append)
    assert (second.conversations, second.present, second.verified, second.mismatched) == (0, 5, 5, [])
    changed = (await source.ids(None, 1))[0]
    await source.save(changed, assistant("late", "written after the copy"))
    third = await copy(source, store, quiet.append)
    assert third.mismatched == [changed], "a difference is reported, never silently overwritten"


async def test_copy_carries_the_reasoning_and_verifies_it(store: ConversationStore, tmp_path: Path) -> None:
    source = SQLiteStore(tmp_path / "source.db")
    await source.open()
    try:
        conv = await source.create(owner="token:alice")
        await source.add(conv.id, user("u1", "think first"))
        await source.save(conv.id, assistant("a1", "done", usage=USAGE, reasoning="思考 " * 1000))
        await source.save(conv.id, assistant("a2", "", None, reasoning="still thinking"))
        quiet: list[str] = []
        first = await copy(source, store, quiet.append)
        assert (first.conversations, first.messages, first.verified, first.mismatched) == (1, 3, 1, [])
        assert [m.reasoning for m in await store.history(conv.id, -1)] == [None, "思考 " * 1000, "still thinking"]
        assert await store.history(conv.id, -1) == await source.history(conv.id, -1)
        again = await copy(source, store, quiet.append)
        assert (again.present, again.verified, again.mismatched) == (1, 1, [])
        # The same conversation, its times and text alike, but for one reply's reasoning.
        other, copied = MemoryStore(max_conversations=10, max_messages=10), await source.get(conv.id)
        messages = await source.history(conv.id, -1)
        assert copied is not None and await other.restore(copied, [*messages[:2], replace(messages[2], reasoning="x")])
        differs = await copy(other, store, quiet.append)
        assert (differs.present, differs.verified, differs.mismatched) == (1, 0, [conv.id])
    finally:
        await source.close()


# -- owners, and a subject's conversations ------------------------------------------


async def test_a_conversation_has_the_owner_it_was_created_for(store: ConversationStore) -> None:
    assert (await store.create()).owner == ""  # nobody's (tools, copies of old data)
    mine = await store.create(owner="token:alice")
    assert (await store.get(mine.id)) == mine and mine.owner == "token:alice"
    assert (await store.create(mine.id, owner="token:mallory")).owner == "token:alice"  # never taken over
    await store.append("c" * 32, user("u1"), create=True, history=1, owner="jwt:bob")
    got = await store.get("c" * 32)
    assert got is not None and got.owner == "jwt:bob"
    doc = await store.export("c" * 32)
    assert doc is not None and doc["owner"] == "jwt:bob"


async def test_a_subject_lists_its_own_conversations_newest_first_in_pages(store: ConversationStore) -> None:
    made = []
    for i in range(7):
        conv = await store.create(owner="token:alice")
        await store.add(conv.id, user(f"u{i}", f"question number {i}"))
        made.append(conv.id)
        spin_past((await store.get(conv.id)).updated_at)  # type: ignore[union-attr]
    await store.create(owner="token:mallory")
    seen, after, pages = [], None, 0
    while True:
        page, after = await store.conversations("token:alice", limit=3, after=after)
        seen += [c.id for c in page]
        pages += 1
        if after is None:
            break
    assert seen == made[::-1] and pages == 3
    assert all(c.owner == "token:alice" for c in (await store.conversations("token:alice", limit=10))[0])
    assert (await store.conversations("nobody", limit=10)) == ([], None)
    # A conversation written to moves to the top.
    await store.add(made[0], user("again", "once more"))
    assert (await store.conversations("token:alice", limit=1))[0][0].id == made[0]


async def test_ties_in_update_time_page_by_id(store: ConversationStore) -> None:
    ids = sorted("%032x" % i for i in range(1, 6))
    for cid in ids:
        await store.restore(Conversation(cid, "t", 1000.0, 2000.0, "token:alice"), [user("u")])
    seen, after = [], None
    while True:
        page, after = await store.conversations("token:alice", limit=2, after=after)
        seen += [c.id for c in page]
        if after is None:
            break
    assert seen == ids[::-1]


async def test_search_finds_titles_and_message_text_of_the_subject_only(store: ConversationStore) -> None:
    a = await store.create(owner="token:alice")
    await store.add(a.id, user("u1", "Plans for the Weekend"))
    await store.save(a.id, assistant("r1", "Try the 山 trail, 100% worth it_"))
    b = await store.create(owner="token:alice")
    await store.add(b.id, user("u1", "unrelated"))
    other = await store.create(owner="token:mallory")
    await store.add(other.id, user("u1", "weekend plans of someone else"))

    async def found(query: str) -> list[str]:
        return [c.id for c in (await store.conversations("token:alice", limit=10, query=query))[0]]

    assert await found("weekend") == [a.id]  # the title, case-insensitive
    assert await found("山 TRAIL") == [a.id]  # a reply's text
    assert await found("100%") == [a.id] and await found("it_") == [a.id]  # LIKE's wildcards are literal
    assert await found("1%0") == [] and await found("t_e") == []
    assert await found("%") == [a.id]
    assert await found("nothing like it") == []


async def test_rename_and_remove(store: ConversationStore) -> None:
    conv = await store.create(owner="token:alice")
    await store.add(conv.id, user("u1", "first words"))
    before = await store.get(conv.id)
    assert before is not None
    assert await store.rename(conv.id, "Mine now", owner="token:mallory") is False  # not hers
    assert await store.remove(conv.id, owner="token:mallory") is False
    assert await store.rename(conv.id, "A better title", owner="token:alice") is True
    after = await store.get(conv.id)
    assert after is not None and after.title == "A better title" and after.updated_at == before.updated_at
    await store.add(conv.id, user("u2", "more words"))  # the new title stays
    assert (await store.get(conv.id)).title == "A better title"  # type: ignore[union-attr]
    assert await store.rename("f" * 32, "x", owner="token:alice") is False
    assert await store.remove(conv.id, owner="token:alice") is True
    assert await store.get(conv.id) is None and await store.history(conv.id, -1) == []
    assert message_rows(store, conv.id) in (0, None)
    assert await store.remove(conv.id) is False
    with pytest.raises(ConversationNotFound):
        await store.save(conv.id, assistant("late", "a reply that ended after the delete"))


@pytest.mark.parametrize("cursor", ["", "nonsense", "12~", "x~abc", "~abc", "-5~abc", "1e300~abc", "nan~abc", "99999999999999999999~abc"])
async def test_a_cursor_the_store_did_not_make_is_refused(store: ConversationStore, cursor: str) -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        await store.conversations("token:alice", limit=3, after=cursor)


async def test_migration_4_leaves_old_conversations_to_nobody(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    build_v1(path)
    store = SQLiteStore(path)
    await store.open()
    try:
        conv = await store.get("c1")
        assert conv is not None and conv.owner == ""  # nobody's until someone opens it by id
        assert (await store.conversations("", limit=5))[0] == [conv]
    finally:
        await store.close()


async def test_claim_takes_over_a_conversation_of_the_owner_named_only(store: ConversationStore) -> None:
    old = await store.create()  # as stored before owners existed: nobody's
    assert old.owner == ""
    assert await store.claim(old.id, "anon:1234", previous="") is True
    assert (await store.get(old.id)).owner == "anon:1234"  # type: ignore[union-attr]
    assert await store.claim(old.id, "anon:5678", previous="") is False  # once: now it is someone's
    keyless = await store.create(owner="anonymous")
    assert await store.claim(keyless.id, "anon:1234", previous="") is False
    assert await store.claim(keyless.id, "anon:1234", previous="anonymous") is True
    owned = await store.create(owner="token:alice")
    assert await store.claim(owned.id, "anon:1234", previous="anonymous") is False
    assert (await store.get(owned.id)).owner == "token:alice"  # type: ignore[union-attr]
    assert await store.claim("f" * 32, "anon:1234", previous="") is False


# -- the usage ledger -------------------------------------------------------------


async def test_the_ledger_sums_per_subject_and_model_and_outlives_conversations(store: ConversationStore) -> None:
    conv = await store.create(owner="token:alice")
    entries = [
        UsageEntry("token:alice", conv.id, "r1", "m-1", 10, 90, False, 1000.0),
        UsageEntry("token:alice", conv.id, "r2", "m-1", 20, 5, True, 2000.0),
        UsageEntry("token:alice", conv.id, "r3", "m-2", 1, 1, False, 3000.0),
        UsageEntry("jwt:bob", "other", "r4", "m-1", 7, 8, False, 2500.0),
    ]
    for entry in entries:
        await store.record_usage(entry)
    await store.remove(conv.id)  # the ledger stays: it is what was spent
    assert await store.usage(None, 0) == [
        UsageTotal("jwt:bob", "m-1", 1, 7, 8, 0),
        UsageTotal("token:alice", "m-1", 2, 30, 95, 1),
        UsageTotal("token:alice", "m-2", 1, 1, 1, 0),
    ]
    assert await store.usage("token:alice", 1500.0) == [
        UsageTotal("token:alice", "m-1", 1, 20, 5, 1),
        UsageTotal("token:alice", "m-2", 1, 1, 1, 0),
    ]
    assert await store.usage("nobody", 0) == []


# -- the message tree: branches, edits, the active branch ----------------------------


async def chat(store: ConversationStore, conversation_id: str = "t") -> None:
    """u1 → a1 → u2 → a2, each reply saved under the message it answers."""
    await store.append(conversation_id, user("u1", "first"), create=True, history=10, owner="o")
    await store.save(conversation_id, replace(assistant("a1"), parent_id="u1"))
    await store.append(conversation_id, user("u2", "second"), create=False, history=10)
    await store.save(conversation_id, replace(assistant("a2"), parent_id="u2"))


def ids(messages: list[StoredMessage]) -> list[str]:
    return [m.id for m in messages]


async def test_a_branch_follows_each_message_and_reply_in_turn(store: ConversationStore) -> None:
    await chat(store)
    history = await store.history("t", 10)
    assert ids(history) == ["u1", "a1", "u2", "a2"]
    assert [m.parent_id for m in history] == ["", "u1", "a1", "u2"]
    assert [m.siblings for m in history] == [(), (), (), ()]  # each is the only one of its parent
    conv = await store.get("t")
    assert conv is not None and conv.active == "a2"


async def test_an_edit_is_a_sibling_and_the_old_branch_stays(store: ConversationStore) -> None:
    await chat(store)
    edited = await store.append("t", user("u2b", "second, better"), create=False, history=10, after="a1")
    assert edited is not None and ids(edited.messages) == ["u1", "a1", "u2b"]
    await store.save("t", replace(assistant("a2b"), parent_id="u2b"))
    history = await store.history("t", 10)
    assert ids(history) == ["u1", "a1", "u2b", "a2b"]
    assert history[2].siblings == ("u2", "u2b") and history[3].siblings == ()
    old = await store.branch("t", "a2", -1)
    assert old is not None and ids(old.messages) == ["u1", "a1", "u2", "a2"]
    assert ids(await store.messages("t")) == ["u1", "a1", "u2", "a2", "u2b", "a2b"]


async def test_an_edit_of_the_first_message_is_a_second_first(store: ConversationStore) -> None:
    await chat(store)
    edited = await store.append("t", user("u1b", "first, again"), create=False, history=10, after="")
    assert edited is not None and ids(edited.messages) == ["u1b"]
    history = await store.history("t", 10)
    assert ids(history) == ["u1b"] and history[0].siblings == ("u1", "u1b") and history[0].parent_id == ""


async def test_an_edit_under_an_unknown_message_writes_nothing(store: ConversationStore) -> None:
    await chat(store)
    before = await store.get("t")
    with pytest.raises(MessageNotFound):
        await store.append("t", user("u3", "lost"), create=False, history=10, after="nope")
    assert await store.get("t") == before
    assert ids(await store.messages("t")) == ["u1", "a1", "u2", "a2"]


async def test_a_regenerated_reply_is_a_sibling_of_the_old_one(store: ConversationStore) -> None:
    await chat(store)
    assert await store.select("t", "u2", descend=False) == "u2"
    assert ids(await store.history("t", 10)) == ["u1", "a1", "u2"]
    await store.save("t", replace(assistant("a2b", "", finish_reason=None), parent_id="u2"))  # a checkpoint
    await store.save("t", replace(assistant("a2b", "again"), parent_id="u2"))
    history = await store.history("t", 10)
    assert ids(history) == ["u1", "a1", "u2", "a2b"] and history[-1].siblings == ("a2", "a2b")
    assert history[-1].content == "again"


async def test_a_reply_on_a_branch_not_shown_does_not_take_over(store: ConversationStore) -> None:
    await chat(store)
    await store.append("t", user("u2b", "elsewhere"), create=False, history=10, after="a1")
    await store.select("t", "u2", descend=False)
    await store.select("t", "u2b")  # the person looks at the other branch while u2's reply streams
    await store.save("t", replace(assistant("a2c", "late"), parent_id="u2"))
    assert ids(await store.history("t", 10)) == ["u1", "a1", "u2b"]
    assert await store.select("t", "u2") == "a2c"  # the newest reply under u2


async def test_a_reply_saved_without_a_parent_follows_the_active_branch(store: ConversationStore) -> None:
    await chat(store)
    await store.save("t", assistant("a3", "more"))
    history = await store.history("t", 10)
    assert ids(history) == ["u1", "a1", "u2", "a2", "a3"] and history[-1].parent_id == "a2"
    await store.select("t", "u1", descend=False)
    await store.save("t", assistant("a3", "more, checkpointed"))  # an existing message keeps its place
    assert ids(await store.history("t", 10)) == ["u1"]
    assert await store.select("t", "u1") == "a3"


async def test_select_descends_to_the_newest_leaf_and_is_remembered(store: ConversationStore) -> None:
    await chat(store)
    await store.append("t", user("u2b", "other"), create=False, history=10, after="a1")
    before = await store.get("t")
    assert before is not None
    assert await store.select("t", "u2") == "a2"
    assert await store.select("t", "a1") == "u2b"  # the newest child at each step
    assert await store.select("t", "nope") is None
    conv = await store.get("t")
    assert conv is not None and conv.active == "u2b" and conv.updated_at == before.updated_at
    assert await store.select("t", "u2") == "a2"
    assert ids(await store.history("t", 10)) == ["u1", "a1", "u2", "a2"]
    assert await store.select("missing", "u2") is None


async def test_history_pages_the_active_branch(store: ConversationStore) -> None:
    await chat(store)
    await store.append("t", user("u2b", "other"), create=False, history=10, after="a1")
    await store.save("t", replace(assistant("a2b"), parent_id="u2b"))
    assert ids(await store.history("t", 2)) == ["u2b", "a2b"]
    assert ids(await store.history("t", 10, before="u2b")) == ["u1", "a1"]
    assert ids(await store.history("t", 1, before="a2")) == ["u2"]  # any branch's message pages its own
    assert await store.history("t", 10, before="u1") == []


async def test_branch_reads_the_path_to_any_message(store: ConversationStore) -> None:
    await chat(store)
    assert await store.set_system_prompt("t", "Answer in French.", owner="o") is True
    got = await store.branch("t", "u2", 2)
    assert got is not None and ids(got.messages) == ["a1", "u2"] and got.system_prompt == "Answer in French."
    assert got.messages[1] == user("u2", "second")
    assert await store.branch("t", "nope", 10) is None
    assert await store.branch("missing", "u1", 10) is None


async def test_delete_branch_removes_the_message_and_all_under_it(store: ConversationStore) -> None:
    await chat(store)
    await store.append("t", user("u2b", "other"), create=False, history=10, after="a1")
    await store.save("t", replace(assistant("a2b"), parent_id="u2b"))
    assert await store.delete_branch("t", "u2b") is True  # the active one: its sibling's shows
    assert ids(await store.messages("t")) == ["u1", "a1", "u2", "a2"]
    conv = await store.get("t")
    assert conv is not None and conv.active == "a2"
    await store.append("t", user("u2c", "third"), create=False, history=10, after="a1")
    await store.select("t", "u2")
    assert await store.delete_branch("t", "u2c") is True  # not the active one: nothing moves
    assert ids(await store.history("t", 10)) == ["u1", "a1", "u2", "a2"]
    assert await store.delete_branch("t", "a2") is True  # the last one: its parent ends the branch
    assert ids(await store.history("t", 10)) == ["u1", "a1", "u2"]
    assert await store.delete_branch("t", "nope") is False
    assert await store.delete_branch("t", "u1") is True
    assert await store.history("t", 10) == [] and await store.messages("t") == []
    conv = await store.get("t")
    assert conv is not None and conv.active == ""


async def test_instructions_are_the_owners_to_set_per_conversation(store: ConversationStore) -> None:
    await chat(store)
    assert await store.set_system_prompt("t", "Be brief. 简短。", owner="someone else") is False
    assert await store.set_system_prompt("t", "Be brief. 简短。", owner="o") is True
    conv = await store.get("t")
    assert conv is not None and conv.system_prompt == "Be brief. 简短。"
    appended = await store.append("t", user("u3", "third"), create=False, history=2)
    assert appended is not None and appended.system_prompt == "Be brief. 简短。"
    assert await store.set_system_prompt("t", "", owner="o") is True
    conv = await store.get("t")
    assert conv is not None and conv.system_prompt == ""
    assert await store.set_system_prompt("missing", "x", owner="o") is False


async def test_export_and_copy_carry_the_whole_tree(store: ConversationStore) -> None:
    await chat(store)
    await store.append("t", user("u2b", "other"), create=False, history=10, after="a1")
    await store.select("t", "u2")
    await store.set_system_prompt("t", "Be kind.", owner="o")
    doc = await store.export("t")
    assert doc is not None and (doc["active"], doc["system_prompt"]) == ("a2", "Be kind.")
    assert [(m["id"], m["parent_id"]) for m in doc["messages"]] == [
        ("u1", ""), ("a1", "u1"), ("u2", "a1"), ("a2", "u2"), ("u2b", "a1"),
    ]
    other = MemoryStore(max_conversations=10, max_messages=100)
    report = await copy(store, other, [].append)
    assert report.verified == 1 and not report.mismatched
    assert [(m.id, m.parent_id) for m in await other.messages("t")] == [
        (m["id"], m["parent_id"]) for m in doc["messages"]
    ]
    assert ids(await other.history("t", 10)) == ["u1", "a1", "u2", "a2"]


async def test_migration_7_makes_what_was_stored_one_branch(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    build_v5(path)
    with raw(path) as conn:
        conn.executescript(MIGRATIONS[5])
        conn.execute("PRAGMA user_version = 6")
    store = SQLiteStore(path)
    await store.open()
    try:
        history = await store.history("c5", 10)
        assert history == V5_MESSAGES and [m.parent_id for m in history] == ["", "u1", "a1"]
        conv = await store.get("c5")
        assert conv is not None and (conv.active, conv.system_prompt) == ("a2", "")
        await store.append("c5", user("u9", "next"), create=False, history=10)
        assert ids(await store.history("c5", 10)) == ["u1", "a1", "a2", "u9"]
    finally:
        await store.close()


async def test_a_reply_whose_branch_was_deleted_is_not_stored(store: ConversationStore) -> None:
    await chat(store)
    await store.append("t", user("u3", "third"), create=False, history=10)
    assert await store.delete_branch("t", "u3") is True  # while its reply streamed, say
    await store.save("t", replace(assistant("a3", "late", None), parent_id="u3"))
    await store.save("t", replace(assistant("a3", "late and final"), parent_id="u3"))
    assert ids(await store.messages("t")) == ["u1", "a1", "u2", "a2"]
    assert ids(await store.history("t", 10)) == ["u1", "a1", "u2", "a2"]
