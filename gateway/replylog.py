"""A reply's text as numbered deltas (pure)."""

from __future__ import annotations

from array import array

__all__ = ["ReplyLog"]

_COMPACT_EVERY = 128


class ReplyLog:
    """The deltas of one reply, numbered from 1, kept whole for ``resume``.

    The text is kept in a few large pieces (every 128 deltas are joined into one)
    and each delta's end offset in an array, so memory stays close to the text's
    own size however small the deltas are. The reply's length is bounded by
    ``max_chars``; :meth:`append` reports whether the text still fits.
    """

    __slots__ = ("_pieces", "_tail", "_ends", "chars", "max_chars")

    def __init__(self, max_chars: int) -> None:
        self._pieces: list[str] = []
        self._tail: list[str] = []
        self._ends = array("Q")
        self.chars = 0  # the text's length so far
        self.max_chars = max_chars

    @property
    def seq(self) -> int:
        """The number of the last delta (0 before the first)."""
        return len(self._ends)

    @property
    def text(self) -> str:
        if self._tail:
            self._compact()
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def append(self, text: str) -> bool:
        """Add one delta; False (and nothing added) if it would pass ``max_chars``."""
        end = self.chars + len(text)
        if end > self.max_chars:
            return False
        self._tail.append(text)
        self._ends.append(end)
        self.chars = end
        if len(self._tail) >= _COMPACT_EVERY:
            self._compact()
        return True

    def since(self, after_seq: int) -> str:
        """The text of the deltas numbered above ``after_seq``."""
        if not 0 <= after_seq <= self.seq:
            raise ValueError(f"after_seq {after_seq} is outside 0..{self.seq}")
        start = self._ends[after_seq - 1] if after_seq else 0
        return self.text[start:]

    def deltas(self, after_seq: int) -> list[str]:
        """The deltas numbered above ``after_seq``, one string each (recent ones are
        cheap: they are still apart)."""
        if not 0 <= after_seq <= self.seq:
            raise ValueError(f"after_seq {after_seq} is outside 0..{self.seq}")
        first_apart = self.seq - len(self._tail)  # the deltas after this one are still apart
        if after_seq >= first_apart:
            return self._tail[after_seq - first_apart:]
        text, ends = self.text, self._ends
        starts = [ends[i - 1] if i else 0 for i in range(after_seq, self.seq)]
        return [text[start:end] for start, end in zip(starts, ends[after_seq:], strict=True)]

    def _compact(self) -> None:
        self._pieces.append("".join(self._tail))
        self._tail = []
