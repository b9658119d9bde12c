"""Conversations survive: restarts, crashes, dropped connections, two tabs.

The restart and crash tests run on both durable stores: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from conftest import TIMEOUT, Chat, StartGateway, openai_env
from fakeupstream import FakeUpstream, Pause, Script, Stall, openai_sse
from websockets.asyncio.client import connect

from gateway.stores.sqlite import MIGRATIONS

Spawn = Callable[..., Any]


def _db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "conversations.db"


def _pieces(texts: list[str]) -> list[bytes]:
    """One SSE event per text, without the finish and [DONE]."""
    return [openai_sse([t], finish=None, usage=None, done=False).split(b"\n\n", 1)[1] for t in texts]


async def _stored_text(db: Path, reply_id: str) -> str | None:
    def read() -> str | None:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT content FROM messages WHERE id = ?", (reply_id,)).fetchone()
        return row[0] if row else None

    return await asyncio.to_thread(read)


async def _pg_stored_text(url: str, reply_id: str) -> str | None:
    def read() -> str | None:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT content FROM messages WHERE id = %s", (reply_id,)).fetchone()
        return row[0] if row else None

    return await asyncio.to_thread(read)


@dataclass
class Backend:
    """A durable store for a gateway process: its settings, and a way to read a reply's text."""

    name: str
    env: dict[str, str]
    stored_text: Callable[[str], Awaitable[str | None]]
    age: Callable[[str, float], None]  # make a conversation idle for that many seconds more

    async def until_stored(self, reply_id: str, text: str) -> None:
        """Wait (bounded) until the gateway has checkpointed ``text`` for the reply."""
        deadline = time.monotonic() + TIMEOUT
        while await self.stored_text(reply_id) != text:
            assert time.monotonic() < deadline, f"no checkpoint of {text!r}"
            await asyncio.sleep(0.01)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":

        def age_sqlite(conversation_id: str, seconds: float) -> None:
            with sqlite3.connect(_db(tmp_path)) as conn:
                conn.execute("UPDATE conversations SET updated_at = updated_at - ? WHERE id = ?",
                             (seconds, conversation_id))

        return Backend("sqlite", {}, lambda reply_id: _stored_text(_db(tmp_path), reply_id), age_sqlite)
    url = request.getfixturevalue("pg_url")

    def age_postgres(conversation_id: str, seconds: float) -> None:
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE conversations SET updated_at = updated_at - make_interval(secs => %s) WHERE id = %s",
                         (seconds, conversation_id))

    env = {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url}
    return Backend("postgres", env, lambda reply_id: _pg_stored_text(url, reply_id), age_postgres)


async def _open_chat(url: str) -> tuple[Any, Chat]:
    ws = await connect(url, subprotocols=["chat.v1"], open_timeout=TIMEOUT)
    return ws, Chat(ws)


async def test_sigterm_restart_keeps_history_and_partial_reply(
    spawn: Spawn, upstream: FakeUpstream, backend: Backend
) -> None:
    upstream.enqueue(
        Script([openai_sse(["The whole first answer."])]),
        Script([*_pieces(["half ", "an answer"]), Stall()]),
    )
    env = {**openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"), **backend.env, "GATEWAY_DRAIN_TIMEOUT": "0.2"}
    proc = await spawn(env)
    ws, chat = await _open_chat(proc.ws_url)
    conversation_id = (await chat.hello())["conversation_id"]
    await chat.ask("first question", "u1")
    await chat.send(type="message", id="u2", content="second question")
    start = await chat.expect("reply.start")
    text = ""
    while text != "half an answer":
        text += (await chat.expect("reply.delta"))["text"]
    proc.proc.send_signal(signal.SIGTERM)
    assert (await chat.expect("error"))["code"] == "overloaded"
    assert (await chat.expect("reply.done"))["finish_reason"] == "error"
    await ws.close()
    assert await proc.finish() == 0

    again = await spawn(env)
    ws, chat = await _open_chat(again.ws_url)
    ready = await chat.hello(conversation_id)
    await ws.close()
    assert [(m["id"], m["role"], m["content"], m.get("finish_reason")) for m in ready["history"]] == [
        ("u1", "user", "first question", None),
        (ready["history"][1]["id"], "assistant", "The whole first answer.", "stop"),
        ("u2", "user", "second question", None),
        (start["reply_id"], "assistant", "half an answer", "error"),
    ]
    assert ready["title"] == "first question"


@pytest.mark.parametrize("seed", [11, 22, 33])
async def test_sigkill_mid_stream_loses_at_most_one_checkpoint_interval(
    spawn: Spawn, upstream: FakeUpstream, tmp_path: Path, seed: int, backend: Backend
) -> None:
    rng = random.Random(seed)
    tokens = [f"词{i} " for i in range(12)]
    gates = [asyncio.Event() for _ in tokens]
    chunks: list[Any] = []
    for gate, piece in zip(gates, _pieces(tokens)):
        chunks += [Pause(gate), piece]
    upstream.enqueue(Script([*chunks, Stall()]))
    toml = tmp_path / "gateway.toml"
    toml.write_text("[store]\ncheckpoint_interval = 0.05\n")
    env = {**openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"), **backend.env}
    proc = await spawn(env, "--config", str(toml))
    ws, chat = await _open_chat(proc.ws_url)
    conversation_id = (await chat.hello())["conversation_id"]
    await chat.send(type="message", id="u1", content="count")
    reply_id = (await chat.expect("reply.start"))["reply_id"]
    kill_after = rng.randrange(2, len(tokens))
    received = ""
    for i in range(kill_after):
        if i == kill_after - 1:
            await backend.until_stored(reply_id, received)
        gates[i].set()
        while not received.endswith(tokens[i]):
            received += (await chat.expect("reply.delta"))["text"]
    proc.proc.send_signal(signal.SIGKILL)
    await proc.finish()
    await ws.close()

    if backend.name == "sqlite":
        with sqlite3.connect(_db(tmp_path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again = await spawn(env, "--config", str(toml))
    recovered = await again.wait_for_event("interrupted_replies_recovered")
    assert recovered["count"] == 1
    ws, chat = await _open_chat(again.ws_url)
    history = (await chat.hello(conversation_id))["history"]
    await ws.close()
    assert history[0]["content"] == "count", "the user's message survives"
    reply = history[1]
    assert reply["id"] == reply_id and reply["finish_reason"] == "error"
    last = tokens[kill_after - 1]
    assert reply["content"] in (received, received[: -len(last)]), "at most the last interval is lost"


async def test_resume_after_aborted_tcp_connection(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    tokens = [f"片段{i}，" for i in range(8)]
    gate = asyncio.Event()
    upstream.enqueue(Script([*_pieces(tokens[:4]), Pause(gate), *_pieces(tokens[4:]), openai_sse([])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.send(type="message", id="u1", content="go")
        reply_id = (await chat.expect("reply.start"))["reply_id"]
        first, seqs = "", []
        while first != "".join(tokens[:4]):
            delta = await chat.expect("reply.delta")
            first += delta["text"]
            seqs.append(delta["seq"])
        chat.ws.transport.abort()
    gate.set()
    async with gw.chat() as chat:
        ready = await chat.hello(conversation_id)
        assert ready["history"][0]["content"] == "go"
        await chat.send(type="resume", reply_id=reply_id, after_seq=seqs[-1])
        rest, events = await chat.until_done()
    seqs += [e["seq"] for e in events if e["type"] == "reply.delta"]
    assert first + rest == "".join(tokens)
    assert seqs == sorted(set(seqs)), "no duplicate or out-of-order seq"
    assert events[-1]["finish_reason"] == "stop"


async def test_two_tabs_watch_one_reply(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*_pieces(["one ", "two "]), Pause(gate), openai_sse(["three"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as tab_a, gw.chat() as tab_b:
        conversation_id = (await tab_a.hello())["conversation_id"]
        await tab_b.hello(conversation_id)
        await tab_a.send(type="message", id="u1", content="count to three")
        start_a = await tab_a.expect("reply.start")
        start_b = await tab_b.expect("reply.start")
        assert start_b["reply_id"] == start_a["reply_id"] and start_b["id"] == "u1"
        assert start_b["content"] == "count to three" and "content" not in start_a
        gate.set()
        text_a, _ = await tab_a.until_done()
        text_b, events_b = await tab_b.until_done()
        await tab_b.send(type="message", id="u2", content="from tab b")
        assert (await tab_a.expect("reply.start"))["content"] == "from tab b"
    assert text_a == text_b == "one two three"
    assert events_b[-1]["finish_reason"] == "stop"


async def test_resume_after_grace_period_is_unavailable(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml="[server]\nresume_grace = 0\n[provider]\ndemo_delay_ms = 0\n")
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        text, events = await chat.ask("hello")
    async with gw.chat() as chat:
        ready = await chat.hello(conversation_id)
        await chat.send(type="resume", reply_id=events[0]["reply_id"], after_seq=1)
        error = await chat.expect("error")
    assert error["code"] == "resume_unavailable"
    assert ready["history"][-1]["content"] == text, "the stored text is in the history"


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ("context_max_messages = 3", ["sys", "q3", "a3", "q4"]),
        ("context_max_chars = 100", ["sys", "q4"]),
        ("context_max_messages = 40", ["sys", "q1", "a1", "q2", "a2", "q3", "a3", "q4"]),
    ],
)
async def test_context_window_trims_oldest_turns(
    start_gateway: StartGateway, upstream: FakeUpstream, limits: str, expected: list[str], backend: Backend
) -> None:
    def pad(label: str) -> str:
        return label + "." * 38

    def answer(rec: Any) -> Script:
        return Script([openai_sse([pad("a" + rec.json["messages"][-1]["content"][1])])])

    upstream.set_default(answer)
    toml = f'[provider]\nsystem_prompt = "sys"\n[limits]\n{limits}\n'
    gw = await start_gateway({**openai_env(upstream), **backend.env}, toml=toml)
    async with gw.chat() as chat:
        await chat.hello()
        for i in range(1, 5):
            await chat.ask(pad(f"q{i}"), f"u{i}")
    sent = [m["content"].rstrip(".") for m in upstream.requests[-1].json["messages"]]
    assert sent == expected


async def test_export_and_prune_commands(
    spawn: Spawn, run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, backend: Backend
) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text("[provider]\ndemo_delay_ms = 0\n")
    proc = await spawn(backend.env, "--config", str(toml))
    ids = []
    for question in ("keep me", "old one"):
        ws, chat = await _open_chat(proc.ws_url)
        ids.append((await chat.hello())["conversation_id"])
        await chat.ask(question)
        await ws.close()
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    backend.age(ids[1], 40 * 86400)

    env = {"GATEWAY_STATE_DIR": str(tmp_path / "state"), **backend.env}
    exported = run_cli("conversations", "export", ids[0], env=env)
    assert exported.returncode == 0, exported.stderr
    doc = orjson.loads(exported.stdout)
    assert doc["id"] == ids[0] and doc["title"] == "keep me"
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant"]
    assert doc["messages"][1]["finish_reason"] == "stop" and doc["messages"][1]["usage"]["total_tokens"] > 0

    pruned = run_cli("conversations", "prune", "--older-than", "30d", env=env)
    assert pruned.returncode == 0 and "deleted 1 conversation" in pruned.stdout
    assert run_cli("conversations", "export", ids[1], env=env).returncode == 1
    assert run_cli("conversations", "export", ids[0], env=env).returncode == 0
    bad = run_cli("conversations", "prune", "--older-than", "soon", env=env)
    assert bad.returncode == 2 and "--older-than" in bad.stderr


async def test_gateway_upgrades_an_old_schema_and_prunes_on_start(spawn: Spawn, tmp_path: Path) -> None:
    db = _db(tmp_path)
    db.parent.mkdir(parents=True)
    now = time.time()
    with sqlite3.connect(db) as conn:
        conn.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
        conn.execute("INSERT INTO conversations VALUES ('a' || hex(randomblob(15)), 'fresh', ?, ?)", (now, now))
        fresh = conn.execute("SELECT id FROM conversations").fetchone()[0]
        conn.execute("INSERT INTO conversations VALUES ('stale', 'stale', ?, ?)", (now - 90 * 86400, now - 90 * 86400))
        conn.execute(
            "INSERT INTO messages (conversation_id, id, role, content, created_at) VALUES (?, 'm1', 'user', '旧消息', ?)",
            (fresh, now),
        )
    proc = await spawn({"GATEWAY_RETENTION": "30d"})
    pruned = await proc.wait_for_event("conversations_pruned")
    assert pruned["deleted"] == 1
    ws, chat = await _open_chat(proc.ws_url)
    ready = await chat.hello(fresh)
    assert ready["history"] == [{"id": "m1", "role": "user", "content": "旧消息"}]
    await chat.send(type="hello", conversation_id="stale")
    assert (await chat.expect("error"))["code"] == "not_found"
    await ws.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_resume_a_finished_reply_longer_than_the_pending_bound(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    text = "长" * 5000
    upstream.enqueue(Script([openai_sse([text[:2500], text[2500:]])]))
    gw = await start_gateway(openai_env(upstream), toml="[limits]\nmax_pending_bytes = 1024\n")
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.send(type="message", id="u1", content="long")
        reply_id = (await chat.expect("reply.start"))["reply_id"]
    reply = gw.gateway.hub.registry.get(reply_id)  # type: ignore[union-attr]
    assert reply is not None
    await asyncio.wait_for(reply.ended.wait(), TIMEOUT)
    async with gw.chat() as chat:
        await chat.hello(conversation_id)
        await chat.send(type="resume", reply_id=reply_id, after_seq=0)
        got, events = await chat.until_done()
    assert got == text and events[-1]["finish_reason"] == "stop"
