"""A real gateway process on a real PostgreSQL: waiting for it, its restarts, two gateways
sharing it, `store copy`, and a password that never shows. (Restarts, a crash mid-reply,
the context window, export and prune run on both durable stores in test_durability_e2e.py.)"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
from pgserver import PASSWORD, PgServer
from ports import free_port
from test_durability_e2e import _open_chat

from gateway.stores import StoredMessage
from gateway.stores.postgres import PostgresStore
from gateway.stores.sqlite import SQLiteStore

Spawn = Callable[..., Any]


def _env(url: str, **extra: str) -> dict[str, str]:
    return {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url, **extra}


async def test_the_password_never_shows(
    spawn: Spawn, run_cli: Callable[..., Any], pg_server: PgServer, tmp_path: Path
) -> None:
    url = pg_server.url(pg_server.create_database(), password=False)
    password_file = tmp_path / "database_password"
    password_file.write_text(PASSWORD + "\n")
    env = _env(url, GATEWAY_DATABASE_PASSWORD_FILE=str(password_file), GATEWAY_LOG_LEVEL="debug")
    proc = await spawn(env)
    ws, chat = await _open_chat(proc.ws_url)
    await chat.hello()
    await chat.ask("is the password safe?", "u1")
    await ws.close()
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    shown = run_cli("check-config", env=env)
    assert shown.returncode == 0 and 'backend = "postgres"' in shown.stdout
    password_file.write_text("a-wrong-password-123\n")
    failed = await spawn(env, wait_ready=False)  # waits, saying why, until someone fixes it
    refused = await failed.wait_for_event("store_unavailable")
    assert "password authentication failed" in refused["error"]
    failed.proc.send_signal(signal.SIGTERM)
    assert await failed.finish() == 0
    everything = "\n".join(orjson.dumps(line).decode() for line in (*proc.lines, *failed.lines))
    for output in (everything, shown.stdout, shown.stderr):
        assert PASSWORD not in output and "a-wrong-password-123" not in output


async def _get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


async def test_a_gateway_waits_for_postgres_then_serves(
    spawn: Spawn, pg_server: PgServer, pg_url: str
) -> None:
    """Started while the database is down: /readyz says 503 and the log says why, once per
    attempt (never the password); when the database is back it serves by itself."""
    http_port = free_port()
    env = {**_env(pg_url), "GATEWAY_HTTP_ADDR": f"127.0.0.1:{http_port}", "GATEWAY_PROVIDER": "demo"}
    await asyncio.to_thread(pg_server.pg_ctl, "stop")
    try:
        proc = await spawn(env, wait_ready=False)
        first = await proc.wait_for_event("store_unavailable")
        assert first["attempt"] == 1 and first["retry_in_s"] == 1.0
        assert "Connection refused" in first["error"] or "connection failed" in first["error"]
        assert await _get(f"http://127.0.0.1:{http_port}/readyz") == (503, {"status": "starting"})
        assert (await _get(f"http://127.0.0.1:{http_port}/healthz"))[0] == 200
    finally:
        await asyncio.to_thread(pg_server.pg_ctl, "start")
    started = await proc.wait_for_event("gateway_started")
    assert await _get(f"http://127.0.0.1:{http_port}/readyz") == (200, {"status": "ready"})
    ws, chat = await _open_chat(started["ws_url"])
    await chat.hello()
    text, _ = await chat.ask("are you there?", "u1")
    await ws.close()
    assert text
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    assert PASSWORD not in "\n".join(orjson.dumps(line).decode() for line in proc.lines)


async def test_sigterm_while_waiting_for_postgres_stops_cleanly(spawn: Spawn) -> None:
    url = f"postgresql://gateway@127.0.0.1:{free_port()}/gateway"  # nothing listens there
    proc = await spawn({**_env(url), "GATEWAY_PROVIDER": "demo"}, wait_ready=False)
    await proc.wait_for_event("store_unavailable")
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    assert not any(line["event"] in ("gateway_started", "startup_failed") for line in proc.lines)


async def test_chats_go_on_across_a_postgres_restart(
    spawn: Spawn, pg_server: PgServer, pg_url: str
) -> None:
    """Nothing accepted is lost: every message acknowledged (reply.start) before, during
    and after the restart is in the history, with its reply, in order."""
    proc = await spawn({**_env(pg_url), "GATEWAY_PROVIDER": "demo"}, "--config", "/dev/null")
    ws, chat = await _open_chat(proc.ws_url)
    conversation_id = (await chat.hello())["conversation_id"]
    accepted: list[tuple[str, str]] = []

    async def ask(msg_id: str, content: str) -> bool:
        """Send until accepted: an error (the database away) is retried after retry_after."""
        await chat.send(type="message", id=msg_id, content=content)
        event = await chat.recv()
        if event["type"] == "error":
            assert event["code"] == "overloaded" and event["retry_after"] > 0, event
            return False
        assert event["type"] == "reply.start", event
        text, _ = await chat.until_done()
        accepted.append((content, text))
        return True

    assert await ask("m1", "before the restart")
    await asyncio.to_thread(pg_server.pg_ctl, "restart")
    for attempt in range(20):  # bounded; the gateway's pool reconnects by itself
        if await ask(f"m2-{attempt}", "after the restart"):
            break
    else:
        raise AssertionError("the gateway never stored a message after the restart")
    assert await ask("m3", "and once more")
    await ws.close()
    ws, chat = await _open_chat(proc.ws_url)
    history = (await chat.hello(conversation_id))["history"]
    await ws.close()
    expected = [item for content, text in accepted for item in (("user", content), ("assistant", text))]
    assert [(m["role"], m["content"]) for m in history] == expected
    assert all(m.get("finish_reason") == "stop" for m in history if m["role"] == "assistant")
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0


def _same_document(a: Any, b: Any, key: str = "") -> bool:
    """Equal, times to the microsecond PostgreSQL keeps (SQLite keeps a double)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_document(a[k], b[k], k) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_document(x, y) for x, y in zip(a, b))
    if key.endswith("_at"):
        return abs(a - b) < 2e-6
    return bool(a == b)


async def _fill_sqlite(path: Path, count: int) -> None:
    """A real SQLite store with ``count`` conversations, as a gateway would have left it."""
    store = SQLiteStore(path)
    await store.open()
    try:
        for i in range(count):
            conv = await store.create()
            await store.add(conv.id, StoredMessage(f"u{i}", "user", f"question {i} — 你好 🙂", 1_700_000_000 + i * 0.123457))
            finish = None if i % 50 == 7 else "stop"  # a few were still streaming
            usage = {"prompt_tokens": i, "completion_tokens": 2 * i} if i % 3 else None
            await store.save(conv.id, StoredMessage(f"a{i}", "assistant", f"answer {i}\n```py\nx = {i}\n```",
                                                    1_700_000_001 + i, finish, usage, "gpt-test" if i % 2 else None))
            if i % 4 == 0:
                await store.add(conv.id, StoredMessage(f"v{i}", "user", "and then?", 1_700_000_002 + i))
    finally:
        await store.close()


async def test_store_copy_moves_every_conversation_from_sqlite_and_can_run_again(
    run_cli: Callable[..., Any], pg_server: PgServer, tmp_path: Path
) -> None:
    db = tmp_path / "old" / "conversations.db"
    await _fill_sqlite(db, 300)
    url = pg_server.url(pg_server.create_database(), password=False)
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD)
    env = {"GATEWAY_DATABASE_PASSWORD_FILE": str(password_file)}

    first = run_cli("store", "copy", "--from", f"sqlite://{db}", "--to", url, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "copied 300 conversation(s), 675 message(s)",
        "0 conversation(s) already there, left alone",
        "verified 300 conversation(s)",
    ]
    again = run_cli("store", "copy", "--from", f"sqlite://{db}", "--to", url, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "copied 0 conversation(s), 0 message(s)",
        "300 conversation(s) already there, left alone",
        "verified 300 conversation(s)",
    ]
    for output in (first.stdout, first.stderr, again.stdout, again.stderr):
        assert PASSWORD not in output

    source, target = SQLiteStore(db), PostgresStore(url, password=PASSWORD)
    await source.open(recover=False)
    await target.open(recover=False)
    try:
        ids = await source.ids(None, 1000)
        assert ids == await target.ids(None, 1000) and len(ids) == 300
        for conversation_id in ids[::37]:
            copied, original = await target.export(conversation_id), await source.export(conversation_id)
            assert _same_document(copied, original), (copied, original)
    finally:
        await source.close()
        await target.close()


def test_store_copy_refuses_unknown_locations_and_a_missing_file(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    bad = run_cli("store", "copy", "--from", "mysql://x/y", "--to", "sqlite:///tmp/x.db")
    assert bad.returncode == 2 and "expected sqlite:///path or postgresql://" in bad.stderr
    missing = run_cli("store", "copy", "--from", f"sqlite://{tmp_path}/nothing.db", "--to", f"sqlite://{tmp_path}/b.db")
    assert missing.returncode == 2 and "no conversation store at" in missing.stderr
    assert not (tmp_path / "nothing.db").exists()


async def test_two_gateways_starting_at_once_share_an_empty_database(spawn: Spawn, pg_url: str) -> None:
    env = {**_env(pg_url), "GATEWAY_PROVIDER": "demo"}
    first, second = await asyncio.gather(spawn(env, "--config", "/dev/null"), spawn(env, "--config", "/dev/null"))
    ws, chat = await _open_chat(first.ws_url)
    conversation_id = (await chat.hello())["conversation_id"]
    text, _ = await chat.ask("written through the first", "u1")
    await ws.close()
    ws, chat = await _open_chat(second.ws_url)  # the same conversation, read through the other
    history = (await chat.hello(conversation_id))["history"]
    await ws.close()
    assert [(m["role"], m["content"]) for m in history] == [("user", "written through the first"), ("assistant", text)]
    for proc in (first, second):
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.finish() == 0


async def test_a_message_sent_while_postgres_is_down_is_refused_whole_then_accepted(
    spawn: Spawn, pg_server: PgServer, pg_url: str
) -> None:
    proc = await spawn({**_env(pg_url), "GATEWAY_PROVIDER": "demo"}, "--config", "/dev/null")
    ws, chat = await _open_chat(proc.ws_url)
    conversation_id = (await chat.hello())["conversation_id"]
    first, _ = await chat.ask("stored before", "u1")
    await asyncio.to_thread(pg_server.pg_ctl, "stop")
    try:
        await chat.send(type="message", id="u2", content="sent while the database is down")
        refused = await chat.expect("error")
        assert (refused["code"], refused["id"]) == ("overloaded", "u2")
        assert refused["retry_after"] == 5 and refused["retryable"] is True
    finally:
        await asyncio.to_thread(pg_server.pg_ctl, "start")
    for _ in range(20):  # the same message again, as the page does after the countdown (bounded)
        await chat.send(type="message", id="u2", content="sent while the database is down")
        event = await chat.recv()
        if event["type"] == "reply.start":
            break
        assert event["code"] == "overloaded", event
    else:
        raise AssertionError("the message was never accepted once the database was back")
    second, _ = await chat.until_done()
    await ws.close()
    ws, chat = await _open_chat(proc.ws_url)
    history = (await chat.hello(conversation_id))["history"]
    await ws.close()
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "stored before"), ("assistant", first),
        ("user", "sent while the database is down"), ("assistant", second),
    ], "nothing half-stored, nothing twice"
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    unavailable = [line for line in proc.lines if line["event"] == "store_unavailable"]
    assert unavailable and all(PASSWORD not in line["error"] for line in unavailable)


async def test_a_database_newer_than_the_gateway_stops_it_with_exit_2(spawn: Spawn, pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE gateway_schema SET version = 42")
    proc = await spawn(_env(pg_url), wait_ready=False)
    assert await proc.finish() == 2  # systemd does not retry it (RestartPreventExitStatus=2)
    failed = next(line for line in proc.lines if line["event"] == "startup_failed")
    assert failed["error"].startswith("the database is at schema version 42;")
