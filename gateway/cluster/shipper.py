"""The owner's side: the replies this instance produces, put in Redis.

Deltas are delivered to this instance's followers at once (:meth:`Reply.publish`) and
shipped behind them: one script call at a time carries everything new of every reply
(registration, start, deltas, end), so a busy instance makes few, large calls.
What cannot be shipped while Redis is down waits (a reply's text is kept whole by its
log anyway) and is shipped when Redis is back; an ended reply waits at most its resume
grace. A reply taken over by another instance (fenced) is stopped here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from ..errors import ErrorCode, ProtocolError
from ..reply import Reply, StopReason
from . import names, scripts
from .link import Link, LinkDown

__all__ = ["Shipper"]

_log: Any = structlog.get_logger("gateway.cluster")


class _Shipment:
    """What of one reply is in Redis, and what is still to ship."""

    __slots__ = ("reply", "epoch", "acked", "registered", "start", "end", "ended_at", "recheck")

    def __init__(self, reply: Reply, epoch: int) -> None:
        self.reply = reply
        self.epoch = epoch
        self.acked = 0  # the last seq in Redis
        self.registered = True
        self.start: bytes | None = None
        self.end: bytes | None = None
        self.ended_at = 0.0
        self.recheck = False  # ask Redis whether it still knows the reply (it may have restarted empty)


class Shipper:
    """A :class:`~gateway.sharing.Sharing` that puts this instance's replies in Redis."""

    def __init__(self, link: Link, *, ttl: Callable[[], float], grace: Callable[[], float]) -> None:
        self._link = link
        self._ttl, self._grace = ttl, grace
        self._claim = link.redis.register_script(scripts.CLAIM)
        self._ship = link.redis.register_script(scripts.SHIP)
        self._shipments: dict[str, _Shipment] = {}
        self._ended: dict[str, str] = {}  # conversation → its reply that ended here, end not shipped yet
        self._dirty: dict[str, _Shipment] = {}
        self._flushing: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def me(self) -> str:
        return self._link.instance_id

    async def claim(self, reply: Reply) -> None:
        conv = reply.conversation_id
        try:
            async with self._link.using():
                holder = await self._claim(
                    keys=[names.slot(conv), names.reply(reply.id), names.owned(self.me)],
                    args=[reply.id, conv, reply.message_id, self.me, self._ttl_ms(), reply.created_at,
                          reply.provider.model, self._ended.get(conv, "")],
                )
        except LinkDown:
            return  # this instance alone: its own slots still hold
        if holder is not None:
            raise ProtocolError(ErrorCode.BUSY, "a reply is already streaming in this conversation")
        self._shipments[reply.id] = _Shipment(reply, epoch=1)
        reply.shared = self._changed

    def release(self, reply: Reply) -> None:
        shipment = self._shipments.get(reply.id)
        if shipment is not None:
            reply.finish("error")
            self.ended(reply)

    def started(self, reply: Reply, content: str | None) -> None:
        shipment = self._shipments.get(reply.id)
        if shipment is not None:
            shipment.start = names.encode_start(reply.started(content), self.me)
            self._changed(reply)

    def ended(self, reply: Reply) -> None:
        shipment = self._shipments.get(reply.id)
        if shipment is not None:
            shipment.end = names.encode_end(reply.log.seq, reply.ended_event())
            shipment.ended_at = time.monotonic()
            self._ended[reply.conversation_id] = reply.id
            self._changed(reply)

    def recheck(self) -> None:
        """Redis is back: check it still knows every reply (then ship what waited)."""
        for shipment in list(self._shipments.values()):
            shipment.recheck = True
            self._changed(shipment.reply)
        self.kick()

    def kick(self) -> None:
        """Ship what waits (Redis is back)."""
        if self._dirty and self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="redis-ship")

    async def wait_shipped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until nothing waits to be shipped; whether so."""
        try:
            async with asyncio.timeout(timeout):
                await self.idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)

    def _changed(self, reply: Reply) -> None:
        shipment = self._shipments.get(reply.id)
        if shipment is not None and reply.id not in self._dirty:
            self._dirty[reply.id] = shipment
            self.idle.clear()
            if self._link.up:
                self.kick()

    async def _flush(self) -> None:
        try:
            while self._dirty and self._link.up:
                batch, self._dirty = self._dirty, {}
                records, args = self._records(batch.values())
                try:
                    async with self._link.using():
                        statuses = await self._ship(args=[self._ttl_ms(), self._grace_ms(), self.me, *args])
                except LinkDown:
                    self._dirty = {**batch, **self._dirty}
                    return
                for (kind, shipment, extra), status in zip(records, statuses, strict=True):
                    self._apply(kind, shipment, extra, status.decode())
        except Exception:
            _log.exception("redis_ship_failed")
        finally:
            self._flushing = None
            if not self._dirty:
                self.idle.set()
            elif self._link.up:
                self.kick()

    def _records(self, shipments: Any) -> tuple[list[tuple[str, _Shipment, int]], list[Any]]:
        """The script's arguments for ``shipments``, and what each record was."""
        records: list[tuple[str, _Shipment, int]] = []
        args: list[Any] = []
        grace = self._grace()
        for s in shipments:
            reply = s.reply
            if s.end is not None and time.monotonic() - s.ended_at > grace:
                self._forget(reply)  # it would have expired from Redis by now
                continue
            if not s.registered:
                records.append(("R", s, 0))
                args += ["R", reply.id, reply.conversation_id, reply.message_id, self.me, s.epoch, reply.created_at,
                         reply.provider.model]
            if s.start is not None:
                records.append(("S", s, 0))
                args += ["S", reply.id, reply.conversation_id, s.start]
            seq = reply.log.seq
            if seq > s.acked or s.recheck:
                s.recheck = False
                texts = reply.log.deltas(s.acked)
                records.append(("A", s, seq))
                args += ["A", reply.id, s.epoch, s.acked, reply.log.chars, len(texts), *texts]
            if s.end is not None:
                records.append(("E", s, 0))
                args += ["E", reply.id, s.epoch, seq, s.end, reply.conversation_id]
        return records, args

    def _apply(self, kind: str, s: _Shipment, seq: int, status: str) -> None:
        reply = s.reply
        if status == "fenced":
            self._forget(reply)
            _log.warning("reply_fenced", reply_id=reply.id)
            reply.stop(StopReason.FENCED)
        elif status in ("gone", "behind"):  # Redis lost it (restarted empty), or lacks deltas
            if reply.id in self._shipments:
                s.registered, s.acked = status == "behind", 0
                self._changed(reply)
        elif kind == "R":
            s.registered = True
        elif kind == "S":
            s.start = None
        elif kind == "A":
            s.acked = seq
            if status == "cancel":
                reply.stop(StopReason.CANCELLED)
        elif kind == "E":
            self._forget(reply)

    def _forget(self, reply: Reply) -> None:
        self._shipments.pop(reply.id, None)
        if self._ended.get(reply.conversation_id) == reply.id:
            del self._ended[reply.conversation_id]

    def _ttl_ms(self) -> int:
        return round(self._ttl() * 1000)

    def _grace_ms(self) -> int:
        return max(1000, round(self._grace() * 1000))
