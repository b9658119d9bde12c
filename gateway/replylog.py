"""A reply's text as numbered deltas (pure)."""

from __future__ import annotations

__all__ = ["ReplyLog"]


class ReplyLog:
    """The deltas of one reply, numbered from 1, kept whole for ``resume``.

    Delta ``n`` is ``parts[n - 1]``, so the text after any ``seq`` is a slice.
    The reply's length is bounded by ``max_chars``; :meth:`append` reports
    whether the text still fits.
    """

    __slots__ = ("_parts", "_chars", "max_chars")

    def __init__(self, max_chars: int) -> None:
        self._parts: list[str] = []
        self._chars = 0
        self.max_chars = max_chars

    @property
    def seq(self) -> int:
        """The number of the last delta (0 before the first)."""
        return len(self._parts)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def chars(self) -> int:
        return self._chars

    def append(self, text: str) -> bool:
        """Add one delta; False (and nothing added) if it would pass ``max_chars``."""
        if self._chars + len(text) > self.max_chars:
            return False
        self._parts.append(text)
        self._chars += len(text)
        return True

    def since(self, after_seq: int) -> str:
        """The text of the deltas numbered above ``after_seq``."""
        if not 0 <= after_seq <= self.seq:
            raise ValueError(f"after_seq {after_seq} is outside 0..{self.seq}")
        return "".join(self._parts[after_seq:])
