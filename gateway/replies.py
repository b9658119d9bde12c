"""The registry that owns every reply in this process.

A reply (:mod:`.reply`) is not owned by a socket: its producer task
(:mod:`.producer`) belongs to the :class:`ReplyRegistry`, and connections
*follow* it by id, receiving its events (:mod:`.events`). A client that goes
away only stops following; the reply goes on, is stored when it ends, and stays
resumable for a grace period. Cancel, drain and shutdown reach the producer
through the registry; :mod:`.replystats` counts and logs each reply at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import structlog

from .errors import ErrorCode, GatewayError, ProtocolError
from .events import Streaming, Subscriber
from .accounting import Accounting
from .intake import add_message, answer_again, answered_again, context_of, continued, reopened, store_errors
from .metrics import Metrics
from .producer import Producer
from .catalog import Catalog, Model
from .providers import ChatMessage
from .reply import Reply, StopReason
from .reply_index import ReplyIndex
from .routing import Health, Route
from .replystats import ReplyStats
from .runtime import RegistryLimits
from .sharing import Alone, Sharing
from .slots import Slots
from .tasks import TaskSet
from .stores import UNOWNED, Branch, ConversationStore, StoredMessage
from .watchers import Watchers

__all__ = ["RegistryLimits", "Reply", "ReplyRegistry", "ReplyTerms", "StopReason", "resume_unavailable"]

_log: Any = structlog.get_logger("gateway.replies")


def resume_unavailable() -> GatewayError:
    """What a ``resume`` of a reply that cannot be followed (any more) gets."""
    return GatewayError(
        ErrorCode.RESUME_UNAVAILABLE, "this reply can no longer be resumed; its stored text is in the history",
        retryable=False,
    )


class ReplyTerms(Protocol):
    """What a new reply is made with: read once per reply, when it is admitted
    (:class:`~gateway.runtime.Runtime` is one)."""

    @property
    def catalog(self) -> Catalog: ...

    @property
    def limits(self) -> RegistryLimits: ...


class ReplyRegistry:
    """Owns every reply's producer task, keyed by reply id: admission, lookup, ending and
    expiry, drain. The producing itself is :class:`~gateway.producer.Producer`'s."""

    def __init__(
        self, terms: Callable[[], ReplyTerms], store: ConversationStore, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics or Metrics()
        self.stats = ReplyStats(self.metrics)
        self.store = store
        self._terms = terms
        self._replies = ReplyIndex()
        self._slots = Slots(self.metrics.replies_in_flight)
        self._watchers = Watchers()
        self.sharing: Sharing = Alone()
        self.accounting = Accounting(store, self.metrics)
        self._refunds = TaskSet()  # tokens given back for replies that never started (Redis: a round trip)
        self.health = Health()  # deployments cooling down, whatever a reload changes
        self._rng = random.Random()

    @property
    def in_flight(self) -> int:
        return len(self._slots)

    @property
    def accepting(self) -> bool:
        """False once the drain began."""
        return self._slots.accepting

    def get(self, reply_id: str) -> Reply | None:
        return self._replies.get(reply_id)

    async def watch(self, conversation_id: str, subscriber: Subscriber, owner: str) -> None:
        self._watchers.add(conversation_id, subscriber, owner)

    def unwatch(self, conversation_id: str, subscriber: Subscriber) -> None:
        self._watchers.discard(conversation_id, subscriber)

    async def watched(self, conversation_id: str) -> str | None:
        return self._watchers.owner(conversation_id)

    def owned(self, conversation_id: str, owner: str) -> None:
        """The conversation watched here is ``owner``'s now (it was taken over)."""
        self._watchers.set_owner(conversation_id, owner)

    def watchers(self, conversation_id: str) -> tuple[Subscriber, ...]:
        """Who watches the conversation here (a snapshot)."""
        return self._watchers.of(conversation_id)

    async def streaming(self, conversation_id: str) -> Streaming | None:
        """The reply streaming in ``conversation_id`` now, if any."""
        reply = self._slots.of(conversation_id)
        if reply is None:
            return None
        return Streaming(reply.id, reply.log.seq, reply.log.chars, reply.parent_id, reply.stored_id)

    async def follow(
        self, reply_id: str, conversation_id: str | None, subscriber: Subscriber, after_seq: int
    ) -> None:
        """``subscriber`` gets what a reply of ``conversation_id`` sent after ``after_seq``,
        then the rest of it (``resume``)."""
        reply = self._replies.find(reply_id, conversation_id)
        if reply is None:
            raise resume_unavailable()
        if after_seq > reply.log.seq:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"after_seq is past the reply's last seq ({reply.log.seq})")
        reply.subscribe(subscriber, after_seq)

    def unfollow(self, reply_id: str, subscriber: Subscriber) -> None:
        reply = self._replies.get(reply_id)
        if reply is not None:
            reply.unsubscribe(subscriber)

    async def cancel(self, reply_id: str, conversation_id: str | None) -> None:
        """Stop a reply of ``conversation_id`` at a client's request."""
        reply = self._replies.find(reply_id, conversation_id)
        if reply is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such reply in this conversation")
        reply.stop(StopReason.CANCELLED)

    async def start(
        self,
        conversation_id: str,
        message: StoredMessage,
        subscriber: Subscriber,
        *,
        new: bool = False,
        owner: str = UNOWNED,
        after: str | None = None,
    ) -> str:
        """Store the user's message, then start a reply for ``subscriber`` and the
        conversation's watchers (other tabs); return its id. ``new``: the conversation
        is created first, with this id, for ``owner``. The message goes under the active
        branch's last message, or ``after`` that one (an edit). The message's ``model``
        (a model id of the catalog, or None for the default) answers."""
        terms = self._terms()
        model = terms.catalog.choose(message.model)
        reply = self._reserve(conversation_id, message.id, terms, owner, model)
        reply.parent_id = message.id
        with self._preparing(reply):
            await self._admit(reply, owner, message.content, terms)
            branch = await add_message(
                self.store, conversation_id, message, new=new, owner=owner,
                context_messages=terms.limits.context_max_messages, after=after,
            )
        reply.message_parent_id = branch.messages[-1].parent_id or None
        self._launch(reply, branch, subscriber, message.content, terms)
        return reply.id

    async def regenerate(
        self, conversation_id: str, request_id: str, subscriber: Subscriber, *, owner: str = UNOWNED,
        model: str | None = None, reply_id: str | None = None,
    ) -> str:
        """A new reply to the user's message that ``reply_id`` answers (by default the
        active branch's last), beside the old one, by ``model`` (None: the one that message
        asked for)."""
        terms = self._terms()
        chosen = terms.catalog.choose(model) if model is not None else None
        with store_errors(conversation_id):
            branch, replaced = await answered_again(
                self.store, conversation_id, terms.limits.context_max_messages, reply_id
            )
        question = branch.messages[-1]
        asked = terms.catalog.get(question.model) if question.model else None
        reply = self._reserve(conversation_id, request_id, terms, owner, chosen or asked or terms.catalog.default)
        reply.parent_id, reply.replaces = question.id, replaced
        with self._preparing(reply):
            await self._admit(reply, owner, "", terms)
            await answer_again(self.store, conversation_id, branch, model)
        self._launch(reply, branch, subscriber, None, terms)
        return reply.id

    async def extend(
        self, conversation_id: str, request_id: str, subscriber: Subscriber, *, owner: str = UNOWNED,
        reply_id: str,
    ) -> str:
        """Continue the stored reply ``reply_id``, cut short, by the model that wrote it (or
        the default, if it is no longer offered): the new text extends it."""
        terms = self._terms()
        with store_errors(conversation_id):
            branch = await continued(
                self.store, conversation_id, terms.limits.context_max_messages, reply_id, terms.limits.max_reply_chars
            )
        partial = branch.messages[-1]
        model = terms.catalog.get(partial.model) if partial.model else None
        reply = self._reserve(conversation_id, request_id, terms, owner, model or terms.catalog.default)
        reply.continuing(partial)
        with self._preparing(reply):
            await self._admit(reply, owner, "", terms)
            await reopened(self.store, conversation_id, partial)  # as read: no other continuation won
        self._launch(reply, branch, subscriber, None, terms)
        return reply.id

    async def _admit(self, reply: Reply, owner: str, content: str, terms: ReplyTerms) -> None:
        """Hold the reply among its subject's, claim its conversation (cluster mode) and
        reserve its tokens, charged to ``owner`` for ``content``."""
        await self.accounting.hold_reply(reply, terms.limits)
        await self.sharing.claim(reply)
        reply.charge = await self.accounting.admit(owner, content, terms.limits.quota, terms.limits.reply_reserve)

    def _reserve(self, conversation_id: str, message_id: str, terms: ReplyTerms, owner: str, model: Model) -> Reply:
        route = self._route(terms, model)
        reply = Reply(conversation_id, message_id, terms.limits.max_reply_chars, terms.catalog, route, owner)
        self._slots.take(reply, terms.limits.max_replies)
        return reply

    def _route(self, terms: ReplyTerms, model: Model) -> Route:
        loop = asyncio.get_running_loop()
        return terms.catalog.route(
            model, self.health, now=loop.time(), budget=terms.limits.upstream_timeout, rng=self._rng
        )

    def _free(self, reply: Reply) -> None:
        self._slots.free(reply)

    @contextlib.contextmanager
    def _preparing(self, reply: Reply) -> Iterator[None]:
        """Release what was reserved (the slot, the conversation, the tokens) if preparing
        the reply fails or is cancelled."""
        try:
            with store_errors(reply.conversation_id):
                yield
        except BaseException:
            self._free(reply)
            self.sharing.release(reply)
            if reply.charge is not None or reply.held:
                self._refunds.spawn(self.accounting.give_back(reply), f"refund-{reply.id}")
            raise

    def _launch(
        self,
        reply: Reply,
        branch: Branch,
        subscriber: Subscriber,
        content: str | None,
        terms: ReplyTerms,
    ) -> None:
        limits, models = terms.limits, terms.catalog.models

        def context(model: str) -> Sequence[ChatMessage]:
            return context_of(branch, limits, models[model])

        self._replies.add(reply)
        self.stats.started()
        reply.begin(subscriber, self._watchers.of(reply.conversation_id), content)
        self.sharing.started(reply, content)
        producer = Producer(
            reply, self.store, context(reply.route.requested), max_seconds=limits.max_reply_seconds,
            checkpoint_interval=limits.checkpoint_interval, shared_ticks=limits.checkpoint_ticks, on_end=self._end,
            save_retry_delays=limits.save_retry_delays, save_deadline=limits.save_deadline,
            settle=self.accounting.settle, first_token_timeout=limits.first_token_timeout, observer=self.stats,
            contexts=context,
        )
        reply.task = asyncio.create_task(producer.run(), name=f"reply-{reply.id}")

    def _end(self, reply: Reply) -> None:
        """A reply's end, whatever failed before: release, expiry, followers told, counted.
        A failure to tell a follower or to count must not leave it unfinished."""
        self._free(reply)
        self._replies.ended(reply, self._terms().limits.resume_grace)
        subscribers = reply.close()
        try:
            self.sharing.ended(reply)
        except Exception:
            _log.exception("reply_share_failed", reply_id=reply.id)
        event = reply.ended_event()
        for subscriber in subscribers:
            try:
                subscriber.reply_event(event)
            except Exception:
                _log.exception("reply_end_failed", reply_id=reply.id)
        try:
            self.stats.finished(reply, len(subscribers))
        except Exception:
            _log.exception("reply_log_failed", reply_id=reply.id)

    async def drain(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Stop taking replies; give those in flight ``timeout`` seconds (less if ``hurry``
        is set meanwhile), then stop them: each stores what it streamed."""
        await self._slots.drain(timeout, hurry or asyncio.Event())

    async def close(self) -> None:
        """Stop everything and forget every reply."""
        await self.drain(0)
        await self._refunds.wait(2.0)
        await self.accounting.close(2.0)  # within systemd's stop timeout, after the drain
        self._replies.clear()
