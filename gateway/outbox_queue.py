"""What an outbox queues for its writer, and how a reply's text merges while it waits.

:class:`FrameQueue` holds encoded frames as they are and reply text as deltas:
text of one reply put after a waiting delta of that reply joins it, so a socket
that is behind gets fewer, larger frames. Deltas are encoded only when the
writer takes them (:meth:`FrameQueue.encode`). No event loop here: waiting for
frames, and counting their bytes, is :class:`~gateway.outbox.Outbox`'s job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["Close", "DeltaEncoder", "Frame", "FrameQueue"]


class Close:
    """Queued last: the writer closes the socket with ``code`` once what is before it is sent."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason

    def __len__(self) -> int:
        return 0


Frame = bytes | str | Close
DeltaEncoder = Callable[[str, int, str], Frame]


class _Delta:
    __slots__ = ("reply_id", "seq", "parts", "reasoning")

    def __init__(self, reply_id: str, seq: int, text: str, reasoning: bool) -> None:
        self.reply_id, self.seq, self.parts, self.reasoning = reply_id, seq, [text], reasoning


class FrameQueue(deque[Frame | _Delta]):
    """A FIFO of frames and reply deltas, in the order they were put."""

    __slots__ = ()

    def put_delta(self, reply_id: str, seq: int, text: str, reasoning: bool = False) -> bool:
        """Queue reply text (or reasoning), merged into the last item if that is a delta of
        the same reply and kind.

        Returns:
            Whether a new item was queued (False: the text joined the last one).
        """
        last = self[-1] if self else None
        if isinstance(last, _Delta) and last.reply_id == reply_id and last.reasoning == reasoning:
            last.parts.append(text)
            last.seq = seq
            return False
        self.append(_Delta(reply_id, seq, text, reasoning))
        return True

    def holds_delta(self, reply_id: str) -> bool:
        """Whether text of ``reply_id`` waits here."""
        return any(isinstance(i, _Delta) and i.reply_id == reply_id for i in self)

    def encode(self, encode_delta: DeltaEncoder, encode_reasoning: DeltaEncoder) -> tuple[list[Frame], int]:
        """Every item as a frame, deltas encoded with ``encode_delta`` (reasoning with
        ``encode_reasoning``); and how many text deltas there were."""
        deltas, frames = 0, []
        for item in self:
            if isinstance(item, _Delta):
                deltas += not item.reasoning
                encode = encode_reasoning if item.reasoning else encode_delta
                frames.append(encode(item.reply_id, item.seq, "".join(item.parts)))
            else:
                frames.append(item)
        return frames, deltas
