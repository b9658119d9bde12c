"""Ending the replies taken over from an instance that died: from their log in Redis.

Taken replies wait in :attr:`Successor.pending` (by id, with their new epoch) and are
ended by one task of their own, outside the lease's loop (a slow database must not
keep the lease from being renewed); one that cannot be ended now (Redis or the store
away) stays pending and is tried again at the next sweep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from ..errors import ErrorCode, GatewayError
from ..events import ReplyEnded
from ..metrics import Metrics
from ..stores import ConversationStore, StoredMessage, StoreUnavailable
from . import names, scripts
from .link import Link, LinkDown

__all__ = ["Successor"]

_log: Any = structlog.get_logger("gateway.cluster")


class Successor:
    """Ends taken-over replies: stores the longest text known of each (what reached its
    log, or the owner's last checkpoint if longer) as final with ``error``, then ships
    its end, which every follower on every instance gets."""

    def __init__(self, link: Link, store: ConversationStore, metrics: Metrics, grace_ms: Callable[[], int]) -> None:
        self._link, self._store, self._metrics, self._grace_ms = link, store, metrics, grace_ms
        self._ship = link.redis.register_script(scripts.SHIP)
        self.pending: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def take(self, taken: list[tuple[str, int]]) -> None:
        """Replies just taken over: end them soon."""
        self.pending.update(taken)
        self.kick()

    def kick(self) -> None:
        if self.pending and self._task is None:
            self._task = asyncio.create_task(self._end_pending(), name="redis-successor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _end_pending(self) -> None:
        try:
            for reply_id, epoch in list(self.pending.items()):
                try:
                    await self._end_one(reply_id, epoch)
                except (LinkDown, StoreUnavailable):
                    return  # tried again at the next sweep
                except Exception:
                    _log.exception("takeover_failed", reply_id=reply_id)
                self.pending.pop(reply_id, None)
        finally:
            self._task = None

    async def _end_one(self, reply_id: str, epoch: int) -> None:
        async with self._link.using() as redis:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hmget(names.reply(reply_id), "conv", "msg", "seq", "created", "model", "parent", "mid")
                pipe.xrange(names.log(reply_id), "-", "+")
                meta, entries = await pipe.execute()
        if meta[0] is None:
            return  # Redis lost it meanwhile: its owner's checkpoint is what is left
        conv, message_id, model = meta[0].decode(), meta[1].decode(), (meta[4] or b"").decode() or None
        parent, stored_id = (meta[5] or b"").decode(), (meta[6] or b"").decode() or reply_id
        seq = int(meta[2])
        logged = "".join(fields[b"t"].decode() for _, fields in entries if b"t" in fields)
        thought = "".join(fields[b"r"].decode() for _, fields in entries if b"r" in fields)
        text, reasoning = await self._longest(conv, stored_id, logged, thought)
        await self._store.save(conv, StoredMessage(
            stored_id, "assistant", text, created_at=float(meta[3] or 0), finish_reason="error", model=model,
            reasoning=reasoning, parent_id=parent,
        ))
        error = GatewayError(
            ErrorCode.INTERNAL,
            "the gateway instance streaming this reply stopped before it finished; what it streamed is kept",
        )
        end = names.encode_end(seq, ReplyEnded(reply_id, message_id, "error", None, error, model))
        async with self._link.using():
            await self._ship(args=[self._grace_ms(), self._grace_ms(), self._link.instance_id,
                                   "E", reply_id, epoch, seq, end, conv, 0])
        self._metrics.takeovers.inc()
        _log.warning("reply_taken_over", reply_id=reply_id, conversation_id=conv, seq=seq, chars=len(text))

    async def _longest(self, conversation_id: str, stored_id: str, logged: str, thought: str) -> tuple[str, str | None]:
        """The text and reasoning that reached the log, or the owner's checkpoint's where
        it had more (it went on alone while Redis was unreachable)."""
        found = await self._store.branch(conversation_id, stored_id, 1)
        if found is not None and found.messages:  # a branch ending with it: it is the last
            message = found.messages[-1]
            stored = message.reasoning or ""
            if len(message.content) > len(logged) and message.content.startswith(logged):
                logged = message.content
            if len(stored) > len(thought) and stored.startswith(thought):
                thought = stored
        return logged, thought or None
