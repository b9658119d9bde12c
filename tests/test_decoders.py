"""Tests for the provider decoders, fed real SSE byte streams split at awkward offsets."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

import pytest
from fakeupstream import dashscope_error_event, dashscope_sse, openai_error_event, openai_sse, rechunk

from gateway.errors import ErrorCode, UpstreamError
from gateway.providers import dashscope, openai
from gateway.providers.base import Chunk, Usage, finish_reason
from gateway.sse import SSEDecoder, SSEEvent

TEXTS = [
    "你好",
    "，世界！",
    "🙂👍🏽🇨🇳",
    " plain ASCII ",
    "data: not a field\n\n",
    "[DONE]",
    "\r\nCRLF and \"quotes\" and \\ backslash",
    "末尾。",
]
REASONING = ["让我想想……", "用户在打招呼", " 🤔"]
SEEDS = range(60)


class Decoder(Protocol):
    def receive(self, event: SSEEvent) -> Chunk | None: ...


def run(decoder: Decoder, pieces: Iterable[bytes]) -> list[Chunk]:
    """Feed byte pieces through a fresh SSEDecoder into ``decoder``; return its chunks."""
    sse = SSEDecoder()
    chunks: list[Chunk] = []
    for piece in pieces:
        for event in sse.feed(piece):
            if (chunk := decoder.receive(event)) is not None:
                chunks.append(chunk)
    for event in sse.close():
        if (chunk := decoder.receive(event)) is not None:
            chunks.append(chunk)
    return chunks


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def reasoning_of(chunks: list[Chunk]) -> str:
    return "".join(c.reasoning for c in chunks)


def finishes(chunks: list[Chunk]) -> list[str]:
    return [c.finish_reason for c in chunks if c.finish_reason is not None]


def every_split(data: bytes) -> Iterable[list[bytes]]:
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


# --------------------------------------------------------------------------- OpenAI-compatible

OPENAI_STREAMS: list[Any] = [
    pytest.param(openai_sse(TEXTS), id="plain"),
    pytest.param(openai_sse(TEXTS, crlf=True), id="crlf"),
    pytest.param(openai_sse(TEXTS, comments=True), id="openrouter_comments"),
    pytest.param(openai_sse(TEXTS, reasoning=REASONING), id="deepseek_reasoning"),
    pytest.param(
        openai_sse(TEXTS, reasoning=REASONING, crlf=True).replace(b'"reasoning_content"', b'"reasoning"'),
        id="openrouter_reasoning",
    ),
]


@pytest.mark.parametrize("data", OPENAI_STREAMS)
def test_openai_text_survives_any_chunking(data: bytes) -> None:
    has_reasoning = b"reasoning" in data
    for seed in SEEDS:
        decoder = openai.OpenAIDecoder()
        chunks = run(decoder, rechunk(data, seed=seed))
        assert text_of(chunks) == "".join(TEXTS), seed
        assert reasoning_of(chunks) == ("".join(REASONING) if has_reasoning else "")
        assert finishes(chunks) == ["stop"]
        assert chunks[-1].usage == Usage(5, len(TEXTS) + (len(REASONING) if has_reasoning else 0))
        assert decoder.done and decoder.finished


def test_openai_small_stream_split_at_every_offset() -> None:
    data = openai_sse(["你", "🙂"], reasoning=["想"], usage={"prompt_tokens": 2, "completion_tokens": 3})
    for pieces in every_split(data):
        decoder = openai.OpenAIDecoder()
        chunks = run(decoder, pieces)
        assert (text_of(chunks), reasoning_of(chunks)) == ("你🙂", "想")
        assert finishes(chunks) == ["stop"]
        assert chunks[-1].usage == Usage(2, 3)
        assert decoder.done


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_openai_reasoning_never_mixes_into_text(field: str) -> None:
    data = openai_sse(["答案"], reasoning=["思考一", "思考二"]).replace(b'"reasoning_content"', f'"{field}"'.encode())
    chunks = run(openai.OpenAIDecoder(), [data])
    assert [c.text for c in chunks if c.reasoning] == ["", ""]
    assert [c.reasoning for c in chunks if c.text] == [""]
    assert (text_of(chunks), reasoning_of(chunks)) == ("答案", "思考一思考二")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("stop", "stop"), ("length", "length"), ("content_filter", "stop"), ("tool_calls", "stop"),
     ("max_tokens", "length"), ("eos", "stop")],
)
def test_openai_finish_reasons_normalise(raw: str, expected: str) -> None:
    decoder = openai.OpenAIDecoder()
    chunks = run(decoder, rechunk(openai_sse(["x"], finish=raw), seed=1))
    assert finishes(chunks) == [expected]
    assert decoder.finished


def test_openai_without_finish_is_not_finished() -> None:
    decoder = openai.OpenAIDecoder()
    chunks = run(decoder, [openai_sse(["x"], finish=None, usage=None, done=False)])
    assert text_of(chunks) == "x" and finishes(chunks) == []
    assert not decoder.finished and not decoder.done


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}, Usage(11, 22)),
        ({"prompt_tokens": 7}, Usage(7, 0)),
        ({"prompt_tokens": "7", "completion_tokens": None}, Usage(0, 0)),
        (  # OpenAI, OpenRouter, vLLM
            {"prompt_tokens": 50, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 32},
             "completion_tokens_details": {"reasoning_tokens": 20}},
            Usage(50, 30, reasoning_tokens=20, cached_tokens=32),
        ),
        (  # DeepSeek
            {"prompt_tokens": 50, "completion_tokens": 30, "prompt_cache_hit_tokens": 48,
             "completion_tokens_details": {"reasoning_tokens": "lots"}},
            Usage(50, 30, cached_tokens=48),
        ),
        ({"prompt_tokens": 1, "completion_tokens_details": [1], "prompt_tokens_details": None}, Usage(1, 0)),
    ],
)
def test_openai_usage_chunk_with_empty_choices(usage: dict[str, Any], expected: Usage) -> None:
    chunks = run(openai.OpenAIDecoder(), [openai_sse(["x"], usage=usage)])
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] == Chunk(usage=expected)


def test_openai_no_usage_chunk() -> None:
    chunks = run(openai.OpenAIDecoder(), [openai_sse(["x"], usage=None)])
    assert all(c.usage is None for c in chunks)


def test_usage_as_dict() -> None:
    assert Usage(3, 4).as_dict() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    both = Usage(3, 4, reasoning_tokens=2, cached_tokens=1)
    assert both.as_dict() == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "reasoning_tokens": 2, "cached_tokens": 1,
    }
    assert Usage.of(both.as_dict(), estimated=True) == Usage(3, 4, 2, 1, estimated=True)


@pytest.mark.parametrize("done", [True, False])
def test_openai_done_marker(done: bool) -> None:
    decoder = openai.OpenAIDecoder()
    run(decoder, [openai_sse(["x"], done=done)])
    assert decoder.done is done
    assert decoder.finished


@pytest.mark.parametrize(
    ("code", "expected", "retry_after"),
    [
        (429, ErrorCode.RATE_LIMITED, 5),
        ("429", ErrorCode.RATE_LIMITED, 5),
        ("rate_limit_exceeded", ErrorCode.RATE_LIMITED, 5),
        ("server_error", ErrorCode.UPSTREAM_ERROR, None),
        (502, ErrorCode.UPSTREAM_ERROR, None),
    ],
)
def test_openai_mid_stream_error(code: str | int, expected: ErrorCode, retry_after: float | None) -> None:
    data = openai_sse(["部分", "回答"], finish=None, usage=None, done=False) + openai_error_event("Provider 出错", code)
    for seed in range(10):
        chunks: list[Chunk] = []
        decoder = openai.OpenAIDecoder()
        sse = SSEDecoder()
        with pytest.raises(UpstreamError) as info:
            for piece in rechunk(data, seed=seed):
                for event in sse.feed(piece):
                    if (chunk := decoder.receive(event)) is not None:
                        chunks.append(chunk)
        assert text_of(chunks) == "部分回答"
        exc = info.value
        assert exc.code is expected
        assert exc.retryable is True
        assert exc.retry_after == retry_after
        assert "Provider 出错" in exc.message


@pytest.mark.parametrize(
    "data",
    [
        b'event: error\ndata: {"message":"overloaded"}\n\n',
        b'data: {"error":"plain string error"}\n\n',
        b'data: {"error":{"message":null}}\n\n',
    ],
    ids=["error_event", "string_error", "no_message"],
)
def test_openai_other_error_shapes(data: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        run(openai.OpenAIDecoder(), [data])
    assert info.value.code is ErrorCode.UPSTREAM_ERROR
    assert info.value.retryable is True


def test_openai_invalid_json_is_a_retryable_upstream_error() -> None:
    with pytest.raises(UpstreamError) as info:
        run(openai.OpenAIDecoder(), [b'data: {"choices": [\n\n'])
    assert info.value.code is ErrorCode.UPSTREAM_ERROR and info.value.retryable is True


@pytest.mark.parametrize(
    "data",
    [
        b"data: 42\n\n",
        b'data: ["x"]\n\n',
        b"data:\n\n",
        b'event: ping\ndata: {"error":"not for us"}\n\n',
        b'data: {"choices":[{"delta":null}]}\n\n',
        b'data: {"choices":["x"]}\n\n',
        b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n',
        b": keep-alive\n\n",
    ],
)
def test_openai_ignores_events_without_content(data: bytes) -> None:
    decoder = openai.OpenAIDecoder()
    assert run(decoder, [data]) == []
    assert not decoder.done and not decoder.finished


def test_openai_non_string_content_is_dropped() -> None:
    chunks = run(openai.OpenAIDecoder(), [b'data: {"choices":[{"delta":{"content":["x"]},"finish_reason":"stop"}]}\n\n'])
    assert chunks == [Chunk(text="", finish_reason="stop")]


def test_openai_endpoint() -> None:
    assert openai.endpoint("https://api.openai.com/v1/") == "https://api.openai.com/v1/chat/completions"
    assert openai.endpoint("http://127.0.0.1:11434/v1") == "http://127.0.0.1:11434/v1/chat/completions"


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_build_body(include_usage: bool) -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "你好"}]
    params = {"temperature": 0.2, "max_tokens": 10, "stream": False, "model": "wrong"}
    body = openai.build_body("gpt-test", messages, params, include_usage=include_usage)
    expected: dict[str, Any] = {
        "temperature": 0.2,
        "max_tokens": 10,
        "model": "gpt-test",
        "messages": messages,
        "stream": True,
    }
    if include_usage:
        expected["stream_options"] = {"include_usage": True}
    assert body == expected
    assert body["messages"] is not messages
    assert params["model"] == "wrong"  # the caller's mapping is not modified


# --------------------------------------------------------------------------- DashScope native


@pytest.mark.parametrize("result_format", ["message", "text"])
@pytest.mark.parametrize("cumulative", [False, True], ids=["incremental", "cumulative"])
@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_dashscope_text_survives_any_chunking(result_format: str, cumulative: bool, crlf: bool) -> None:
    data = dashscope_sse(TEXTS, cumulative=cumulative, result_format=result_format, crlf=crlf)
    for seed in SEEDS:
        decoder = dashscope.DashScopeDecoder(incremental=not cumulative)
        chunks = run(decoder, rechunk(data, seed=seed))
        assert text_of(chunks) == "".join(TEXTS), seed
        assert [c.text for c in chunks] == TEXTS  # one delta per event, nothing repeated
        assert finishes(chunks) == ["stop"]
        assert chunks[-1].finish_reason == "stop"
        assert chunks[-1].usage == Usage(5, len(TEXTS))
        assert all(c.usage is None for c in chunks[:-1])
        assert decoder.done and decoder.finished


@pytest.mark.parametrize("cumulative", [False, True], ids=["incremental", "cumulative"])
def test_dashscope_small_stream_split_at_every_offset(cumulative: bool) -> None:
    data = dashscope_sse(["你", "🙂"], cumulative=cumulative, input_tokens=3)
    for pieces in every_split(data):
        chunks = run(dashscope.DashScopeDecoder(incremental=not cumulative), pieces)
        assert [c.text for c in chunks] == ["你", "🙂"]
        assert chunks[-1].usage == Usage(3, 2)


def test_dashscope_null_finish_means_not_finished() -> None:
    data = dashscope_sse(["a", "b", "c"])
    events = [e for e in SSEDecoder().feed(data)]
    decoder = dashscope.DashScopeDecoder(incremental=True)
    for event in events[:-1]:
        chunk = decoder.receive(event)
        assert chunk is not None and chunk.finish_reason is None
        assert not decoder.finished and not decoder.done
    last = decoder.receive(events[-1])
    assert last is not None and last.finish_reason == "stop" and decoder.done


@pytest.mark.parametrize(("raw", "expected"), [("stop", "stop"), ("length", "length"), ("content_filter", "stop")])
def test_dashscope_finish_reasons(raw: str, expected: str) -> None:
    chunks = run(dashscope.DashScopeDecoder(incremental=True), [dashscope_sse(["x", "y"], finish=raw)])
    assert finishes(chunks) == [expected]


def test_dashscope_cumulative_final_event_without_new_text() -> None:
    """A last cumulative frame that only repeats the text adds nothing but the finish."""
    data = dashscope_sse(["你好", "世界", ""], cumulative=True)
    chunks = run(dashscope.DashScopeDecoder(incremental=False), rechunk(data, seed=3))
    assert text_of(chunks) == "你好世界"
    assert chunks[-1] == Chunk(text="", finish_reason="stop", usage=Usage(5, 3))


def test_dashscope_cumulative_reasoning_is_deduplicated() -> None:
    frames = [
        {"output": {"choices": [{"message": {"reasoning_content": "想", "content": ""}, "finish_reason": "null"}]}},
        {"output": {"choices": [{"message": {"reasoning_content": "想好了", "content": ""}, "finish_reason": "null"}]}},
        {"output": {"choices": [{"message": {"reasoning_content": "想好了", "content": "答"}, "finish_reason": "null"}]}},
        {"output": {"choices": [{"message": {"reasoning_content": "想好了", "content": "答案"}, "finish_reason": "stop"}]}},
    ]
    data = b"".join(f"event:result\ndata:{json.dumps(f, ensure_ascii=False)}\n\n".encode() for f in frames)
    chunks = run(dashscope.DashScopeDecoder(incremental=False), rechunk(data, seed=5))
    assert (text_of(chunks), reasoning_of(chunks)) == ("答案", "想好了")


def test_dashscope_multimodal_content_list() -> None:
    data = b'event:result\ndata:{"output":{"choices":[{"message":{"content":[{"text":"\xe5\x9b\xbe"},{"image":"x"},{"text":"!"}]},"finish_reason":"stop"}]}}\n\n'
    chunks = run(dashscope.DashScopeDecoder(incremental=True), [data])
    assert text_of(chunks) == "图!"


@pytest.mark.parametrize(
    ("code", "status", "expected", "retryable", "retry_after"),
    [
        ("Throttling.RateQuota", 429, ErrorCode.RATE_LIMITED, True, 5),
        ("Throttling", 429, ErrorCode.RATE_LIMITED, True, 5),
        ("InternalError.Algo", 500, ErrorCode.UPSTREAM_ERROR, True, None),
        ("ServiceUnavailable", 503, ErrorCode.UPSTREAM_ERROR, True, None),
        ("InvalidParameter", 400, ErrorCode.UPSTREAM_ERROR, False, None),
        ("DataInspectionFailed", 400, ErrorCode.UPSTREAM_ERROR, False, None),
    ],
)
def test_dashscope_error_event_raises(
    code: str, status: int, expected: ErrorCode, retryable: bool, retry_after: float | None
) -> None:
    first = dashscope_sse(["部分", "never"]).split(b"\n\n")[0] + b"\n\n"
    data = first + dashscope_error_event(code, "出错了 details", status, event_id=2)
    for seed in range(10):
        chunks: list[Chunk] = []
        decoder = dashscope.DashScopeDecoder(incremental=True)
        sse = SSEDecoder()
        with pytest.raises(UpstreamError) as info:
            for piece in rechunk(data, seed=seed):
                for event in sse.feed(piece):
                    if (chunk := decoder.receive(event)) is not None:
                        chunks.append(chunk)
        assert text_of(chunks) == "部分"
        exc = info.value
        assert (exc.code, exc.retryable, exc.retry_after) == (expected, retryable, retry_after)
        assert "出错了 details" in exc.message


def test_dashscope_error_object_without_event_error_raises() -> None:
    data = b'event:result\ndata:{"code":"InvalidApiKey","message":"Invalid API-key provided."}\n\n'
    with pytest.raises(UpstreamError) as info:
        run(dashscope.DashScopeDecoder(incremental=True), [data])
    assert info.value.code is ErrorCode.UPSTREAM_ERROR
    assert "InvalidApiKey" in info.value.message


@pytest.mark.parametrize("data", [b"data: 42\n\n", b"data:\n\n", b'data:{"output":{}}\n\n', b'data:{"code":""}\n\n'])
def test_dashscope_ignores_events_without_content(data: bytes) -> None:
    decoder = dashscope.DashScopeDecoder(incremental=True)
    assert run(decoder, [data]) == []
    assert not decoder.done


def test_dashscope_invalid_json_is_a_retryable_upstream_error() -> None:
    with pytest.raises(UpstreamError) as info:
        run(dashscope.DashScopeDecoder(incremental=True), [b"event:result\ndata:{oops\n\n"])
    assert info.value.code is ErrorCode.UPSTREAM_ERROR and info.value.retryable is True


@pytest.mark.parametrize(
    ("body", "status", "expected", "retryable", "retry_after"),
    [
        ({"code": "Throttling", "message": "m"}, None, ErrorCode.RATE_LIMITED, True, 5),
        ({"code": "Throttling.RateQuota", "message": "m"}, 400, ErrorCode.RATE_LIMITED, True, 5),
        ({"code": "Throttling.AllocationQuota", "message": "m"}, None, ErrorCode.RATE_LIMITED, True, 5),
        ({"code": "SomethingElse", "message": "m"}, 429, ErrorCode.RATE_LIMITED, True, 5),
        ({"code": "InternalError", "message": "m"}, None, ErrorCode.UPSTREAM_ERROR, True, None),
        ({"code": "InternalError.Timeout", "message": "m"}, 200, ErrorCode.UPSTREAM_ERROR, True, None),
        ({"code": "ServiceUnavailable", "message": "m"}, None, ErrorCode.UPSTREAM_ERROR, True, None),
        ({"code": "", "message": "m"}, 500, ErrorCode.UPSTREAM_ERROR, True, None),
        ({}, 502, ErrorCode.UPSTREAM_ERROR, True, None),
        ({"code": "InvalidApiKey", "message": "m"}, 401, ErrorCode.UPSTREAM_ERROR, False, None),
        ({"code": "InvalidParameter", "message": "m"}, 400, ErrorCode.UPSTREAM_ERROR, False, None),
        ({"code": "InvalidParameter"}, None, ErrorCode.UPSTREAM_ERROR, False, None),
    ],
)
def test_dashscope_error_from_body(
    body: dict[str, Any], status: int | None, expected: ErrorCode, retryable: bool, retry_after: float | None
) -> None:
    exc = dashscope.error_from_body(body, status)
    assert (exc.code, exc.retryable, exc.retry_after, exc.status) == (expected, retryable, retry_after, status)
    assert exc.message


def test_dashscope_error_from_body_names_code_and_message() -> None:
    exc = dashscope.error_from_body({"code": "InvalidParameter", "message": "Range of top_p"}, 400)
    assert "InvalidParameter" in exc.message and "Range of top_p" in exc.message
    assert "unknown error" in dashscope.error_from_body({}, None).message


@pytest.mark.parametrize("incremental", [True, False])
def test_dashscope_build_body(incremental: bool) -> None:
    messages = [{"role": "user", "content": "你好"}]
    body = dashscope.build_body("qwen-plus", messages, {"temperature": 0.5, "incremental_output": "x"}, incremental=incremental)
    assert body == {
        "model": "qwen-plus",
        "input": {"messages": messages},
        "parameters": {"result_format": "message", "temperature": 0.5, "incremental_output": incremental},
    }


def test_dashscope_build_body_result_format_can_be_overridden() -> None:
    body = dashscope.build_body("qwen-plus", [], {"result_format": "text"}, incremental=True)
    assert body["parameters"]["result_format"] == "text"


# --------------------------------------------------------------------------- finish_reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None), ("", None), ("null", None),
        ("stop", "stop"), ("eos", "stop"), ("content_filter", "stop"), ("tool_calls", "stop"),
        ("function_call", "stop"), ("length", "length"), ("max_tokens", "length"),
    ],
)
def test_finish_reason(raw: object, expected: str | None) -> None:
    assert finish_reason(raw) == expected


# --------------------------------------------------------------------------- hostile shapes


def event(obj: Any) -> SSEEvent:
    return SSEEvent(data=json.dumps(obj))


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 2**63, "completion_tokens": 2**63},
        {"prompt_tokens": -5, "completion_tokens": -1},
        {"prompt_tokens": 1.5, "completion_tokens": True},
        {"prompt_tokens": 2**31, "completion_tokens": "12"},
    ],
)
def test_openai_unbelievable_usage_counts_are_zero(usage: dict[str, Any]) -> None:
    chunk = openai.OpenAIDecoder().receive(event({"choices": [], "usage": usage}))
    assert chunk is not None and chunk.usage == Usage(0, 0)


def test_openai_usage_counts_up_to_the_bound_are_kept() -> None:
    chunk = openai.OpenAIDecoder().receive(event({"choices": [], "usage": {"prompt_tokens": 2**31 - 1}}))
    assert chunk is not None and chunk.usage == Usage(2**31 - 1, 0)


def test_dashscope_unbelievable_usage_counts_are_zero() -> None:
    obj = {"output": {"text": "x", "finish_reason": "stop"}, "usage": {"input_tokens": 2**64, "output_tokens": -3}}
    chunk = dashscope.DashScopeDecoder(incremental=True).receive(event(obj))
    assert chunk is not None and chunk.usage == Usage(0, 0)


@pytest.mark.parametrize("choices", [{"0": {"delta": {"content": "x"}}}, "x", 5, True])
def test_openai_choices_that_are_not_a_list_are_an_upstream_error(choices: Any) -> None:
    with pytest.raises(UpstreamError) as info:
        openai.OpenAIDecoder().receive(event({"choices": choices}))
    assert info.value.code is ErrorCode.UPSTREAM_ERROR and "choices" in info.value.message


def test_dashscope_multimodal_parts_that_are_not_text_are_skipped() -> None:
    obj = {"output": {"choices": [{"message": {"content": [{"text": 5}, {"text": "ok"}, "x"]}}]}}
    chunk = dashscope.DashScopeDecoder(incremental=True).receive(event(obj))
    assert chunk is not None and chunk.text == "ok"
