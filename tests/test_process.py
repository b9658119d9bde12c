"""The gateway as a user runs it: a child process configured by env vars and flags."""

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

import aiohttp
import orjson
import pytest
from conftest import TIMEOUT, Chat, openai_env
from fakeupstream import FakeUpstream, Pause, Script, Stall, openai_sse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway import __version__


async def _status(url: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            return resp.status


async def test_serve_with_env_vars_and_chat(spawn: Callable[..., Any]) -> None:
    proc = await spawn({"GATEWAY_LOG_LEVEL": "info"}, "--config", "/dev/null")
    assert proc.ws_url.startswith("ws://127.0.0.1:") and proc.http_url.startswith("http://127.0.0.1:")
    assert await _status(proc.http_url + "healthz") == 200
    async with connect(proc.ws_url, subprotocols=["chat.v1"]) as ws:
        chat = Chat(ws)
        ready = await chat.hello()
        assert ready["model"] == "demo"
        text, _ = await chat.ask("hello from a user")
    assert "hello from a user" in text
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    events = [line["event"] for line in proc.lines]
    assert "connection_opened" in events and "reply_finished" in events and events[-1] == "gateway_stopped"


async def test_console_script_serves_too(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("gateway")
    env = {"PATH": os.environ["PATH"], "GATEWAY_WS_ADDR": "127.0.0.1:0", "GATEWAY_HTTP_ADDR": "127.0.0.1:0",
           "GATEWAY_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(str(exe), "serve", env=env, cwd=tmp_path, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT))
        assert line["event"] == "gateway_started"
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0


async def test_sigterm_drains_in_flight_reply_then_closes_1001(
    spawn: Callable[..., Any], upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([openai_sse(["before "], finish=None, usage=None, done=False), Pause(gate), openai_sse(["after"])]))
    proc = await spawn({**openai_env(upstream), "GATEWAY_DRAIN_TIMEOUT": "30"})
    async with connect(proc.ws_url, subprotocols=["chat.v1"]) as ws:
        chat = Chat(ws)
        await chat.hello()
        await chat.send(type="message", id="m1", content="go")
        await chat.expect("reply.start")
        assert (await chat.expect("reply.delta"))["text"] == "before "
        proc.proc.send_signal(signal.SIGTERM)
        await proc.wait_for_event("drain_started")
        assert await _status(proc.http_url + "readyz") == 503
        with pytest.raises(OSError):
            async with connect(proc.ws_url, open_timeout=TIMEOUT):
                pass
        await chat.send(type="ping", id=1)
        assert await chat.expect("pong") == {"type": "pong", "id": 1}, "open connections stay usable while draining"
        gate.set()
        rest, events = await chat.until_done()
        assert rest == "after" and events[-1]["finish_reason"] == "stop"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1001
    assert await proc.finish() == 0


async def test_drain_timeout_stores_partial_and_exits_zero(spawn: Callable[..., Any], upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["partial"], finish=None, usage=None, done=False), Stall()]))
    proc = await spawn({**openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"), "GATEWAY_DRAIN_TIMEOUT": "0.2"})
    async with connect(proc.ws_url, subprotocols=["chat.v1"]) as ws:
        chat = Chat(ws)
        await chat.hello()
        await chat.send(type="message", id="m1", content="go")
        await chat.expect("reply.start")
        await chat.expect("reply.delta")
        proc.proc.send_signal(signal.SIGTERM)
        error = await chat.expect("error")
        assert error["code"] == "overloaded" and error["retryable"] is True
        done = await chat.expect("reply.done")
        assert done["finish_reason"] == "error"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1001
    assert await proc.finish() == 0
    await asyncio.wait_for(upstream.requests[0].disconnected.wait(), TIMEOUT)
    finished = next(line for line in proc.lines if line["event"] == "reply_finished")
    assert finished["finish_reason"] == "error" and finished["chars"] == len("partial")


async def test_port_in_use_exits_3(spawn: Callable[..., Any]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = await spawn({"GATEWAY_WS_ADDR": f"127.0.0.1:{port}", "GATEWAY_LOG_FORMAT": "json"}, wait_ready=False)
        assert await proc.finish() == 3
    failed = [line for line in proc.lines if line.get("event") == "startup_failed"]
    assert failed and "Traceback" not in str(proc.lines)
    # Reported once, and alone: no gateway_stopped for a gateway that never started.
    assert len(failed) == 1 and failed[0]["exit_code"] == 3 and failed[0]["errno"] is not None
    assert "gateway_stopped" not in [line.get("event") for line in proc.lines]


def test_version(run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gateway {__version__}"


def test_check_config_masks_secrets(run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-a-file-123456\n")
    result = run_cli("check-config", env={"GATEWAY_PROVIDER": "openai", "GATEWAY_API_KEY_FILE": str(key_file),
                                          "GATEWAY_MODEL": "gpt-x"})
    assert result.returncode == 0, result.stderr
    assert "sk-from-a-file" not in result.stdout and "# api_key = (set, masked)" in result.stdout
    assert 'model = "gpt-x"' in result.stdout and 'name = "openai"' in result.stdout


@pytest.mark.parametrize(
    ("env", "toml", "needle"),
    [
        ({"GATEWAY_WS_ADDR": "nonsense"}, "", "GATEWAY_WS_ADDR"),
        ({"GATEWAY_PROVIDER": "claude"}, "", "GATEWAY_PROVIDER"),
        ({"GATEWAY_DRAIN_TIMEOUT": "-1"}, "", "GATEWAY_DRAIN_TIMEOUT"),
        ({"GATEWAY_MAX_MESSAGE_BYTES": "lots"}, "", "GATEWAY_MAX_MESSAGE_BYTES"),
        ({}, "[server]\nws_adr = '1.2.3.4:5'\n", "server.ws_adr"),
        ({}, "[provider]\nupstream_timeout = 'soon'\n", "provider.upstream_timeout"),
        ({}, "[nope]\n", "nope"),
        ({}, "this is not toml", "not valid TOML"),
        ({"GATEWAY_PROVIDER": "dashscope"}, "", "provider.api_key"),
    ],
)
def test_bad_config_exits_2_with_one_line(
    run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path,
    env: dict[str, str], toml: str, needle: str,
) -> None:
    args = ["check-config"]
    if toml:
        (tmp_path / "g.toml").write_text(toml)
        args += ["--config", str(tmp_path / "g.toml")]
    for command in (args, ["serve", *args[1:]]):
        result = run_cli(*command, env=env)
        assert result.returncode == 2
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    result = run_cli("serve", "--config", "/nonexistent/gateway.toml")
    assert result.returncode == 2 and "cannot read" in result.stderr


async def test_the_garbage_collector_is_tuned(spawn: Callable[..., Any]) -> None:
    """Young collections every 50,000 allocations by default (docs/performance.md), as
    configured, or Python's own 700 with 0; the chat works in each."""
    for env, threshold in (({}, 50_000), ({"GATEWAY_GC_THRESHOLD": "12345"}, 12_345), ({"GATEWAY_GC_THRESHOLD": "0"}, 700)):
        proc = await spawn(env)
        assert (await proc.wait_for_event("gateway_started"))["gc_threshold"] == threshold
        async with connect(proc.ws_url, subprotocols=["chat.v1"]) as ws:
            text, _ = await Chat(ws).ask(f"collected at {threshold}")
        assert f"collected at {threshold}" in text
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.finish() == 0


def test_a_bad_gc_threshold_is_refused(run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    result = run_cli("serve", env={"GATEWAY_GC_THRESHOLD": "-1"})
    assert result.returncode == 2 and "GATEWAY_GC_THRESHOLD: must be between 0 and" in result.stderr


async def test_uvloop_can_be_chosen(spawn: Callable[..., Any]) -> None:
    pytest.importorskip("uvloop", reason="uvloop is not installed (the test extras install it)")
    proc = await spawn({"GATEWAY_EVENT_LOOP": "uvloop"})
    started = await proc.wait_for_event("gateway_started")
    assert started["event_loop"] == "uvloop"
    async with connect(proc.ws_url, subprotocols=["chat.v1"]) as ws:
        text, _ = await Chat(ws).ask("on uvloop")
    assert "on uvloop" in text
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    default = await spawn()  # auto: uvloop, installed with the test extras
    assert (await default.wait_for_event("gateway_started"))["event_loop"] == "uvloop"
    default.proc.send_signal(signal.SIGTERM)
    assert await default.finish() == 0
    plain = await spawn({"GATEWAY_EVENT_LOOP": "asyncio"})
    assert (await plain.wait_for_event("gateway_started"))["event_loop"] == "asyncio"
