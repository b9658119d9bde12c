"""Frames waiting to be written to one socket.

Consecutive deltas of one reply merge while they wait, so a socket that is
behind gets fewer, larger frames instead of a growing queue; past
``max_pending`` characters the outbox gives up on the client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

__all__ = ["Close", "Outbox"]


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
    __slots__ = ("reply_id", "seq", "parts")

    def __init__(self, reply_id: str, seq: int, text: str) -> None:
        self.reply_id, self.seq, self.parts = reply_id, seq, [text]


class Outbox:
    """A bounded FIFO of frames for one connection, drained by its writer."""

    __slots__ = (
        "_items", "_pending", "_max_pending", "_encode_delta", "_on_overflow", "_count", "_waiter", "overflowed"
    )

    def __init__(
        self,
        max_pending: int,
        encode_delta: DeltaEncoder,
        on_overflow: Callable[[], None],
        count_deltas: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._items: deque[Frame | _Delta] | None = None  # made on first use: idle sockets are many
        self._pending = 0
        self._max_pending = max_pending
        self._encode_delta = encode_delta
        self._on_overflow = on_overflow
        self._count = count_deltas
        self._waiter: asyncio.Future[None] | None = None
        self.overflowed = False

    def put(self, frame: Frame) -> None:
        """Queue an encoded frame."""
        if self._admit(len(frame)):
            self._queue().append(frame)
            self._wake()

    def put_delta(self, reply_id: str, seq: int, text: str, *, counted: bool = True) -> None:
        """Queue reply text, merged into the last waiting delta of the same reply.

        ``counted=False`` is for a resume's catch-up: text the reply already holds
        (bounded by the reply's own limit), which must not count as falling behind.
        """
        if self.overflowed or (counted and not self._admit(len(text))):
            return
        items = self._queue()
        last = items[-1] if items else None
        if isinstance(last, _Delta) and last.reply_id == reply_id:
            last.parts.append(text)
            last.seq = seq
        else:
            items.append(_Delta(reply_id, seq, text))
            self._wake()

    async def get(self) -> list[Frame]:
        """Wait for frames, then take all that are waiting."""
        while not self._items:  # None or empty
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items, self._pending = self._items, deque(), 0
        assert items is not None
        encode, deltas, frames = self._encode_delta, 0, []
        for item in items:
            if isinstance(item, _Delta):
                deltas += 1
                frames.append(encode(item.reply_id, item.seq, "".join(item.parts)))
            else:
                frames.append(item)
        if deltas:
            self._count(deltas)
        return frames

    def _admit(self, size: int) -> bool:
        """Admit ``size`` more; one frame alone is always admitted, however large."""
        if self.overflowed:
            return False
        self._pending += size
        if self._pending <= self._max_pending or self._pending == size:
            return True
        self.overflowed = True
        self._items = None
        self._on_overflow()
        return False

    def _queue(self) -> deque[Frame | _Delta]:
        if self._items is None:
            self._items = deque()
        return self._items

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
