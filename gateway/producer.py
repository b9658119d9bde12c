"""One reply's producer: streams it from the provider, checkpoints it, stores its end."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog

from .errors import ErrorCode, GatewayError, UpstreamError
from .providers import ChatMessage, Chunk
from .providers.think import ThinkSplitter
from .reply import Reply, StopReason
from .routing import Attempt, Kind, Wait, kind_of
from .stores import ConversationStore, StoreUnavailable

__all__ = ["AttemptObserver", "Producer"]

_log: Any = structlog.get_logger("gateway.replies")


class AttemptObserver(Protocol):
    """Told how each upstream attempt went (metrics and logs)."""

    def answered(self, reply: Reply, attempt: Attempt) -> None: ...

    def failed(self, reply: Reply, attempt: Attempt, kind: Kind, exc: UpstreamError, *, cooled: bool) -> None: ...


class Producer:
    """The body of a reply's task. Whatever happens, it decides the reply's end, saves it
    (after the last checkpoint, never before) and hands the reply to ``on_end``."""

    def __init__(
        self,
        reply: Reply,
        store: ConversationStore,
        messages: Sequence[ChatMessage],
        *,
        max_seconds: float,
        checkpoint_interval: float,
        on_end: Callable[[Reply], None],
        shared_ticks: bool = False,
        save_retry_delays: Sequence[float] = (),
        save_deadline: float = 10.0,
        settle: Callable[[Reply, Sequence[ChatMessage]], Awaitable[None]] | None = None,
        first_token_timeout: float = 0.0,
        observer: AttemptObserver | None = None,
        contexts: Callable[[str], Sequence[ChatMessage]] | None = None,
    ) -> None:
        self.reply, self.store, self.messages = reply, store, messages
        self.save_retry_delays, self.save_deadline = save_retry_delays, save_deadline
        self.max_seconds, self.checkpoint_interval, self.on_end = max_seconds, checkpoint_interval, on_end
        self.shared_ticks = shared_ticks
        self.settle = settle
        self.first_token_timeout, self.observer, self.contexts = first_token_timeout, observer, contexts
        self._answered = False  # an attempt streamed (or ended well): counted once
        self._asked = messages  # what the model asked for is sent
        self._think: ThinkSplitter | None = None  # inline <think> of the attempt, until the answer starts
        self._finish: str | None = None  # the attempt's finish reason so far
        self._checkpointed_at = reply.started_at
        self._tick = 0  # the last shared tick used (a multiple of the interval on the loop's clock)
        self._timer: asyncio.TimerHandle | None = None
        self._checkpoint: asyncio.Task[None] | None = None

    async def run(self) -> None:
        reply = self.reply
        reply.producing = True
        reply.requested = reply.stop_reason is None
        reply.finish(self._stopped() if reply.stop_reason else await self._stream())
        try:
            await self._stop_checkpoints()
            if reply.stop_reason is not StopReason.FENCED:  # the instance that took it over stores it
                await self._save_final()
        except Exception:
            _log.exception("store_failed", conversation_id=reply.conversation_id, reply_id=reply.id)
        finally:
            try:
                if self.settle is not None:  # before the end is told: the next message sees the true count
                    await self.settle(reply, self.messages)
            except Exception as exc:  # Redis away: the reservation stands
                _log.warning("usage_not_settled", reply_id=reply.id, error=str(exc) or type(exc).__name__)
            finally:
                self.on_end(reply)

    async def _save_final(self) -> None:
        """Save the end; while the store cannot be reached, try again after each of
        ``save_retry_delays``, all within ``save_deadline`` seconds; else give up and tell
        the followers it is not stored (the next start marks its checkpoint ``error``)."""
        reply = self.reply
        try:
            async with asyncio.timeout(self.save_deadline):
                for delay in (*self.save_retry_delays, None):
                    try:
                        await self.store.save(reply.conversation_id, reply.stored())
                        return
                    except StoreUnavailable as exc:
                        if delay is None:
                            raise
                        _log.warning("reply_save_retried", reply_id=reply.id, retry_in_s=delay, error=str(exc))
                        await asyncio.sleep(delay)
        except Exception as exc:  # the store still away, past the deadline, or refusing the text
            _log.error("reply_not_stored", conversation_id=reply.conversation_id, reply_id=reply.id,
                       error=str(exc) or type(exc).__name__)
            reply.error = reply.error or GatewayError(
                ErrorCode.INTERNAL, "this reply could not be stored: it will be missing from the history",
                retryable=False,
            )

    async def _stream(self) -> str:
        """The finish reason; a failure is set as the reply's ``error``."""
        reply = self.reply
        try:
            async with asyncio.timeout(self.max_seconds):
                return await self._relay() or "stop"
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return self._stopped()
        except TimeoutError:
            reply.error = GatewayError(
                ErrorCode.UPSTREAM_TIMEOUT, f"the reply took longer than {self.max_seconds:g} s", retryable=False
            )
        except GatewayError as exc:
            reply.error = exc
        except Exception:
            _log.exception("reply_crashed", reply_id=reply.id)
            reply.error = GatewayError(ErrorCode.INTERNAL, "the gateway failed while streaming this reply")
        return "error"

    def _stopped(self) -> str:
        """The finish reason of a reply stopped by a client (cancel) or by the drain."""
        if self.reply.stop_reason is StopReason.CANCELLED:
            return "cancelled"
        if self.reply.stop_reason is StopReason.FENCED:
            self.reply.error = GatewayError(
                ErrorCode.INTERNAL, "another instance ended this reply while this one could not reach Redis",
            )
            return "error"
        self.reply.error = GatewayError(
            ErrorCode.OVERLOADED, "the server restarted before this reply finished", retry_after=1
        )
        return "error"

    async def _relay(self) -> str | None:
        """Try the reply's route until an attempt streams: a failure before anything was
        published moves to the next attempt (routing.py); after, the reply ends with it."""
        reply, loop = self.reply, asyncio.get_running_loop()
        route = reply.route
        route.start(loop.time())
        while True:
            if reply.stop_reason is not None:  # a stop that raced the upstream's own timer
                raise asyncio.CancelledError
            step = route.next(loop.time())
            if step is None:
                raise route.last_error or UpstreamError(ErrorCode.UPSTREAM_TIMEOUT, "no deployment answered in time")
            if isinstance(step, Wait):
                await asyncio.sleep(step.seconds)
                continue
            reply.attempting(step)
            try:
                return await self._attempt(step)
            except UpstreamError as exc:
                if reply.streamed:  # text went out: no silent retry or switch
                    raise
                spent = loop.time() >= route.deadline  # the budget ran out, not the deployment
                kind = kind_of(exc) if spent else route.failed(step, exc, loop.time())
                if self.observer is not None:
                    self.observer.failed(reply, step, kind, exc, cooled=not spent and route.cools(kind))
                if spent:
                    raise

    async def _attempt(self, attempt: Attempt) -> str | None:
        """One upstream request; UpstreamError (upstream_timeout if no token came within the
        first-token limit, when another deployment could answer, or the budget left) if it fails."""
        reply, first = self.reply, True
        route, loop = reply.route, asyncio.get_running_loop()
        self._think, self._finish = ThinkSplitter(), None
        own = self.first_token_timeout if self.first_token_timeout and route.alternatives else math.inf
        limit = min(own, route.deadline - loop.time())
        try:
            async with asyncio.timeout(limit) as first_token:
                stream = reply.provider.stream(self._context(attempt.model))
                async with contextlib.aclosing(stream):
                    async for chunks in stream:
                        if first and any(c.text or c.reasoning for c in chunks):
                            first = False
                            first_token.reschedule(None)
                        full = not self._received(chunks)
                        if not self._answered and reply.streamed:
                            self._answer(attempt)
                        if full:
                            return "length"
        except TimeoutError:
            raise UpstreamError(
                ErrorCode.UPSTREAM_TIMEOUT, f"the provider sent no token within {limit:.3g} s"
            ) from None
        finish = self._finish
        if self._think is not None:  # what it held back (an unfinished tag)
            thought, text = self._think.close()
            if not ((not thought or self._publish(True, thought)) and (not text or self._publish(False, text))):
                finish = "length"
        if not self._answered:
            self._answer(attempt)
        return finish

    def _answer(self, attempt: Attempt) -> None:
        self._answered = True
        if self.observer is not None:
            self.observer.answered(self.reply, attempt)

    def _context(self, model: str) -> Sequence[ChatMessage]:
        """What is sent to ``model`` (its own system prompt, for a fallback)."""
        if self.contexts is not None:
            self.messages = self._asked if model == self.reply.route.requested else self.contexts(model)
        return self.messages

    def _received(self, chunks: list[Chunk]) -> bool:
        """Publish what ``chunks`` hold, reasoning and text in their order; False if the
        reply is full."""
        reply, thinking = self.reply, self._think is not None
        for chunk in chunks:  # one pass: usage, the finish reason, whether any thinking came
            if chunk.usage is not None:
                reply.usage = chunk.usage
            if chunk.finish_reason:
                self._finish = chunk.finish_reason
            if chunk.reasoning:
                thinking = True
        if not thinking:  # the usual case: answer text only
            text = "".join([c.text for c in chunks]) if len(chunks) > 1 else chunks[0].text
            return self._publish(False, text) if text else True
        for reasoning, text in _pieces(chunks, self._think):
            if not self._publish(reasoning, text):
                return False
        if self._think is not None and self._think.done:
            self._think = None
        return True

    def _publish(self, reasoning: bool, text: str) -> bool:
        if "\x00" in text:  # kept by no store: shown and stored as U+FFFD alike
            text = text.replace("\x00", "\ufffd")
        if not (self.reply.publish_reasoning(text) if reasoning else self.reply.publish(text)):
            return False
        if reasoning:
            self.reply.reasoning_chars += len(text)
        self._schedule_checkpoint()
        return True


    def _schedule_checkpoint(self) -> None:
        """Save new text at most ``checkpoint_interval`` after it arrived, off the producer's path.

        With ``shared_ticks`` every reply checkpoints on the same ticks of the loop's clock
        (the multiples of the interval), so the checkpoints of all the replies streaming at
        once reach the store together (SQLite writes them in one transaction); a reply uses
        each tick once at most (uvloop's clock moves by whole milliseconds).
        """
        if self._timer is None and self._checkpoint is None:
            loop, interval = asyncio.get_running_loop(), self.checkpoint_interval
            if self.shared_ticks:
                self._tick = max(math.ceil(loop.time() / interval), self._tick + 1)
                self._timer = loop.call_at(self._tick * interval, self._start_checkpoint)
            else:
                delay = max(0.0, self._checkpointed_at + interval - time.monotonic())
                self._timer = loop.call_later(delay, self._start_checkpoint)

    def _start_checkpoint(self) -> None:
        self._timer = None
        if not self.reply.done:
            self._checkpoint = asyncio.create_task(self._save_checkpoint(), name=f"checkpoint-{self.reply.id}")

    async def _save_checkpoint(self) -> None:
        """Save the text so far (finish_reason still unset), so a crash loses little."""
        reply = self.reply
        seq = reply.log.seq
        try:
            await self.store.save(reply.conversation_id, reply.stored())
        except StoreUnavailable as exc:  # the next checkpoint, or the final save, tries again
            _log.warning("checkpoint_failed", reply_id=reply.id, error=str(exc))
        except Exception:
            _log.exception("checkpoint_failed", reply_id=reply.id)
        self._checkpointed_at = time.monotonic()
        self._checkpoint = None
        if reply.log.seq > seq and not reply.done:
            self._schedule_checkpoint()

    async def _stop_checkpoints(self) -> None:
        """No checkpoint may land after the final save: cancel the timer, await the write."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._checkpoint is not None:
            await self._checkpoint


def _pieces(chunks: list[Chunk], think: ThinkSplitter | None) -> list[tuple[bool, str]]:
    """What ``chunks`` hold as (reasoning, text) pieces in order, consecutive ones of a
    kind joined; inline ``<think>`` text counts as reasoning."""
    pieces: list[tuple[bool, str]] = []
    for chunk in chunks:
        thought, text = think.feed(chunk.text) if think is not None and chunk.text else ("", chunk.text)
        for reasoning, part in ((True, chunk.reasoning), (True, thought), (False, text)):
            if not part:
                continue
            if pieces and pieces[-1][0] == reasoning:
                pieces[-1] = (reasoning, pieces[-1][1] + part)
            else:
                pieces.append((reasoning, part))
    return pieces

