"""gateway-loadtest against a real gateway process: figures, both protocols, clear failures."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

Spawn = Callable[..., Any]
FAST = "[provider]\ndemo_delay_ms = 1\n"


async def _loadtest(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.loadtest", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"PATH": os.environ["PATH"]},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_json_mode_report(spawn: Spawn, tmp_path: Path) -> None:
    (tmp_path / "g.toml").write_text(FAST)
    proc = await spawn({}, "--config", str(tmp_path / "g.toml"))
    code, out, _ = await _loadtest(proc.ws_url, "-c", "6", "-n", "2", "--ramp", "0.1", "--json")
    report = orjson.loads(out)
    assert code == 0 and report["errors"] == {}
    assert report["connections"]["opened"] == 6 and report["replies"]["completed"] == 12
    assert report["ttft_ms"]["p50"] is not None and report["ttft_ms"]["p99"] >= report["ttft_ms"]["p50"]
    assert report["totals"]["tokens"] > 0 and report["throughput"]["deltas_per_s"] > 0


async def test_plain_mode_and_table(spawn: Spawn, tmp_path: Path) -> None:
    (tmp_path / "g.toml").write_text(FAST)
    proc = await spawn({}, "--config", str(tmp_path / "g.toml"))
    code, out, _ = await _loadtest(proc.ws_url, "-c", "2", "-n", "1", "--protocol", "plain", "--plain-idle", "0.3")
    assert code == 0
    assert "2/2 connections, 2/2 replies" in out and "| time to first delta |" in out


async def test_error_codes_are_counted_and_exit_1(spawn: Spawn, tmp_path: Path) -> None:
    (tmp_path / "g.toml").write_text(FAST + "[limits]\nmax_content_chars = 5\n")
    proc = await spawn({}, "--config", str(tmp_path / "g.toml"))
    code, out, _ = await _loadtest(proc.ws_url, "-c", "2", "-n", "1", "--prompt", "far too long", "--json",
                                   "--reply-timeout", "2")
    assert code == 1 and orjson.loads(out)["errors"]["too_large"] == 2


async def test_unreachable_and_refusing_targets_fail_clearly(spawn: Spawn) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = await _loadtest(f"ws://127.0.0.1:{port}/chat")
    assert code == 2 and "cannot connect" in err and "Traceback" not in err
    proc = await spawn()
    code, _, err = await _loadtest(proc.ws_url, "--origin", "https://evil.example")
    assert code == 2 and "HTTP 403" in err and "Origin" in err
