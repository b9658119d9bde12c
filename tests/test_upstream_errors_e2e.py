"""Every upstream failure becomes the protocol's error, partial text kept, no secret leaked."""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import StartGateway, dashscope_env, openai_env
from fakeupstream import (
    FakeUpstream,
    Reset,
    Script,
    Stall,
    dashscope_error_body,
    dashscope_error_event,
    dashscope_sse,
    openai_error_body,
    openai_error_event,
    openai_sse,
)

KEY = "sk-test-secret-key-0123456789"


async def _failing_reply(gw: object, content: str = "hi") -> tuple[str, dict, dict]:
    async with gw.chat() as chat:  # type: ignore[attr-defined]
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.send(type="message", id="m1", content=content)
        start = await chat.expect("reply.start")
        text = ""
        while True:
            event = await chat.recv()
            if event["type"] == "reply.delta":
                text += event["text"]
            elif event["type"] == "error":
                error = event
            else:
                break
        assert event["type"] == "reply.done" and event["finish_reason"] == "error"
        assert error["reply_id"] == start["reply_id"] and error["id"] == "m1"
        stored = (await chat.hello(conversation_id))["history"][-1]
    assert stored["finish_reason"] == "error" and stored["content"] == text, "partial text is stored"
    return text, error, event


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [(401, "upstream_error", False), (403, "upstream_error", False), (400, "upstream_error", False),
     (500, "upstream_error", True), (503, "upstream_error", True)],
)
async def test_http_status_is_mapped(
    start_gateway: StartGateway, upstream: FakeUpstream, status: int, code: str, retryable: bool
) -> None:
    upstream.enqueue(Script([openai_error_body(f"Incorrect API key provided: {KEY[:6]}***{KEY[-4:]}.")], status=status))
    gw = await start_gateway(openai_env(upstream))
    _, error, _ = await _failing_reply(gw)
    assert error["code"] == code and error["retryable"] is retryable
    assert str(status) in error["message"]
    assert KEY[:6] not in error["message"] and KEY[-4:] not in error["message"], error["message"]


async def test_whole_key_echoed_is_redacted(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_error_body(f"bad key {KEY} and Bearer {KEY}")], status=401))
    gw = await start_gateway(openai_env(upstream))
    _, error, _ = await _failing_reply(gw)
    assert KEY not in error["message"] and "0123" not in error["message"]
    assert error["message"] == "the provider refused the gateway's credentials (HTTP 401): [withheld: it quoted a credential]"


@pytest.mark.parametrize(("header", "expected"), [({"Retry-After": "7"}, 7), ({"retry-after-ms": "1500"}, 1.5), ({}, 5)])
async def test_429_is_rate_limited_with_retry_after(
    start_gateway: StartGateway, upstream: FakeUpstream, header: dict[str, str], expected: float
) -> None:
    upstream.enqueue(Script([openai_error_body("slow down", code="rate_limit_exceeded")], status=429, headers=header))
    gw = await start_gateway(openai_env(upstream))
    _, error, _ = await _failing_reply(gw)
    assert error["code"] == "rate_limited" and error["retry_after"] == expected and error["retryable"] is True


async def test_connect_failure_is_upstream_unavailable(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = await start_gateway(openai_env(upstream, GATEWAY_UPSTREAM_URL=f"http://127.0.0.1:{port}/v1"))
    _, error, _ = await _failing_reply(gw)
    assert error["code"] == "upstream_unavailable" and error["retryable"] is True


async def test_stall_before_first_token_is_upstream_timeout(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([Stall()]))
    gw = await start_gateway(openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="0.3"))
    text, error, _ = await _failing_reply(gw)
    assert error["code"] == "upstream_timeout" and text == ""
    await asyncio.wait_for(upstream.requests[0].disconnected.wait(), 5)


async def test_stall_between_tokens_keeps_partial_text(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["半", "句"], finish=None, usage=None, done=False), Stall()]))
    gw = await start_gateway(openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="0.3"))
    text, error, _ = await _failing_reply(gw)
    assert error["code"] == "upstream_timeout" and text == "半句"


async def test_keepalive_comments_alone_do_not_finish_a_reply(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([b": keep-alive\n\n", b": keep-alive\n\n"]))
    gw = await start_gateway(openai_env(upstream))
    _, error, _ = await _failing_reply(gw)
    assert error["code"] == "upstream_error" and "before the reply finished" in error["message"]


async def test_reset_mid_stream(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["before reset"], finish=None, usage=None, done=False), Reset()]))
    gw = await start_gateway(openai_env(upstream))
    text, error, _ = await _failing_reply(gw)
    assert error["code"] == "upstream_error" and error["retryable"] is True and text == "before reset"


async def test_mid_stream_error_object(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    head = openai_sse(["some "], finish=None, usage=None, done=False)
    upstream.enqueue(Script([head, openai_error_event(f"overloaded, key {KEY}")]))
    gw = await start_gateway(openai_env(upstream))
    text, error, _ = await _failing_reply(gw)
    assert text == "some " and error["code"] == "upstream_error" and KEY not in error["message"]


async def test_dashscope_error_event(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([dashscope_error_event("InvalidParameter", "Input is too long")]))
    gw = await start_gateway(dashscope_env(upstream))
    _, error, _ = await _failing_reply(gw)
    assert error["code"] == "upstream_error" and "InvalidParameter" in error["message"]


async def test_dashscope_throttling_status(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([dashscope_error_body("Throttling.RateQuota", "Requests rate limit exceeded")], status=429, headers={"Retry-After": "3"}))
    gw = await start_gateway(dashscope_env(upstream))
    _, error, _ = await _failing_reply(gw)
    assert error["code"] == "rate_limited" and error["retry_after"] == 3


async def test_dashscope_truncated_stream(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    whole = dashscope_sse(["一", "二", "三"])
    upstream.enqueue(Script([whole[: whole.rindex(b"id:")]]))
    gw = await start_gateway(dashscope_env(upstream))
    text, error, _ = await _failing_reply(gw)
    assert text == "一二" and error["code"] == "upstream_error"


async def test_gateway_logs_never_contain_the_key(
    start_gateway: StartGateway, upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.enqueue(Script([openai_error_body(f"bad key {KEY}")], status=401))
    gw = await start_gateway(openai_env(upstream))
    await _failing_reply(gw, content="secret user text")
    out = capsys.readouterr().out
    assert "reply_finished" in out and KEY not in out and KEY[-8:] not in out
    assert "secret user text" not in out, "message text is not logged at info level"
