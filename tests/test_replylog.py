"""Tests for gateway.replylog.ReplyLog: numbered deltas and resume slices."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.replylog import ReplyLog


def test_empty_log() -> None:
    log = ReplyLog(100)
    assert (log.seq, log.text, log.chars) == (0, "", 0)
    assert log.since(0) == ""


def test_seq_numbers_from_one() -> None:
    log = ReplyLog(100)
    seqs = []
    for part in ["你好", "，", "世界🙂"]:
        assert log.append(part) is True
        seqs.append(log.seq)
    assert seqs == [1, 2, 3]
    assert log.text == "你好，世界🙂"
    assert log.chars == len("你好，世界🙂")


@pytest.mark.parametrize(
    ("after_seq", "expected"),
    [(0, "abcdef"), (1, "bcdef"), (2, "def"), (3, "f"), (4, "")],
)
def test_since(after_seq: int, expected: str) -> None:
    log = ReplyLog(100)
    for part in ["a", "bc", "de", "f"]:
        log.append(part)
    assert log.since(after_seq) == expected


@pytest.mark.parametrize("after_seq", [-1, 3, 100])
def test_since_out_of_bounds(after_seq: int) -> None:
    log = ReplyLog(100)
    log.append("a")
    log.append("b")
    with pytest.raises(ValueError, match=str(after_seq)):
        log.since(after_seq)


def test_max_chars_refuses_and_keeps_nothing_of_the_refused_delta() -> None:
    log = ReplyLog(5)
    assert log.append("abc") is True
    assert log.append("def") is False  # would be 6
    assert (log.seq, log.text, log.chars) == (1, "abc", 3)
    assert log.append("de") is True  # exactly 5 fits
    assert (log.seq, log.text) == (2, "abcde")
    assert log.append("x") is False
    assert log.append("") is True  # nothing more still fits
    assert log.seq == 3


def test_max_chars_counts_characters_not_bytes() -> None:
    log = ReplyLog(3)
    assert log.append("你好🙂") is True
    assert log.append("!") is False


def test_zero_budget() -> None:
    log = ReplyLog(0)
    assert log.append("x") is False
    assert log.seq == 0


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.text(max_size=12), max_size=25), data=st.data())
def test_since_is_the_rest_of_the_text(parts: list[str], data: st.DataObject) -> None:
    text = "".join(parts)
    log = ReplyLog(len(text))
    for part in parts:
        assert log.append(part)
    assert log.seq == len(parts) and log.text == text and log.chars == len(text)
    after_seq = data.draw(st.integers(0, len(parts)), label="after_seq")
    offset = len("".join(parts[:after_seq]))
    assert text[:offset] + log.since(after_seq) == text
    assert log.since(after_seq) == "".join(parts[after_seq:])


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.text(max_size=12), max_size=25), max_chars=st.integers(0, 120))
def test_bound_is_never_passed(parts: list[str], max_chars: int) -> None:
    log = ReplyLog(max_chars)
    kept: list[str] = []
    for part in parts:
        fits = len("".join(kept)) + len(part) <= max_chars
        assert log.append(part) is fits
        if fits:
            kept.append(part)
    assert log.text == "".join(kept)
    assert log.chars <= max_chars
    assert log.seq == len(kept)
