"""Frames waiting to be written to one socket, and the budget all sockets share.

Consecutive deltas of one reply merge while they wait, so a socket that is
behind gets fewer, larger frames instead of a growing queue. Every byte queued
counts (replies, a resume's catch-up, history pages), and so does the batch
the writer is still sending: past ``max_pending`` bytes the outbox gives up on
its client. An :class:`OutputBudget` bounds the sum over all outboxes; when it
is full, the outboxes holding the most give up first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator

__all__ = ["Close", "Outbox", "OutputBudget"]


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


class OutputBudget:
    """Bytes held by all outboxes together, at most ``limit``.

    When admitting more would pass the limit, the outboxes with the most output
    waiting (not yet taken by their writer: the clients that do not read) are made
    to give up, until it fits; their clients are disconnected and resume later.
    What a given-up outbox's writer is still sending counts until its connection ends.
    """

    __slots__ = ("limit", "total", "_holders")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._holders: set[Outbox] = set()

    def reserve(self, outbox: Outbox, size: int) -> bool:
        """Count ``size`` more bytes for ``outbox``; False if it was itself evicted to make room."""
        if self.total + size > self.limit and not self._evict_for(outbox, size):
            return False
        if not outbox.held:  # an outbox holding anything is a holder already
            self._holders.add(outbox)
        self.total += size
        return True

    def release(self, outbox: Outbox, size: int) -> None:
        self.total -= size
        if not outbox.held:
            self._holders.discard(outbox)

    def forget(self, outbox: Outbox) -> None:
        """``outbox`` gave up: what it still holds counts, but it cannot be evicted again."""
        self._holders.discard(outbox)

    def _evict_for(self, outbox: Outbox, size: int) -> bool:
        while self.total + size > self.limit and self._holders:
            worst = max(self._holders, key=lambda o: (o.queued, o.held))
            worst.give_up()
            if worst is outbox:
                return False
        if self.total + size > self.limit:
            outbox.give_up()
            return False
        return True


class Outbox:
    """A bounded FIFO of frames for one connection, drained by its writer.

    Sizes are bytes: encoded frames as they are, reply text as UTF-8. The first frame
    admitted when nothing else is held (a large ``ready``, a resume's catch-up) does
    not count against ``max_pending`` while it is held, so what may be held is
    ``max_pending`` plus that one frame.
    """

    __slots__ = (
        "_items", "_pending", "_sending", "_alone", "_alone_sending", "_max_pending", "_budget", "_encode_delta",
        "_on_overflow", "_count", "_waiter", "_together", "overflowed",
    )

    def __init__(
        self,
        max_pending: int,
        encode_delta: DeltaEncoder,
        on_overflow: Callable[[], None],
        count_deltas: Callable[[int], None] = lambda n: None,
        budget: OutputBudget | None = None,
    ) -> None:
        self._items: deque[Frame | _Delta] | None = None  # made on first use: idle sockets are many
        self._pending = 0  # bytes queued
        self._sending = 0  # bytes of the batch the writer took and is still sending
        self._alone = self._alone_sending = 0  # of those, a frame admitted alone (queued, being sent)
        self._max_pending = max_pending
        self._budget = budget or OutputBudget(1 << 62)
        self._encode_delta = encode_delta
        self._on_overflow = on_overflow
        self._count = count_deltas
        self._waiter: asyncio.Future[None] | None = None
        self._together: int | None = None
        self.overflowed = False

    @property
    def held(self) -> int:
        """Bytes this outbox holds: queued, and being sent."""
        return self._pending + self._sending

    @property
    def queued(self) -> int:
        """Bytes waiting for the writer to take them."""
        return self._pending

    def put(self, frame: Frame) -> None:
        """Queue an encoded frame."""
        if self._admit(len(frame)):
            self._queue().append(frame)
            self._wake()

    def put_delta(self, reply_id: str, seq: int, text: str) -> None:
        """Queue reply text, merged into the last waiting delta of the same reply."""
        if not self._admit(len(text) if text.isascii() else len(text.encode())):
            return
        items = self._queue()
        last = items[-1] if items else None
        if isinstance(last, _Delta) and last.reply_id == reply_id:
            last.parts.append(text)
            last.seq = seq
        else:
            items.append(_Delta(reply_id, seq, text))
            self._wake()

    def holds_delta(self, reply_id: str) -> bool:
        """Whether text of ``reply_id`` waits here, not yet taken by the writer."""
        return any(isinstance(i, _Delta) and i.reply_id == reply_id for i in self._items or ())

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Frames put inside are admitted as one (a resume's catch-up and the reply's end):
        all of them if the outbox held nothing before."""
        self._together = self.held
        try:
            yield
        finally:
            self._together = None

    async def get(self) -> list[Frame]:
        """Wait for frames, then take all that are waiting.

        Calling it again means the previous batch was sent: its bytes stop counting.
        """
        self._release_sent()
        while not self._items:  # None or empty
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items = self._items, deque()
        self._sending, self._pending = self._pending, 0
        self._alone_sending, self._alone = self._alone, 0
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

    def close(self) -> None:
        """The connection is gone: drop everything, return it to the budget, take nothing more."""
        self.overflowed = True
        self._drop_queued()
        self._release_sent()
        self._budget.forget(self)

    def give_up(self) -> None:
        """Stop taking frames for this client (once): drop what waits, tell the owner.
        The batch being sent counts until the connection ends (:meth:`close`)."""
        if self.overflowed:
            return
        self.overflowed = True
        self._drop_queued()
        self._budget.forget(self)
        self._on_overflow()

    def _drop_queued(self) -> None:
        self._items = None
        if self._pending:
            queued, self._pending, self._alone = self._pending, 0, 0
            self._budget.release(self, queued)

    def _release_sent(self) -> None:
        if self._sending:
            sent, self._sending, self._alone_sending = self._sending, 0, 0
            self._budget.release(self, sent)

    def _admit(self, size: int) -> bool:
        """Admit ``size`` more bytes; past ``max_pending`` (not counting a frame admitted
        alone) the outbox gives up. Frames of no size (Close) always pass."""
        if self.overflowed:
            return False
        if not size:
            return True
        held = self._pending + self._sending
        before = held if self._together is None else self._together
        if before and held - self._alone - self._alone_sending + size > self._max_pending:
            self.give_up()
            return False
        if not self._budget.reserve(self, size):
            return False
        if not before:
            self._alone += size
        self._pending += size
        return True

    def _queue(self) -> deque[Frame | _Delta]:
        if self._items is None:
            self._items = deque()
        return self._items

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
