"""A reply produced by another instance, as this one's connections follow it (pure).

Deltas come from pub/sub, which may drop some (a reconnect, a killed connection): each
follower's position (the last ``seq`` it got) shows a gap, and the caller repairs it
with a range read of the reply's log (:meth:`Mirror.caught_up`). A delta at or below a
follower's position is a copy and is not sent again; the end is sent only to a follower
that has every delta before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..events import ReplyDelta, ReplyEnded, ReplyReasoning, Subscriber
from .names import RemoteEnd

__all__ = ["Mirror"]


class Mirror:
    """The followers of one remote reply on this instance, each at its own ``seq``."""

    __slots__ = ("reply_id", "conversation_id", "message_id", "positions", "end", "heard", "missing_since")

    def __init__(self, reply_id: str, conversation_id: str, message_id: str) -> None:
        self.reply_id = reply_id
        self.conversation_id = conversation_id
        self.message_id = message_id
        self.positions: dict[Subscriber, int] = {}
        self.end: RemoteEnd | None = None  # known, not yet sent to everyone
        self.heard = False  # anything came by pub/sub since the last look at the log
        self.missing_since: float | None = None  # Redis lost it (restarted empty): its owner may ship it again

    @property
    def lowest(self) -> int:
        """The lowest position: where a repair reads from."""
        return min(self.positions.values(), default=0)

    @property
    def done(self) -> bool:
        """Nobody follows it any more (the last follower left, or was sent the end)."""
        return not self.positions

    def add(self, subscriber: Subscriber, seq: int) -> bool:
        """Follow from ``seq``; False (and its position kept) if it follows already."""
        if subscriber in self.positions:
            return False
        self.positions[subscriber] = seq
        return True

    def discard(self, subscriber: Subscriber) -> None:
        self.positions.pop(subscriber, None)

    def delta(self, seq: int, text: str, *, reasoning: bool = False) -> bool:
        """A live delta (or reasoning); True if some follower misses deltas before it (repair)."""
        self.heard = True
        gap = False
        event = (ReplyReasoning if reasoning else ReplyDelta)(self.reply_id, seq, text)
        for subscriber, position in tuple(self.positions.items()):
            if position == seq - 1:
                self.positions[subscriber] = seq
                subscriber.reply_event(event)
            elif position < seq - 1:
                gap = True
        return gap

    def ended(self, end: RemoteEnd) -> bool:
        """The reply ended; True if some follower misses deltas before the end (repair)."""
        self.heard = True
        self.end = end
        return self._send_end()

    def caught_up(self, entries: Sequence[tuple[int, str, bool]], end: RemoteEnd | None) -> bool:
        """What a read of the log found (consecutive deltas from ``lowest + 1`` on, each
        (seq, text, reasoning), and the end if it came): each follower gets what it missed,
        consecutive deltas of a kind as one. True if a follower still misses something
        (the log lacks it: it is gone)."""
        if entries:
            first, last = entries[0][0], entries[-1][0]
            for subscriber, position in tuple(self.positions.items()):
                if first <= position + 1 <= last:
                    self.positions[subscriber] = last
                    for event in _runs(self.reply_id, entries[position + 1 - first:]):
                        subscriber.reply_event(event)
        if end is not None:
            self.end = end
        return self._send_end() if self.end is not None else False

    def lost(self, event: ReplyEnded) -> None:
        """The reply can no longer be followed from here: every follower gets ``event``."""
        followers, self.positions = tuple(self.positions), {}
        for subscriber in followers:
            subscriber.reply_event(event)

    def _send_end(self) -> bool:
        end = self.end
        assert end is not None
        behind = False
        for subscriber, position in tuple(self.positions.items()):
            if position >= end.seq:
                del self.positions[subscriber]
                subscriber.reply_event(end.event)
            else:
                behind = True
        return behind


def _runs(reply_id: str, entries: Sequence[tuple[int, str, bool]]) -> list[ReplyDelta | ReplyReasoning]:
    """``entries`` as events, consecutive ones of a kind joined (numbered by the last)."""
    events: list[ReplyDelta | ReplyReasoning] = []
    texts: list[str] = []
    for i, (seq, text, reasoning) in enumerate(entries):
        texts.append(text)
        if i + 1 == len(entries) or entries[i + 1][2] != reasoning:
            events.append((ReplyReasoning if reasoning else ReplyDelta)(reply_id, seq, "".join(texts)))
            texts = []
    return events
