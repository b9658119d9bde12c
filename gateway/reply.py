"""One assistant reply: its numbered text, its state, and who follows it."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable, Mapping

from .errors import GatewayError
from .events import ReplyDelta, ReplyEnded, ReplyReasoning, ReplyStarted, Subscriber
from .catalog import Catalog, Model
from .providers import Provider, Usage
from .quota import Charge
from .replylog import ReplyLog
from .routing import Attempt, Route
from .stores import StoredMessage, new_id

__all__ = ["Reply", "ReplyState", "StopReason"]


class ReplyState(enum.Enum):
    STREAMING = "streaming"  # text may still come
    ENDING = "ending"  # its end is decided (finish_reason), the final save runs
    ENDED = "ended"  # saved (or failed to), its followers told


class StopReason(enum.Enum):
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    FENCED = "fenced"  # another instance took it over (its owner's lease had expired)


class Reply:
    """A reply's text, its end, and its followers. Its producer (:mod:`.producer`)
    writes it; the registry (:mod:`.replies`) owns it."""

    def __init__(
        self, conversation_id: str, message_id: str, max_chars: int, catalog: Catalog, route: Route, owner: str = "",
    ) -> None:
        self.id = new_id()
        self.conversation_id = conversation_id
        self.owner = owner  # the subject it is charged to
        self.charge: Charge | None = None  # the tokens reserved for it (budgets on)
        self.held = False  # counted among its subject's replies streaming (replies_per_subject on)
        self.requested = False  # its request was sent upstream (it was not stopped before)
        self.message_id = message_id
        self.catalog = catalog  # what produces it, whatever a reload changes
        self.reroute(route)  # the model and deployment answering: the first candidate, then each attempt's
        self.log = ReplyLog(max_chars)
        self.state = ReplyState.STREAMING
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.error: GatewayError | None = None
        self.reasoning_chars = 0
        self.subscribers: set[Subscriber] = set()
        self.ended = asyncio.Event()
        self.started_at = time.monotonic()
        self.created_at = time.time()
        self.first_delta_at: float | None = None
        self.stop_reason: StopReason | None = None
        self.replaces: str | None = None
        self.parent_id = ""  # the message it answers
        self.stored_id = self.id  # the message it writes: its own, or the one it continues
        self.seeded_seq = self.seeded_chars = 0  # what its log held before the provider's first delta
        self.prior_usage: Mapping[str, int] | None = None  # a continued reply's usage before
        self.message_parent_id: str | None = None  # the parent of the user's message it answers, when new
        self.task: asyncio.Task[None] | None = None
        self.producing = False  # set by its producer's first step
        self.shared: Callable[[Reply], None] | None = None  # told of each new delta (cluster mode)

    @property
    def provider(self) -> Provider:
        return self.catalog.provider(self.model, self.deployment)

    @property
    def answering(self) -> Model:
        return self.catalog.models[self.model]

    @property
    def fallback_from(self) -> str | None:
        """The model asked for, when another one answers."""
        return self.route.requested if self.model != self.route.requested else None

    def reroute(self, route: Route) -> None:
        """Before it starts: answer by ``route`` instead."""
        self.route = route
        self.model, self.deployment = route.first.model, route.first.deployment

    def attempting(self, attempt: Attempt) -> None:
        """A new attempt: what a failed one reported does not count."""
        self.model, self.deployment = attempt.model, attempt.deployment
        self.usage, self.reasoning_chars = None, 0

    @property
    def done(self) -> bool:
        """Whether its end is decided: no more text, no more checkpoints."""
        return self.state is not ReplyState.STREAMING

    @property
    def continues(self) -> str | None:
        """The stored reply it extends, if it is a continuation."""
        return self.stored_id if self.stored_id != self.id else None

    def continuing(self, partial: StoredMessage) -> None:
        """Before it starts: extend the stored reply ``partial``, whose thinking and text
        come first in its log."""
        self.stored_id, self.parent_id, self.prior_usage = partial.id, partial.parent_id, partial.usage
        if partial.reasoning:
            self.log.append(partial.reasoning, reasoning=True)
        if partial.content:
            self.log.append(partial.content)
        self.seeded_seq, self.seeded_chars = self.log.seq, self.log.chars

    @property
    def streamed(self) -> bool:
        """Whether the provider's text or thinking went out (its seeded text does not count)."""
        return self.log.seq > self.seeded_seq

    def started(self, content: str | None) -> ReplyStarted:
        return ReplyStarted(
            self.id, self.conversation_id, self.message_id, self.replaces, content, self.model, self.fallback_from,
            self.parent_id or None, self.continues, self.message_parent_id,
        )

    def ended_event(self) -> ReplyEnded:
        assert self.finish_reason is not None
        return ReplyEnded(
            self.id, self.message_id, self.finish_reason, self.usage, self.error, self.model, self.fallback_from,
            self.answering.cost(self.usage),
        )

    def begin(self, requester: Subscriber, watchers: Iterable[Subscriber], content: str | None) -> None:
        """Tell whoever asked for it, and the conversation's other watchers (with the user's
        message), that it starts; they all follow it."""
        seen = 0 if self.log.seq else None  # a continuation's text so far
        requester.reply_event(self.started(None))
        self.subscribe(requester, seen)
        for watcher in watchers:
            if watcher is not requester:
                watcher.reply_event(self.started(content))
                self.subscribe(watcher, seen)

    def subscribe(self, subscriber: Subscriber, after_seq: int | None = None) -> None:
        """Add a follower; with ``after_seq``, first send it what it missed. An ended reply
        only sends what was missed and its end: it keeps no followers."""
        if after_seq is not None and after_seq < self.log.seq:
            for reasoning, seq, text in self.log.runs(after_seq):
                subscriber.reply_event((ReplyReasoning if reasoning else ReplyDelta)(self.id, seq, text))
        if self.state is ReplyState.ENDED:
            subscriber.reply_event(self.ended_event())
        else:
            self.subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def stop(self, reason: StopReason) -> None:
        """Ask the producer to stop; the upstream request is aborted at once. A producer
        not running yet (or a reply still being prepared) is not cancelled (its task would
        end without ever running, and the reply never end): it sees ``stop_reason`` when
        it starts."""
        if not self.done:
            self.stop_reason = self.stop_reason or reason
            if self.task is not None and self.producing:
                self.task.cancel()

    def publish(self, text: str) -> bool:
        """Number ``text`` as the next delta and hand it to every follower."""
        if not self.log.append(text):
            return False
        self._tell(ReplyDelta(self.id, self.log.seq, text))
        return True

    def publish_reasoning(self, text: str) -> bool:
        """Number the model's thinking ``text`` as the next delta; hand it to every follower."""
        if not self.log.append(text, reasoning=True):
            return False
        self._tell(ReplyReasoning(self.id, self.log.seq, text))
        return True

    def _tell(self, event: ReplyDelta | ReplyReasoning) -> None:
        if self.first_delta_at is None:
            self.first_delta_at = time.monotonic()
        for subscriber in tuple(self.subscribers):
            subscriber.reply_event(event)
        if self.shared is not None:
            self.shared(self)

    def finish(self, finish_reason: str) -> None:
        """STREAMING → ENDING: the end is decided (``error`` set before, if any)."""
        self.finish_reason = "error" if self.error else finish_reason
        self.state = ReplyState.ENDING

    def close(self) -> tuple[Subscriber, ...]:
        """→ ENDED: the followers to tell, who are then forgotten."""
        self.state = ReplyState.ENDED
        self.ended.set()
        subscribers, self.subscribers = tuple(self.subscribers), set()
        return subscribers

    def stored(self) -> StoredMessage:
        """The reply as the store keeps it: a checkpoint while streaming, then final."""
        return StoredMessage(
            self.stored_id, "assistant", self.log.text,
            created_at=self.created_at,
            finish_reason=self.finish_reason,
            usage=_added(self.prior_usage, self.usage.as_dict() if self.usage else None),
            model=self.model,
            reasoning=self.log.reasoning or None,
            parent_id=self.parent_id,
        )


def _added(before: Mapping[str, int] | None, now: Mapping[str, int] | None) -> Mapping[str, int] | None:
    """A continued reply's usage: its earlier parts' and this one's, summed."""
    if before is None or now is None:
        return now or before
    return {k: before.get(k, 0) + now.get(k, 0) for k in {*before, *now}}
