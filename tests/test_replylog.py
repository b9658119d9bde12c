"""Tests for gateway.replylog.ReplyLog: numbered deltas and resume slices."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.replylog import ReplyLog


def test_empty_log() -> None:
    log = ReplyLog(100)
    assert (log.seq, log.text, log.chars, log.reasoning) == (0, "", 0, "")
    assert log.runs(0) == [] and log.kinds(0) == b""


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
def test_runs_of_text_only(after_seq: int, expected: str) -> None:
    log = ReplyLog(100)
    for part in ["a", "bc", "de", "f"]:
        log.append(part)
    assert log.runs(after_seq) == ([(False, 4, expected)] if expected else [])


@pytest.mark.parametrize("after_seq", [-1, 3, 100])
def test_runs_out_of_bounds(after_seq: int) -> None:
    log = ReplyLog(100)
    log.append("a")
    log.append("b")
    with pytest.raises(ValueError, match=str(after_seq)):
        log.runs(after_seq)


def test_reasoning_shares_the_numbering_and_runs_keep_the_order() -> None:
    log = ReplyLog(100)
    for text, reasoning in [("think ", True), ("more", True), ("Answer", False), (" later", True), ("!", False)]:
        assert log.append(text, reasoning)
    assert (log.seq, log.text, log.reasoning, log.chars) == (5, "Answer!", "think more later", 23)
    assert log.runs(0) == [(True, 2, "think more"), (False, 3, "Answer"), (True, 4, " later"), (False, 5, "!")]
    assert log.runs(1) == [(True, 2, "more"), (False, 3, "Answer"), (True, 4, " later"), (False, 5, "!")]
    assert log.kinds(0) == b"rrtrt" and log.kinds(3) == b"rt" and log.kinds(2) == b"trt"
    assert [log.reasoning_at(i) for i in range(1, 6)] == [True, True, False, True, False]
    assert log.deltas(3) == [" later", "!"]


def test_text_before_the_first_reasoning_stays_answer() -> None:
    log = ReplyLog(100)
    log.append("a")
    log.append("b")
    assert log.kinds(0) == b""
    log.append("r", reasoning=True)
    assert (log.text, log.reasoning, log.kinds(0), log.kinds(2)) == ("ab", "r", b"ttr", b"r")
    assert log.append("rr", reasoning=True) and log.chars == 5  # the bound counts reasoning too


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
def test_runs_are_the_rest_of_the_deltas_in_order(parts: list[str], data: st.DataObject) -> None:
    kinds = data.draw(st.lists(st.booleans(), min_size=len(parts), max_size=len(parts)), label="reasoning")
    text = "".join(parts)
    log = ReplyLog(len(text))
    for part, reasoning in zip(parts, kinds, strict=True):
        assert log.append(part, reasoning)
    assert log.seq == len(parts) and log.chars == len(text)
    assert log.text == "".join(p for p, r in zip(parts, kinds, strict=True) if not r)
    assert log.reasoning == "".join(p for p, r in zip(parts, kinds, strict=True) if r)
    after_seq = data.draw(st.integers(0, len(parts)), label="after_seq")
    runs = log.runs(after_seq)
    assert "".join(t for _, _, t in runs) == "".join(parts[after_seq:])
    assert all(a[0] != b[0] and a[1] < b[1] for a, b in zip(runs, runs[1:]))  # kinds alternate, seqs grow
    assert [r for r, seq, _ in runs] == [kinds[seq - 1] for _, seq, _ in runs]
    assert not runs or runs[-1][1] == len(parts)


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
