"""Three denial-of-service attacks on the gateway, measured: memory, latency, close codes.

Each attack starts its own gateway, ``python -m gateway serve`` run from the source tree
given by ``--source`` (default: the repository this file is in), with a fresh state
directory, both listeners on 127.0.0.1 (ports chosen by the kernel) and JSON logs, and
an OpenAI-compatible fake upstream served by this process. The gateway's RSS is read
from /proc/PID/status every 25 ms on a thread.

* ``resume``   resume amplification. One client gets a 200,000-character reply to its
  end; a second socket then says ``hello`` in that conversation and sends
  ``resume {after_seq: 0}`` for the reply as fast as it can, reading nothing (a raw
  socket with a 4 KiB receive buffer): at most 5,000 resumes, 30 s, or until the
  gateway's RSS passes 1.5 GB. The socket is then read for up to 15 s, to see how
  the gateway closed it (if it did) and how much it had sent.
* ``gzip``     a gzip bomb upstream: about 2 MB of ``Content-Encoding: gzip`` that
  inflates to 2 GiB of SSE comment lines (64 KiB each, dropped by a decoder). A
  victim client pings every 100 ms on its own connection while another sends the
  message that fetches the bomb; 60 s at most, then SIGTERM and the time the gateway
  takes to exit (SIGKILL after 40 s).
* ``history``  non-reading history clients. A conversation of 40 user messages of
  30,000 characters and their (short) replies; then 150 raw sockets each send
  ``hello`` for it and 50 ``history`` frames (limit 200) without reading; 60 s at most.
  The sockets are read at the end to count the close codes the gateway sent, then
  closed; RSS is read again 10 s later.

    .venv/bin/python bench/attacks.py --source DIR --out FILE [--only resume,gzip,history]

Prints a table per attack and writes every figure as JSON to ``--out``. Loopback only,
every attack bounded in count, time and memory; it stops by itself, and only the
processes it started are signalled, by their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_seconds, median, rss_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHAT = Subprotocol("chat.v1")
API_KEY = "sk-bench-0123456789abcdef"
RSS_CAP = 1_500_000_000
SIGTERM_GRACE = 40.0
MIB = 1 << 20
WRITE = 1 << 16  # bytes per write of the fake upstream, and per read of a draining socket

Result = dict[str, Any]


# The fake upstream


def sse_delta(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def long_reply(chunks: int = 400, size: int = 500) -> bytes:
    """An SSE stream of ``chunks`` deltas of ``size`` characters each."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return b"".join(sse_delta(letters[i % 26] * size) for i in range(chunks)) + SSE_DONE


def gzip_bomb(inflated: int = 2 << 30) -> bytes:
    """Gzip of an SSE stream of ``inflated`` bytes: one delta, then 64 KiB comment lines
    (``:aaa…``, read and dropped by an SSE decoder), then ``[DONE]``. About 2 MB for 2 GiB."""
    line = b":" + b"a" * (WRITE - 2) + b"\n"
    block = line * 16
    gz = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [gz.compress(sse_delta("Here it comes."))]
    parts += [gz.compress(block) for _ in range(inflated // len(block))]
    parts += [gz.compress(SSE_DONE), gz.flush()]
    return b"".join(parts)


class FakeUpstream:
    """An OpenAI-compatible upstream in this process on 127.0.0.1: every
    ``POST /v1/chat/completions`` is answered with ``body`` (an SSE stream) in 64 KiB
    writes, labelled ``Content-Encoding: gzip`` when ``gzip`` is set."""

    def __init__(self, body: bytes, *, gzip: bool = False) -> None:
        self.body, self.gzip = body, gzip
        self.sent = 0
        self.url = ""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)

    async def __aenter__(self) -> FakeUpstream:
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock, shutdown_timeout=2).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if self.gzip:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(headers=headers)
        response.content_length = len(self.body)
        await response.prepare(request)
        body = memoryview(self.body)
        with contextlib.suppress(ConnectionError):  # the gateway gave up on the stream
            for start in range(0, len(body), WRITE):
                piece = body[start : start + WRITE]
                await response.write(piece)
                self.sent += len(piece)
            await response.write_eof()
        return response


# The gateway under attack


class RssSampler:
    """A process's RSS every 25 ms, read on a thread so that work on this loop skips no sample."""

    def __init__(self, pid: int) -> None:
        self.samples: list[tuple[float, int]] = []
        self._pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                self.samples.append((time.monotonic(), rss_bytes(self._pid)))
            except OSError:  # the process is gone
                return
            self._done.wait(0.025)

    @property
    def current(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def peak(self, since: float = 0.0, until: float = math.inf) -> int:
        return max((rss for at, rss in self.samples if since <= at <= until), default=0)

    def close(self) -> None:
        self._done.set()
        self._thread.join()


def _settle(future: asyncio.Future[dict[str, Any] | None], value: dict[str, Any] | None) -> None:
    if not future.done():
        future.set_result(value)


class Gateway:
    """``python -m gateway serve`` from ``source``, against ``upstream_url``, as a child process.

    Its output (JSON log lines) is read on a thread, which counts the log events by name.
    """

    def __init__(self, source: Path, upstream_url: str) -> None:
        self.source, self.upstream_url = source, upstream_url
        self.ws_url = ""
        self.events: Counter[str] = Counter()
        self.tail: deque[str] = deque(maxlen=20)
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss: RssSampler | None = None
        self._state: tempfile.TemporaryDirectory[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def rss_now(self) -> int:
        assert self.rss is not None
        return self.rss.current

    def over_cap(self) -> bool:
        return self.rss_now >= RSS_CAP

    async def __aenter__(self) -> Gateway:
        self._state = tempfile.TemporaryDirectory(prefix="gateway-attacks-")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": str(self.source),
            "PYTHONUNBUFFERED": "1",
            "GATEWAY_WS_ADDR": "127.0.0.1:0",
            "GATEWAY_HTTP_ADDR": "127.0.0.1:0",
            "GATEWAY_STATE_DIR": self._state.name,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_PROVIDER": "openai",
            "GATEWAY_UPSTREAM_URL": self.upstream_url,
            "GATEWAY_API_KEY": API_KEY,
            "GATEWAY_MODEL": "m",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"],
            cwd=self.source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        loop = asyncio.get_running_loop()
        started: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self._reader = threading.Thread(target=self._read_log, args=(loop, started), name="log", daemon=True)
        self._reader.start()
        self.rss = RssSampler(self.proc.pid)
        try:
            event = await asyncio.wait_for(started, 30)
            if event is None:
                raise RuntimeError("the gateway exited before it started:\n" + "\n".join(self.tail))
        except BaseException:
            await self.stop()
            raise
        self.ws_url = str(event["ws_url"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _read_log(self, loop: asyncio.AbstractEventLoop, started: asyncio.Future[dict[str, Any] | None]) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self.events[str(entry.get("event"))] += 1
                if entry.get("event") == "gateway_started":
                    loop.call_soon_threadsafe(_settle, started, entry)
        with contextlib.suppress(RuntimeError):  # this loop has already closed
            loop.call_soon_threadsafe(_settle, started, None)

    async def stop(self) -> tuple[float, bool]:
        """SIGTERM, then SIGKILL after 40 s: (seconds until it exited, whether it was killed).
        Does nothing (0 s) once the process has exited."""
        assert self.proc is not None
        proc, began, killed = self.proc, time.monotonic(), False
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, SIGTERM_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                killed = True
                await asyncio.to_thread(proc.wait)
        took = time.monotonic() - began
        if self.rss is not None:
            self.rss.close()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5)
        if self._state is not None:
            self._state.cleanup()
        return took, killed

    async def until_idle(self, deadline: float, quiet: float = 1.0) -> None:
        """Wait until the gateway has used under 5 % of a CPU for ``quiet`` seconds,
        ``deadline`` (monotonic) has passed, or its RSS has passed the cap."""
        last, calm_since = cpu_seconds(self.pid), time.monotonic()
        while time.monotonic() < deadline and not self.over_cap():
            await asyncio.sleep(0.25)
            cpu, now = cpu_seconds(self.pid), time.monotonic()
            if cpu - last > 0.05 * 0.25:
                calm_since = now
            elif now - calm_since >= quiet:
                return
            last = cpu


# Clients


def _connect(url: str) -> connect:
    return connect(url, subprotocols=[CHAT], max_size=None, ping_interval=None, close_timeout=2)


@dataclass
class ReplyEnd:
    reply_id: str = ""
    chars: int = 0
    finish_reason: str | None = None
    error: str | None = None


async def read_reply(ws: ClientConnection, end: ReplyEnd) -> None:
    """Read one reply's events into ``end``, up to its ``reply.done``; skip other events."""
    while end.finish_reason is None:
        event = json.loads(await ws.recv())
        kind = event.get("type")
        if kind == "reply.start":
            end.reply_id = event["reply_id"]
        elif kind == "reply.delta":
            end.chars += len(event["text"])
        elif kind == "error":
            if "reply_id" not in event:
                raise RuntimeError(f"the gateway refused the message: {event}")
            end.error = event.get("code")
        elif kind == "reply.done":
            end.finish_reason = event["finish_reason"]


async def recv_type(ws: ClientConnection, kind: str) -> str:
    """The next frame of type ``kind``, as received; frames of other types are skipped."""
    async with asyncio.timeout(30):
        while True:
            frame = await ws.recv(decode=True)
            if json.loads(frame).get("type") == kind:
                return frame


async def send_and_read(ws: ClientConnection, content: str, message_id: str) -> ReplyEnd:
    await ws.send(json.dumps({"type": "message", "id": message_id, "content": content}))
    end = ReplyEnd()
    async with asyncio.timeout(30):
        await read_reply(ws, end)
    if end.finish_reason != "stop":
        raise RuntimeError(f"setup reply ended with {end}")
    return end


class RawClient:
    """A chat.v1 client on a raw TCP socket with a 4 KiB receive buffer, speaking
    WebSocket through websockets' sans-I/O protocol. It reads nothing until :meth:`drain`,
    so whatever the gateway writes to it piles up on the gateway's side."""

    def __init__(self, url: str) -> None:
        self._uri = parse_uri(url)
        self._proto = ClientProtocol(self._uri, subprotocols=[CHAT], max_size=None)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self.refused: str | None = None
        self.close_code: int | None = None
        self.closed_at: float | None = None  # monotonic: close frame read, or connection lost
        self.sent = 0  # bytes written after the handshake
        self.received = 0  # bytes read by drain()

    @property
    def outcome(self) -> str:
        """``refused`` (handshake), the gateway's close code, ``dropped`` (no close frame) or ``open``."""
        if self.refused is not None:
            return "refused"
        if self.close_code is not None:
            return str(self.close_code)
        return "open" if self.closed_at is None else "dropped"

    async def open(self) -> bool:
        """The opening handshake; False (and :attr:`refused` set) if it fails."""
        try:
            await self._loop.sock_connect(self._sock, (self._uri.host, self._uri.port))
            self._proto.send_request(self._proto.connect())
            await self._flush()
            while self._proto.state is State.CONNECTING and self._proto.handshake_exc is None:
                data = await self._loop.sock_recv(self._sock, 4096)
                if not data:
                    raise ConnectionError("connection closed during the handshake")
                self._proto.receive_data(data)
            if self._proto.handshake_exc is not None:
                raise self._proto.handshake_exc
        except Exception as exc:
            self.refused = f"{type(exc).__name__}: {exc}"
            return False
        self._proto.events_received()
        return True

    async def send(self, *frames: Mapping[str, Any]) -> bool:
        """Send JSON text frames; False if the connection is gone."""
        if self.refused is not None or self.closed_at is not None:
            return False
        for frame in frames:
            self._proto.send_text(json.dumps(frame).encode())
        try:
            self.sent += await self._flush()
        except OSError:
            self.closed_at = time.monotonic()
            return False
        return True

    async def drain(self, deadline: float, stop: Callable[[], bool]) -> None:
        """Read and drop what the gateway sent until it closes the connection (its close
        code is kept), ``deadline`` (monotonic) passes, or ``stop()`` is true."""
        while self.refused is None and self.closed_at is None and not stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                data = await asyncio.wait_for(self._loop.sock_recv(self._sock, WRITE), min(left, 0.5))
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed_at = time.monotonic()
                return
            self.received += len(data)
            self._proto.receive_data(data)
            self._proto.events_received()
            if self._proto.close_rcvd is not None:
                self.close_code = self._proto.close_rcvd.code
                self.closed_at = time.monotonic()
            with contextlib.suppress(OSError):
                await self._flush()  # pongs to keepalive pings, the close frame's echo

    def close(self) -> None:
        self._sock.close()

    async def _flush(self) -> int:
        data = b"".join(self._proto.data_to_send())
        if data:
            await self._loop.sock_sendall(self._sock, data)
        return len(data)


class Pinger:
    """An application ``ping`` every 100 ms on its own connection; each pong's round trip."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: dict[int, float] = {}
        self.rtts: list[tuple[float, float]] = []  # (sent at, round trip), seconds
        self._sender = asyncio.create_task(self._send())
        self._receiver = asyncio.create_task(self._receive())

    async def _send(self) -> None:
        n, next_at = 0, time.monotonic()
        while True:
            n += 1
            self.pending[n] = time.monotonic()
            await self.ws.send(json.dumps({"type": "ping", "id": n}))
            next_at += 0.1
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _receive(self) -> None:
        async for raw in self.ws:
            event = json.loads(raw)
            if event.get("type") == "pong" and (sent := self.pending.pop(event.get("id"), None)) is not None:
                self.rtts.append((sent, time.monotonic() - sent))

    async def stop(self, wait: float = 2.0) -> None:
        """Stop pinging; wait up to ``wait`` seconds for the pongs still due."""
        self._sender.cancel()
        deadline = time.monotonic() + wait
        while self.pending and time.monotonic() < deadline and not self._receiver.done():
            await asyncio.sleep(0.05)
        self._receiver.cancel()
        await asyncio.gather(self._sender, self._receiver, return_exceptions=True)

    def window(self, since: float, until: float) -> Result:
        rtts = [rtt for sent, rtt in self.rtts if since <= sent < until]
        unanswered = sum(since <= sent < until for sent in self.pending.values())
        return {
            "pings": len(rtts) + unanswered,
            "unanswered": unanswered,
            "rtt_median_ms": round(median(rtts) * 1000, 2) if rtts else None,
            "rtt_worst_ms": round(max(rtts) * 1000, 2) if rtts else None,
        }


# The attacks


async def attack_resume(source: Path) -> Result:
    async with FakeUpstream(long_reply()) as upstream, Gateway(source, upstream.url) as gw:
        async with _connect(gw.ws_url) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            conversation_id = json.loads(await recv_type(ws, "ready"))["conversation_id"]
            reply = await send_and_read(ws, "Tell me a long story.", "m1")
        await asyncio.sleep(1)
        rss_before, cpu_before = gw.rss_now, cpu_seconds(gw.pid)
        attacker = RawClient(gw.ws_url)
        if not await attacker.open():
            raise RuntimeError(f"attacking socket refused: {attacker.refused}")
        await attacker.send({"type": "hello", "conversation_id": conversation_id})
        resume = {"type": "resume", "reply_id": reply.reply_id, "after_seq": 0}
        began = time.monotonic()
        deadline, sent, stopped_by = began + 30, 0, "5,000 resumes"
        while sent < 5000:
            if time.monotonic() >= deadline:
                stopped_by = "30 s"
                break
            if gw.over_cap():
                stopped_by = "RSS cap"
                break
            if not await attacker.send(resume):
                stopped_by = "connection lost"
                break
            sent += 1
        flood_s = time.monotonic() - began
        await gw.until_idle(deadline)  # still reading nothing: the gateway works through the resumes
        reading = time.monotonic()
        await attacker.drain(reading + 15, gw.over_cap)
        read_s = time.monotonic() - reading
        attacker.close()
        cpu_s = cpu_seconds(gw.pid) - cpu_before
        exit_s, killed = await gw.stop()
    assert gw.rss is not None
    return {
        "reply_chars": reply.chars,
        "resumes_sent": sent,
        "bytes_sent": attacker.sent,
        "flood_s": round(flood_s, 2),
        "stopped_by": stopped_by,
        "not_reading_s": round(reading - began, 2),
        "rss_before": rss_before,
        "rss_peak_not_reading": gw.rss.peak(began, reading),
        "rss_peak_reading": gw.rss.peak(reading),
        "rss_peak": gw.rss.peak(began),
        "reading_s": round(read_s, 2),
        "bytes_read": attacker.received,
        "socket": attacker.outcome,
        "close_code": attacker.close_code,
        "closed_at_s": None if attacker.closed_at is None else round(attacker.closed_at - began, 2),
        "gateway_cpu_s": round(cpu_s, 2),
        "exit_after_sigterm_s": round(exit_s, 2),
        "killed": killed,
        "log_events": dict(gw.events),
    }


async def attack_gzip(source: Path) -> Result:
    bomb = await asyncio.to_thread(gzip_bomb)
    async with FakeUpstream(bomb, gzip=True) as upstream, Gateway(source, upstream.url) as gw:
        async with _connect(gw.ws_url) as victim, _connect(gw.ws_url) as attacker:
            pinger = Pinger(victim)
            began = time.monotonic()
            await asyncio.sleep(3)
            rss_before, cpu_before = gw.rss_now, cpu_seconds(gw.pid)
            attack_at = time.monotonic()
            await attacker.send(json.dumps({"type": "message", "id": "bomb", "content": "Hello?"}))
            end = ReplyEnd()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(began + 60 - time.monotonic()):
                    await read_reply(attacker, end)
            attack_end = time.monotonic()
            await pinger.stop()
            cpu_s = cpu_seconds(gw.pid) - cpu_before
            exit_s, killed = await gw.stop()
    assert gw.rss is not None
    return {
        "bomb_gzip_bytes": len(bomb),
        "bomb_inflated_bytes": 2 << 30,
        "bomb_bytes_sent": upstream.sent,
        "before": pinger.window(began, attack_at),
        "during": pinger.window(attack_at, attack_end),
        "attack_s": round(attack_end - attack_at, 2),
        "reply_done": end.finish_reason is not None,
        "finish_reason": end.finish_reason,
        "error_code": end.error,
        "reply_chars": end.chars,
        "rss_before": rss_before,
        "rss_peak": gw.rss.peak(attack_at),
        "gateway_cpu_s": round(cpu_s, 2),
        "exit_after_sigterm_s": round(exit_s, 2),
        "killed": killed,
        "log_events": dict(gw.events),
    }


async def attack_history(source: Path, sockets: int = 150, frames: int = 50) -> Result:
    async with FakeUpstream(sse_delta("Noted.") + SSE_DONE) as upstream, Gateway(source, upstream.url) as gw:
        async with _connect(gw.ws_url) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            conversation_id = json.loads(await recv_type(ws, "ready"))["conversation_id"]
            for i in range(40):
                await send_and_read(ws, f"{i:02d} " + "x" * 29_997, f"m{i}")
            await ws.send(json.dumps({"type": "history", "limit": 200}))
            page = await recv_type(ws, "history")
        await asyncio.sleep(1)
        rss_before, cpu_before = gw.rss_now, cpu_seconds(gw.pid)
        began = time.monotonic()
        clients = [RawClient(gw.ws_url) for _ in range(sockets)]
        hello = {"type": "hello", "conversation_id": conversation_id}
        pages = [{"type": "history", "limit": 200}] * frames

        async def attack(client: RawClient) -> None:
            if await client.open():
                await client.send(hello, *pages)

        await asyncio.gather(*(attack(c) for c in clients))
        sent_s = time.monotonic() - began
        await gw.until_idle(began + 40)  # nothing read yet: let the gateway answer them all
        reading = time.monotonic()
        await asyncio.gather(*(c.drain(max(began + 60, reading + 5), gw.over_cap) for c in clients))
        for client in clients:
            client.close()
        closed = time.monotonic()
        cpu_s = cpu_seconds(gw.pid) - cpu_before
        await asyncio.sleep(10)
        rss_after = gw.rss_now
        exit_s, killed = await gw.stop()
    assert gw.rss is not None
    outcomes = Counter(c.outcome for c in clients)
    return {
        "messages": 80,
        "history_page_bytes": len(page.encode()),
        "sockets": sockets,
        "history_frames_per_socket": frames,
        "sent_s": round(sent_s, 2),
        "not_reading_s": round(reading - began, 2),
        "reading_s": round(closed - reading, 2),
        "bytes_read": sum(c.received for c in clients),
        "rss_before": rss_before,
        "rss_peak": gw.rss.peak(began),
        "rss_10s_after_close": rss_after,
        "closed_1013": outcomes["1013"],
        "outcomes": dict(outcomes),
        "refusals": sorted({c.refused for c in clients if c.refused})[:5],
        "gateway_cpu_s": round(cpu_s, 2),
        "exit_after_sigterm_s": round(exit_s, 2),
        "killed": killed,
        "log_events": dict(gw.events),
    }


ATTACKS: dict[str, Callable[[Path], Awaitable[Result]]] = {
    "resume": attack_resume,
    "gzip": attack_gzip,
    "history": attack_history,
}


# Report


def mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def _exit(r: Result) -> str:
    return f"{r['exit_after_sigterm_s']} s" + (" (then SIGKILL)" if r["killed"] else "")


def _rtt(w: Result) -> str:
    return f"{w['rtt_median_ms']} / {w['rtt_worst_ms']} ms ({w['pings']} pings, {w['unanswered']} unanswered)"


def resume_rows(r: Result) -> list[tuple[str, str]]:
    if r["close_code"] is not None:
        socket_end = f"closed by the gateway with {r['close_code']} (seen at {r['closed_at_s']} s)"
    elif r["socket"] == "dropped":
        socket_end = f"dropped without a close frame at {r['closed_at_s']} s"
    else:
        socket_end = "still open at the end (not closed by the gateway)"
    return [
        ("reply resumed", f"{r['reply_chars']:,} chars"),
        ("resumes sent", f"{r['resumes_sent']:,} ({r['bytes_sent']:,} B) in {r['flood_s']} s "
                         f"(stopped by: {r['stopped_by']})"),
        ("gateway RSS before", mib(r["rss_before"])),
        ("RSS peak, client not reading", f"{mib(r['rss_peak_not_reading'])} (over {r['not_reading_s']} s)"),
        ("RSS peak, client then reading", f"{mib(r['rss_peak_reading'])} (over {r['reading_s']} s)"),
        ("read from the gateway", mib(r["bytes_read"])),
        ("attacking socket", socket_end),
        ("gateway CPU", f"{r['gateway_cpu_s']} s"),
        ("exit after SIGTERM", _exit(r)),
    ]


def gzip_rows(r: Result) -> list[tuple[str, str]]:
    if r["reply_done"]:
        ended = f"reply.done {r['finish_reason']}, error {r['error_code'] or 'none'}, after {r['attack_s']} s"
    else:
        ended = f"no reply.done within {r['attack_s']} s"
    return [
        ("bomb", f"{r['bomb_gzip_bytes']:,} B gzip -> {mib(r['bomb_inflated_bytes'])}; "
                 f"{r['bomb_bytes_sent']:,} B of it sent"),
        ("ping RTT before, median / worst", _rtt(r["before"])),
        ("ping RTT during, median / worst", _rtt(r["during"])),
        ("attacked reply", f"{ended}; {r['reply_chars']} chars"),
        ("gateway RSS before / peak", f"{mib(r['rss_before'])} / {mib(r['rss_peak'])}"),
        ("gateway CPU during the attack", f"{r['gateway_cpu_s']} s"),
        ("exit after SIGTERM", _exit(r)),
    ]


def history_rows(r: Result) -> list[tuple[str, str]]:
    return [
        ("conversation", f"{r['messages']} messages; a history page of {r['history_page_bytes']:,} B"),
        ("sockets", f"{r['sockets']} x (hello + {r['history_frames_per_socket']} history frames) "
                    f"sent in {r['sent_s']} s, unread for {r['not_reading_s']} s"),
        ("gateway RSS before", mib(r["rss_before"])),
        ("gateway RSS peak", mib(r["rss_peak"])),
        ("RSS 10 s after all closed", mib(r["rss_10s_after_close"])),
        ("closed by the gateway with 1013", f"{r['closed_1013']} of {r['sockets']} (all: {r['outcomes']})"),
        ("read from the gateway", f"{mib(r['bytes_read'])} in {r['reading_s']} s"),
        ("gateway CPU", f"{r['gateway_cpu_s']} s"),
        ("exit after SIGTERM", _exit(r)),
    ]


REPORTS: dict[str, tuple[str, Callable[[Result], list[tuple[str, str]]]]] = {
    "resume": ("resume amplification: resume after_seq 0 of a finished reply, socket never read", resume_rows),
    "gzip": ("gzip bomb upstream: ping round trips on another connection", gzip_rows),
    "history": ("non-reading history clients", history_rows),
}


def print_table(name: str, r: Result) -> None:
    title, rows = REPORTS[name]
    table = rows(r)
    width = max(len(k) for k, _ in table)
    print(f"\n{name}: {title}")
    for key, value in table:
        print(f"  {key:<{width}}  {value}")
    sys.stdout.flush()


def git_head(source: Path) -> str | None:
    """The source tree's commit, with ``+dirty`` if tracked files changed; None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, check=True).stdout
    try:
        return git("rev-parse", "--short", "HEAD").strip() + ("+dirty" if git("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="gateway source tree (default: this repository)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--only", default=",".join(ATTACKS), help="comma-separated: " + ",".join(ATTACKS))
    args = parser.parse_args()
    source = args.source.resolve()
    if not (source / "gateway" / "__main__.py").is_file():
        parser.error(f"{source} has no gateway/ package")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := set(names) - set(ATTACKS):
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    results: Result = {"source": str(source), "commit": git_head(source), "attacks": {}}
    print(f"gateway from {source} ({results['commit']})")
    for name in names:
        results["attacks"][name] = result = await ATTACKS[name](source)
        print_table(name, result)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
