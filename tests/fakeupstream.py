"""A scripted fake LLM upstream: a real aiohttp server speaking provider SSE byte for byte.

Usage::

    async with FakeUpstream() as up:
        up.enqueue(Script(rechunk(openai_sse(["Hi", " there"]))))
        ...  # point the gateway at up.openai_base / up.dashscope_url
        rec = await up.next_request()

Body pieces are written one ``write`` + ``drain`` each, so the client receives them as
separate TCP sends (it may still coalesce them when it reads late).  Control items in a
chunk list: :class:`Pause` (wait for an event), :class:`Stall` (send nothing more, hold the
connection open) and :class:`Reset` (abort the TCP connection with RST).
"""

from __future__ import annotations

import asyncio
import enum
import json
import random
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = [
    "DASHSCOPE_PATH",
    "DASHSCOPE_REQUEST_ID",
    "OPENAI_PATH",
    "FakeUpstream",
    "Headers",
    "Pause",
    "Recorded",
    "Reset",
    "Script",
    "Stall",
    "dashscope_error_body",
    "dashscope_error_event",
    "dashscope_sse",
    "openai_error_body",
    "openai_error_event",
    "openai_sse",
    "rechunk",
]

OPENAI_PATH = "/v1/chat/completions"
DASHSCOPE_PATH = "/api/v1/services/aigc/text-generation/generation"
DASHSCOPE_REQUEST_ID = "5d3b5f3e-7c2a-9b61-8f4e-0a1b2c3d4e5f"
OPENAI_ID = "chatcmpl-1"
OPENAI_CREATED = 1700000000


# --------------------------------------------------------------------------- chunk items


class Pause:
    """Chunk-list item: wait until ``gate`` is set, then continue with the next item."""

    __slots__ = ("gate",)

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    def __repr__(self) -> str:
        return f"Pause(set={self.gate.is_set()})"


class Stall:
    """Chunk-list item: send nothing more; hold the connection until the client leaves or the server closes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Stall()"


class Reset:
    """Chunk-list item: abort the TCP connection with RST (SO_LINGER 0 + ``transport.abort()``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Reset()"


Chunk = bytes | Pause | Stall | Reset


@dataclass
class Script:
    """One scripted answer.  For a non-200 status ``chunks`` is just the (JSON) error body."""

    chunks: Sequence[Chunk]  # a list in practice; Sequence so list[bytes] from rechunk() type-checks
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class Headers(dict[str, str]):
    """A plain dict of request headers whose lookups are case-insensitive."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        for k, v in items:
            key = self._find(k)
            if key is None:
                super().__setitem__(k, v)
            else:  # repeated header: join like HTTP does
                super().__setitem__(key, f"{dict.__getitem__(self, key)}, {v}")

    def _find(self, key: object) -> str | None:
        if isinstance(key, str):
            if dict.__contains__(self, key):
                return key
            low = key.lower()
            for k in self:
                if k.lower() == low:
                    return k
        return None

    def __getitem__(self, key: str) -> str:
        real = self._find(key)
        if real is None:
            raise KeyError(key)
        return dict.__getitem__(self, real)

    def __contains__(self, key: object) -> bool:
        return self._find(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        real = self._find(key)
        return default if real is None else dict.__getitem__(self, real)


@dataclass
class Recorded:
    """One request the fake upstream received."""

    path: str
    headers: Headers
    json: Any
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client went away (handler cancelled / write failed) before the script finished."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the handler ended for any reason."""
    method: str = "POST"
    body: bytes = b""
    script: Script | None = None


# --------------------------------------------------------------------------- byte builders


class _Auto(enum.Enum):
    AUTO = "auto"


AUTO = _Auto.AUTO


def _dumps(obj: Any) -> str:
    """Compact JSON with raw UTF-8, as providers emit it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _eol(text: str, crlf: bool) -> bytes:
    # JSON escapes control characters, so every "\n" in `text` is SSE framing.
    return (text.replace("\n", "\r\n") if crlf else text).encode("utf-8")


def openai_sse(
    texts: list[str],
    *,
    finish: str | None = "stop",
    usage: Mapping[str, Any] | None | _Auto = AUTO,
    reasoning: list[str] | None = None,
    crlf: bool = False,
    comments: bool = False,
    done: bool = True,
    model: str = "gpt-test",
) -> bytes:
    """An OpenAI-compatible chat.completion.chunk SSE stream.

    Role chunk, reasoning_content chunks, content chunks, a final empty-delta chunk with
    ``finish`` (omitted if None), a ``"choices":[]`` usage chunk (AUTO: prompt 5,
    completion = number of pieces; None: omitted), then ``data: [DONE]`` if ``done``.
    ``comments`` adds ``: OPENROUTER PROCESSING`` / ``: keep-alive`` blocks between events.
    """
    reasoning = reasoning or []

    def chunk(choices: list[Any], **extra: Any) -> dict[str, Any]:
        return {
            "id": OPENAI_ID,
            "object": "chat.completion.chunk",
            "created": OPENAI_CREATED,
            "model": model,
            "choices": choices,
            **extra,
        }

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[Any]:
        return [{"index": 0, "delta": delta, "finish_reason": finish_reason}]

    events: list[str] = [_dumps(chunk(choice({"role": "assistant", "content": ""})))]
    events += [_dumps(chunk(choice({"reasoning_content": r}))) for r in reasoning]
    events += [_dumps(chunk(choice({"content": t}))) for t in texts]
    if finish is not None:
        events.append(_dumps(chunk(choice({}, finish))))
    if usage is AUTO:
        n = len(texts) + len(reasoning)
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
    if usage is not None:
        events.append(_dumps(chunk([], usage=dict(usage))))
    if done:
        events.append("[DONE]")

    out: list[str] = []
    for i, ev in enumerate(events):
        if comments:
            out.append(": OPENROUTER PROCESSING\n\n" if i == 0 else ": keep-alive\n\n")
        out.append(f"data: {ev}\n\n")
    return _eol("".join(out), crlf)


def openai_error_event(message: str, code: str | int = "server_error") -> bytes:
    """A mid-stream error object event (OpenRouter style)."""
    err = {"error": {"message": message, "type": "server_error", "code": code}}
    return f"data: {_dumps(err)}\n\n".encode()


def openai_error_body(
    message: str, type_: str = "invalid_request_error", code: str | int | None = None
) -> bytes:
    """JSON body of a non-200 OpenAI answer."""
    err = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return _dumps(err).encode()


def dashscope_sse(
    texts: list[str],
    *,
    cumulative: bool = False,
    result_format: str = "message",
    finish: str = "stop",
    crlf: bool = False,
    input_tokens: int = 5,
    request_id: str = DASHSCOPE_REQUEST_ID,
) -> bytes:
    """DashScope native text-generation SSE: ``id:N / event:result / :HTTP_STATUS/200 / data:{...}``.

    finish_reason is the string "null" on every event but the last, which carries ``finish``.
    ``cumulative`` (incremental_output=false) makes each event carry the whole text so far.
    No ``[DONE]``: the stream just ends.
    """
    if result_format not in ("message", "text"):
        raise ValueError(f"result_format must be 'message' or 'text', not {result_format!r}")
    out: list[str] = []
    so_far = ""
    for i, piece in enumerate(texts, start=1):
        so_far += piece
        content = so_far if cumulative else piece
        reason = finish if i == len(texts) else "null"
        if result_format == "message":
            output: dict[str, Any] = {
                "choices": [
                    {
                        "message": {"content": content, "role": "assistant"},
                        "finish_reason": reason,
                    }
                ]
            }
        else:
            output = {"text": content, "finish_reason": reason}
        data = {
            "output": output,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": i,
                "total_tokens": input_tokens + i,
            },
            "request_id": request_id,
        }
        out.append(f"id:{i}\nevent:result\n:HTTP_STATUS/200\ndata:{_dumps(data)}\n\n")
    return _eol("".join(out), crlf)


def dashscope_error_event(
    code: str,
    message: str,
    status: int = 400,
    *,
    event_id: int = 1,
    request_id: str = DASHSCOPE_REQUEST_ID,
) -> bytes:
    """A DashScope ``event:error`` SSE event."""
    data = {"code": code, "message": message, "request_id": request_id}
    return f"id:{event_id}\nevent:error\n:HTTP_STATUS/{status}\ndata:{_dumps(data)}\n\n".encode()


def dashscope_error_body(code: str, message: str, *, request_id: str = DASHSCOPE_REQUEST_ID) -> bytes:
    """JSON body of a non-200 DashScope answer."""
    return _dumps({"code": code, "message": message, "request_id": request_id}).encode()


def rechunk(data: bytes, sizes: Iterable[int] | None = None, *, seed: int = 0) -> list[bytes]:
    """Split ``data`` at awkward offsets.

    With ``sizes``: pieces of exactly those sizes (the rest, if the sizes run out, is one
    last piece).  Without: pseudo-random 1..7-byte pieces from ``random.Random(seed)``, plus
    forced cuts between the first CR and LF and inside the first multi-byte UTF-8 character.
    """
    if sizes is not None:
        out: list[bytes] = []
        pos = 0
        it = iter(sizes)
        while pos < len(data):
            n = next(it, None)
            if n is None:
                out.append(data[pos:])
                break
            if n <= 0:
                raise ValueError("chunk sizes must be positive")
            out.append(data[pos : pos + n])
            pos += n
        return out

    rng = random.Random(seed)
    cuts: set[int] = set()
    pos = rng.randint(1, 7)
    while pos < len(data):
        cuts.add(pos)
        pos += rng.randint(1, 7)
    crlf_at = data.find(b"\r\n")
    if crlf_at >= 0:
        cuts.add(crlf_at + 1)
    lead = next((i for i, b in enumerate(data) if b >= 0xC0), -1)
    if lead >= 0:
        cuts.add(lead + 1)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# --------------------------------------------------------------------------- the server


def _default_script(rec: Recorded) -> Script:
    if rec.path == OPENAI_PATH:
        return Script([openai_sse(["Hello", " world"])])
    if rec.path == DASHSCOPE_PATH:
        return Script([dashscope_sse(["Hello", " world"])])
    return Script([openai_error_body(f"no route for {rec.method} {rec.path}")], status=404)


@dataclass
class _HandlerState:
    server_closing: bool = False


class FakeUpstream:
    """Async context manager running the fake upstream on 127.0.0.1:<ephemeral port>."""

    def __init__(self) -> None:
        self.url: str = ""
        self.requests: list[Recorded] = []
        self._queue: deque[Script] = deque()
        self._default: Callable[[Recorded], Script] = _default_script
        self._arrived = asyncio.Event()
        self._returned = 0
        self._runner: web.AppRunner | None = None
        self._active: dict[asyncio.Task[Any], _HandlerState] = {}

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def dashscope_url(self) -> str:
        return self.url + DASHSCOPE_PATH

    def enqueue(self, *scripts: Script) -> None:
        """Queue answers; each incoming POST consumes one, in order."""
        self._queue.extend(scripts)

    def set_default(self, script_factory: Callable[[Recorded], Script]) -> None:
        """Replace the answer used when the queue is empty."""
        self._default = script_factory

    async def next_request(self) -> Recorded:
        """Wait until the next not-yet-returned request has arrived and return it."""
        while self._returned >= len(self.requests):
            self._arrived.clear()
            await self._arrived.wait()
        rec = self.requests[self._returned]
        self._returned += 1
        return rec

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind and start serving."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation=True (default False since aiohttp 3.9): a client disconnect
        # cancels the handler task, which is how Stall/Pause notice the client went away.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        """Cut in-flight streams (Stall/Pause end here) and shut the server down."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):  # stop accepting before cutting in-flight streams
            await site.stop()
        tasks = list(self._active.items())
        for task, state in tasks:
            state.server_closing = True
            task.cancel()
        if tasks:
            await asyncio.wait([t for t, _ in tasks])
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        state = _HandlerState()
        self._active[task] = state
        rec: Recorded | None = None
        try:
            body = await request.read()
            try:
                parsed: Any = json.loads(body) if body else None
            except ValueError:
                parsed = None
            rec = Recorded(
                path=request.path,
                headers=Headers(request.headers.items()),
                json=parsed,
                method=request.method,
                body=body,
            )
            if request.method == "POST" and self._queue:
                script = self._queue.popleft()
            else:
                script = self._default(rec)
            rec.script = script
            self.requests.append(rec)
            self._arrived.set()
            return await self._play(request, script, rec)
        except asyncio.CancelledError:
            if state.server_closing:
                # Server shutting down: drop the connection without ending the body.
                if request.transport is not None:
                    request.transport.close()
            elif rec is not None:
                rec.disconnected.set()
            raise
        finally:
            self._active.pop(task, None)
            if rec is not None:
                rec.finished.set()

    async def _play(
        self, request: web.Request, script: Script, rec: Recorded
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=script.status)
        default_ct = "text/event-stream" if script.status == 200 else "application/json"
        resp.headers["Content-Type"] = default_ct
        resp.headers.update(script.headers)
        all_bytes = all(isinstance(c, bytes) for c in script.chunks)
        if "Content-Length" in resp.headers:
            pass
        elif script.status != 200 and all_bytes:
            resp.content_length = sum(len(c) for c in script.chunks if isinstance(c, bytes))
        else:
            resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            for item in script.chunks:
                if isinstance(item, bytes):
                    if not item:
                        continue  # an empty chunk would be the chunked terminator
                    await resp.write(item)
                    await request.writer.drain()
                elif isinstance(item, Pause):
                    await item.gate.wait()
                elif isinstance(item, Stall):
                    await asyncio.Future()  # ends by cancellation: client gone or close()
                elif isinstance(item, Reset):
                    _abort_with_rst(request)
                    return resp  # aiohttp's write_eof then fails quietly
                else:
                    raise TypeError(f"unknown chunk item {item!r}")
        except ConnectionResetError:
            rec.disconnected.set()
        return resp


def _abort_with_rst(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
