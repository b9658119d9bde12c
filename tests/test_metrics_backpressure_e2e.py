"""Metrics on GET /metrics, and slow clients that must not grow memory or slow others."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import TIMEOUT, Chat, StartGateway, openai_env
from fakeupstream import FakeUpstream, Script, openai_sse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

Spawn = Callable[..., Any]
LABELS = {
    "protocol": {"json", "plain"},
    "reason": {"path", "origin", "unauthorized", "max_connections"},
    "finish_reason": {"stop", "length", "cancelled", "error"},
    "op": {
        "open", "create", "get", "add", "append", "save", "delete", "history", "prune", "export", "close",
        "conversations", "rename", "remove", "claim", "record_usage", "usage",
    },
}


async def _scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/metrics") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_metrics_count_what_happened(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["a", "b", "c"])]), Script([b""], status=500))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        await chat.ask("one", "u1")
        await chat.ask("two", "u2")
        with pytest.raises(InvalidStatus):
            async with gw.raw(origin="https://evil.example"):
                pass
        live = await _scrape(gw.http_url)
    assert live['gateway_connections_open{protocol="json"}'] == 1
    after = await _scrape(gw.http_url)
    assert after['gateway_connections_open{protocol="json"}'] == 0
    assert after['gateway_handshakes_total{protocol="json"}'] == 1
    assert after['gateway_handshakes_refused_total{reason="origin"}'] == 1
    assert after["gateway_messages_total"] == 2
    assert after['gateway_replies_total{finish_reason="stop"}'] == 1
    assert after['gateway_replies_total{finish_reason="error"}'] == 1
    assert after['gateway_upstream_errors_total{code="upstream_error"}'] == 1
    assert after["gateway_replies_in_flight"] == 0
    assert after["gateway_deltas_total"] >= 1 and after["gateway_delta_frames_total"] >= 1
    assert after["gateway_completion_tokens_total"] == 3
    assert after["gateway_time_to_first_token_seconds_count"] == 1
    assert after["gateway_reply_duration_seconds_count"] == 2
    assert after['gateway_store_seconds_count{op="append"}'] == 2  # each message stored, its history read: one step
    assert {f'python_gc_collections_total{{generation="{g}"}}' for g in "012"} <= set(after)  # see gc_threshold
    for name in after:
        for label, value in re.findall(r'(\w+)="([^"]*)"', name):
            if label in LABELS:
                assert value in LABELS[label], f"unbounded label value {label}={value!r}"


async def test_metrics_can_be_turned_off(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml="[server]\nmetrics = false\n")
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.http_url + "/metrics") as resp:
            assert resp.status == 404


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _slow_client(url: str, conversation_id: str) -> Any:
    """A client that says hello, then never reads again (small receive buffer)."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    ws = await connect(url, sock=sock, subprotocols=["chat.v1"], max_queue=1, open_timeout=TIMEOUT)
    chat = Chat(ws)
    await chat.hello(conversation_id)
    return ws


async def _read_resuming(url: str, conversation_id: str, chat: Chat) -> str:
    """Read a reply to its end as a real client does: on 1013, reconnect and resume."""
    text, seq, reply_id = "", 0, None
    while True:
        try:
            while True:
                event = await chat.recv()
                if event["type"] == "reply.start":
                    reply_id = event["reply_id"]
                elif event["type"] == "reply.delta":
                    text, seq = text + event["text"], event["seq"]
                elif event["type"] == "reply.done":
                    return text
        except ConnectionClosedError as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1013, exc
        ws = await connect(url, subprotocols=["chat.v1"], max_size=None, open_timeout=TIMEOUT * 3)
        chat = Chat(ws)
        await chat.hello(conversation_id)
        await chat.send(type="resume", reply_id=reply_id, after_seq=seq)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_slow_clients_are_cut_off_and_memory_stays_bounded(
    spawn: Spawn, upstream: FakeUpstream, tmp_path: Path, loop: str
) -> None:
    piece = "0123456789" * 100
    big = openai_sse([piece] * 1000)  # a 1,000,000-character reply
    normal = [f"normal reply {i} " * 20 for i in range(5)]
    upstream.enqueue(Script([big]), *(Script([openai_sse([text])]) for text in normal))
    toml = tmp_path / "gateway.toml"
    toml.write_text("[limits]\nmax_pending_bytes = 65536\nwrite_limit = 16384\nmax_reply_chars = 3000000\n")
    proc = await spawn({**openai_env(upstream), "GATEWAY_STORE": "memory", "GATEWAY_EVENT_LOOP": loop}, "--config", str(toml))
    pid = proc.proc.pid

    async with connect(proc.ws_url, subprotocols=["chat.v1"], max_size=None) as ws:
        watcher = Chat(ws)
        conversation_id = (await watcher.hello())["conversation_id"]
        slow = [await _slow_client(proc.ws_url, conversation_id) for _ in range(100)]
        others = []
        for i in range(5):
            ows = await connect(proc.ws_url, subprotocols=["chat.v1"], open_timeout=TIMEOUT)
            others.append((ows, Chat(ows)))
            await others[-1][1].hello()
        baseline, peak = _rss(pid), 0
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, _rss(pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        await watcher.send(type="message", id="big", content="a long answer please")
        try:
            results = await asyncio.gather(
                _read_resuming(proc.ws_url, conversation_id, watcher),
                *(chat.ask(f"q{i}") for i, (_, chat) in enumerate(others)),
            )
        finally:
            sampling = False
        sampling = False
        await sampler
        await watcher.ws.close()
        for ows, _ in others:
            await ows.close()
        for s in slow:
            s.transport.abort()

    assert results[0] == piece * 1000, "the client that reads gets the whole reply, exactly once"
    # The upstream answers in the order the requests reach it, which need not be the clients'.
    assert sorted(r[0] for r in results[1:]) == sorted(normal), "others stream normally meanwhile"
    metrics = await _scrape(proc.http_url.rstrip("/"))
    assert metrics["gateway_slow_client_disconnects_total"] >= 100
    growth = peak - baseline
    # Unbounded queues would hold the reply once per slow client: 100 x 1 MB of frames.
    # Bounded: the reply itself (kept for resume) plus per-connection limits.
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
