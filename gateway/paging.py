"""History pages: by count and by bytes, without the reply still streaming (pure)."""

from __future__ import annotations

from .events import Streaming
from .stores import StoredMessage

__all__ = ["page", "read_bound", "without"]


def without(messages: list[StoredMessage], active: Streaming | None) -> list[StoredMessage]:
    """History without the reply still streaming (its checkpoint): that one is resumed."""
    if active is None:
        return messages
    streaming = active.message_id or active.reply_id  # a continuation writes the reply it extends
    return [m for m in messages if m.id != streaming]


def read_bound(max_bytes: int, active: Streaming | None) -> int:
    """What to read for a page of ``max_bytes``: the streaming reply's checkpoint is read
    too, then left out, so its text (4 bytes a character at most) is read on top."""
    return max_bytes + (4 * active.chars if active else 0)


def page(messages: list[StoredMessage], limit: int, max_bytes: int) -> tuple[list[StoredMessage], bool]:
    """The newest ``limit`` messages whose text (reasoning included) fits in ``max_bytes``
    (at least one), and whether older ones are left out."""
    size, start = 0, len(messages)
    while start > 0 and len(messages) - start < limit:
        message = messages[start - 1]
        size += len(message.content.encode()) + (len(message.reasoning.encode()) if message.reasoning else 0)
        if size > max_bytes and start < len(messages):
            break
        start -= 1
    return messages[start:], start > 0
