"""Start-up failures map to the documented exit codes, and the logs (and the store) say
what happened.

Each test failed before (issue 9's list of bugs): a traceback and exit 1 instead of 2,
``gateway_stopped`` before ``startup_failed``, ``conversation_id: null`` and the echoed
close code in ``connection_closed``, the new model named for a reply the old one made.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Chat, openai_env
from fakeupstream import FakeUpstream, Pause, Script, openai_sse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

Spawn = Callable[..., Any]


def _events(proc: Any) -> list[str]:
    return [line.get("event", "") for line in proc.lines]


async def _failed_start(proc: Any) -> dict[str, Any]:
    """The process's exit code is 2 and it said why in one startup_failed line, nothing else."""
    assert await proc.finish() == 2
    failed = [line for line in proc.lines if line.get("event") == "startup_failed"]
    assert len(failed) == 1 and failed[0]["exit_code"] == 2, proc.lines
    assert "Traceback" not in str(proc.lines) and "gateway_stopped" not in _events(proc)
    return failed[0]


async def test_a_database_newer_than_the_code_exits_2(spawn: Spawn, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "conversations.db") as db:
        db.execute("PRAGMA user_version = 99")
    proc = await spawn({"GATEWAY_LOG_FORMAT": "json"}, wait_ready=False)
    failed = await _failed_start(proc)
    assert "schema version 99" in failed["error"]


async def test_a_file_that_is_not_a_database_exits_2(spawn: Spawn, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "conversations.db").write_bytes(b"this is not SQLite" * 100)
    proc = await spawn({"GATEWAY_LOG_FORMAT": "json"}, wait_ready=False)
    failed = await _failed_start(proc)
    assert "conversations.db" in failed["error"]


async def test_uvloop_asked_for_but_missing_exits_2(spawn: Spawn, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "uvloop"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("uvloop is not here")\n')
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH", "")) if p)
    env = {"GATEWAY_LOG_FORMAT": "json", "GATEWAY_EVENT_LOOP": "uvloop", "PYTHONPATH": path}
    proc = await spawn(env, wait_ready=False)
    failed = await _failed_start(proc)
    assert "uvloop" in failed["error"]


async def test_the_default_loop_falls_back_to_asyncio_without_uvloop(spawn: Spawn, tmp_path: Path) -> None:
    """``event_loop = "auto"`` (the default) on an installation without the uvloop extra."""
    shadow = tmp_path / "shadow" / "uvloop"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("uvloop is not here")\n')
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH", "")) if p)
    proc = await spawn({"GATEWAY_LOG_FORMAT": "json", "PYTHONPATH": path})
    assert (await proc.wait_for_event("gateway_started"))["event_loop"] == "asyncio"
    async with connect(proc.ws_url, subprotocols=["chat.v1"], open_timeout=TIMEOUT) as ws:
        text, _ = await Chat(ws).ask("on asyncio")
    assert "on asyncio" in text


async def test_connection_closed_names_the_conversation_and_who_closed(spawn: Spawn) -> None:
    proc = await spawn({"GATEWAY_LOG_FORMAT": "json", "GATEWAY_MAX_MESSAGE_BYTES": "1024"})
    async with connect(proc.ws_url, subprotocols=["chat.v1"], open_timeout=TIMEOUT) as ws:
        conversation_id = (await Chat(ws).hello())["conversation_id"]
    closed = await proc.wait_for_event("connection_closed")
    assert (closed["conversation_id"], closed["code"], closed["closed_by"]) == (conversation_id, 1000, "client")

    proc.lines.clear()
    async with connect(proc.ws_url, subprotocols=["chat.v1"], open_timeout=TIMEOUT) as ws:
        await ws.send("x" * 2000)  # past max_message_bytes: the gateway closes with 1009
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1009
    closed = await proc.wait_for_event("connection_closed")
    assert (closed["code"], closed["closed_by"]) == (1009, "gateway")


async def test_a_reply_is_logged_with_the_model_that_made_it(
    spawn: Spawn, upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    first, rest = openai_sse(["made by m-1"]).split(b"\n\n", 1)
    upstream.enqueue(Script([first + b"\n\n", Pause(gate), rest]))
    toml = tmp_path / "gateway.toml"
    toml.write_text('[provider]\nmodel = "m-1"\n')
    env = {**openai_env(upstream), "GATEWAY_LOG_FORMAT": "json"}
    del env["GATEWAY_MODEL"]
    proc = await spawn(env, "--config", str(toml))
    async with connect(proc.ws_url, subprotocols=["chat.v1"], open_timeout=TIMEOUT) as ws:
        chat = Chat(ws)
        await chat.hello()
        await chat.send(type="message", id="u1", content="which model?")
        await chat.expect("reply.start")
        assert (await upstream.next_request()).json["model"] == "m-1"
        toml.write_text('[provider]\nmodel = "m-2"\n')
        proc.proc.send_signal(signal.SIGHUP)
        assert (await proc.wait_for_event("config_reloaded"))["model"] == "m-2"
        gate.set()
        text, _ = await chat.until_done()
    assert text == "made by m-1"
    finished = await proc.wait_for_event("reply_finished")
    assert (finished["model"], finished["provider"]) == ("m-1", "openai")
    with sqlite3.connect(tmp_path / "state" / "conversations.db") as db:
        stored = db.execute("SELECT model FROM messages WHERE id = ?", (finished["reply_id"],)).fetchone()
    assert stored == ("m-1",), "the stored reply records the model that wrote it"
