"""Tests for gateway.wire: client frames in, server events out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from gateway import wire
from gateway.errors import ErrorCode, GatewayError, ProtocolError, UpstreamError
from gateway.wire import Cancel, Hello, History, Message, Ping, Resume, parse_client

LONG = "x" * (wire.MAX_ID_CHARS + 1)
MAX = "x" * wire.MAX_ID_CHARS

GOOD: list[Any] = [
    ('{"type":"hello"}', Hello()),
    ('{"type":"hello","token":"t","conversation_id":"c1"}', Hello("t", "c1")),
    ('{"type":"hello","token":null,"conversation_id":null}', Hello()),
    ('{"type":"hello","extra":{"ignored":true}}', Hello()),
    ('{"type":"message","id":"m1","content":"你好 🙂"}', Message("m1", "你好 🙂")),
    ('{"type":"message","id":"m1","content":" x ","conversation_id":"c"}', Message("m1", " x ", "c")),
    ('{"type":"message","id":"","content":"x"}', Message("", "x")),
    (f'{{"type":"message","id":"{MAX}","content":"x"}}', Message(MAX, "x")),
    (f'{{"type":"message","id":"m","content":"{LONG * 10}"}}', Message("m", LONG * 10)),
    ('{"type":"cancel","reply_id":"r1"}', Cancel("r1")),
    ('{"type":"resume","reply_id":"r1","after_seq":0}', Resume("r1", 0)),
    ('{"type":"resume","reply_id":"r1","after_seq":42}', Resume("r1", 42)),
    ('{"type":"ping"}', Ping()),
    ('{"type":"ping","id":"p1"}', Ping("p1")),
    ('{"type":"ping","id":7}', Ping(7)),
    ('{"type":"ping","id":-7}', Ping(-7)),
    ('{"type":"history"}', History(None, 50)),
    ('{"type":"history","before":"m9","limit":1}', History("m9", 1)),
    ('{"type":"history","limit":200}', History(None, 200)),
    ('  {"type":"ping"}\n', Ping()),
    ('{"type":"resume","reply_id":"r1","after_seq":1,"id":"x9"}', Resume("r1", 1)),
    ('{"type":"cancel","reply_id":"r1","content":5}', Cancel("r1")),
]


@pytest.mark.parametrize(("frame", "expected"), GOOD)
def test_good_frames(frame: str, expected: wire.ClientMessage) -> None:
    assert parse_client(frame) == expected


# (frame, ref the error must carry)
BAD: list[Any] = [
    pytest.param("", None, id="empty"),
    pytest.param("not json", None, id="invalid_json"),
    pytest.param('{"type":"ping"', None, id="truncated"),
    pytest.param('{"type":"ping"} {}', None, id="trailing_garbage"),
    pytest.param("[]", None, id="array"),
    pytest.param('"hello"', None, id="string"),
    pytest.param("42", None, id="number"),
    pytest.param("null", None, id="null"),
    pytest.param("{}", None, id="missing_type"),
    pytest.param('{"id":"m1"}', "m1", id="missing_type_with_id"),
    pytest.param('{"type":null}', None, id="null_type"),
    pytest.param('{"type":3}', None, id="int_type"),
    pytest.param('{"type":"Message","id":"m1","content":"x"}', "m1", id="type_case"),
    pytest.param('{"type":"reply.delta","id":"m1"}', "m1", id="server_type"),
    pytest.param('{"type":"unknown","id":"u1"}', "u1", id="unknown_type"),
    pytest.param('{"type":"hello","token":5}', None, id="hello_token_int"),
    pytest.param('{"type":"hello","conversation_id":true}', None, id="hello_conv_bool"),
    pytest.param(f'{{"type":"hello","conversation_id":"{LONG}"}}', None, id="hello_conv_long"),
    pytest.param('{"type":"message","content":"x"}', None, id="message_no_id"),
    pytest.param('{"type":"message","id":null,"content":"x"}', None, id="message_null_id"),
    pytest.param('{"type":"message","id":1,"content":"x"}', None, id="message_int_id"),
    pytest.param(f'{{"type":"message","id":"{LONG}","content":"x"}}', LONG, id="message_long_id"),
    pytest.param('{"type":"message","id":"m1"}', "m1", id="message_no_content"),
    pytest.param('{"type":"message","id":"m1","content":null}', "m1", id="message_null_content"),
    pytest.param('{"type":"message","id":"m1","content":5}', "m1", id="message_int_content"),
    pytest.param('{"type":"message","id":"m1","content":["x"]}', "m1", id="message_list_content"),
    pytest.param('{"type":"message","id":"m1","content":""}', "m1", id="message_empty"),
    pytest.param('{"type":"message","id":"m1","content":" \\n\\t "}', "m1", id="message_blank"),
    pytest.param('{"type":"message","id":"m1","content":"x","conversation_id":1}', "m1", id="message_conv_int"),
    pytest.param('{"type":"cancel"}', None, id="cancel_no_reply"),
    pytest.param('{"type":"cancel","reply_id":7}', None, id="cancel_int_reply"),
    pytest.param(f'{{"type":"cancel","reply_id":"{LONG}"}}', None, id="cancel_long_reply"),
    pytest.param('{"type":"resume","reply_id":"r1"}', None, id="resume_no_seq"),
    pytest.param('{"type":"resume","reply_id":"r1","after_seq":-1}', None, id="resume_negative"),
    pytest.param('{"type":"resume","reply_id":"r1","after_seq":true}', None, id="resume_bool"),
    pytest.param('{"type":"resume","reply_id":"r1","after_seq":false}', None, id="resume_false"),
    pytest.param('{"type":"resume","reply_id":"r1","after_seq":1.0}', None, id="resume_float"),
    pytest.param('{"type":"resume","reply_id":"r1","after_seq":"3"}', None, id="resume_str_seq"),
    pytest.param('{"type":"resume","after_seq":3}', None, id="resume_no_reply"),
    pytest.param('{"type":"resume","reply_id":"r1","after_seq":-1,"id":"x9"}', "x9", id="resume_ref"),
    pytest.param('{"type":"cancel","reply_id":null,"id":"c9"}', "c9", id="cancel_ref"),
    pytest.param('{"type":"hello","token":1,"id":7}', None, id="int_id_no_ref"),
    pytest.param('{"type":"ping","id":true}', None, id="ping_bool_id"),
    pytest.param('{"type":"ping","id":1.5}', None, id="ping_float_id"),
    pytest.param('{"type":"ping","id":{}}', None, id="ping_object_id"),
    pytest.param(f'{{"type":"ping","id":"{LONG}"}}', LONG, id="ping_long_id"),
    pytest.param('{"type":"history","limit":0}', None, id="history_zero"),
    pytest.param('{"type":"history","limit":201}', None, id="history_too_many"),
    pytest.param('{"type":"history","limit":true}', None, id="history_bool"),
    pytest.param('{"type":"history","limit":"5"}', None, id="history_str"),
    pytest.param('{"type":"history","before":5}', None, id="history_int_before"),
    pytest.param('{"type":"message","id":"m1","content":"\\ud800"}', None, id="lone_surrogate"),
    pytest.param('{"type":"message","id":"m1","content":"a\\u0000b"}', "m1", id="nul_in_content"),
    pytest.param('{"type":"hello","conversation_id":"c\\u0000"}', None, id="nul_in_conversation_id"),
]


@pytest.mark.parametrize(("frame", "ref"), BAD)
def test_bad_frames_are_bad_request(frame: str, ref: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client(frame)
    exc = info.value
    assert exc.code is ErrorCode.BAD_REQUEST
    assert exc.retryable is False
    assert exc.message
    assert exc.ref == ref


@pytest.mark.parametrize(
    "frame",
    [b'{"type":"ping"}', bytearray(b'{"type":"ping"}'), memoryview(b'{"type":"ping"}'), b"\xff\xfe"],
    ids=["bytes", "bytearray", "memoryview", "garbage"],
)
def test_binary_frames_are_bad_request(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client(frame)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "binary" in info.value.message


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ('{"type":"resume","reply_id":"r1","after_seq":true}', ["after_seq", "integer"]),
        ('{"type":"message","id":"m1","content":5}', ["content", "string"]),
        ('{"type":"nope"}', ["nope"]),
        ("{}", ["type"]),
        ('{"type":"message","id":"m1","content":""}', ["content", "empty"]),
        ('{"type":"resume","reply_id":"r1","after_seq":-1}', ["after_seq", ">= 0"]),
    ],
)
def test_error_messages_name_the_field(frame: str, words: list[str]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client(frame)
    for word in words:
        assert word in info.value.message


def test_content_is_not_trimmed_or_capped_by_the_parser() -> None:
    content = "  第一行\n第二行  " + "y" * 100_000
    frame = orjson.dumps({"type": "message", "id": "m", "content": content}).decode()
    msg = parse_client(frame)
    assert isinstance(msg, Message) and msg.content == content


# --------------------------------------------------------------------------- encoding


def decode(frame: bytes) -> dict[str, Any]:
    assert isinstance(frame, bytes)
    obj: dict[str, Any] = orjson.loads(frame.decode("utf-8", "strict"))
    return obj


def test_encode_omits_none_fields() -> None:
    frame = wire.encode("pong", id=None)
    assert decode(frame) == {"type": "pong"}
    assert decode(wire.encode("pong", id=0)) == {"type": "pong", "id": 0}
    assert decode(wire.encode("x", a="", b=False, c=[], d=None)) == {"type": "x", "a": "", "b": False, "c": []}


def test_encode_keeps_chinese_unescaped() -> None:
    frame = wire.encode("ready", title="你好，世界 🙂")
    assert "你好，世界 🙂".encode() in frame
    assert b"\\u" not in frame
    assert decode(frame)["title"] == "你好，世界 🙂"


@pytest.mark.parametrize("text", ["", "hello", "你好🙂", 'quote " backslash \\ newline \n', "\x00\x1f"])
def test_encode_delta(text: str) -> None:
    frame = wire.encode_delta("r1", 3, text)
    assert decode(frame) == {"type": "reply.delta", "reply_id": "r1", "seq": 3, "text": text}
    if text == "你好🙂":
        assert text.encode() in frame


@pytest.mark.parametrize(
    ("exc", "kwargs", "expected"),
    [
        (
            ProtocolError(ErrorCode.BAD_REQUEST, "invalid JSON"),
            {},
            {"code": "bad_request", "message": "invalid JSON", "retryable": False},
        ),
        (
            ProtocolError(ErrorCode.BUSY, "a reply is streaming", ref="m2"),
            {"ref": "m2"},
            {"code": "busy", "message": "a reply is streaming", "id": "m2", "retryable": True},
        ),
        (
            UpstreamError(ErrorCode.RATE_LIMITED, "slow down", retry_after=5),
            {"reply_id": "r1"},
            {"code": "rate_limited", "message": "slow down", "reply_id": "r1", "retry_after": 5, "retryable": True},
        ),
        (
            UpstreamError(ErrorCode.UPSTREAM_ERROR, "上游错误", retryable=True, retry_after=0.5),
            {"ref": "m1", "reply_id": "r1"},
            {"code": "upstream_error", "message": "上游错误", "id": "m1", "reply_id": "r1",
             "retry_after": 0.5, "retryable": True},
        ),
        (
            GatewayError(ErrorCode.INTERNAL, "internal error"),
            {},
            {"code": "internal", "message": "internal error", "retryable": True},
        ),
    ],
)
def test_encode_error(exc: GatewayError, kwargs: dict[str, str], expected: dict[str, Any]) -> None:
    frame = wire.encode_error(exc, **kwargs)
    assert decode(frame) == {"type": "error", **expected}
    assert b"\\u" not in frame


def test_every_error_code_encodes_with_retryable() -> None:
    for code in ErrorCode:
        event = decode(wire.encode_error(GatewayError(code, "m")))
        assert event["code"] == code.value
        assert isinstance(event["retryable"], bool)


@dataclass
class Stored:
    id: str
    role: str
    content: str
    finish_reason: str | None = None
    created_at: float = 0.0
    model: str | None = None
    reasoning: str | None = None
    parent_id: str = ""
    siblings: tuple[str, ...] = ()


def test_history_items() -> None:
    messages = [
        Stored("m1", "user", "你好"),
        Stored("r1", "assistant", "partial", "cancelled", parent_id="m1", siblings=("r1",)),
        Stored("r2", "assistant", "done", "stop", model="qwen-plus", reasoning="thought", parent_id="r1",
               siblings=("r0", "r2", "r3")),
    ]
    assert wire.history_items(messages) == [
        {"id": "m1", "role": "user", "content": "你好"},
        {"id": "r1", "role": "assistant", "content": "partial", "finish_reason": "cancelled", "parent_id": "m1"},
        {"id": "r2", "role": "assistant", "content": "done", "finish_reason": "stop", "model": "qwen-plus",
         "reasoning": "thought", "parent_id": "r1", "siblings": ["r0", "r2", "r3"], "sibling_index": 1},
    ]
    assert wire.history_items([]) == []
    assert decode(wire.encode("ready", history=wire.history_items(messages)))["history"][0]["content"] == "你好"
