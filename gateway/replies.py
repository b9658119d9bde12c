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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from .context import build_context
from .errors import ErrorCode, GatewayError, ProtocolError
from .events import Streaming, Subscriber
from .metrics import Metrics
from .producer import Producer
from .providers import Provider
from .reply import Reply, StopReason
from .replystats import ReplyStats
from .stores import ConversationNotFound, ConversationStore, StoredMessage, StoreFull

__all__ = ["Reply", "ReplyRegistry", "RegistryLimits", "StopReason"]

_log: Any = structlog.get_logger("gateway.replies")


@dataclass(frozen=True, slots=True)
class RegistryLimits:
    max_replies: int
    max_reply_chars: int
    max_reply_seconds: float
    resume_grace: float
    checkpoint_interval: float
    system_prompt: str
    context_max_messages: int
    context_max_chars: int


class ReplyRegistry:
    """Owns every reply's producer task, keyed by reply id: admission, lookup, ending and
    expiry, drain. The producing itself is :class:`~gateway.producer.Producer`'s."""

    def __init__(
        self, provider: Provider, store: ConversationStore, limits: RegistryLimits, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics or Metrics()
        self.stats = ReplyStats(self.metrics)
        self.provider = provider
        self.store = store
        self.limits = limits
        self.accepting = True
        self._replies: dict[str, Reply] = {}
        self._active: dict[str, Reply] = {}
        self._watchers: dict[str, set[Subscriber]] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def get(self, reply_id: str) -> Reply | None:
        return self._replies.get(reply_id)

    def watch(self, conversation_id: str, subscriber: Subscriber) -> None:
        self._watchers.setdefault(conversation_id, set()).add(subscriber)

    def unwatch(self, conversation_id: str, subscriber: Subscriber) -> None:
        watchers = self._watchers.get(conversation_id)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self._watchers[conversation_id]

    def watched(self, conversation_id: str) -> bool:
        return conversation_id in self._watchers

    def streaming(self, conversation_id: str) -> Streaming | None:
        """The reply streaming in ``conversation_id`` now, if any."""
        reply = self._active.get(conversation_id)
        return Streaming(reply.id, reply.log.seq, reply.log.chars) if reply is not None else None

    def follow(self, reply_id: str, conversation_id: str | None, subscriber: Subscriber, after_seq: int) -> None:
        """``subscriber`` gets what a reply of ``conversation_id`` sent after ``after_seq``,
        then the rest of it (``resume``)."""
        reply = self._find(reply_id, conversation_id)
        if reply is None:
            raise GatewayError(
                ErrorCode.RESUME_UNAVAILABLE,
                "this reply can no longer be resumed; its stored text is in the history",
                retryable=False,
            )
        if after_seq > reply.log.seq:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"after_seq is past the reply's last seq ({reply.log.seq})")
        reply.subscribe(subscriber, after_seq)

    def unfollow(self, reply_id: str, subscriber: Subscriber) -> None:
        reply = self._replies.get(reply_id)
        if reply is not None:
            reply.unsubscribe(subscriber)

    def cancel(self, reply_id: str, conversation_id: str | None) -> None:
        """Stop a reply of ``conversation_id`` at a client's request."""
        reply = self._find(reply_id, conversation_id)
        if reply is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such reply in this conversation")
        reply.stop(StopReason.CANCELLED)

    def _find(self, reply_id: str, conversation_id: str | None) -> Reply | None:
        """The reply, if it is still known and belongs to ``conversation_id``."""
        reply = self._replies.get(reply_id)
        return reply if reply is not None and reply.conversation_id == conversation_id else None

    async def start(
        self,
        conversation_id: str,
        message: StoredMessage,
        subscriber: Subscriber,
        *,
        new: bool = False,
    ) -> str:
        """Store the user's message, then start a reply for ``subscriber`` and the
        conversation's watchers (other tabs); return its id. ``new``: the conversation
        is created first, with this id."""
        reply = self._reserve(conversation_id, message.id)
        async with self._storing(reply):
            if new:
                await self.store.create(conversation_id)
            added = await self.store.add(conversation_id, message)
            if not added:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "a message with this id is already in the conversation")
            history = await self.store.history(conversation_id, self.limits.context_max_messages)
        self._launch(reply, history, subscriber, message.content)
        return reply.id

    async def regenerate(
        self,
        conversation_id: str,
        request_id: str,
        subscriber: Subscriber,
    ) -> str:
        """Replace the conversation's last reply with a new one for the same user message."""
        reply = self._reserve(conversation_id, request_id)
        async with self._storing(reply):
            history = await self.store.history(conversation_id, self.limits.context_max_messages + 1)
            if not history:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "there is no reply to regenerate")
            if history[-1].role == "assistant":
                reply.replaces = history.pop().id
                await self.store.delete(conversation_id, reply.replaces)
        self._launch(reply, history, subscriber, None)
        return reply.id

    def _reserve(self, conversation_id: str, message_id: str) -> Reply:
        self._check_capacity(conversation_id)
        reply = Reply(conversation_id, message_id, self.limits.max_reply_chars, self.provider)
        self._active[conversation_id] = reply
        self.metrics.replies_in_flight.inc()
        return reply

    @contextlib.asynccontextmanager
    async def _storing(self, reply: Reply) -> AsyncIterator[None]:
        """Release the reserved slot if preparing the reply fails; store failures are internal."""
        try:
            yield
        except GatewayError:
            self._release(reply)
            raise
        except ConversationNotFound:
            self._release(reply)
            raise ProtocolError(ErrorCode.NOT_FOUND, "this conversation no longer exists") from None
        except StoreFull:
            self._release(reply)
            raise GatewayError(
                ErrorCode.OVERLOADED, "the gateway holds as many conversations as it may; try again later",
                retry_after=60,
            ) from None
        except Exception:
            self._release(reply)
            _log.exception("store_failed", conversation_id=reply.conversation_id)
            raise GatewayError(ErrorCode.INTERNAL, "the message could not be stored; try again") from None

    def _release(self, reply: Reply) -> None:
        del self._active[reply.conversation_id]
        self.metrics.replies_in_flight.dec()

    def _launch(
        self,
        reply: Reply,
        history: Sequence[StoredMessage],
        subscriber: Subscriber,
        content: str | None,
    ) -> None:
        messages = build_context(
            history,
            system_prompt=self.limits.system_prompt,
            max_messages=self.limits.context_max_messages,
            max_chars=self.limits.context_max_chars,
        )
        self._replies[reply.id] = reply
        self.stats.started()
        subscriber.reply_event(reply.started(None))
        reply.subscribe(subscriber)
        for watcher in tuple(self._watchers.get(reply.conversation_id, ())):
            if watcher is not subscriber:
                watcher.reply_event(reply.started(content))
                reply.subscribe(watcher)
        producer = Producer(
            reply, self.store, messages, max_seconds=self.limits.max_reply_seconds,
            checkpoint_interval=self.limits.checkpoint_interval, on_end=self._end,
        )
        reply.task = asyncio.create_task(producer.run(), name=f"reply-{reply.id}")

    def _check_capacity(self, conversation_id: str) -> None:
        if not self.accepting:
            raise GatewayError(ErrorCode.OVERLOADED, "the server is restarting; send again in a moment", retry_after=1)
        if conversation_id in self._active:
            raise ProtocolError(ErrorCode.BUSY, "a reply is already streaming in this conversation")
        if len(self._active) >= self.limits.max_replies:
            raise GatewayError(ErrorCode.OVERLOADED, "the server is busy; try again shortly", retry_after=2)

    def _end(self, reply: Reply) -> None:
        """A reply's end, whatever failed before: release, expiry, followers told, counted.
        A failure to tell a follower or to count must not leave it unfinished."""
        if self._active.pop(reply.conversation_id, None) is not None:
            self.metrics.replies_in_flight.dec()
        loop = asyncio.get_running_loop()
        self._expiry[reply.id] = loop.call_later(self.limits.resume_grace, self._expire, reply.id)
        subscribers = reply.close()
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

    def _expire(self, reply_id: str) -> None:
        self._expiry.pop(reply_id, None)
        self._replies.pop(reply_id, None)

    async def drain(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Stop taking replies; give those in flight ``timeout`` seconds (less if ``hurry``
        is set meanwhile), then stop them: each stores what it streamed."""
        self.accepting = False
        tasks = [r.task for r in self._active.values() if r.task is not None]
        if tasks:
            await _wait_all(tasks, timeout, hurry or asyncio.Event())
        for reply in list(self._active.values()):
            reply.stop(StopReason.SHUTDOWN)
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        """Stop everything and forget every reply."""
        await self.drain(0)
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        self._replies.clear()


async def _wait_all(tasks: list[asyncio.Task[None]], timeout: float, hurry: asyncio.Event) -> None:
    """Wait until every task is done, ``timeout`` passed or ``hurry`` is set."""
    hurried = asyncio.ensure_future(hurry.wait())
    pending: set[asyncio.Future[Any]] = set(tasks)
    try:
        async with asyncio.timeout(timeout):
            while pending and not hurried.done():
                _, pending = await asyncio.wait(pending | {hurried}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(hurried)
    except TimeoutError:
        pass
    finally:
        hurried.cancel()
        await asyncio.gather(hurried, return_exceptions=True)
