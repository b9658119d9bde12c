"""The systemd protocols, spoken to sockets the tests own: sd_notify, the watchdog,
socket activation (LISTEN_FDS), and reload on SIGHUP. No systemd needed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Chat, Process, StartGateway
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.clientip import client_ip, parse_networks

Spawn = Callable[..., Any]


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def until(self, needle: str) -> str:
        """Wait for a datagram containing ``needle`` (bounded)."""
        loop = asyncio.get_running_loop()
        for seen in self.messages:
            if needle in seen:
                return seen
        while True:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), TIMEOUT)
            self.messages.append(data.decode())
            if needle in self.messages[-1]:
                return self.messages[-1]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Any:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.sock.close()


async def test_ready_status_watchdog_stopping(spawn: Spawn, notify_socket: NotifySocket) -> None:
    proc = await spawn({"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "400000"})
    ready = await notify_socket.until("READY=1")
    assert "STATUS=serving: 0 connections, 0 replies in flight" in ready
    assert f"MAINPID={proc.proc.pid}" in ready
    await notify_socket.until("WATCHDOG=1")
    async with connect(proc.ws_url, subprotocols=["chat.v1"]) as ws:
        await Chat(ws).hello()
        await notify_socket.until("STATUS=serving: 1 connections")
    proc.proc.send_signal(signal.SIGTERM)
    stopping = await notify_socket.until("STOPPING=1")
    assert "STATUS=draining" in stopping
    assert await proc.finish() == 0


async def test_without_notify_socket_nothing_is_sent(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    assert not gw.gateway._notifier.enabled  # type: ignore[attr-defined]


async def test_watchdog_for_another_pid_is_ignored(spawn: Spawn, notify_socket: NotifySocket) -> None:
    proc = await spawn({"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    await notify_socket.until("READY=1")
    async with connect(proc.ws_url, subprotocols=["chat.v1"]) as ws:
        await Chat(ws).hello()
        await notify_socket.until("STATUS=serving: 1 connections")
    assert not any("WATCHDOG=1" in m for m in notify_socket.messages)


def _listening(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


async def test_socket_activation_uses_inherited_sockets(tmp_path: Path) -> None:
    ws_sock, http_sock = _listening(), _listening()
    ws_port, http_port = ws_sock.getsockname()[1], http_sock.getsockname()[1]
    # fds 3 and 4 in the child, as systemd passes them; LISTEN_PID must be the child's own pid.
    script = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.executable, [sys.executable, '-m', 'gateway', 'serve'])"
    )
    env = {"PATH": os.environ["PATH"], "LISTEN_FDS": "2", "LISTEN_FDNAMES": "ws:http",
           "GATEWAY_STATE_DIR": str(tmp_path / "state"), "GATEWAY_LOG_FORMAT": "json",
           "GATEWAY_WS_ADDR": "127.0.0.1:1", "GATEWAY_HTTP_ADDR": "127.0.0.1:2"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(ws_sock.fileno()), str(http_sock.fileno()),
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, pass_fds=(ws_sock.fileno(), http_sock.fileno()),
    )
    process = Process(proc)
    try:
        started = await process.wait_for_event("gateway_started")
        assert started["socket_activated"] is True
        assert started["ws_url"].endswith(f":{ws_port}/chat") and started["http_url"].endswith(f":{http_port}/")
        async with connect(f"ws://127.0.0.1:{ws_port}/chat", subprotocols=["chat.v1"]) as ws:
            assert (await Chat(ws).hello())["type"] == "ready"
        proc.send_signal(signal.SIGTERM)
        assert await process.finish() == 0
        # The listening sockets outlive the process (systemd keeps them): a connection
        # attempt during a restart waits in the backlog instead of being refused.
        probe = socket.create_connection(("127.0.0.1", ws_port), timeout=TIMEOUT)
        probe.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        ws_sock.close()
        http_sock.close()


async def test_sighup_reloads_what_can_change_live(spawn: Spawn, tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text('[provider]\ndemo_delay_ms = 0\nmodel = "demo"\n')
    proc = await spawn({}, "--config", str(toml))
    async with connect(proc.ws_url, subprotocols=["chat.v1"]) as ws:
        chat = Chat(ws)
        conversation_id = (await chat.hello())["conversation_id"]
        with pytest.raises(InvalidStatus):
            async with connect(proc.ws_url, origin="https://chat.example.com"):
                pass
        toml.write_text(
            '[server]\nallowed_origins = ["https://chat.example.com"]\ncompression = true\n'
            '[provider]\ndemo_delay_ms = 0\nmodel = "demo-2"\n[log]\nlevel = "debug"\n'
        )
        proc.proc.send_signal(signal.SIGHUP)
        reloaded = await proc.wait_for_event("config_reloaded")
        assert reloaded["model"] == "demo-2"
        restart = next(line for line in proc.lines if line["event"] == "reload_needs_restart")
        assert restart["settings"] == ["server.compression"]
        async with connect(proc.ws_url, origin="https://chat.example.com", subprotocols=["chat.v1"]) as ws2:
            assert (await Chat(ws2).hello(conversation_id))["model"] == "demo-2"
        text, _ = await chat.ask("still here?")
        assert "still here?" in text, "the open connection survived the reload"
        toml.write_text("[server]\nnonsense = 1\n")
        proc.proc.send_signal(signal.SIGHUP)
        failed = await proc.wait_for_event("reload_failed")
        assert "server.nonsense" in failed["error"]
        await chat.send(type="ping")
        await chat.expect("pong")
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0


@pytest.mark.parametrize(
    ("peer", "header", "trusted", "expected"),
    [
        ("127.0.0.1", "203.0.113.7", ["127.0.0.0/8"], "203.0.113.7"),
        ("127.0.0.1", "198.51.100.1, 203.0.113.7", ["127.0.0.0/8"], "203.0.113.7"),
        ("127.0.0.1", "203.0.113.7, 10.0.0.2", ["127.0.0.0/8", "10.0.0.0/8"], "203.0.113.7"),
        ("192.0.2.9", "203.0.113.7", ["127.0.0.0/8"], "192.0.2.9"),
        ("127.0.0.1", None, ["127.0.0.0/8"], "127.0.0.1"),
        ("127.0.0.1", "203.0.113.7", [], "127.0.0.1"),
        ("::ffff:127.0.0.1", "2001:db8::1", ["127.0.0.0/8"], "2001:db8::1"),
        ("127.0.0.1", "garbage, 203.0.113.7", ["127.0.0.0/8"], "203.0.113.7"),
    ],
)
def test_client_ip_behind_trusted_proxies(peer: str, header: str | None, trusted: list[str], expected: str) -> None:
    assert client_ip(peer, header, parse_networks(trusted)) == expected


async def test_forwarded_client_ip_is_logged(start_gateway: StartGateway, capsys: pytest.CaptureFixture[str]) -> None:
    gw = await start_gateway()
    async with gw.chat(additional_headers={"X-Forwarded-For": "203.0.113.7"}) as chat:
        await chat.hello()
    gw2 = await start_gateway({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8"})
    async with gw2.chat(additional_headers={"X-Forwarded-For": "203.0.113.8"}) as chat:
        await chat.hello()
    out = capsys.readouterr().out
    assert "client_ip=203.0.113.7" in out or '"client_ip": "203.0.113.7"' in out
    assert "203.0.113.8" not in out, "X-Forwarded-For from an untrusted peer is ignored"
