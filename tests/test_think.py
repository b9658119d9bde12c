"""Inline <think> reasoning split from the answer, whatever the cuts (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers.think import ThinkSplitter


def split(pieces: list[str]) -> tuple[str, str]:
    splitter, reasoning, answer = ThinkSplitter(), "", ""
    for piece in pieces:
        r, a = splitter.feed(piece)
        reasoning, answer = reasoning + r, answer + a
    r, a = splitter.close()
    return reasoning + r, answer + a


FULL = "\n<think>\nLet me see </thin k about it.\n</think>\n\nThe answer is 42. <think>not this</think>"


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(1, len(FULL) - 1), max_size=12, unique=True))
def test_any_cut_gives_the_same_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(FULL)]
    pieces = [FULL[a:b] for a, b in zip(bounds, bounds[1:])]
    assert split(pieces) == ("Let me see </thin k about it.\n", "The answer is 42. <think>not this</think>")


def test_only_a_reply_starting_with_the_tag_is_split() -> None:
    assert split(["Use ", "<think>", " tags"]) == ("", "Use <think> tags")
    assert split(["  ", "\n", "<think>x</think>y"]) == ("x", "y")


def test_what_never_became_a_tag_is_answer_text() -> None:
    assert split(["<thi"]) == ("", "<thi")
    assert split(["  "]) == ("", "  ")
    assert split(["<think>never closed"]) == ("never closed", "")
    assert split(["<think>half </thi"]) == ("half </thi", "")


def test_an_empty_think_block_is_no_reasoning() -> None:
    """Qwen3 with thinking off, on engines that do not split it out."""
    assert split(["<think>\n\n</think>\n\nHello"]) == ("", "Hello")
    assert split(["<think>", "\n", " \n", "</think>", "\n\nHi"]) == ("", "Hi")
    assert split(["<think>\n", "\nIdea"]) == ("Idea", "")


def test_done_once_the_answer_starts() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<think>a") == ("a", "") and not splitter.done
    assert splitter.feed("</think>") == ("", "") and not splitter.done  # the blank lines may follow
    assert splitter.feed("\n\nB") == ("", "B") and splitter.done
    assert ThinkSplitter().feed("plain")[1] == "plain"
