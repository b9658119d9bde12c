"""A reply's text as numbered deltas (pure)."""

from __future__ import annotations

from array import array
from collections.abc import Iterator

__all__ = ["ReplyLog"]

_COMPACT_EVERY = 128


class ReplyLog:
    """The deltas of one reply, numbered from 1, kept whole for ``resume``.

    The text is kept in a few large pieces (every 128 deltas are joined into one)
    and each delta's end offset in an array, so memory stays close to the text's
    own size however small the deltas are. A delta is answer text or reasoning
    (the model's thinking), numbered in the same sequence; which is which is kept
    only once a reasoning delta came. The reply's length, reasoning included, is
    bounded by ``max_chars``; :meth:`append` reports whether the text still fits.
    """

    __slots__ = ("_pieces", "_tail", "_ends", "_kinds", "chars", "max_chars")

    def __init__(self, max_chars: int) -> None:
        self._pieces: list[str] = []
        self._tail: list[str] = []
        self._ends = array("Q")
        self._kinds: bytearray | None = None  # 1 for a reasoning delta; None while there is none
        self.chars = 0  # the length of all deltas so far
        self.max_chars = max_chars

    @property
    def seq(self) -> int:
        """The number of the last delta (0 before the first)."""
        return len(self._ends)

    @property
    def text(self) -> str:
        """The answer: every delta but the reasoning ones."""
        return self._all() if self._kinds is None else self._joined(0)

    @property
    def reasoning(self) -> str:
        return "" if self._kinds is None else self._joined(1)

    def _all(self) -> str:
        if self._tail:
            self._compact()
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def _joined(self, kind: int) -> str:
        whole, ends = self._all(), self._ends
        return "".join(whole[ends[i - 1] if i else 0:ends[j - 1]] for k, i, j in self._spans(0) if k == kind)

    def _spans(self, after: int) -> Iterator[tuple[int, int, int]]:
        """The runs of one kind among the deltas after the first ``after``: (kind, index
        of its first delta, index past its last), found a run at a time."""
        kinds = self._kinds
        assert kinds is not None
        i, n = after, len(kinds)
        while i < n:
            kind = kinds[i]
            j = kinds.find(b"\x00" if kind else b"\x01", i)
            j = n if j < 0 else j
            yield kind, i, j
            i = j

    def reasoning_at(self, seq: int) -> bool:
        """Whether delta ``seq`` is reasoning."""
        return self._kinds is not None and self._kinds[seq - 1] == 1

    def append(self, text: str, reasoning: bool = False) -> bool:
        """Add one delta; False (and nothing added) if it would pass ``max_chars``."""
        end = self.chars + len(text)
        if end > self.max_chars:
            return False
        if reasoning or self._kinds is not None:
            if self._kinds is None:
                self._kinds = bytearray(len(self._ends))
            self._kinds.append(reasoning)
        self._tail.append(text)
        self._ends.append(end)
        self.chars = end
        if len(self._tail) >= _COMPACT_EVERY:
            self._compact()
        return True

    def runs(self, after_seq: int) -> list[tuple[bool, int, str]]:
        """The deltas numbered above ``after_seq``, consecutive ones of a kind joined:
        (reasoning, the last seq of the run, its text), in order."""
        if not 0 <= after_seq <= self.seq:
            raise ValueError(f"after_seq {after_seq} is outside 0..{self.seq}")
        if after_seq == self.seq:
            return []
        whole, ends = self._all(), self._ends
        if self._kinds is None:
            return [(False, self.seq, whole[ends[after_seq - 1] if after_seq else 0:])]
        return [(k == 1, j, whole[ends[i - 1] if i else 0:ends[j - 1]]) for k, i, j in self._spans(after_seq)]

    def kinds(self, after_seq: int) -> bytes:
        """For the deltas numbered above ``after_seq``, which are reasoning (``b"r"``) and
        which answer (``b"t"``); empty if none is reasoning."""
        if self._kinds is None or not any(self._kinds[after_seq:]):
            return b""
        return bytes(b"r"[0] if k else b"t"[0] for k in self._kinds[after_seq:])

    def deltas(self, after_seq: int) -> list[str]:
        """The deltas numbered above ``after_seq``, one string each (recent ones are
        cheap: they are still apart)."""
        if not 0 <= after_seq <= self.seq:
            raise ValueError(f"after_seq {after_seq} is outside 0..{self.seq}")
        first_apart = self.seq - len(self._tail)  # the deltas after this one are still apart
        if after_seq >= first_apart:
            return self._tail[after_seq - first_apart:]
        text, ends = self._all(), self._ends
        starts = [ends[i - 1] if i else 0 for i in range(after_seq, self.seq)]
        return [text[start:end] for start, end in zip(starts, ends[after_seq:], strict=True)]

    def _compact(self) -> None:
        self._pieces.append("".join(self._tail))
        self._tail = []
