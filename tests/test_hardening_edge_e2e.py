"""Hardening at the edges, against real listeners on loopback.

- Signals during the drain (a real ``gateway serve`` process): a second SIGTERM and a
  SIGHUP are ignored and the reply in flight still finishes and is stored; a second
  SIGINT hurries the drain, which still stores what was streamed, and exits 0.
- The HTTP listener's ``[server] http_idle_timeout``: a connection that sends nothing,
  only part of its headers, or its headers a byte at a time, is closed.
- The static directory index: ``dir/index.html`` may not be a symlink out of the root.
- Repeated headers on the WebSocket handshake: Origin and Authorization are refused
  with 400 (not a 500 and an error log); Sec-WebSocket-Protocol may repeat.
- X-Forwarded-For: only a parsed IP address is ever logged as ``client_ip``.
- Host: ``/config.json`` and the page's CSP never name a Host the gateway does not own.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import itertools
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from conftest import TIMEOUT, Chat, Process, StartGateway, make_config, openai_env
from fakeupstream import FakeUpstream, Pause, Script, openai_sse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

import gateway
from gateway.clientip import Networks, client_ip, parse_networks
from gateway.errors import ConfigError

Spawn = Callable[..., Any]
RunCli = Callable[..., subprocess.CompletedProcess[str]]
LOOPBACK = parse_networks(["127.0.0.0/8", "::1"])
# Child processes run the gateway package these tests imported, wherever it is installed.
SAME_CODE = {"PYTHONPATH": str(Path(gateway.__file__).resolve().parent.parent)}


# --------------------------------------------------------------------------- helpers


async def _open_chat(url: str, **kwargs: Any) -> tuple[ClientConnection, Chat]:
    ws = await connect(url, subprotocols=[Subprotocol("chat.v1")], open_timeout=TIMEOUT, **kwargs)
    return ws, Chat(ws)


def _stored_reply(run_cli: RunCli, tmp_path: Path, conversation_id: str) -> dict[str, Any]:
    """The conversation's last message as ``gateway conversations export`` prints it."""
    env = {"GATEWAY_STATE_DIR": str(tmp_path / "state"), **SAME_CODE}
    exported = run_cli("conversations", "export", conversation_id, env=env)
    assert exported.returncode == 0, exported.stderr
    message: dict[str, Any] = orjson.loads(exported.stdout)["messages"][-1]
    return message


def _errors(proc: Process) -> list[dict[str, Any]]:
    return [line for line in proc.lines if line.get("level") in ("error", "critical")]


async def _paused_reply(
    spawn: Spawn, upstream: FakeUpstream, gate: asyncio.Event
) -> tuple[Process, ClientConnection, Chat, str]:
    """A process with a long drain and a reply in flight: "before " streamed, the rest behind ``gate``."""
    upstream.enqueue(
        Script([openai_sse(["before "], finish=None, usage=None, done=False), Pause(gate), openai_sse(["after"])])
    )
    proc = await spawn({**openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"), "GATEWAY_DRAIN_TIMEOUT": "60",
                        **SAME_CODE})
    ws, chat = await _open_chat(proc.ws_url)
    conversation_id = (await chat.hello())["conversation_id"]
    await chat.send(type="message", id="m1", content="go")
    await chat.expect("reply.start")
    assert (await chat.expect("reply.delta"))["text"] == "before "
    return proc, ws, chat, conversation_id


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes; fails if it is still open after TIMEOUT."""
    received = b""

    async def read() -> None:
        nonlocal received
        while chunk := await reader.read(65536):
            received += chunk
            assert len(received) < 1 << 20

    try:
        await asyncio.wait_for(read(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {TIMEOUT} s")
    return received


def _upgrade(*headers: tuple[str, str], path: str = "/chat") -> bytes:
    """A WebSocket opening handshake with ``headers`` added as given (repeats allowed)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _handshake(ws_url: str, request: bytes) -> tuple[int, list[tuple[str, str]]]:
    """Send a raw handshake; return the response's status and headers."""
    url = urlsplit(ws_url)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.wait_for(asyncio.open_connection(url.hostname, url.port), TIMEOUT)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    finally:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (h.partition(":") for h in header_lines if h)]
    return int(status_line.split(" ", 2)[1]), headers


async def _get(url: str, host: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Host": host}, allow_redirects=False) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def _ws_url_for(http_url: str, host: str) -> str | None:
    status, _, body = await _get(http_url + "/config.json", host)
    assert status == 200, (host, status)
    ws_url: str | None = orjson.loads(body)["ws_url"]
    return ws_url


def _connect_src(csp: str) -> str:
    return next(d for d in csp.split(";") if d.strip().startswith("connect-src"))


# --------------------------------------------------------------------------- D4 signals during the drain


async def test_second_sigterm_and_sighup_during_drain_are_ignored_and_the_reply_finishes(
    spawn: Spawn, upstream: FakeUpstream, run_cli: RunCli, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    proc, ws, chat, conversation_id = await _paused_reply(spawn, upstream, gate)
    proc.proc.send_signal(signal.SIGTERM)
    await proc.wait_for_event("drain_started")
    proc.proc.send_signal(signal.SIGTERM)
    ignored = await proc.wait_for_event("second_signal_ignored")
    assert ignored["signal"] == "SIGTERM"
    proc.proc.send_signal(signal.SIGHUP)
    assert (await proc.wait_for_event("reload_ignored"))["reason"] == "draining"
    gate.set()
    rest, events = await chat.until_done()
    assert rest == "after" and events[-1]["finish_reason"] == "stop"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1001
    assert await proc.finish() == 0
    assert not any(line["event"] in ("reload_requested", "config_reloaded") for line in proc.lines)
    stored = _stored_reply(run_cli, tmp_path, conversation_id)
    assert (stored["role"], stored["content"], stored["finish_reason"]) == ("assistant", "before after", "stop")


async def test_second_sigint_hurries_the_drain_and_stores_the_partial_reply(
    spawn: Spawn, upstream: FakeUpstream, run_cli: RunCli, tmp_path: Path
) -> None:
    gate = asyncio.Event()  # never set: only the second SIGINT can end this 60 s drain
    proc, ws, chat, conversation_id = await _paused_reply(spawn, upstream, gate)
    proc.proc.send_signal(signal.SIGINT)
    await proc.wait_for_event("drain_started")
    proc.proc.send_signal(signal.SIGINT)
    assert (await proc.wait_for_event("drain_hurried"))["signal"] == "SIGINT"
    error = await chat.expect("error")
    assert error["code"] == "overloaded" and error["retryable"] is True
    assert (await chat.expect("reply.done"))["finish_reason"] == "error"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1001
    assert await proc.finish() == 0
    await asyncio.wait_for(upstream.requests[0].disconnected.wait(), TIMEOUT)
    finished = next(line for line in proc.lines if line["event"] == "reply_finished")
    assert finished["finish_reason"] == "error" and finished["chars"] == len("before ")
    stored = _stored_reply(run_cli, tmp_path, conversation_id)
    assert (stored["role"], stored["content"], stored["finish_reason"]) == ("assistant", "before ", "error")


# --------------------------------------------------------------------------- D6 HTTP idle / header timeout


def test_http_idle_timeout_defaults_to_15_and_is_at_least_1(tmp_path: Path) -> None:
    assert make_config(tmp_path).server.http_idle_timeout == 15
    assert make_config(tmp_path, toml="[server]\nhttp_idle_timeout = 1\n").server.http_idle_timeout == 1
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, toml="[server]\nhttp_idle_timeout = 0.5\n")
    assert info.value.key == "server.http_idle_timeout"


@pytest.mark.parametrize(
    ("sent", "answered"),
    [
        (b"", False),  # connects and says nothing
        (b"GET / HTTP/1.1\r\nHost: x\r\n", False),  # headers never finished
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),  # one request, then idle keep-alive
    ],
    ids=["silent", "incomplete-headers", "idle-after-request"],
)
async def test_http_connection_is_closed_after_idle_timeout(
    start_gateway: StartGateway, sent: bytes, answered: bool
) -> None:
    gw = await start_gateway(toml="[server]\nhttp_idle_timeout = 1\n")
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.gateway.http_port), TIMEOUT)
    try:
        writer.write(sent)
        received = await _read_to_eof(reader)
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200 ") if answered else received == b""


async def test_headers_dripped_a_byte_at_a_time_do_not_keep_the_connection(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml="[server]\nhttp_idle_timeout = 1\n")
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.gateway.http_port), TIMEOUT)

    async def drip() -> None:  # slowloris: a header byte every 50 ms, never the blank line
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for byte in itertools.cycle(b"X-Drip: a\r\n"):
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        assert await _read_to_eof(reader) == b""
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()


# --------------------------------------------------------------------------- D10 directory index symlinks


async def test_directory_index_symlink_out_of_the_root_is_refused(start_gateway: StartGateway, tmp_path: Path) -> None:
    static = tmp_path / "static"
    (static / "sub").mkdir(parents=True)
    (static / "inner").mkdir()
    (static / "index.html").write_text("<html>home</html>")
    (static / "real.txt").write_text("inside the root")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("TOP-SECRET-VALUE")
    (static / "sub" / "index.html").symlink_to("../../outside/secret.txt")
    (static / "inner" / "index.html").symlink_to("../index.html")
    (static / "alias.txt").symlink_to("real.txt")
    gw = await start_gateway(env={"GATEWAY_STATIC_DIR": str(static)})
    host = f"127.0.0.1:{gw.gateway.http_port}"
    for path in ("/sub", "/sub/", "/sub/index.html"):
        status, _, body = await _get(gw.http_url + path, host)
        assert status == 404, (path, status)
        assert b"TOP-SECRET" not in body, path
    status, _, body = await _get(gw.http_url + "/alias.txt", host)
    assert (status, body) == (200, b"inside the root"), "a symlink inside the root still works"
    status, _, body = await _get(gw.http_url + "/inner", host)
    assert (status, body) == (200, b"<html>home</html>"), "an index symlink inside the root still works"


# --------------------------------------------------------------------------- D11 repeated handshake headers


async def test_two_origin_headers_are_a_400_not_a_500(spawn: Spawn) -> None:
    proc = await spawn(SAME_CODE)
    own = proc.http_url.rstrip("/")
    status, _ = await _handshake(proc.ws_url, _upgrade(("Origin", own), ("Origin", "https://evil.example")))
    assert status == 400
    status, headers = await _handshake(proc.ws_url, _upgrade(("Origin", own), ("Sec-WebSocket-Protocol", "chat.v1")))
    assert status == 101 and ("sec-websocket-protocol", "chat.v1") in headers, "one Origin is still fine"
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    refused = [line for line in proc.lines if line["event"] == "handshake_refused"]
    assert [(r["reason"], r["status"]) for r in refused] == [("duplicate_header", 400)]
    assert not _errors(proc), _errors(proc)


async def test_two_authorization_headers_are_a_400(spawn: Spawn, tmp_path: Path) -> None:
    token = "tok-0123456789abcdef"
    (tmp_path / "tokens").write_text(f"{token}\n")
    proc = await spawn({"GATEWAY_AUTH_TOKENS_FILE": str(tmp_path / "tokens"), **SAME_CODE})
    bearer = ("Authorization", f"Bearer {token}")
    status, _ = await _handshake(proc.ws_url, _upgrade(bearer, ("Authorization", "Bearer not-the-token-000000")))
    assert status == 400
    status, _ = await _handshake(proc.ws_url, _upgrade(bearer, bearer))
    assert status == 400, "even the same valid token twice"
    status, _ = await _handshake(proc.ws_url, _upgrade(bearer))
    assert status == 101, "one valid Authorization header opens plain mode"
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    assert not _errors(proc), _errors(proc)


async def test_repeated_subprotocol_header_negotiates_chat_v1(spawn: Spawn) -> None:
    proc = await spawn(SAME_CODE)
    request = _upgrade(("Sec-WebSocket-Protocol", "x"), ("Sec-WebSocket-Protocol", "chat.v1"))
    status, headers = await _handshake(proc.ws_url, request)
    assert status == 101
    assert [v for n, v in headers if n == "sec-websocket-protocol"] == ["chat.v1"]
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    assert not _errors(proc), _errors(proc)


# --------------------------------------------------------------------------- D12 X-Forwarded-For


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("127.0.0.1", "<img src=x onerror=alert(1)>", LOOPBACK, "127.0.0.1"),
        ("127.0.0.1", "203.0.113.9, <script>", LOOPBACK, "127.0.0.1"),
        ("127.0.0.1", "198.51.100.7, 127.0.0.2, <x>", LOOPBACK, "127.0.0.1"),
        ("127.0.0.1", "198.51.100.7:8080", LOOPBACK, "127.0.0.1"),
        ("127.0.0.1", "x" * 10_000, LOOPBACK, "127.0.0.1"),
        ("127.0.0.1", "::ffff:198.51.100.7", LOOPBACK, "198.51.100.7"),
        ("127.0.0.1", "[2001:db8::7]", LOOPBACK, "2001:db8::7"),
        ("::1", " [2001:DB8::7] ", LOOPBACK, "2001:db8::7"),
        ("::ffff:127.0.0.1", None, LOOPBACK, "127.0.0.1"),
        ("::ffff:127.0.0.1", "::ffff:198.51.100.7, ::ffff:127.0.0.3", LOOPBACK, "198.51.100.7"),
        ("not-an-address", "198.51.100.7", LOOPBACK, None),
    ],
    ids=["html", "garbage-right-most", "garbage-behind-trusted-hop", "with-port", "huge", "v4-mapped-hop",
         "bracketed-v6", "bracketed-v6-via-v6-proxy", "v4-mapped-peer", "v4-mapped-chain", "garbage-peer"],
)
def test_client_ip_is_always_a_parsed_address(
    peer: str, forwarded: str | None, trusted: Networks, expected: str | None
) -> None:
    assert client_ip(peer, forwarded, trusted) == expected


def _is_ip(text: str | None) -> bool:
    try:
        return text is not None and str(ipaddress.ip_address(text)) == text
    except ValueError:
        return False


def test_client_ip_never_returns_what_is_not_an_ip() -> None:
    hostile = ["", ",", " , ", "\t", "unknown", "_hidden", "1.2.3", "999.1.1.1", "[::1", "fe80::1%eth0]",
               "2001:db8::1%<img src=x onerror=alert(1)>", "::1%" + "x" * 5000, "fe80::1%eth0",
               "1.2.3.4\r\nX-Evil: 1", "\u202e1.1.1.1", "0x7f.1", "a" * 200, "203.0.113.1 203.0.113.2"]
    for garbage in hostile:
        for header in (garbage, f"198.51.100.7, {garbage}", f"{garbage}, 127.0.0.1"):
            got = client_ip("127.0.0.1", header, LOOPBACK)
            assert _is_ip(got), (header, got)


async def test_forwarded_for_garbage_is_not_logged(spawn: Spawn) -> None:
    proc = await spawn(SAME_CODE)
    for forwarded in ("<img src=x onerror=alert(1)>", "203.0.113.9, <script>", "198.51.100.7"):
        ws, chat = await _open_chat(proc.ws_url, additional_headers={"X-Forwarded-For": forwarded})
        await chat.hello()
        await ws.close()
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    opened = [line["client_ip"] for line in proc.lines if line["event"] == "connection_opened"]
    assert opened == ["127.0.0.1", "127.0.0.1", "198.51.100.7"]
    logged = orjson.dumps(proc.lines)
    assert b"onerror" not in logged and b"<script>" not in logged


# --------------------------------------------------------------------------- D13 Host


async def test_foreign_host_is_not_reflected_in_config_or_csp(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    for host in ("evil.example", f"evil.example:{gw.gateway.http_port}", "EVIL.example"):
        ws_url = await _ws_url_for(gw.http_url, host)
        assert ws_url == f"ws://127.0.0.1:{gw.gateway.ws_port}/chat", (host, ws_url)
        status, headers, _ = await _get(gw.http_url + "/", host)
        assert status == 200
        connect_src = _connect_src(headers["Content-Security-Policy"])
        assert "evil" not in connect_src.lower(), (host, connect_src)
        assert f"ws://127.0.0.1:{gw.gateway.ws_port}" in connect_src


async def test_ip_hosts_are_named_back_only_when_they_are_the_gateway_s_own(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    ws = gw.gateway.ws_port
    for host in ("[::1%x;frame-ancestors *]", "[fe80::1%25evil.example]", "203.0.113.66", "[2001:db8::7]"):
        ws_url = await _ws_url_for(gw.http_url, host)
        assert ws_url == f"ws://127.0.0.1:{ws}/chat", (host, ws_url)
        _, headers, _ = await _get(gw.http_url + "/", host)
        csp = headers["Content-Security-Policy"]
        assert csp.count("frame-ancestors") == 1 and "%" not in csp and "203.0.113" not in csp, (host, csp)
    assert await _ws_url_for(gw.http_url, "[::1]") == f"ws://[::1]:{ws}/chat"


async def test_own_and_allowed_hosts_are_kept(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    http, ws = gw.gateway.http_port, gw.gateway.ws_port
    assert await _ws_url_for(gw.http_url, f"127.0.0.1:{http}") == f"ws://127.0.0.1:{ws}/chat"
    assert await _ws_url_for(gw.http_url, f"localhost:{http}") == f"ws://localhost:{ws}/chat"
    _, headers, _ = await _get(gw.http_url + "/", f"localhost:{http}")
    assert f"ws://localhost:{ws}" in _connect_src(headers["Content-Security-Policy"]), "the page still works"

    proxied = await start_gateway(toml='[server]\nallowed_origins = ["https://chat.example.com"]\n')
    http, ws = proxied.gateway.http_port, proxied.gateway.ws_port
    assert await _ws_url_for(proxied.http_url, "chat.example.com") == f"ws://chat.example.com:{ws}/chat"
    assert await _ws_url_for(proxied.http_url, "evil.example") == f"ws://127.0.0.1:{ws}/chat"
    _, headers, _ = await _get(proxied.http_url + "/", "evil.example")
    assert "evil.example" not in _connect_src(headers["Content-Security-Policy"])
