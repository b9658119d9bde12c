"""Tests for the sans-I/O SSE decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sse import SSEDecoder, SSEError, SSEEvent

E = SSEEvent

CASES: list[tuple[str, bytes, list[SSEEvent]]] = [
    ("lf", b"data: hi\n\n", [E("hi")]),
    ("crlf", b"data: hi\r\n\r\n", [E("hi")]),
    ("cr", b"data: hi\r\r", [E("hi")]),
    (
        "mixed_terminators",
        b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\n\n",
        [E("a\nb\nc"), E("d")],
    ),
    ("cr_then_crlf", b"data: a\r\r\n", [E("a")]),
    ("two_events", b"data: 1\n\ndata: 2\n\n", [E("1"), E("2")]),
    ("comment", b": hello\ndata: x\n: bye\n\n", [E("x")]),
    ("keepalive_only", b": ping\n\n: ping\n\n", []),
    ("multiline", b"data: a\ndata: b\ndata: c\n\n", [E("a\nb\nc")]),
    ("no_space", b"data:x\n\n", [E("x")]),
    ("only_one_space_removed", b"data:  x \n\n", [E(" x ")]),
    ("empty_value", b"data:\n\n", [E("")]),
    ("data_no_colon", b"data\n\n", [E("")]),
    ("empty_data_lines", b"data\ndata\n\n", [E("\n")]),
    ("trailing_empty_line", b"data: a\ndata:\n\n", [E("a\n")]),
    ("colon_in_value", b"data: a: b:c\n\n", [E("a: b:c")]),
    (
        "all_fields",
        b"event: add\nid: 7\nretry: 1500\ndata: x\n\n",
        [E("x", event="add", id="7", retry=1500)],
    ),
    ("empty_event_is_message", b"event:\ndata: x\n\n", [E("x")]),
    ("last_field_wins", b"event: a\nevent: b\nid: 1\nid: 2\ndata: x\n\n", [E("x", "b", "2")]),
    ("empty_id", b"id:\ndata: x\n\n", [E("x", id="")]),
    ("id_with_nul_ignored", b"id: 1\nid: a\x00b\ndata: x\n\n", [E("x", id="1")]),
    ("retry_not_digits", b"retry: 1.5\nretry: -1\nretry:\nretry: 12a\ndata: x\n\n", [E("x")]),
    ("retry_space", b"retry:  100\ndata: x\n\n", [E("x")]),
    ("blank_lines_only", b"\n\n\r\n\r\r\n", []),
    ("empty_stream", b"", []),
    ("bom", b"\xef\xbb\xbfdata: x\n\n", [E("x")]),
    ("second_bom_kept", b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", []),
    ("bom_only_at_start", b"data: \xef\xbb\xbfx\n\n", [E("\ufeffx")]),
    (
        "event_reset_after_dispatch",
        b"event: a\nid: 1\nretry: 5\ndata: x\n\ndata: y\n\n",
        [E("x", "a", "1", 5), E("y")],
    ),
    ("event_reset_without_data", b"event: a\nid: 1\n\ndata: y\n\n", [E("y")]),
    ("unknown_fields", b"foo: bar\nDATA: no\nData: no\n data: no\ndata: yes\n\n", [E("yes")]),
    ("field_name_only", b"event\ndata: x\n\n", [E("x")]),
    ("utf8", "data: 你好🙂\n\n".encode(), [E("你好🙂")]),
    ("invalid_utf8_replaced", b"data: a\xffb\xe4\n\n", [E("a\ufffdb\ufffd")]),
    ("nul_in_data", b"data: a\x00b\n\n", [E("a\x00b")]),
    (
        "openai",
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"!"}}]}\n\n'
        b"data: [DONE]\n\n",
        [
            E('{"choices":[{"delta":{"content":"hi"}}]}'),
            E('{"choices":[{"delta":{"content":"!"}}]}'),
            E("[DONE]"),
        ],
    ),
    (
        "dashscope",
        'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"text":"你好"}}\n\n'
        'id:2\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"text":"世界"}}\n\n'.encode(),
        [
            E('{"output":{"text":"你好"}}', "result", "1"),
            E('{"output":{"text":"世界"}}', "result", "2"),
        ],
    ),
    (
        "dashscope_error",
        b'id:1\nevent:error\n:HTTP_STATUS/400\ndata:{"code":"InvalidParameter","message":"bad"}\n\n',
        [E('{"code":"InvalidParameter","message":"bad"}', "error", "1")],
    ),
    (
        "anthropic_style",
        b"event: message_start\r\ndata: {}\r\n\r\nevent: ping\r\ndata: {}\r\n\r\n",
        [E("{}", "message_start"), E("{}", "ping")],
    ),
]

# Inputs whose last event relies on close() leniency.
CLOSE_CASES: list[tuple[str, bytes, list[SSEEvent]]] = [
    ("unterminated_line", b"data: [DONE]", [E("[DONE]")]),
    ("missing_blank_line", b"data: [DONE]\n", [E("[DONE]")]),
    ("missing_blank_line_cr", b"data: a\r", [E("a")]),
    ("multiline_unterminated", b"event: e\ndata: a\ndata: b", [E("a\nb", "e")]),
    ("no_data_pending", b"event: e\nid: 3\n", []),
    ("unterminated_comment", b"data: a\n\n: bye", [E("a")]),
    ("partial_bom_only", b"\xef\xbb", []),
    ("truncated_utf8", b"data: \xe4\xbd", [E("\ufffd")]),
]

ALL_CASES = CASES + CLOSE_CASES
IDS = [name for name, _, _ in ALL_CASES]


def decode(chunks: list[bytes], max_event_bytes: int = 1 << 20) -> tuple[list[SSEEvent], list[SSEEvent]]:
    """Feed chunks, returning the events from feed() and from close()."""
    decoder = SSEDecoder(max_event_bytes)
    fed = [event for chunk in chunks for event in decoder.feed(chunk)]
    return fed, decoder.close()


@pytest.mark.parametrize(("name", "raw", "expected"), CASES, ids=[c[0] for c in CASES])
def test_spec_cases(name: str, raw: bytes, expected: list[SSEEvent]) -> None:
    fed, closed = decode([raw])
    assert fed == expected
    assert closed == []


@pytest.mark.parametrize(("name", "raw", "expected"), CLOSE_CASES, ids=[c[0] for c in CLOSE_CASES])
def test_close_is_lenient(name: str, raw: bytes, expected: list[SSEEvent]) -> None:
    fed, closed = decode([raw])
    assert fed + closed == expected


@pytest.mark.parametrize(("name", "raw", "expected"), ALL_CASES, ids=IDS)
def test_every_two_chunk_split(name: str, raw: bytes, expected: list[SSEEvent]) -> None:
    whole = decode([raw])
    for cut in range(len(raw) + 1):
        assert decode([raw[:cut], raw[cut:]]) == whole, cut


@pytest.mark.parametrize(("name", "raw", "expected"), ALL_CASES, ids=IDS)
def test_byte_by_byte(name: str, raw: bytes, expected: list[SSEEvent]) -> None:
    chunks = [raw[i : i + 1] for i in range(len(raw))]
    assert decode(chunks) == decode([raw])
    assert decode([b"", *chunks, b""]) == decode([raw])


def test_events_arrive_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\n") == [E("a")]
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\r") == [E("b")]
    assert decoder.feed(b"\n") == []
    assert decoder.close() == []


@pytest.mark.parametrize(("before", "read", "expected"), [
    ([], b"data: x\n\n", [E("x")]),
    ([b"event: delta\n"], b"data: x\n\n", [E("x", "delta")]),
    ([b"data: a\n"], b"data: x\n\n", [E("a\nx")]),
    ([b"id: 7\nretry: 5\n"], b"data: x\n\n", [E("x", id="7", retry=5)]),
    ([b"da"], b"data: x\n\n", []),  # the line "dadata: x" is an unknown field
    ([b"data: a\r"], b"data: x\n\n", [E("a\nx")]),
    ([b": comment\n"], b"data: x\n\n", [E("x")]),
    ([b"\xef\xbb"], b"\xbfdata: x\n\n", [E("x")]),
    ([], b"data: x\n\ndata: y\n\n", [E("x"), E("y")]),
    ([], b"data: x\r\n\n", [E("x")]),
    ([], b"data: \xe4\xb8\n\n", [E("\ufffd")]),
])
def test_one_event_per_read(before: list[bytes], read: bytes, expected: list[SSEEvent]) -> None:
    """The usual read (one whole event, one data line) decodes as any other: what came
    before it in the stream still counts."""
    decoder = SSEDecoder()
    for chunk in before:
        decoder.feed(chunk)
    assert decoder.feed(read) == expected


def test_one_event_per_read_over_the_limit_raises() -> None:
    decoder = SSEDecoder(max_event_bytes=10)
    assert decoder.feed(b"data: 1234\n\n") == [E("1234")]
    with pytest.raises(SSEError):
        decoder.feed(b"data: 12345678901\n\n")


def test_cr_lf_across_feeds_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r\n") == [E("a\nb")]


def test_utf8_split_inside_character() -> None:
    raw = "data: 你好🙂\n\n".encode()
    decoder = SSEDecoder()
    events = [e for i in range(len(raw)) for e in decoder.feed(raw[i : i + 1])]
    assert events == [E("你好🙂")]


def test_close_resets_for_a_new_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb\xbfevent: e\ndata: a") == []
    assert decoder.close() == [E("a", "e")]
    assert decoder.feed(b"\xef\xbb\xbfdata: b\n\n") == [E("b")]
    assert decoder.close() == []


def test_event_defaults() -> None:
    event = SSEEvent("x")
    assert (event.data, event.event, event.id, event.retry) == ("x", "message", None, None)
    with pytest.raises(AttributeError):
        event.data = "y"  # type: ignore[misc]


def test_huge_retry_is_ignored() -> None:
    raw = b"retry: " + b"9" * 10_000 + b"\ndata: x\n\n"
    assert SSEDecoder().feed(raw) == [E("x")]


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        SSEDecoder(0)


# Limits


def test_line_at_limit_passes() -> None:
    line = b"data: " + b"x" * 94
    assert SSEDecoder(100).feed(line + b"\n\n") == [E("x" * 94)]
    decoder = SSEDecoder(100)
    assert decoder.feed(line) == []
    assert decoder.feed(b"\n\n") == [E("x" * 94)]


@pytest.mark.parametrize("split", [False, True])
def test_long_line_raises(split: bool) -> None:
    line = b"data: " + b"x" * 95
    decoder = SSEDecoder(100)
    with pytest.raises(SSEError, match="line exceeds"):
        if split:
            decoder.feed(line[:50])
            decoder.feed(line[50:])
        else:
            decoder.feed(line + b"\n\n")


def test_long_comment_line_raises() -> None:
    with pytest.raises(SSEError):
        SSEDecoder(10).feed(b": " + b"x" * 20 + b"\n")


def test_long_unterminated_tail_raises() -> None:
    with pytest.raises(SSEError):
        SSEDecoder(10).feed(b"data: a\n" + b"x" * 11)


def test_event_at_limit_passes() -> None:
    # Nine lines of 9 bytes, one of 10, and 9 newlines: exactly 100 bytes of data.
    lines = [bytes([0x61 + i]) * 9 for i in range(10)]
    lines[-1] += b"z"
    raw = b"".join(b"data:" + line + b"\n" for line in lines) + b"\n"
    expected = "\n".join(line.decode() for line in lines)
    assert len(expected) == 100
    assert SSEDecoder(100).feed(raw) == [E(expected)]


def test_large_event_raises() -> None:
    raw = b"data: " + b"x" * 50 + b"\n"
    decoder = SSEDecoder(100)
    decoder.feed(raw)
    with pytest.raises(SSEError, match="event data exceeds"):
        decoder.feed(raw)


def test_limit_counts_utf8_bytes() -> None:
    part = "你" * 5  # 15 bytes, on a 20-byte line
    raw = f"data:{part}\ndata:{part}\n\n".encode()
    assert SSEDecoder(31).feed(raw) == [E(f"{part}\n{part}")]
    with pytest.raises(SSEError, match="event data"):
        SSEDecoder(30).feed(raw)


def test_limit_resets_between_events() -> None:
    decoder = SSEDecoder(100)
    for _ in range(50):
        assert decoder.feed(b"data: " + b"x" * 80 + b"\n\n") == [E("x" * 80)]


def test_endless_line_memory_is_bounded() -> None:
    decoder = SSEDecoder(1000)
    with pytest.raises(SSEError):
        for _ in range(1000):
            decoder.feed(b"x" * 37)
            assert len(decoder._lines._buf) <= 1000
    assert len(decoder._lines._buf) == 0


def test_endless_event_memory_is_bounded() -> None:
    decoder = SSEDecoder(1000)
    with pytest.raises(SSEError):
        for _ in range(1000):
            decoder.feed(b"data: 0123456789\n")
            assert decoder._data_size <= 1001
    assert decoder._data == []


# Property tests

TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_characters="\r\n"),
        st.sampled_from("你好世界🙂👍🏽 \n:"),
    ),
    max_size=30,
)
FIELD = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
        st.sampled_from("你好🙂 :"),
    ),
    max_size=12,
)
EVENTS = st.lists(
    st.builds(
        SSEEvent,
        data=TEXT,
        event=st.one_of(st.just("message"), FIELD.filter(bool)),
        id=st.one_of(st.none(), FIELD),
        retry=st.one_of(st.none(), st.integers(0, 10**12)),
    ),
    max_size=8,
)
TERMINATORS = st.sampled_from(["\n", "\r\n", "\r"])


def field_line(draw: st.DrawFn, name: str, value: str) -> str:
    """Serialise one field, with or without the optional space."""
    if value.startswith(" ") or draw(st.booleans()):
        return f"{name}: {value}"
    return f"{name}:{value}"


def interleave(draw: st.DrawFn, first: list[str], second: list[str]) -> list[str]:
    """Randomly merge two lists, keeping the order within each."""
    merged: list[str] = []
    while first and second:
        merged.append((first if draw(st.booleans()) else second).pop(0))
    return merged + first + second


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """Random events and one valid serialisation of them."""
    events = draw(EVENTS)
    lines: list[str] = []
    for event in events:
        fields: list[str] = []
        if event.event != "message" or draw(st.booleans()):
            fields.append(field_line(draw, "event", event.event))
        if event.id is not None:
            fields.append(field_line(draw, "id", event.id))
        if event.retry is not None:
            fields.append(f"retry: {event.retry}")
        data = [field_line(draw, "data", part) for part in event.data.split("\n")]
        for field in interleave(draw, draw(st.permutations(fields)), data):
            if draw(st.integers(0, 4)) == 0:
                lines.append(":" + draw(FIELD))
            lines.append(field)
        lines.append("")
        if draw(st.integers(0, 4)) == 0:
            lines.append("")
    out: list[str] = ["\ufeff"] if draw(st.booleans()) else []
    previous = ""
    for line in lines:
        terminator = draw(TERMINATORS)
        if previous == "\r" and not line and terminator == "\n":
            terminator = "\r\n"  # "\r" + "\n" would be one line end
        out += [line, terminator]
        previous = terminator
    return "".join(out).encode(), events


def rechunk(raw: bytes, cuts: list[int]) -> list[bytes]:
    """Split raw at the given offsets (taken modulo its length + 1)."""
    points = sorted({c % (len(raw) + 1) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)])]


@settings(max_examples=200, deadline=None)
@given(streams(), st.lists(st.integers(min_value=0), max_size=20))
def test_roundtrip(stream: tuple[bytes, list[SSEEvent]], cuts: list[int]) -> None:
    raw, events = stream
    assert decode(rechunk(raw, cuts)) == (events, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(1, 128))
def test_arbitrary_bytes(chunks: list[bytes], limit: int) -> None:
    decoder = SSEDecoder(limit)
    try:
        for chunk in chunks:
            for event in decoder.feed(chunk):
                assert len(event.data.encode()) <= 3 * limit
            assert len(decoder._lines._buf) <= limit
            assert decoder._data_size <= limit + 1
        decoder.close()
    except SSEError:
        assert len(decoder._lines._buf) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_any_chunking(chunks: list[bytes], cuts: list[int]) -> None:
    raw = b"".join(chunks)
    assert decode(rechunk(raw, cuts)) == decode([raw])
