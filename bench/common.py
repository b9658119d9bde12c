"""Shared benchmark parts: a fast fake upstream, a gateway process, a load generator.

Everything runs on loopback, is bounded in count and time, and stops by itself.
CPU time is read from /proc/PID/stat (steadier than wall time on a shared machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from websockets.asyncio.client import connect

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def openai_body(tokens: int, per_write: int = 8) -> list[bytes]:
    """An OpenAI-style SSE stream of ``tokens`` one-word deltas, a few events per write."""
    events = [
        b'data: {"choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}]}\n\n' % i
        for i in range(tokens)
    ]
    events.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    events.append(b"data: [DONE]\n\n")
    return [b"".join(events[i : i + per_write]) for i in range(0, len(events), per_write)]


class FakeUpstream:
    """An OpenAI-compatible streaming endpoint: ``tokens`` per reply, paced or not."""

    def __init__(self, tokens: int, pace_ms: float = 0.0) -> None:
        self.tokens, self.pace = tokens, pace_ms / 1000
        self.body = openai_body(tokens, per_write=1 if pace_ms else 8)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in self.body:
            await resp.write(piece)
            if self.pace:
                await asyncio.sleep(self.pace)
        await resp.write_eof()
        return resp


@dataclass
class Target:
    """A server process under test, pinned to a CPU."""

    name: str
    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cpu: int = 0
    proc: subprocess.Popen[bytes] | None = None
    ws_url: str = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Target]:
        env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", **self.env}
        argv = ["taskset", "-c", str(self.cpu), *self.argv] if _has_taskset() else self.argv
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            self.ws_url = await asyncio.wait_for(asyncio.to_thread(self._read_url), 30)
            yield self
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _read_url(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "gateway_started":
                    threading_drain(self.proc.stdout)
                    return str(event["ws_url"])
        raise RuntimeError(f"{self.name} exited before it was ready")


def threading_drain(stream: Any) -> None:
    """Keep reading a child's output in a thread so its pipe never fills."""
    import threading

    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


def _has_taskset() -> bool:
    return subprocess.run(["which", "taskset"], capture_output=True).returncode == 0


def gateway_target(name: str, env: Mapping[str, str], state_dir: Path) -> Target:
    return Target(
        name,
        [sys.executable, "-m", "gateway", "serve"],
        {
            "GATEWAY_WS_ADDR": "127.0.0.1:0",
            "GATEWAY_HTTP_ADDR": "127.0.0.1:0",
            "GATEWAY_LOG_LEVEL": "info",
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_STATE_DIR": str(state_dir),
            **env,
        },
    )


@dataclass
class LoadResult:
    replies: int = 0
    chars: int = 0
    errors: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)

    def merge(self, other: LoadResult) -> None:
        self.replies += other.replies
        self.chars += other.chars
        self.errors += other.errors
        self.ttft += other.ttft
        self.gaps += other.gaps


async def chat_load(url: str, connections: int, messages: int, *, timeout: float = 300) -> LoadResult:
    """``connections`` chat.v1 clients each sending ``messages`` prompts, one after another."""
    results = await asyncio.wait_for(asyncio.gather(*(_client(url, messages) for _ in range(connections))), timeout)
    total = LoadResult()
    for r in results:
        total.merge(r)
    return total


async def _client(url: str, messages: int) -> LoadResult:
    result = LoadResult()
    async with connect(url, subprotocols=["chat.v1"], max_size=None, open_timeout=30) as ws:
        for i in range(messages):
            sent, last = time.perf_counter(), None
            await ws.send(json.dumps({"type": "message", "id": f"m{i}", "content": "benchmark prompt"}))
            while True:
                event = json.loads(await ws.recv())
                kind = event["type"]
                if kind == "reply.delta":
                    result.chars += len(event["text"])
                    last = _timing(result, sent, last, time.perf_counter())
                elif kind == "error":
                    result.errors += 1
                elif kind == "reply.done":
                    result.replies += 1
                    break
    return result


def _timing(result: LoadResult, sent: float, last: float | None, now: float) -> float:
    if last is None:
        result.ttft.append(now - sent)
    else:
        result.gaps.append(now - last)
    return now


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
