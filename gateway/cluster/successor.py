"""Ending the replies taken over from an instance that died: from their log in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from ..errors import ErrorCode, GatewayError
from ..events import ReplyEnded
from ..metrics import Metrics
from ..stores import ConversationStore, StoredMessage, StoreUnavailable
from . import names, scripts
from .link import Link

__all__ = ["Successor"]

_log: Any = structlog.get_logger("gateway.cluster")
SAVE_TRIES = (0.5, 1.0, 2.0)


class Successor:
    """Ends taken-over replies: stores what reached their log as final (``error``), then
    ships their end, which every follower on every instance gets."""

    def __init__(self, link: Link, store: ConversationStore, metrics: Metrics, grace_ms: Any) -> None:
        self._link, self._store, self._metrics, self._grace_ms = link, store, metrics, grace_ms
        self._ship = link.redis.register_script(scripts.SHIP)

    async def end(self, taken: list[tuple[str, int]]) -> None:
        for reply_id, epoch in taken:
            await self._end_one(reply_id, epoch)

    async def _end_one(self, reply_id: str, epoch: int) -> None:
        async with self._link.using() as redis:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hmget(names.reply(reply_id), "conv", "msg", "seq", "created", "model")
                pipe.xrange(names.log(reply_id), "-", "+")
                meta, entries = await pipe.execute()
        if meta[0] is None:
            return
        conv, message_id, model = meta[0].decode(), meta[1].decode(), (meta[4] or b"").decode() or None
        seq = int(meta[2])
        text = "".join(fields[b"t"].decode() for _, fields in entries)
        await self._store_final(conv, StoredMessage(
            reply_id, "assistant", text, created_at=float(meta[3] or 0), finish_reason="error", model=model,
        ))
        error = GatewayError(
            ErrorCode.INTERNAL,
            "the gateway instance streaming this reply stopped before it finished; what it streamed is kept",
        )
        end = names.encode_end(seq, ReplyEnded(reply_id, message_id, "error", None, error))
        async with self._link.using():
            await self._ship(args=[self._grace_ms(), self._grace_ms(), self._link.instance_id,
                                   "E", reply_id, epoch, seq, end, conv])
        self._metrics.takeovers.inc()
        _log.warning("reply_taken_over", reply_id=reply_id, conversation_id=conv, seq=seq, chars=len(text))

    async def _store_final(self, conversation_id: str, message: StoredMessage) -> None:
        for delay in (*SAVE_TRIES, None):
            try:
                await self._store.save(conversation_id, message)
                return
            except StoreUnavailable as exc:
                if delay is None:
                    _log.error("reply_not_stored", reply_id=message.id, error=str(exc))
                    return
                await asyncio.sleep(delay)
            except Exception:
                _log.exception("reply_not_stored", reply_id=message.id)
                return
