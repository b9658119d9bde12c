"""The owner's side: the replies this instance produces, put in Redis.

Deltas are delivered to this instance's followers at once (:meth:`Reply.publish`) and
shipped behind them: one script call at a time carries everything new of every reply
(registration, start, deltas, end), and calls start :data:`LINGER` apart at least, so a
busy instance makes few, large calls (an idle one ships a lone delta at once).
What cannot be shipped while Redis is down or refusing waits (a reply's text is kept
whole by its log anyway) and is shipped when Redis is back; a reply claimed meanwhile
is registered then. An end that waited longer than :data:`STALE_AFTER` is shipped
without the text still missing (its followers elsewhere are told it cannot be
followed; the history has it). A reply taken over by another instance is stopped
here (fenced), and so is one Redis forgot without losing its data (it ended
elsewhere and expired: it must not come back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from ..errors import ErrorCode, ProtocolError
from ..reply import Reply, StopReason
from . import names, scripts
from .link import Link, LinkDown

__all__ = ["Shipper"]

_log: Any = structlog.get_logger("gateway.cluster")
STALE_AFTER = 60.0  # seconds an end may wait for Redis with its text; then it goes without
RETRY_AFTER = 1.0  # seconds before shipping again after Redis refused a batch
LINGER = 0.005  # seconds at least between the starts of two script calls: what one call gathers


class _Shipment:
    """What of one reply is in Redis, and what is still to ship."""

    __slots__ = ("reply", "epoch", "acked", "registered", "start", "end", "ended_at", "recheck", "token")

    def __init__(self, reply: Reply, *, registered: bool, token: bytes | None) -> None:
        self.reply = reply
        self.epoch = 1
        self.acked = 0  # the last seq in Redis
        self.registered = registered
        self.token = token  # the cluster's token when it was registered (see lease.py)
        self.start: bytes | None = None
        self.end: bytes | None = None
        self.ended_at = 0.0
        self.recheck = False  # ask Redis whether it still knows the reply (it may have restarted empty)


class Shipper:
    """A :class:`~gateway.sharing.Sharing` that puts this instance's replies in Redis."""

    def __init__(
        self,
        link: Link,
        *,
        ttl: Callable[[], float],
        grace: Callable[[], float],
        token: Callable[[], bytes | None],
    ) -> None:
        self._link = link
        self._ttl, self._grace, self._token = ttl, grace, token
        self._claim = link.redis.register_script(scripts.CLAIM)
        self._ship = link.redis.register_script(scripts.SHIP)
        self._shipments: dict[str, _Shipment] = {}
        self._dirty: dict[str, _Shipment] = {}
        self._ended: dict[str, str] = {}  # conversation → its reply that ended here, end not shipped yet
        self._flushing: asyncio.Task[None] | None = None
        self._shipped_at = 0.0  # when the last script call started (the loop's clock)
        self._retry: asyncio.TimerHandle | None = None
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
                          reply.model, self._ended.get(conv, ""), reply.parent_id, reply.stored_id],
                )
        except LinkDown:  # alone for now (its own slots still hold): registered once Redis is back
            self._track(reply, registered=False)
            return
        if holder is not None:
            raise ProtocolError(ErrorCode.BUSY, "a reply is already streaming in this conversation")
        self._track(reply, registered=True)

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
        """Ship what waits."""
        if self._dirty and self._flushing is None and self._link.up:
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
        if self._retry is not None:
            self._retry.cancel()
        if self._flushing is not None:
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)

    def _track(self, reply: Reply, *, registered: bool) -> None:
        self._shipments[reply.id] = _Shipment(reply, registered=registered, token=self._token())
        reply.shared = self._changed
        if not registered:
            self._changed(reply)

    def _changed(self, reply: Reply) -> None:
        shipment = self._shipments.get(reply.id)
        if shipment is not None and reply.id not in self._dirty:
            self._dirty[reply.id] = shipment
            self.idle.clear()
            self.kick()

    async def _flush(self) -> None:
        batch: dict[str, _Shipment] = {}
        loop = asyncio.get_running_loop()
        try:
            while self._dirty and self._link.up:
                if (wait := self._shipped_at + LINGER - loop.time()) > 0.0005:
                    await asyncio.sleep(wait)  # under load: let more of every reply gather
                    if not (self._dirty and self._link.up):
                        break
                self._shipped_at = loop.time()
                batch, self._dirty = self._dirty, {}
                records, args = self._records(batch.values())
                async with self._link.using() as redis:
                    statuses = await self._ship(args=[self._ttl_ms(), self._grace_ms(), self.me, *args])
                    gone = [s for (_, s, _), status in zip(records, statuses, strict=True) if status == b"gone"]
                    token = await redis.get(names.CLUSTER) if gone else None
                redone: set[str] = set()  # replies to ship again whole: their other records are moot
                for (kind, shipment, extra), status in zip(records, statuses, strict=True):
                    if shipment.reply.id not in redone:
                        if self._apply(kind, shipment, extra, status.decode(), token):
                            redone.add(shipment.reply.id)
                batch = {}
        except LinkDown:  # shipped when Redis is back (or after RETRY_AFTER, if it refused)
            self._requeue(batch)
        except Exception:
            _log.exception("redis_ship_failed")
            self._requeue(batch)
        finally:
            self._flushing = None
            if not self._dirty:
                self.idle.set()

    def _requeue(self, batch: dict[str, _Shipment]) -> None:
        self._dirty = {**batch, **self._dirty}
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(RETRY_AFTER, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self.kick()

    def _records(self, shipments: Iterable[_Shipment]) -> tuple[list[tuple[str, _Shipment, int]], list[Any]]:
        """The script's arguments for ``shipments``, and what each record was."""
        records: list[tuple[str, _Shipment, int]] = []
        args: list[Any] = []
        for s in shipments:
            reply = s.reply
            if not s.registered:
                records.append(("R", s, 0))
                args += ["R", reply.id, reply.conversation_id, reply.message_id, self.me, s.epoch, reply.created_at,
                         reply.model, reply.parent_id, reply.stored_id]
            if s.start is not None and s.end is not None:
                s.start = None  # it ended before Redis heard of it: no tab is to be told it starts
            if s.start is not None:
                records.append(("S", s, 0))
                args += ["S", reply.id, reply.conversation_id, s.start]
            seq = reply.log.seq
            stale = s.end is not None and time.monotonic() - s.ended_at > STALE_AFTER
            if (seq > s.acked or s.recheck) and not stale:
                s.recheck = False
                texts = reply.log.deltas(s.acked)
                records.append(("A", s, seq))
                args += ["A", reply.id, s.epoch, s.acked, reply.log.chars, len(texts), reply.log.kinds(s.acked), *texts]
            if s.end is not None:
                records.append(("E", s, 0))
                args += ["E", reply.id, s.epoch, seq, s.end, reply.conversation_id, int(stale)]
        return records, args

    def _apply(self, kind: str, s: _Shipment, seq: int, status: str, token: Any) -> bool:
        """Note what Redis answered for one record; True if the reply is to be shipped again
        whole. ``token``: the cluster's token now, read when Redis answered ``gone``."""
        reply = s.reply
        if reply.id not in self._shipments:
            return False  # fenced by an earlier record of the batch
        if status == "fenced":
            self._fence(s, "another instance took it over")
        elif status == "gone" and token is not None and token == s.token:
            self._fence(s, "Redis no longer knows it, but did not lose its data: it ended elsewhere")
        elif status in ("gone", "behind"):  # Redis restarted empty (register again), or lacks deltas
            s.registered, s.acked = status == "behind", 0
            s.token = token if status == "gone" else s.token
            self._changed(reply)
            return True
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
        return False

    def _fence(self, s: _Shipment, why: str) -> None:
        self._forget(s.reply)
        _log.warning("reply_fenced", reply_id=s.reply.id, reason=why)
        s.reply.stop(StopReason.FENCED)

    def _forget(self, reply: Reply) -> None:
        self._shipments.pop(reply.id, None)
        self._dirty.pop(reply.id, None)
        if self._ended.get(reply.conversation_id) == reply.id:
            del self._ended[reply.conversation_id]

    def _ttl_ms(self) -> int:
        return round(self._ttl() * 1000)

    def _grace_ms(self) -> int:
        return max(1000, round(self._grace() * 1000))
