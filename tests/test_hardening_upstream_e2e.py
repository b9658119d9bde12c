"""A hostile or broken upstream, through a real gateway on loopback: the reply still ends
with the protocol's error (never ``internal``) and leaks nothing.

Covers: a gzip bomb and compressed answers (bounded inflation, ``Accept-Encoding:
identity``, unsupported encodings); out-of-range usage counts; upstream cookies never
replayed; the key quoted in disguise in an error body; absurd ``Retry-After`` values;
the upstream's address kept out of ``upstream_unavailable``; malformed chunk shapes.
"""

from __future__ import annotations

import json
import math
import socket
import zlib
from typing import Any

import aiohttp
import pytest
from conftest import TIMEOUT, Running, StartGateway, dashscope_env, openai_env
from fakeupstream import (
    DASHSCOPE_REQUEST_ID,
    FakeUpstream,
    Script,
    openai_error_body,
    openai_sse,
    rechunk,
)

KEY = "sk-test-secret-key-0123456789"
WITHHELD_400 = "the provider answered HTTP 400: [withheld: it quoted a credential]"
MAX_RESPONSE = 1 << 20
BOUNDED = f"[provider]\nmax_response_bytes = {MAX_RESPONSE}\n"


async def _reply(gw: Running, content: str = "hi") -> tuple[str, dict[str, Any] | None, dict[str, Any], str]:
    """Send one message on a new conversation; return its text, its error frame (if any),
    its ``reply.done`` and the conversation id."""
    async with gw.chat() as chat:
        conversation_id: str = (await chat.hello())["conversation_id"]
        await chat.send(type="message", id="m1", content=content)
        start = await chat.expect("reply.start")
        text, error = "", None
        while True:
            event = await chat.recv()
            if event["type"] == "reply.delta":
                text += event["text"]
            elif event["type"] == "error":
                assert error is None, f"one error frame per reply: {event}"
                assert event["reply_id"] == start["reply_id"] and event["id"] == "m1"
                error = event
            else:
                assert event["type"] == "reply.done", event
                return text, error, event, conversation_id


async def _failed(gw: Running) -> tuple[str, dict[str, Any]]:
    """A reply that must fail: its text and its error frame."""
    text, error, done, _ = await _reply(gw)
    assert error is not None and done["finish_reason"] == "error", (error, done)
    return text, error


def _gzip(data_blocks: list[bytes]) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(c.compress(b) for b in data_blocks) + c.flush()


# --------------------------------------------------------------------------- compressed answers


async def test_gzip_bomb_is_cut_at_max_response_bytes(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    line = b": " + b"x" * 1021 + b"\n"  # SSE comment lines: they carry no text, only bytes
    bomb = _gzip([line * 1024] * 8)  # 8 MiB inflated, ~16 KB sent
    assert len(bomb) < 64 * 1024
    upstream.enqueue(Script(rechunk(bomb, [4096] * 16), headers={"Content-Encoding": "gzip"}))
    gw = await start_gateway(openai_env(upstream), toml=BOUNDED)
    text, error = await _failed(gw)
    assert text == "" and error["code"] == "upstream_error"
    assert "larger than" in error["message"] and str(MAX_RESPONSE) in error["message"], error


async def test_gzip_compressed_stream_still_streams(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    body = _gzip([openai_sse(["Hello", " world"])])
    upstream.enqueue(Script(rechunk(body, [7, 1, 13, 40, 3]), headers={"Content-Encoding": "gzip"}))
    gw = await start_gateway(openai_env(upstream))
    text, error, done, _ = await _reply(gw)
    assert error is None and text == "Hello world" and done["finish_reason"] == "stop"
    rec = await upstream.next_request()
    assert rec.headers.get("Accept-Encoding") == "identity", rec.headers


async def test_unsupported_content_encoding_is_upstream_error(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([b"\x1b\x00\x00\xf8\xff\x07\x00"], headers={"Content-Encoding": "br"}))
    gw = await start_gateway(openai_env(upstream))
    _, error = await _failed(gw)
    assert error["code"] == "upstream_error" and "unsupported content encoding" in error["message"], error


async def test_an_error_status_with_an_unreadable_body_keeps_its_meaning(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        Script([b"\x1b\x00\x00\xf8\xff\x07\x00"], status=429, headers={"Content-Encoding": "br", "Retry-After": "7"})
    )
    gw = await start_gateway(openai_env(upstream))
    _, error = await _failed(gw)
    assert error["code"] == "rate_limited" and error["retry_after"] == 7, error


# --------------------------------------------------------------------------- usage out of range


async def test_huge_usage_counts_become_zero_and_reply_is_stored(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    huge = 2**63
    usage = {"prompt_tokens": huge, "completion_tokens": huge, "total_tokens": huge}
    upstream.enqueue(Script([openai_sse(["Hello", " world"], usage=usage)]))
    gw = await start_gateway(openai_env(upstream))
    text, error, done, conversation_id = await _reply(gw)
    assert error is None and text == "Hello world"
    assert done["finish_reason"] == "stop"
    # Counts no one can believe are not passed on: the gateway's estimate is, and says so.
    assert done["usage"]["estimated"] is True and 0 < done["usage"]["total_tokens"] < 100
    async with gw.chat() as chat:
        history = (await chat.hello(conversation_id))["history"]
    assert history[-1]["role"] == "assistant" and history[-1]["content"] == "Hello world", history
    assert history[-1]["finish_reason"] == "stop"


async def test_negative_usage_counts_leave_metrics_and_conversation_usable(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    usage = {"prompt_tokens": -5, "completion_tokens": -5, "total_tokens": -10}
    upstream.enqueue(Script([openai_sse(["first"], usage=usage)]), Script([openai_sse(["second"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        text, events = await chat.ask("one", "m1")
        done = events[-1]
        assert text == "first" and done["finish_reason"] == "stop"
        assert done["usage"]["estimated"] is True and done["usage"]["prompt_tokens"] >= 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with http.get(f"{gw.http_url}/metrics") as resp:
                assert resp.status == 200
                assert "gateway_" in await resp.text()
        text, events = await chat.ask("two", "m2")  # the first reply was released
        assert text == "second" and events[-1]["finish_reason"] == "stop", events


# --------------------------------------------------------------------------- no cookie jar


async def test_upstream_cookies_are_never_sent_back(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    cookie = {"Set-Cookie": "session=abc; Path=/"}
    upstream.enqueue(Script([openai_sse(["A"])], headers=cookie), Script([openai_sse(["B"])], headers=cookie))
    # A host name, not an IP address: aiohttp's default jar ignores cookies from IP hosts.
    url = upstream.openai_base.replace("127.0.0.1", "localhost")
    gw = await start_gateway(openai_env(upstream, GATEWAY_UPSTREAM_URL=url))
    assert (await _reply(gw))[0] == "A"
    async with gw.chat() as chat:  # another user
        await chat.hello()
        text, _ = await chat.ask("again")
    assert text == "B"
    first, second = await upstream.next_request(), await upstream.next_request()
    assert first.script is not None and "Set-Cookie" in first.script.headers
    assert "Cookie" not in second.headers, second.headers


# --------------------------------------------------------------------------- key in disguise


def _spaced(key: str) -> str:
    return " ".join(key)


def _percent_encoded(key: str) -> str:
    return "".join(f"%{b:02X}" for b in key.encode())


@pytest.mark.parametrize(
    "quoted",
    [
        KEY.upper(),
        "secret-key-01",
        KEY.replace("-", "%2D").replace("s", "%73"),
        _percent_encoded(KEY),
        "".join(f"&#{ord(c)};" for c in KEY[5:20]),
        _spaced(KEY),
        _spaced(KEY.upper()[5:20]),
    ],
    ids=["upper", "middle-slice", "url-some", "url-all", "html-entities", "spaced", "spaced-upper-slice"],
)
async def test_key_quoted_in_disguise_is_withheld(
    start_gateway: StartGateway, upstream: FakeUpstream, quoted: str
) -> None:
    upstream.enqueue(Script([openai_error_body(f"Incorrect API key provided: {quoted}.")], status=400))
    gw = await start_gateway(openai_env(upstream))
    _, error = await _failed(gw)
    message = error["message"]
    assert message == WITHHELD_400, message
    folded = message.casefold()
    assert not any(KEY[i : i + 8].casefold() in folded for i in range(len(KEY) - 7)), message


# --------------------------------------------------------------------------- retry_after


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after-ms": "inf"},
        {"retry-after-ms": "nan"},
        {"retry-after-ms": "1e308"},
        {"retry-after-ms": "1e400"},
        {"Retry-After": "1e400"},
        {"Retry-After": "inf"},
        {"Retry-After": "-5"},
        {"Retry-After": "99999999"},
    ],
    ids=lambda h: "=".join(next(iter(h.items()))),
)
async def test_absurd_retry_after_is_a_bounded_number(
    start_gateway: StartGateway, upstream: FakeUpstream, headers: dict[str, str]
) -> None:
    upstream.enqueue(Script([openai_error_body("slow down", code="rate_limit_exceeded")], status=429, headers=headers))
    gw = await start_gateway(openai_env(upstream))
    _, error = await _failed(gw)
    assert error["code"] == "rate_limited"
    retry_after = error.get("retry_after")
    assert isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool), error
    assert math.isfinite(retry_after) and 0 <= retry_after <= 3600, error


# --------------------------------------------------------------------------- no address


async def test_upstream_unavailable_does_not_reveal_the_address(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = await start_gateway(openai_env(upstream, GATEWAY_UPSTREAM_URL=f"http://127.0.0.1:{port}/v1"))
    _, error = await _failed(gw)
    assert error["code"] == "upstream_unavailable"
    assert error["message"] == "cannot connect to the provider", error
    assert "127.0.0.1" not in error["message"] and str(port) not in error["message"]


# --------------------------------------------------------------------------- odd shapes


async def test_choices_object_is_upstream_error_not_internal(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    chunk = {"choices": {"0": {"delta": {"content": "x"}}}}
    upstream.enqueue(Script([f"data: {json.dumps(chunk)}\n\n".encode(), b"data: [DONE]\n\n"]))
    gw = await start_gateway(openai_env(upstream))
    _, error = await _failed(gw)
    assert error["code"] == "upstream_error", error


def _dashscope_event(n: int, content: object, finish: str) -> bytes:
    data = {
        "output": {"choices": [{"message": {"content": content, "role": "assistant"}, "finish_reason": finish}]},
        "usage": {"input_tokens": 5, "output_tokens": n, "total_tokens": 5 + n},
        "request_id": DASHSCOPE_REQUEST_ID,
    }
    return f"id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(data)}\n\n".encode()


async def test_dashscope_non_string_multimodal_text_is_not_internal(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Script([
        _dashscope_event(1, [{"text": "Hi"}], "null"),
        _dashscope_event(2, [{"text": 5}, {"text": None}, {"text": ["x"]}], "stop"),
    ]))
    gw = await start_gateway(dashscope_env(upstream))
    text, error, done, _ = await _reply(gw)
    assert error is None, "the parts that are not text are skipped"
    assert text == "Hi" and done["finish_reason"] == "stop", done
