"""History pages by count and bytes (pure)."""

from __future__ import annotations

import pytest

from gateway.events import Streaming
from gateway.paging import page, read_bound, without
from gateway.stores import StoredMessage

MESSAGES = [StoredMessage(f"m{i}", "user", "x" * 10) for i in range(5)]


@pytest.mark.parametrize(
    ("limit", "max_bytes", "ids", "has_more"),
    [
        (10, 1000, ["m0", "m1", "m2", "m3", "m4"], False),
        (2, 1000, ["m3", "m4"], True),
        (10, 25, ["m3", "m4"], True),
        (10, 30, ["m2", "m3", "m4"], True),
        (10, 5, ["m4"], True),  # at least one message, however large
    ],
)
def test_page(limit: int, max_bytes: int, ids: list[str], has_more: bool) -> None:
    got, more = page(MESSAGES, limit, max_bytes)
    assert [m.id for m in got] == ids and more is has_more


def test_a_single_large_message_alone_has_nothing_more() -> None:
    assert page(MESSAGES[-1:], 10, 5) == (MESSAGES[-1:], False)


def test_the_streaming_reply_is_left_out_and_read_on_top() -> None:
    active = Streaming("m4", 3, 100)
    assert [m.id for m in without(MESSAGES, active)] == ["m0", "m1", "m2", "m3"]
    assert without(MESSAGES, None) == MESSAGES
    assert read_bound(1000, active) == 1400 and read_bound(1000, None) == 1000
