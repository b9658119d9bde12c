"""Tests for the fake LLM upstream (tests/fakeupstream.py), using a plain aiohttp client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fakeupstream import (
    DASHSCOPE_REQUEST_ID,
    FakeUpstream,
    Pause,
    Recorded,
    Reset,
    Script,
    Stall,
    dashscope_error_body,
    dashscope_error_event,
    dashscope_sse,
    openai_error_body,
    openai_error_event,
    openai_sse,
    rechunk,
)

SAFETY = 5.0  # seconds; only a guard against hangs, never used to synchronise


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """A strict little SSE parser: events as {field: value}, comments under '#comments'."""
    text = raw.decode("utf-8")
    lines = text.replace("\r\n", "\n").split("\n")
    assert lines[-1] == "", "stream must end with a line terminator"
    events: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    for line in lines[:-1]:
        if line == "":
            if cur:
                events.append(cur)
            cur = {}
            continue
        if line.startswith(":"):
            cur.setdefault("#comments", []).append(line[1:])
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        assert name not in cur, f"duplicate field {name!r}"
        cur[name] = value
    assert cur == {}, "last event not terminated by a blank line"
    return events


def data_events(raw: bytes) -> list[str]:
    return [e["data"] for e in parse_sse(raw) if "data" in e]


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def wait(ev: asyncio.Event) -> None:
    async with asyncio.timeout(SAFETY):
        await ev.wait()


# --------------------------------------------------------------------------- byte builders


def test_openai_sse_shape() -> None:
    raw = openai_sse(["你好", "，世界"], reasoning=["思考"], model="m1")
    assert "你好".encode() in raw and b"\\u" not in raw  # raw UTF-8, not escaped
    assert raw.endswith(b"data: [DONE]\n\n")
    assert all(line.startswith(b"data: ") for line in raw.split(b"\n") if line)
    datas = data_events(raw)
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    for c in chunks:
        assert c["id"] == "chatcmpl-1"
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == "m1"
        assert isinstance(c["created"], int)
    role, reason, t1, t2, final, usage = chunks
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    assert reason["choices"][0]["delta"] == {"reasoning_content": "思考"}
    assert [t1["choices"][0]["delta"], t2["choices"][0]["delta"]] == [
        {"content": "你好"},
        {"content": "，世界"},
    ]
    assert t1["choices"][0]["finish_reason"] is None
    assert final["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_openai_sse_options() -> None:
    raw = openai_sse(["a"], finish="length", usage=None, done=False, crlf=True, comments=True)
    assert b"\r\n\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")
    assert raw.replace(b"\r\n", b"").count(b"\n") == 0  # every LF is part of a CRLF
    events = parse_sse(raw)
    comments = [c for e in events for c in e.get("#comments", [])]
    assert " OPENROUTER PROCESSING" in comments and " keep-alive" in comments
    datas = [json.loads(d) for d in data_events(raw)]
    assert len(datas) == 3  # role, "a", final; no usage, no [DONE]
    assert datas[-1]["choices"][0]["finish_reason"] == "length"
    assert data_events(openai_sse(["a"], finish=None, usage=None)) == [
        data_events(openai_sse(["a"]))[0],
        data_events(openai_sse(["a"]))[1],
        "[DONE]",
    ]
    custom = openai_sse([], usage={"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1})
    assert json.loads(data_events(custom)[-2])["usage"]["prompt_tokens"] == 1


def test_openai_errors() -> None:
    ev = openai_error_event("upstream overloaded", code=502)
    assert ev.startswith(b"data: {") and ev.endswith(b"}\n\n")
    assert json.loads(data_events(ev)[0]) == {
        "error": {"message": "upstream overloaded", "type": "server_error", "code": 502}
    }
    assert json.loads(data_events(openai_error_event("x"))[0])["error"]["code"] == "server_error"
    body = json.loads(openai_error_body("Rate limit reached", "requests", "rate_limit_exceeded"))
    assert body == {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert json.loads(openai_error_body("bad"))["error"]["type"] == "invalid_request_error"


def test_dashscope_sse_incremental_message() -> None:
    raw = dashscope_sse(["你好", "呀", "!"])
    assert b"[DONE]" not in raw and "你好".encode() in raw
    first = raw.split(b"\n\n")[0]
    assert first.startswith(b'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"choices":')
    events = parse_sse(raw)
    assert [e["id"] for e in events] == ["1", "2", "3"]
    assert all(e["event"] == "result" and e["#comments"] == ["HTTP_STATUS/200"] for e in events)
    datas = [json.loads(e["data"]) for e in events]
    assert [d["output"]["choices"][0]["message"] for d in datas] == [
        {"content": "你好", "role": "assistant"},
        {"content": "呀", "role": "assistant"},
        {"content": "!", "role": "assistant"},
    ]
    assert [d["output"]["choices"][0]["finish_reason"] for d in datas] == ["null", "null", "stop"]
    assert [list(d) for d in datas] == [["output", "usage", "request_id"]] * 3
    assert datas[-1]["usage"] == {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}
    assert datas[0]["request_id"] == DASHSCOPE_REQUEST_ID


def test_dashscope_sse_cumulative_text_crlf() -> None:
    raw = dashscope_sse(["a", "b", "c"], cumulative=True, result_format="text", finish="length", crlf=True)
    assert raw.startswith(b"id:1\r\nevent:result\r\n:HTTP_STATUS/200\r\ndata:{")
    datas = [json.loads(e["data"]) for e in parse_sse(raw)]
    assert [d["output"] for d in datas] == [
        {"text": "a", "finish_reason": "null"},
        {"text": "ab", "finish_reason": "null"},
        {"text": "abc", "finish_reason": "length"},
    ]


def test_dashscope_errors() -> None:
    ev = dashscope_error_event("InvalidParameter", "bad input 参数")
    assert ev.startswith(b"id:1\nevent:error\n:HTTP_STATUS/400\ndata:{")
    (e,) = parse_sse(ev)
    assert json.loads(e["data"]) == {
        "code": "InvalidParameter",
        "message": "bad input 参数",
        "request_id": DASHSCOPE_REQUEST_ID,
    }
    assert b":HTTP_STATUS/500\n" in dashscope_error_event("InternalError", "x", 500)
    assert json.loads(dashscope_error_body("InvalidApiKey", "Invalid API-key provided.")) == {
        "code": "InvalidApiKey",
        "message": "Invalid API-key provided.",
        "request_id": DASHSCOPE_REQUEST_ID,
    }


def test_rechunk_default_is_awkward_and_deterministic() -> None:
    data = openai_sse(["你好世界"], crlf=True)
    pieces = rechunk(data)
    assert b"".join(pieces) == data
    assert pieces == rechunk(data) and pieces != rechunk(data, seed=1)
    assert all(1 <= len(p) <= 7 for p in pieces)
    assert any(p.endswith(b"\r") for p in pieces)  # split between CR and LF
    with pytest.raises(UnicodeDecodeError):  # some piece is cut mid-character
        for p in pieces:
            p.decode("utf-8")


def test_rechunk_explicit_sizes() -> None:
    assert rechunk(b"abcdefgh", [1, 2, 3]) == [b"a", b"bc", b"def", b"gh"]
    assert rechunk(b"abc", [5]) == [b"abc"]
    assert rechunk(b"", [1]) == []
    with pytest.raises(ValueError):
        rechunk(b"abc", [0])


# --------------------------------------------------------------------------- the server


async def test_chunks_arrive_in_order(up: FakeUpstream, client: aiohttp.ClientSession) -> None:
    body = openai_sse(["你好", " world"], comments=True, crlf=True)
    pieces = rechunk(body)
    up.enqueue(Script(list(pieces)))
    async with client.post(up.openai_base + "/chat/completions", json={"a": 1}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        got = [c async for c in resp.content.iter_any()]
    assert b"".join(got) == body
    rec = await up.next_request()
    await wait(rec.finished)
    assert not rec.disconnected.is_set()


async def test_non_200_status_headers_body(up: FakeUpstream, client: aiohttp.ClientSession) -> None:
    body = openai_error_body("Rate limit reached", "requests", "rate_limit_exceeded")
    up.enqueue(Script([body], status=429, headers={"Retry-After": "7"}))
    async with client.post(up.openai_base + "/chat/completions", json={}) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Content-Length"] == str(len(body))
        assert await resp.read() == body


async def test_pause_releases_on_gate(up: FakeUpstream, client: aiohttp.ClientSession) -> None:
    gate = asyncio.Event()
    up.enqueue(Script([b"data: one\n\n", Pause(gate), b"data: two\n\n"]))
    async with client.post(up.openai_base + "/chat/completions", json={}) as resp:
        async with asyncio.timeout(SAFETY):
            assert await resp.content.readexactly(11) == b"data: one\n\n"
        rec = await up.next_request()
        assert not rec.finished.is_set() and not resp.content.at_eof()
        gate.set()
        async with asyncio.timeout(SAFETY):
            assert await resp.read() == b"data: two\n\n"
    await wait(rec.finished)
    assert not rec.disconnected.is_set()


async def test_reset_breaks_the_body(up: FakeUpstream, client: aiohttp.ClientSession) -> None:
    up.enqueue(Script([b"data: partial\n\n", Reset(), b"data: never\n\n"]))
    async with client.post(up.openai_base + "/chat/completions", json={}) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):  # cause: ConnectionResetError (RST)
            async with asyncio.timeout(SAFETY):
                await resp.read()
    rec = await up.next_request()
    await wait(rec.finished)
    assert not rec.disconnected.is_set()  # the server cut it, not the client


async def test_stall_then_client_close_sets_disconnected(
    up: FakeUpstream, client: aiohttp.ClientSession
) -> None:
    up.enqueue(Script([b"data: x\n\n", Stall()]))
    resp = await client.post(up.openai_base + "/chat/completions", json={})
    async with asyncio.timeout(SAFETY):
        assert await resp.content.readexactly(9) == b"data: x\n\n"
    rec = await up.next_request()
    assert not rec.finished.is_set()
    resp.close()
    await wait(rec.disconnected)
    await wait(rec.finished)


async def test_stall_ends_when_server_closes(client: aiohttp.ClientSession) -> None:
    up = FakeUpstream()
    await up.start()
    try:
        gate = asyncio.Event()
        up.enqueue(Script([b"data: x\n\n", Pause(gate)]), Script([Stall()]))
        r1 = await client.post(up.openai_base + "/chat/completions", json={})
        r2 = await client.post(up.openai_base + "/chat/completions", json={})
        rec1, rec2 = await up.next_request(), await up.next_request()
    finally:
        await up.close()
    assert rec1.finished.is_set() and rec2.finished.is_set()
    assert not rec1.disconnected.is_set() and not rec2.disconnected.is_set()
    for r in (r1, r2):
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(SAFETY):
                await r.read()
        r.release()


async def test_next_request_in_order_with_json_and_headers(
    up: FakeUpstream, client: aiohttp.ClientSession
) -> None:
    pending = asyncio.create_task(up.next_request())
    for i in range(3):
        async with client.post(
            up.openai_base + "/chat/completions",
            json={"n": i, "q": "中文"},
            headers={"Authorization": f"Bearer k{i}"},
        ) as resp:
            await resp.read()
    first = await pending
    recs: list[Recorded] = [first, await up.next_request(), await up.next_request()]
    assert [r.json for r in recs] == [{"n": i, "q": "中文"} for i in range(3)]
    assert [r.headers["Authorization"] for r in recs] == ["Bearer k0", "Bearer k1", "Bearer k2"]
    assert recs[0].headers["authorization"] == "Bearer k0"  # case-insensitive lookup
    assert recs[0].headers["Content-Type"] == "application/json"
    assert all(r.path == "/v1/chat/completions" and r.method == "POST" for r in recs)
    assert up.requests == recs


async def test_default_answers(up: FakeUpstream, client: aiohttp.ClientSession) -> None:
    async with client.post(up.openai_base + "/chat/completions", json={}) as resp:
        assert await resp.read() == openai_sse(["Hello", " world"])
    async with client.post(up.dashscope_url, json={}) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert await resp.read() == dashscope_sse(["Hello", " world"])
    async with client.post(up.url + "/nope", json={}) as resp:
        assert resp.status == 404
    up.enqueue(Script([b"queued"]))
    up.set_default(lambda rec: Script([f"default {rec.json['n']}".encode()]))
    bodies = []
    for n in range(2):
        async with client.post(up.openai_base + "/chat/completions", json={"n": n}) as resp:
            bodies.append(await resp.read())
    assert bodies == [b"queued", b"default 1"]


async def test_many_concurrent_streams(up: FakeUpstream, client: aiohttp.ClientSession) -> None:
    up.set_default(lambda rec: Script(rechunk(openai_sse([str(rec.json["n"])]), seed=rec.json["n"])))

    async def one(n: int) -> bytes:
        async with client.post(up.openai_base + "/chat/completions", json={"n": n}) as resp:
            return await resp.read()

    async with asyncio.timeout(SAFETY):
        got = await asyncio.gather(*(one(n) for n in range(20)))
    assert got == [openai_sse([str(n)]) for n in range(20)]
