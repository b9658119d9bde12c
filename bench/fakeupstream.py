"""A fake OpenAI-compatible streaming upstream, fast enough for thousands of streams.

A raw asyncio protocol (HTTP/1.1, keep-alive, chunked SSE), not a web framework, so
the fake costs little next to the targets it feeds. It answers
``POST …/chat/completions``; the **last message's content** chooses the reply:

    bench <tokens> <pace_ms> [<burst>]

``tokens`` content deltas (default 200), the last of which is the text
:data:`EOT` (``"<eot>"``), so a plain-text client can tell where a reply ends;
``pace_ms`` between deltas (0: unpaced, one delta per write, yielding to the loop
between writes so concurrent streams interleave); ``burst`` deltas per write
(default 1). Chunks look like OpenAI's (ids, ``created``, ``model``,
``system_fingerprint``, ``logprobs``): a first chunk with the role, the content
chunks, a ``finish_reason: "stop"`` chunk, a usage chunk when the request asks
``stream_options.include_usage``, then ``[DONE]``.

Run as a process (it prints one JSON line ``{"event": "bench_ready", "url": …}``)::

    python bench/fakeupstream.py [--port 0] [--uvloop]

Loopback only; it stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

EOT = "<eot>"
DEFAULT_TOKENS = 200
_HIGH_WATER = 256 * 1024

__all__ = ["EOT", "prompt", "reply_text", "serve"]


def token(i: int, tokens: int) -> str:
    """The text of delta ``i`` of a ``tokens``-delta reply."""
    return EOT if i == tokens - 1 else f" w{i}"


def reply_text(tokens: int) -> str:
    """The whole reply text the fake sends for ``tokens`` deltas."""
    return "".join(token(i, tokens) for i in range(tokens))


def prompt(tokens: int, pace_ms: float = 0.0, burst: int = 1) -> str:
    """The user message that asks the fake for this reply."""
    return f"bench {tokens} {pace_ms:g} {burst}"


def _chunk(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


_BASE = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion.chunk",
    "created": 1_700_000_000,
    "model": "bench-model",
    "system_fingerprint": "fp_bench",
}


class _Events:
    """Pre-encoded SSE events, shared by every stream."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], bytes] = {}
        self.first = _chunk({**_BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]})
        self.stop = _chunk({**_BASE, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
        self.done = b"data: [DONE]\n\n"

    def content(self, i: int, tokens: int) -> bytes:
        key = (i, tokens) if i == tokens - 1 else (i, 0)
        event = self._cache.get(key)
        if event is None:
            event = self._cache[key] = _chunk(
                {**_BASE, "choices": [{"index": 0, "delta": {"content": token(i, tokens)},
                                       "logprobs": None, "finish_reason": None}]}
            )
        return event

    def usage(self, prompt_tokens: int, tokens: int) -> bytes:
        return _chunk({**_BASE, "choices": [], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}})


EVENTS = _Events()
_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nServer: bench-fake-upstream\r\n\r\n"
)


def _framed(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Stream:
    """One reply being written: a small state machine driven by loop callbacks."""

    __slots__ = ("proto", "tokens", "pace", "burst", "i", "usage", "prompt_tokens", "handle")

    def __init__(self, proto: UpstreamProtocol, tokens: int, pace: float, burst: int, usage: bool, prompt_tokens: int):
        self.proto, self.tokens, self.pace, self.burst = proto, tokens, pace, burst
        self.i, self.usage, self.prompt_tokens = 0, usage, prompt_tokens
        self.handle: asyncio.Handle | None = None

    def start(self) -> None:
        self.proto.transport.write(_HEAD + _framed(EVENTS.first))
        self.step()

    def step(self) -> None:
        self.handle = None
        proto = self.proto
        if proto.closed:
            return
        if proto.paused:
            proto.waiting = self
            return
        end = min(self.tokens, self.i + self.burst)
        data = b"".join([EVENTS.content(i, self.tokens) for i in range(self.i, end)])
        self.i = end
        if self.i >= self.tokens:
            tail = EVENTS.stop + (EVENTS.usage(self.prompt_tokens, self.tokens) if self.usage else b"") + EVENTS.done
            proto.transport.write(_framed(data + tail) + b"0\r\n\r\n")
            proto.stream = None
            proto.parse()  # a pipelined next request, if any
            return
        proto.transport.write(_framed(data))
        loop = proto.loop
        self.handle = loop.call_later(self.pace, self.step) if self.pace else loop.call_soon(self.step)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


class UpstreamProtocol(asyncio.Protocol):
    """One upstream connection: HTTP/1.1 requests one after another (keep-alive)."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.stream: _Stream | None = None
        self.closed = self.paused = False
        self.waiting: _Stream | None = None
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.server.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections -= 1
        if self.stream is not None:
            self.stream.cancel()
            self.stream = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.step()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.parse()

    def parse(self) -> None:
        if self.stream is not None or self.closed:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self._fail(431, "headers too large")
            return
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, path, _ = lines[0].split(" ", 2)
        except ValueError:
            self._fail(400, "bad request line")
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", ""):
            self._fail(411, "send a Content-Length")
            return
        length = int(headers.get("content-length") or 0)
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        if method != "POST" or not path.split("?", 1)[0].endswith("/chat/completions"):
            self._fail(404, "not found")
            return
        self._respond(body)

    def _respond(self, body: bytes) -> None:
        try:
            request = json.loads(body)
            messages = request["messages"]
            words = str(messages[-1]["content"]).split()
        except (ValueError, KeyError, IndexError, TypeError):
            self._fail(400, "bad JSON body")
            return
        tokens, pace, burst = DEFAULT_TOKENS, 0.0, 1
        if words and words[0] == "bench":
            nums = [float(w) for w in words[1:4]]
            tokens = max(1, int(nums[0])) if nums else tokens
            pace = nums[1] / 1000 if len(nums) > 1 else pace
            burst = max(1, int(nums[2])) if len(nums) > 2 else burst
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        self.server.requests += 1
        self.stream = _Stream(self, tokens, pace, burst, usage, sum(len(str(m.get("content", ""))) for m in messages))
        self.stream.start()

    def _fail(self, status: int, message: str) -> None:
        body = json.dumps({"error": {"message": message, "type": "bench"}}).encode()
        self.transport.write(
            b"HTTP/1.1 %d Error\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
            % (status, len(body), body)
        )
        self.transport.close()
        self.closed = True


class FakeServer:
    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0


async def serve(host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.Server, str]:
    """Start the fake on ``host:port``; returns the server and its base URL (``…/v1``)."""
    state = FakeServer()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(state), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    return server, f"http://{host}:{bound}/v1"


async def _main(port: int) -> None:
    server, url = await serve(port=port)
    print(json.dumps({"event": "bench_ready", "url": url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop if it is installed")
    args = parser.parse_args()
    if args.uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    asyncio.run(_main(args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
