"""Tests for gateway.context.build_context: what history goes upstream."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.context import build_context


@dataclass(frozen=True)
class M:
    role: str
    content: str


def u(content: str) -> M:
    return M("user", content)


def a(content: str) -> M:
    return M("assistant", content)


def pairs(result: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in result]


def build(history: list[M], system: str = "", max_messages: int = 100, max_chars: int = 10_000) -> list[tuple[str, str]]:
    return pairs(build_context(history, system_prompt=system, max_messages=max_messages, max_chars=max_chars))


TURNS = [u("q1"), a("a1"), u("q2"), a("a2"), u("q3")]

CASES = [
    pytest.param(TURNS, "", 100, 10_000,
                 [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"), ("user", "q3")],
                 id="everything_fits"),
    pytest.param(TURNS, "sys", 100, 10_000,
                 [("system", "sys"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"),
                  ("assistant", "a2"), ("user", "q3")], id="system_first"),
    pytest.param(TURNS, "sys", 3, 10_000,
                 [("system", "sys"), ("user", "q2"), ("assistant", "a2"), ("user", "q3")], id="count_drops_oldest"),
    pytest.param(TURNS, "sys", 2, 10_000,
                 [("system", "sys"), ("user", "q3")], id="count_never_starts_with_assistant"),
    pytest.param(TURNS, "sys", 1, 10_000, [("system", "sys"), ("user", "q3")], id="count_one"),
    pytest.param(TURNS, "", 100, 6, [("user", "q2"), ("assistant", "a2"), ("user", "q3")], id="chars_drop_oldest"),
    pytest.param(TURNS, "", 100, 4, [("user", "q3")], id="chars_never_starts_with_assistant"),
    pytest.param(TURNS, "sys", 100, 9, [("system", "sys"), ("user", "q2"), ("assistant", "a2"), ("user", "q3")],
                 id="system_prompt_counts_against_chars"),
    pytest.param([u("q1"), a("x" * 500), u("q2")], "", 100, 100, [("user", "q2")], id="gap_never_skipped"),
    pytest.param([u("q1"), a(""), u("q2"), a("a2"), u("q3")], "", 100, 10_000,
                 [("user", "q1"), ("user", "q2"), ("assistant", "a2"), ("user", "q3")], id="empty_skipped"),
    pytest.param([u("q1"), a(""), u("q2"), a(""), u("q3")], "", 2, 10_000,
                 [("user", "q2"), ("user", "q3")], id="empty_not_counted"),
    pytest.param([a("welcome"), u("q1")], "", 100, 10_000, [("user", "q1")], id="history_starting_with_assistant"),
    pytest.param([u("q")], "", 100, 10_000, [("user", "q")], id="single"),
    pytest.param([], "sys", 100, 10_000, [("system", "sys")], id="empty_history"),
    pytest.param([u("你好" * 10)], "", 1, 100, [("user", "你好" * 10)], id="chinese"),
]


@pytest.mark.parametrize(("history", "system", "max_messages", "max_chars", "expected"), CASES)
def test_build_context(
    history: list[M], system: str, max_messages: int, max_chars: int, expected: list[tuple[str, str]]
) -> None:
    assert build(history, system, max_messages, max_chars) == expected


def test_newest_message_is_kept_even_over_budget() -> None:
    huge = "长" * 5000
    assert build([u("q1"), a("a1"), u(huge)], "sys", 10, 100) == [("system", "sys"), ("user", huge)]


def test_system_prompt_is_kept_even_over_budget() -> None:
    system = "s" * 1000
    assert build(TURNS, system, 10, 100) == [("system", system), ("user", "q3")]


def test_messages_are_plain_role_content_dicts() -> None:
    result = build_context(TURNS, system_prompt="s", max_messages=10, max_chars=1000)
    assert all(set(m) == {"role", "content"} for m in result)
    assert all(type(m) is dict for m in result)


def test_never_starts_with_assistant_even_after_consecutive_assistants() -> None:
    history = [u("q1"), a("a1"), a("a1 continued"), u("q2")]
    result = build(history, "", 3, 10_000)
    assert result[0][0] == "user"


# --------------------------------------------------------------------------- properties

# Realistic histories: turns of a user message then an assistant reply that may be
# missing (an error before any text) or empty (cancelled before any text); the
# newest message is the user's.
turn = st.tuples(
    st.text(min_size=1, max_size=30).filter(str.strip),
    st.one_of(st.none(), st.just(""), st.text(min_size=1, max_size=30)),
)


def histories(draw_turns: list[tuple[str, str | None]], last: str) -> list[M]:
    history: list[M] = []
    for question, answer in draw_turns:
        history.append(u(question))
        if answer is not None:
            history.append(a(answer))
    history.append(u(last))
    return history


@settings(max_examples=200, deadline=None)
@given(
    turns=st.lists(turn, max_size=12),
    last=st.text(min_size=1, max_size=60).filter(str.strip),
    system=st.text(max_size=20),
    max_messages=st.integers(1, 15),
    max_chars=st.integers(1, 200),
)
def test_context_properties(
    turns: list[tuple[str, str | None]], last: str, system: str, max_messages: int, max_chars: int
) -> None:
    history = histories(turns, last)
    result = build(history, system, max_messages, max_chars)
    if system:
        assert result[0] == ("system", system)
        result = result[1:]
    assert all(role != "system" for role, _ in result)
    # the newest message is always there, and it is last
    assert result[-1] == ("user", last)
    # never starts with an assistant message
    assert result[0][0] == "user"
    # a contiguous suffix of the non-empty history, oldest first
    nonempty = [(m.role, m.content) for m in history if m.content]
    assert nonempty[len(nonempty) - len(result) :] == result
    # within the limits (the newest message alone may exceed the char budget)
    assert len(result) <= max_messages
    if len(result) > 1:
        assert sum(len(c) for _, c in result) + len(system) <= max_chars
    # maximal: the next older message (plus the assistant possibly dropped) would not fit
    dropped = nonempty[: len(nonempty) - len(result)]
    if dropped:
        extra = dropped[-2:] if dropped[-1][0] == "assistant" and len(dropped) >= 2 else dropped[-1:]
        count = len(result) + len(extra)
        chars = sum(len(c) for _, c in result + extra) + len(system)
        assert count > max_messages or chars > max_chars or extra[0][0] == "assistant"
