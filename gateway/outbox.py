"""Frames waiting to be written to one socket, and the budget all sockets share.

Consecutive deltas of one reply merge while they wait, so a socket that is
behind gets fewer, larger frames instead of a growing queue. Every byte queued
counts (replies, a resume's catch-up, history pages), and so does the batch
the writer is still sending: past ``max_pending`` bytes the outbox gives up on
its client. An :class:`OutputBudget` bounds the sum over all outboxes; when it
is full, the outboxes holding the most give up first. The queue itself, and the
merging, are in :mod:`gateway.outbox_queue`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from .outbox_queue import Close, DeltaEncoder, Frame, FrameQueue

__all__ = ["Close", "Frame", "Outbox", "OutputBudget"]

DIRECT_MAX = 16 * 1024  # longer frames (bytes, or characters) always go through the queue, where they count


class OutputBudget:
    """Bytes held by all outboxes together, at most ``limit``.

    When admitting more would pass the limit, the outboxes with the most output
    waiting (not yet taken by their writer: the clients that do not read) are made
    to give up, until it fits; their clients are disconnected and resume later.
    What a given-up outbox's writer is still sending counts until its connection ends.
    ``limit`` may be a function, read at each admission (a reload changes it).
    """

    __slots__ = ("_limit", "total", "_holders")

    def __init__(self, limit: int | Callable[[], int]) -> None:
        self._limit = limit if callable(limit) else lambda: limit
        self.total = 0
        self._holders: set[Outbox] = set()

    @property
    def limit(self) -> int:
        return self._limit()

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


class _Held:
    """The bytes one outbox holds: ``queued`` for its writer, and ``sending`` (the batch the
    writer took and is still sending). ``alone_queued`` and ``alone_sending`` are the part
    of each that is a frame admitted alone, which does not count against ``max_pending``."""

    __slots__ = ("queued", "sending", "alone_queued", "alone_sending")

    def __init__(self) -> None:
        self.queued = self.sending = self.alone_queued = self.alone_sending = 0

    def counted(self) -> int:
        """The bytes that count against ``max_pending``."""
        return self.queued + self.sending - self.alone_queued - self.alone_sending

    def add(self, size: int, *, alone: bool) -> None:
        """Count ``size`` more bytes queued; ``alone``: a frame admitted when nothing else was held."""
        if alone:
            self.alone_queued += size
        self.queued += size

    def take(self) -> None:
        """The writer took what was queued: that is the batch being sent now."""
        self.sending, self.queued = self.queued, 0
        self.alone_sending, self.alone_queued = self.alone_queued, 0

    def drop_queued(self) -> int:
        """Forget what is queued; return how many bytes that was."""
        queued, self.queued, self.alone_queued = self.queued, 0, 0
        return queued

    def drop_sending(self) -> int:
        """Forget the batch being sent; return how many bytes that was."""
        sent, self.sending, self.alone_sending = self.sending, 0, 0
        return sent


class Outbox:
    """A bounded FIFO of frames for one connection, drained by its writer.

    Sizes are bytes: encoded frames as they are, reply text as UTF-8. The first frame
    admitted when nothing else is held (a large ``ready``, a resume's catch-up) does
    not count against ``max_pending`` while it is held, so what may be held is
    ``max_pending`` plus that one frame.

    ``write_now``, if given, writes a frame at once and says whether it did (it
    declines while the socket still has bytes to send). A small frame put while the
    writer waits with nothing queued or being sent is offered to it first: the common
    case, a client keeping up, then costs no wake-up of the writer.
    """

    __slots__ = (
        "_items", "_held", "_max_pending", "_budget", "_encode_delta", "_on_overflow", "_count", "_waiter", "_together",
        "_write_now", "overflowed", "_encode_reasoning",
    )

    def __init__(
        self,
        max_pending: int,
        encode_delta: DeltaEncoder,
        on_overflow: Callable[[], None],
        count_deltas: Callable[[int], None] = lambda n: None,
        budget: OutputBudget | None = None,
        write_now: Callable[[Frame], bool] | None = None,
        encode_reasoning: DeltaEncoder | None = None,
    ) -> None:
        self._items: FrameQueue | None = None  # made on first use: idle sockets are many
        self._held = _Held()
        self._max_pending = max_pending
        self._budget = budget or OutputBudget(1 << 62)
        self._encode_delta = encode_delta
        self._encode_reasoning = encode_reasoning
        self._on_overflow = on_overflow
        self._count = count_deltas
        self._waiter: asyncio.Future[None] | None = None
        self._together: int | None = None
        self._write_now = write_now
        self.overflowed = False

    @property
    def held(self) -> int:
        """Bytes this outbox holds: queued, and being sent."""
        return self._held.queued + self._held.sending

    @property
    def queued(self) -> int:
        """Bytes waiting for the writer to take them."""
        return self._held.queued

    def put(self, frame: Frame) -> None:
        """Queue an encoded frame."""
        write_now = self._write_now
        if write_now is not None and type(frame) is not Close and len(frame) <= DIRECT_MAX and self._idle():
            if write_now(frame):
                return
        if self._admit(len(frame)):
            self._queue().append(frame)
            self._wake()

    def put_delta(self, reply_id: str, seq: int, text: str, reasoning: bool = False) -> None:
        """Queue reply text (``reasoning``: the model's thinking), merged into the last waiting
        delta of the same reply and kind. An outbox that cannot encode reasoning drops it:
        it is never sent as answer text."""
        encode = self._encode_reasoning if reasoning else self._encode_delta
        if encode is None:
            return
        write_now = self._write_now
        if write_now is not None and len(text) <= DIRECT_MAX // 4 and self._idle():
            if write_now(encode(reply_id, seq, text)):
                if not reasoning:
                    self._count(1)
                return
        if self._admit(len(text) if text.isascii() else len(text.encode())):
            if self._queue().put_delta(reply_id, seq, text, reasoning):
                self._wake()

    def holds_delta(self, reply_id: str) -> bool:
        """Whether text of ``reply_id`` waits here, not yet taken by the writer."""
        return self._items is not None and self._items.holds_delta(reply_id)

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
        items, self._items = self._items, FrameQueue()
        self._held.take()
        frames, deltas = items.encode(self._encode_delta, self._encode_reasoning or self._encode_delta)
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
        if self._held.queued:
            self._budget.release(self, self._held.drop_queued())

    def _release_sent(self) -> None:
        if self._held.sending:
            self._budget.release(self, self._held.drop_sending())

    def _admit(self, size: int) -> bool:
        """Admit ``size`` more bytes; past ``max_pending`` (not counting a frame admitted
        alone) the outbox gives up. Frames of no size (Close) always pass."""
        if self.overflowed:
            return False
        if not size:
            return True
        before = self.held if self._together is None else self._together
        if before and self._held.counted() + size > self._max_pending:
            self.give_up()
            return False
        if not self._budget.reserve(self, size):
            return False
        self._held.add(size, alone=not before)
        return True

    def _idle(self) -> bool:
        """Whether the writer waits, with nothing queued or being sent."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._items and not self.overflowed

    def _queue(self) -> FrameQueue:
        if self._items is None:
            self._items = FrameQueue()
        return self._items

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
