"""What every store's listing of a subject's conversations shares (pure): the cursor
between pages, and the search pattern."""

from __future__ import annotations

__all__ = ["like_pattern", "page_cursor", "parse_cursor"]


def page_cursor(position: float | int, conversation_id: str) -> str:
    """The opaque cursor after a conversation: where it stands in the order, and its id
    (ties in the update time are broken by id)."""
    return f"{position!r}~{conversation_id}"


def parse_cursor(text: str, kind: type[float] | type[int]) -> tuple[float, str]:
    """The position and id of a cursor made by :func:`page_cursor`; ValueError if it is not one."""
    position, sep, conversation_id = text.partition("~")
    if not sep or not conversation_id:
        raise ValueError("not a cursor of this store")
    try:
        value = kind(position)
    except ValueError:
        raise ValueError("not a cursor of this store") from None
    if not 0 <= value < 2**53:  # a time (seconds, or microseconds) the store could have made
        raise ValueError("not a cursor of this store")
    return value, conversation_id


def like_pattern(query: str) -> str:
    """A SQL ``LIKE`` pattern (``ESCAPE '\\'``) matching text that contains ``query``."""
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
