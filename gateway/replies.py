"""Replies and the registry that owns them.

A reply is not owned by a socket: its producer task belongs to the
:class:`ReplyRegistry`, and connections *subscribe* to it. A client that goes
away only unsubscribes; the reply goes on, is stored when it ends, and stays
resumable for a grace period. Cancel, drain and shutdown reach the producer
through the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from .context import build_context
from .errors import ErrorCode, GatewayError, ProtocolError, UpstreamError
from .events import ReplyDelta, ReplyEnded, ReplyStarted, Streaming, Subscriber
from .metrics import Metrics
from .providers import ChatMessage, Provider, Usage
from .replylog import ReplyLog
from .stores import ConversationNotFound, ConversationStore, StoredMessage, StoreFull, new_id

__all__ = ["Reply", "ReplyRegistry", "RegistryLimits", "StopReason"]

_log: Any = structlog.get_logger("gateway.replies")


class StopReason(enum.Enum):
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"


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


class Reply:
    """One assistant reply: its numbered text, its end, and who watches it."""

    def __init__(self, conversation_id: str, message_id: str, max_chars: int) -> None:
        self.id = new_id()
        self.conversation_id = conversation_id
        self.message_id = message_id
        self.log = ReplyLog(max_chars)
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
        self.task: asyncio.Task[None] | None = None
        self.provider: Provider | None = None  # the one that produces it, whatever a reload changes
        self.checkpointed_at = self.started_at
        self.checkpoint_timer: asyncio.TimerHandle | None = None
        self.checkpoint_task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def started(self, content: str | None) -> ReplyStarted:
        return ReplyStarted(self.id, self.conversation_id, self.message_id, self.replaces, content)

    def ended_event(self) -> ReplyEnded:
        assert self.finish_reason is not None
        return ReplyEnded(self.id, self.message_id, self.finish_reason, self.usage, self.error)

    def subscribe(self, subscriber: Subscriber, after_seq: int | None = None) -> None:
        """Add a watcher; with ``after_seq``, first send it what it missed. An ended reply
        only sends what was missed and its end: it keeps no watchers."""
        if after_seq is not None and after_seq < self.log.seq:
            subscriber.reply_event(ReplyDelta(self.id, self.log.seq, self.log.since(after_seq)))
        if self.done:
            subscriber.reply_event(self.ended_event())
        else:
            self.subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def stop(self, reason: StopReason) -> None:
        """Ask the producer to stop; the upstream request is aborted at once."""
        if self.task is not None and not self.done:
            self.stop_reason = self.stop_reason or reason
            self.task.cancel()

    def publish(self, text: str) -> bool:
        """Number ``text`` as the next delta and hand it to every subscriber."""
        if not self.log.append(text):
            return False
        if self.first_delta_at is None:
            self.first_delta_at = time.monotonic()
        event = ReplyDelta(self.id, self.log.seq, text)
        for subscriber in tuple(self.subscribers):
            subscriber.reply_event(event)
        return True


class ReplyRegistry:
    """Owns every reply's producer task, keyed by reply id."""

    def __init__(
        self, provider: Provider, store: ConversationStore, limits: RegistryLimits, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics or Metrics()
        self.provider = provider
        self.store = store
        self.limits = limits
        self.accepting = True
        self._replies: dict[str, Reply] = {}
        self._active: dict[str, Reply] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def get(self, reply_id: str) -> Reply | None:
        return self._replies.get(reply_id)

    def streaming(self, conversation_id: str) -> Streaming | None:
        """The reply streaming in ``conversation_id`` now, if any."""
        reply = self._active.get(conversation_id)
        return Streaming(reply.id, reply.log.seq, reply.log.chars) if reply is not None else None

    def follow(self, reply_id: str, conversation_id: str, subscriber: Subscriber, after_seq: int) -> None:
        """``subscriber`` gets what a reply of ``conversation_id`` sent after ``after_seq``,
        then the rest of it (``resume``)."""
        reply = self._replies.get(reply_id)
        if reply is None or reply.conversation_id != conversation_id:
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

    def cancel(self, reply_id: str, conversation_id: str) -> None:
        """Stop a reply of ``conversation_id`` at a client's request."""
        reply = self._replies.get(reply_id)
        if reply is None or reply.conversation_id != conversation_id:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such reply in this conversation")
        reply.stop(StopReason.CANCELLED)

    async def start(
        self,
        conversation_id: str,
        message: StoredMessage,
        subscriber: Subscriber,
        watchers: Iterable[Subscriber] = (),
        *,
        new: bool = False,
    ) -> str:
        """Store the user's message, then start a reply for ``subscriber`` and ``watchers``
        (the conversation's other connections: other tabs); return its id. ``new``: the
        conversation is created first, with this id."""
        reply = self._reserve(conversation_id, message.id)
        async with self._storing(reply):
            if new:
                await self.store.create(conversation_id)
            added = await self.store.add(conversation_id, message)
            if not added:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "a message with this id is already in the conversation")
            history = await self.store.history(conversation_id, self.limits.context_max_messages)
        self._launch(reply, history, subscriber, watchers, message.content)
        return reply.id

    async def regenerate(
        self,
        conversation_id: str,
        request_id: str,
        subscriber: Subscriber,
        watchers: Iterable[Subscriber] = (),
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
        self._launch(reply, history, subscriber, watchers, None)
        return reply.id

    def _reserve(self, conversation_id: str, message_id: str) -> Reply:
        self._check_capacity(conversation_id)
        reply = Reply(conversation_id, message_id, self.limits.max_reply_chars)
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
        watchers: Iterable[Subscriber],
        content: str | None,
    ) -> None:
        messages = build_context(
            history,
            system_prompt=self.limits.system_prompt,
            max_messages=self.limits.context_max_messages,
            max_chars=self.limits.context_max_chars,
        )
        self._replies[reply.id] = reply
        reply.provider = self.provider
        self.metrics.messages.inc()
        subscriber.reply_event(reply.started(None))
        reply.subscribe(subscriber)
        for watcher in watchers:
            if watcher is not subscriber:
                watcher.reply_event(reply.started(content))
                reply.subscribe(watcher)
        reply.task = asyncio.create_task(self._produce(reply, messages), name=f"reply-{reply.id}")

    def _check_capacity(self, conversation_id: str) -> None:
        if not self.accepting:
            raise GatewayError(ErrorCode.OVERLOADED, "the server is restarting; send again in a moment", retry_after=1)
        if conversation_id in self._active:
            raise ProtocolError(ErrorCode.BUSY, "a reply is already streaming in this conversation")
        if len(self._active) >= self.limits.max_replies:
            raise GatewayError(ErrorCode.OVERLOADED, "the server is busy; try again shortly", retry_after=2)

    async def _produce(self, reply: Reply, messages: Sequence[ChatMessage]) -> None:
        finish = None
        try:
            async with asyncio.timeout(self.limits.max_reply_seconds):
                finish = await self._relay(reply, messages)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if reply.stop_reason is StopReason.CANCELLED:
                finish = "cancelled"
            else:
                reply.error = GatewayError(
                    ErrorCode.OVERLOADED, "the server restarted before this reply finished", retry_after=1
                )
        except TimeoutError:
            reply.error = GatewayError(
                ErrorCode.UPSTREAM_TIMEOUT,
                f"the reply took longer than {self.limits.max_reply_seconds:g} s",
                retryable=False,
            )
        except GatewayError as exc:
            reply.error = exc
        except Exception:
            _log.exception("reply_crashed", reply_id=reply.id)
            reply.error = GatewayError(ErrorCode.INTERNAL, "the gateway failed while streaming this reply")
        reply.finish_reason = "error" if reply.error else finish or "stop"
        await self._finish(reply)

    async def _relay(self, reply: Reply, messages: Sequence[ChatMessage]) -> str | None:
        finish = None
        assert reply.provider is not None
        async with contextlib.aclosing(reply.provider.stream(messages)) as stream:
            async for chunks in stream:
                text = "".join([c.text for c in chunks]) if len(chunks) > 1 else chunks[0].text
                for chunk in chunks:
                    reply.reasoning_chars += len(chunk.reasoning)
                    reply.usage = chunk.usage or reply.usage
                    finish = chunk.finish_reason or finish
                if text:
                    if not reply.publish(text):
                        return "length"
                    self._schedule_checkpoint(reply)
        return finish

    def _schedule_checkpoint(self, reply: Reply) -> None:
        """Save new text at most ``checkpoint_interval`` after it arrived, off the producer's path."""
        if reply.checkpoint_timer is None and reply.checkpoint_task is None:
            delay = max(0.0, reply.checkpointed_at + self.limits.checkpoint_interval - time.monotonic())
            reply.checkpoint_timer = asyncio.get_running_loop().call_later(delay, self._start_checkpoint, reply)

    def _start_checkpoint(self, reply: Reply) -> None:
        reply.checkpoint_timer = None
        if not reply.done:
            reply.checkpoint_task = asyncio.create_task(self._checkpoint(reply), name=f"checkpoint-{reply.id}")

    async def _checkpoint(self, reply: Reply) -> None:
        """Save the text so far (finish_reason still unset), so a crash loses little."""
        seq = reply.log.seq
        try:
            await self.store.save(reply.conversation_id, self._stored(reply))
        except Exception:
            _log.exception("checkpoint_failed", reply_id=reply.id)
        reply.checkpointed_at = time.monotonic()
        reply.checkpoint_task = None
        if reply.log.seq > seq and not reply.done:
            self._schedule_checkpoint(reply)

    @staticmethod
    async def _stop_checkpoints(reply: Reply) -> None:
        """No checkpoint may land after the final save: cancel the timer, await the write."""
        if reply.checkpoint_timer is not None:
            reply.checkpoint_timer.cancel()
            reply.checkpoint_timer = None
        if reply.checkpoint_task is not None:
            await reply.checkpoint_task

    @staticmethod
    def _stored(reply: Reply) -> StoredMessage:
        return StoredMessage(
            reply.id, "assistant", reply.log.text,
            created_at=reply.created_at,
            finish_reason=reply.finish_reason,
            usage=reply.usage.as_dict() if reply.usage else None,
        )

    async def _finish(self, reply: Reply) -> None:
        """Store the final text, then end the reply whatever happens: a failure to store,
        to tell a watcher or to count must not leave a reply unfinished or never expiring."""
        try:
            await self._stop_checkpoints(reply)
            await self.store.save(reply.conversation_id, self._stored(reply))
        except Exception:
            _log.exception("store_failed", conversation_id=reply.conversation_id, reply_id=reply.id)
        finally:
            self._end(reply)

    def _end(self, reply: Reply) -> None:
        if self._active.pop(reply.conversation_id, None) is not None:
            self.metrics.replies_in_flight.dec()
        loop = asyncio.get_running_loop()
        self._expiry[reply.id] = loop.call_later(self.limits.resume_grace, self._expire, reply.id)
        reply.ended.set()
        subscribers, reply.subscribers = tuple(reply.subscribers), set()
        event = reply.ended_event()
        for subscriber in subscribers:
            try:
                subscriber.reply_event(event)
            except Exception:
                _log.exception("reply_end_failed", reply_id=reply.id)
        try:
            self._log_finished(reply, len(subscribers))
        except Exception:
            _log.exception("reply_log_failed", reply_id=reply.id)

    def _expire(self, reply_id: str) -> None:
        self._expiry.pop(reply_id, None)
        self._replies.pop(reply_id, None)

    def _log_finished(self, reply: Reply, subscribers: int) -> None:
        now = time.monotonic()
        usage = reply.usage.as_dict() if reply.usage else {}
        m = self.metrics
        m.replies.labels(reply.finish_reason).inc()
        m.deltas.inc(reply.log.seq)
        m.duration.observe(now - reply.started_at)
        if reply.first_delta_at is not None:
            m.ttft.observe(reply.first_delta_at - reply.started_at)
        if usage.get("completion_tokens"):
            m.tokens.inc(usage["completion_tokens"])
        if isinstance(reply.error, UpstreamError):
            m.upstream_errors.labels(str(reply.error.code)).inc()
        _log.info(
            "reply_finished",
            reply_id=reply.id,
            conversation_id=reply.conversation_id,
            provider=reply.provider.name if reply.provider else None,
            model=reply.provider.model if reply.provider else None,
            finish_reason=reply.finish_reason,
            error_code=str(reply.error.code) if reply.error else None,
            deltas=reply.log.seq,
            chars=reply.log.chars,
            reasoning_chars=reply.reasoning_chars,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            ttft_ms=round((reply.first_delta_at - reply.started_at) * 1000, 1) if reply.first_delta_at else None,
            duration_ms=round((now - reply.started_at) * 1000, 1),
            subscribers=subscribers,
        )

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
