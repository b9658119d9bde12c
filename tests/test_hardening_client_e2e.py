"""Clients as attackers: resume floods, non-reading history readers, conversation floods.

Each test here failed on the gateway before the hardening round (issue 17, defects
1, 5 and 7): the bound it checks did not exist.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
from conftest import TIMEOUT, Chat, StartGateway, openai_env
from fakeupstream import FakeUpstream, Script, openai_sse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


async def _metric(http_url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(http_url + "/metrics") as resp:
            text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def _non_reader(url: str) -> ClientConnection:
    """A client whose socket takes almost nothing: a tiny receive buffer, one queued message."""
    host, port = url.removeprefix("ws://").split("/")[0].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await connect(url, sock=sock, subprotocols=["chat.v1"], max_queue=1, max_size=None, open_timeout=TIMEOUT)


async def _close_code(ws: ClientConnection) -> int | None:
    """Read (bounded) until the server closes; the code it closed with."""

    async def drain() -> None:
        while True:
            await ws.recv()

    try:
        await asyncio.wait_for(drain(), TIMEOUT)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- defect 1: resume amplification


async def _long_replies(gw: Any, upstream: FakeUpstream, count: int) -> tuple[str, list[str], str]:
    """A conversation with ``count`` finished 100,000-character replies: its id, the reply ids, the text."""
    text = "0123456789" * 10_000
    for _ in range(count):
        upstream.enqueue(Script([openai_sse([text[i : i + 5000] for i in range(0, len(text), 5000)])]))
    reply_ids = []
    async with gw.chat(max_size=None) as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        for n in range(count):
            got, events = await chat.ask("long please", f"u{n}")
            assert got == text
            reply_ids.append(events[0]["reply_id"])
    return conversation_id, reply_ids, text


async def test_resuming_one_ended_reply_again_and_again_queues_it_once(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gw = await start_gateway(openai_env(upstream), toml="[limits]\nmax_pending_bytes = 262144\n")
    conversation_id, (reply_id,), text = await _long_replies(gw, upstream, 1)
    attacker = await _non_reader(gw.ws_url)
    chat = Chat(attacker)
    await chat.hello(conversation_id)
    for _ in range(50):  # 5 MB of catch-up asked for with 4 KB of frames, nothing read
        await chat.send(type="resume", reply_id=reply_id, after_seq=0)
    await chat.send(type="ping", id="last")
    catch_ups, refused = 0, 0
    while (event := await chat.recv())["type"] != "pong":
        if event["type"] == "reply.delta":
            assert event["text"] == text
            catch_ups += 1
        elif event["type"] == "error":
            assert event["code"] == "bad_request" and "already receives" in event["message"]
            refused += 1
    # One catch-up being written, at most one waiting: the others are refused, not queued.
    assert catch_ups <= 2 and catch_ups + refused == 50

    async with gw.chat(max_size=None) as honest:  # an honest resume of the same reply still works
        await honest.hello(conversation_id)
        await honest.send(type="resume", reply_id=reply_id, after_seq=0)
        again, done = await honest.until_done()
    assert again == text and done[-1]["finish_reason"] == "stop"


async def test_catch_up_counts_against_the_pending_bound_and_1013_ends_it(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gw = await start_gateway(openai_env(upstream), toml="[limits]\nmax_pending_bytes = 262144\n")
    conversation_id, reply_ids, _ = await _long_replies(gw, upstream, 4)
    attacker = await _non_reader(gw.ws_url)
    await Chat(attacker).hello(conversation_id)
    for n in range(40):  # 4 MB of distinct catch-ups, nothing read
        await attacker.send(f'{{"type":"resume","reply_id":"{reply_ids[n % 4]}","after_seq":0}}')
    assert await _close_code(attacker) == 1013
    assert await _metric(gw.http_url, "gateway_slow_client_disconnects_total") == 1


# --------------------------------------------------------------------------- defect 5: non-reading history readers


async def _fill(chat: Chat, count: int, size: int) -> None:
    for i in range(count):
        await chat.ask(f"{i:03d}" + "x" * (size - 3), f"u{i}")


async def test_history_pages_are_capped_in_bytes(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.set_default(lambda rec: Script([openai_sse(["ok"])]))
    gw = await start_gateway(openai_env(upstream))  # max_history_bytes: 262,144 by default
    async with gw.chat(max_size=None) as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await _fill(chat, 12, 30_000)
    async with gw.chat(max_size=None) as chat:
        ready = await chat.hello(conversation_id)
        assert sum(len(m["content"]) for m in ready["history"]) <= 262_144
        seen = [m["content"][:3] for m in ready["history"] if m["role"] == "user"]
        before = ready["history"][0]["id"]
        while True:  # paging back still reaches every message, newest page first
            await chat.send(type="history", before=before, limit=200)
            page = await chat.expect("history")
            assert sum(len(m["content"].encode()) for m in page["messages"]) <= 262_144
            seen = [m["content"][:3] for m in page["messages"] if m["role"] == "user"] + seen
            if not page["has_more"]:
                break
            before = page["messages"][0]["id"]
    assert seen == [f"{i:03d}" for i in range(12)]


async def test_non_reading_clients_share_one_output_budget(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.set_default(lambda rec: Script([openai_sse(["ok"])]))
    toml = "[limits]\nmax_pending_bytes = 1048576\nmax_total_pending_bytes = 1048576\nmax_history_bytes = 131072\n"
    gw = await start_gateway(openai_env(upstream), toml=toml)
    async with gw.chat(max_size=None) as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await _fill(chat, 8, 30_000)

    readers = []
    try:
        for _ in range(12):
            ws = await _non_reader(gw.ws_url)
            readers.append(ws)
            await ws.send(f'{{"type":"hello","conversation_id":"{conversation_id}"}}')
            for _ in range(8):
                await ws.send('{"type":"history","limit":200}')
        # 12 clients x up to 1 MiB each would be 12 MiB; together they may hold 1 MiB.
        async with gw.chat(max_size=None) as chat:  # a client that reads is not the one evicted
            await chat.hello()
            text, events = await chat.ask("still served?")
        assert text == "ok" and events[-1]["finish_reason"] == "stop"
        assert await _metric(gw.http_url, "gateway_output_queued_bytes") <= 1048576
        # The non-readers' requests are answered concurrently: wait for the first eviction.
        slow = gw.gateway.metrics.slow_clients
        await _until(lambda: slow._value.get() >= 1)
        assert await _metric(gw.http_url, "gateway_slow_client_disconnects_total") >= 1
        assert await _metric(gw.http_url, "gateway_output_queued_bytes") <= 1048576
    finally:
        for ws in readers:
            ws.transport.abort()
    assert gw.gateway.hub is not None
    for conn in list(gw.gateway.hub.connections):
        await asyncio.wait_for(conn.ws.wait_closed(), TIMEOUT)
    await _until(lambda: gw.gateway.hub is not None and not gw.gateway.hub.connections)
    assert await _metric(gw.http_url, "gateway_output_queued_bytes") == 0


async def _until(predicate: Any) -> None:
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), TIMEOUT)


# --------------------------------------------------------------------------- defect 7: conversation floods


async def test_bare_hellos_store_nothing(start_gateway: StartGateway, upstream: FakeUpstream, tmp_path: Path) -> None:
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        ids = set()
        for _ in range(2000):
            await chat.send(type="hello")
            ids.add((await chat.expect("ready"))["conversation_id"])
        assert len(ids) == 2000
        text, _ = await chat.ask("now store me")
    assert text == "Hello world"
    with sqlite3.connect(tmp_path / "state" / "conversations.db") as db:
        rows = db.execute("SELECT id FROM conversations").fetchall()
    assert len(rows) == 1 and rows[0][0] in ids


async def test_a_new_conversation_is_open_to_other_tabs_until_its_first_message(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as tab_a, gw.chat() as tab_b:
        conversation_id = (await tab_a.hello())["conversation_id"]
        assert (await tab_b.hello(conversation_id))["history"] == []
        text, _ = await tab_b.ask("from b")
        await tab_a.expect("reply.start")
    async with gw.chat() as chat:
        ready = await chat.hello(conversation_id)
    assert [m["content"] for m in ready["history"]] == ["from b", text]
    async with gw.chat() as chat:  # an id nobody holds and nobody stored
        await chat.send(type="hello", conversation_id="0" * 32)
        assert (await chat.expect("error"))["code"] == "not_found"


async def test_a_full_memory_store_refuses_new_conversations_and_evicts_none(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gw = await start_gateway(openai_env(upstream, GATEWAY_STORE="memory"), toml="[limits]\nmax_conversations = 2\n")
    kept = []
    for n in range(2):
        async with gw.chat() as chat:
            kept.append((await chat.hello())["conversation_id"])
            await chat.ask(f"mine {n}")
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="message", id="m1", content="one too many")
        error = await chat.expect("error")
    assert error["code"] == "overloaded" and error["id"] == "m1" and error["retryable"] is True
    assert 0 < error["retry_after"] <= 3600
    for n, conversation_id in enumerate(kept):
        async with gw.chat() as chat:
            ready = await chat.hello(conversation_id)
        assert ready["history"][0]["content"] == f"mine {n}"
