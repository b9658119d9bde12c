"""A real gateway process on a real PostgreSQL: the CLI, and a password that never shows.
(Restarts and a crash mid-reply run on both durable stores in test_durability_e2e.py.)"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pgserver import PASSWORD, PgServer
from test_durability_e2e import _open_chat

Spawn = Callable[..., Any]


def _env(url: str, **extra: str) -> dict[str, str]:
    return {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url, **extra}


async def test_export_and_prune_work_on_postgres(
    spawn: Spawn, run_cli: Callable[..., Any], pg_url: str
) -> None:
    proc = await spawn({**_env(pg_url), "GATEWAY_PROVIDER": "demo"}, "--config", "/dev/null")
    ws, chat = await _open_chat(proc.ws_url)
    conversation_id = (await chat.hello())["conversation_id"]
    await chat.send(type="message", id="u1", content="hello there")
    await chat.until_done()
    await ws.close()
    exported = run_cli("conversations", "export", conversation_id, env=_env(pg_url))
    assert exported.returncode == 0, exported.stderr
    document = orjson.loads(exported.stdout)
    assert [m["role"] for m in document["messages"]] == ["user", "assistant"]
    assert document["messages"][0]["content"] == "hello there"
    pruned = run_cli("conversations", "prune", "--older-than", "1d", env=_env(pg_url))
    assert (pruned.returncode, pruned.stdout.strip()) == (0, "deleted 0 conversation(s) idle for more than 1d")
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0


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
    failed = await spawn(env, wait_ready=False)
    assert await failed.finish() == 3  # may pass by itself: systemd tries again
    stopped = next(line for line in failed.lines if line["event"] == "startup_failed")
    assert "password authentication failed" in stopped["error"]
    everything = "\n".join(orjson.dumps(line).decode() for line in (*proc.lines, *failed.lines))
    for output in (everything, shown.stdout, shown.stderr):
        assert PASSWORD not in output and "a-wrong-password-123" not in output
