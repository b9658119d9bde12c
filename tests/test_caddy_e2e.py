"""The shipped Caddyfile, run by a real Caddy (Debian 12's 2.6.2) in front of a real
gateway process: HTTPS with Caddy's local CA, /chat over wss://, the page compressed
with the gateway's CSP intact, the client's address forwarded, long-lived sockets.

Caddy runs as a child of the test with its own XDG directories, loopback-only
unprivileged ports and its admin API on a free loopback port, and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from caddyserver import CADDY_IDLE, Caddy
from conftest import TIMEOUT, Chat, Process
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (apt-get install caddy)")

Spawn = Callable[..., Any]
# Short gateway pings so that "idle past the timeouts" takes a few seconds.
GATEWAY_TOML = "[server]\nping_interval = 1\n[provider]\ndemo_delay_ms = 1\n"


class Front:
    """A gateway behind Caddy, and the gateway's log lines."""

    def __init__(self, gateway: Process, caddy: Caddy) -> None:
        self.gateway = gateway
        self.caddy = caddy
        self.url = caddy.origin
        self.wss = f"wss://localhost:{caddy.https_port}/chat"
        self._seen = 0

    @contextlib.asynccontextmanager
    async def chat(self, **kwargs: Any) -> AsyncIterator[Chat]:
        kwargs.setdefault("subprotocols", ["chat.v1"])
        async with connect(self.wss, ssl=self.caddy.ssl, open_timeout=TIMEOUT, **kwargs) as ws:
            yield Chat(ws)

    async def next_event(self, name: str) -> dict[str, Any]:
        """The next gateway log line with this event, after those already returned
        (the ``spawn`` fixture's Process reads the child's output all the time)."""

        async def find() -> dict[str, Any]:
            lines = self.gateway.lines
            while True:
                while self._seen < len(lines):
                    line = lines[self._seen]
                    self._seen += 1
                    if line.get("event") == name:
                        return line
                assert self.gateway.proc.returncode is None, f"gateway ended before logging {name!r}"
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(find(), TIMEOUT)

    async def get(self, path: str, **headers: str) -> tuple[int, Any, bytes]:
        assert self.caddy.ssl is not None
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(self.url + path, ssl=self.caddy.ssl, headers=headers) as resp:
                return resp.status, resp.headers, await resp.read()


@pytest.fixture
async def front(spawn: Spawn, tmp_path: Path) -> AsyncIterator[Front]:
    caddy = Caddy(tmp_path)
    toml = tmp_path / "gateway.toml"
    toml.write_text(GATEWAY_TOML)
    # The browser's Origin is Caddy's https:// origin (Caddy passes it through).
    gateway = await spawn({"GATEWAY_ALLOWED_ORIGINS": caddy.origin, "GATEWAY_LOG_FORMAT": "json"}, "--config", str(toml))
    ws = gateway.ws_url.removeprefix("ws://").removesuffix("/chat")
    http = gateway.http_url.removeprefix("http://").rstrip("/")
    try:
        await asyncio.to_thread(caddy.start, ws, http)
        yield Front(gateway, caddy)
    finally:
        await asyncio.to_thread(caddy.stop)


async def test_chat_over_wss_trusting_caddys_local_ca(front: Front) -> None:
    async with front.chat(origin=front.url) as chat:
        ready = await chat.hello()
        text, events = await chat.ask("Hello through Caddy")
        assert "Hello through Caddy" in text
        assert events[-1]["finish_reason"] == "stop"
    # The reply is stored: a new connection sees it in the history.
    async with front.chat(origin=front.url) as chat:
        again = await chat.hello(ready["conversation_id"])
        assert [m["role"] for m in again["history"]][-2:] == ["user", "assistant"]


async def test_page_over_https_compressed_with_the_gateways_csp(front: Front) -> None:
    status, headers, body = await front.get("/", **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Encoding"] == "gzip"
    assert b"<html" in gzip.decompress(body).lower()
    csp = headers["Content-Security-Policy"]  # the gateway's, passed through untouched
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "connect-src 'self';" in csp, "behind Caddy the page talks to its own origin"
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "Server" not in headers
    status, headers, body = await front.get("/config.json")
    assert status == 200 and orjson.loads(body)["ws_url"] is None, "same origin: wss://SITE/chat"
    status, _, _ = await front.get("/healthz")
    assert status == 200
    status, _, _ = await front.get("/metrics")
    assert status == 404, "metrics stay private: scraped on the host, not through Caddy"


async def test_gateway_sees_the_client_address_not_a_forged_one(front: Front) -> None:
    async with front.chat(origin=front.url) as chat:
        await chat.hello()
    opened = await front.next_event("connection_opened")
    assert opened["client_ip"] == "127.0.0.1"
    # A client-sent X-Forwarded-For is replaced by Caddy with the real peer.
    async with front.chat(origin=front.url, additional_headers={"X-Forwarded-For": "203.0.113.9"}) as chat:
        await chat.hello()
    opened = await front.next_event("connection_opened")
    assert opened["client_ip"] == "127.0.0.1"


async def test_origin_allow_list_behind_caddy(front: Front) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with front.chat(origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        async with front.chat(origin=f"http://localhost:{front.caddy.https_port}"):
            pass
    async with front.chat(origin=front.url) as chat:
        await chat.hello()


async def test_idle_websocket_outlives_idle_timeouts_while_pings_flow(front: Front) -> None:
    # The gateway pings every second and closes a socket whose pong is late; Caddy
    # closes idle kept-alive HTTP connections after CADDY_IDLE s. Neither may cut an
    # idle WebSocket whose pings flow. The client sends no pings of its own.
    async with front.chat(origin=front.url, ping_interval=None) as chat:
        await chat.hello()
        await asyncio.sleep(CADDY_IDLE + 3)  # a bounded number of ping intervals
        assert chat.ws.close_code is None
        await chat.send(type="ping")
        await chat.expect("pong")
        text, _ = await chat.ask("still there?", msg_id="m2")
        assert "still there?" in text


async def test_caddy_reload_closes_websockets_with_1001_and_clients_resume(front: Front) -> None:
    # Caddy 2.6 closes proxied WebSockets when its configuration is reloaded
    # (docs/operations.md): the client reconnects and finds its conversation.
    async with front.chat(origin=front.url) as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.ask("before the reload")
        await asyncio.to_thread(front.caddy.reload)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(chat.ws.recv(), TIMEOUT)
        # Caddy writes its own close frame (1001) into the stream without stopping the copy
        # first (writeCloseControl in its reverseproxy, "TODO: ensure we are the exclusive
        # writer"): landing inside a frame it is relaying (a ping), it reads as 1002.
        assert chat.ws.close_code in (1001, 1002)
    async with front.chat(origin=front.url) as chat:
        ready = await chat.hello(conversation_id)
        assert any("before the reload" in m.get("content", "") for m in ready["history"])
        text, _ = await chat.ask("after the reload", msg_id="m2")
        assert "after the reload" in text
    # The gateway logs the cut connection quietly: no warning, no traceback.
    await front.next_event("connection_closed")
    noisy = [line for line in front.gateway.lines if line.get("level") in ("warning", "error")]
    assert not noisy, noisy
