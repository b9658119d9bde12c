"""This instance's followers of replies produced by other instances.

Each such reply is a :class:`~.mirror.Mirror` here: its channel delivers the live
deltas, its log in Redis what was missed (a resume, a gap, a lost connection, an end
that never came). A mirror lives while someone here follows its reply.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from ..errors import ErrorCode, ProtocolError
from ..events import ReplyEnded, ReplyStarted, Subscriber
from ..replies import resume_unavailable
from ..tasks import TaskSet
from . import names
from .link import Link, LinkDown
from .mirror import Mirror

__all__ = ["RemoteFollowers"]

_log: Any = structlog.get_logger("gateway.cluster")


class RemoteFollowers:
    """The mirrors of remote replies, their repairs, and their safety net."""

    def __init__(self, link: Link, patience: float) -> None:
        self.link = link
        self.patience = patience  # seconds a followed reply Redis lost has to come back
        self._mirrors: dict[str, Mirror] = {}
        self._tasks = TaskSet()
        self._repairing: set[str] = set()

    async def close(self) -> None:
        await self._tasks.cancel()

    async def follow(self, reply_id: str, conversation_id: str, subscriber: Subscriber, after_seq: int) -> None:
        """``subscriber`` gets what the reply sent after ``after_seq``, then the rest."""
        mirror = self._mirrors.get(reply_id)
        try:
            if mirror is None:
                mirror = await self._mirror(reply_id, conversation_id, [(subscriber, after_seq)])
            elif mirror.conversation_id == conversation_id:
                mirror.add(subscriber, after_seq)
            if mirror is None or mirror.conversation_id != conversation_id:
                raise resume_unavailable()
            if not await self._repair(mirror, check_seq=after_seq):
                raise resume_unavailable()
        except BaseException as exc:
            self.leave(reply_id, subscriber)
            if isinstance(exc, LinkDown):
                raise resume_unavailable() from None
            raise

    def leave(self, reply_id: str, subscriber: Subscriber) -> None:
        mirror = self._mirrors.get(reply_id)
        if mirror is not None:
            mirror.discard(subscriber)
            if mirror.done:
                self._forget(mirror)

    def started(self, event: ReplyStarted, watchers: tuple[Subscriber, ...]) -> None:
        """A reply started elsewhere in a conversation ``watchers`` watch here."""
        self._tasks.spawn(self._follow_started(event, watchers), "redis-follow")

    def message(self, reply_id: str, data: bytes) -> None:
        """A delta (``D<seq>\\n<text>``), reasoning (``R<seq>\\n<text>``) or the end
        (``E<json>``) from a reply's channel."""
        mirror = self._mirrors.get(reply_id)
        if mirror is None:
            return
        tag = data[:1]
        if tag == b"D" or tag == b"R":
            head, _, text = data[1:].partition(b"\n")
            behind = mirror.delta(int(head), text.decode(), reasoning=tag == b"R")
        else:
            behind = mirror.ended(names.decode_end(reply_id, data[1:]))
        if behind:
            self._spawn_repair(mirror)
        elif mirror.done:
            self._forget(mirror)

    def repair_all(self) -> None:
        """Messages may have been lost (Redis came back, pub/sub reconnected): check every
        followed reply against its log."""
        for mirror in list(self._mirrors.values()):
            self._spawn_repair(mirror)

    def poll(self) -> None:
        """The safety net: a followed reply nothing was heard of for a while is checked
        against its log (a lost end, a lost last delta)."""
        for mirror in list(self._mirrors.values()):
            if not mirror.heard or mirror.missing_since is not None:
                self._spawn_repair(mirror)
            mirror.heard = False

    async def _follow_started(self, event: ReplyStarted, watchers: tuple[Subscriber, ...]) -> None:
        mirror = self._mirrors.get(event.reply_id)
        new = [w for w in watchers if mirror is None or w not in mirror.positions]  # a start may be heard twice
        for watcher in new:
            watcher.reply_event(event)
        try:
            mirror = await self._mirror(event.reply_id, event.conversation_id, [(w, 0) for w in new])
            if mirror is not None:
                await self._repair(mirror)
        except LinkDown:
            pass  # Redis is back soon: every mirror is repaired then

    async def _mirror(
        self, reply_id: str, conversation_id: str, followers: list[tuple[Subscriber, int]]
    ) -> Mirror | None:
        """The reply's mirror with ``followers`` added (each from its seq), subscribed to
        its channel; None if Redis knows no such reply in the conversation."""
        async with self.link.using() as redis:
            meta: Any = await redis.hmget(names.reply(reply_id), "conv", "msg")
            conv, message_id = meta
        if conv is None or conv.decode() != conversation_id:
            return None
        mirror = self._mirrors.get(reply_id)
        if mirror is None:
            mirror = self._mirrors[reply_id] = Mirror(reply_id, conversation_id, message_id.decode())
        for subscriber, seq in followers:
            mirror.add(subscriber, seq)
        await self.link.subscribe(names.reply_channel(reply_id))
        return mirror

    def _spawn_repair(self, mirror: Mirror) -> None:
        if mirror.reply_id not in self._repairing:
            self._repairing.add(mirror.reply_id)
            self._tasks.spawn(self._repair_soon(mirror), "redis-repair")

    async def _repair_soon(self, mirror: Mirror) -> None:
        try:
            await self._repair(mirror)
        except LinkDown:
            pass  # repaired when Redis is back
        except Exception:
            _log.exception("repair_failed", reply_id=mirror.reply_id)
        finally:
            self._repairing.discard(mirror.reply_id)

    async def _repair(self, mirror: Mirror, check_seq: int | None = None) -> bool:
        """Send each follower what the log holds past its position (and the end, if it
        came). False, and the followers told, if Redis no longer knows the reply."""
        after = mirror.lowest
        async with self.link.using() as redis:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hmget(names.reply(mirror.reply_id), "seq", "state", "end")
                pipe.xrange(names.log(mirror.reply_id), f"{after + 1}-0", "+")
                (seq, state, end), entries = await pipe.execute()
        if seq is None:
            return self._missing(mirror, check_seq is not None)
        mirror.missing_since = None
        if check_seq is not None and state != b"streaming" and check_seq > int(seq):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"after_seq is past the reply's last seq ({int(seq)})")
        found = [_entry(entry_id, fields) for entry_id, fields in entries]
        remote_end = names.decode_end(mirror.reply_id, end) if end else None
        if mirror.caught_up(found, remote_end):
            mirror.lost(_lost_event(mirror))
        if mirror.done:
            self._forget(mirror)
        return True

    def _missing(self, mirror: Mirror, following: bool) -> bool:
        """Redis does not know a followed reply: it lost it (a restart without its data).
        Its owner ships it again when it ships next; past ``patience``, give up on it."""
        now = time.monotonic()
        mirror.missing_since = mirror.missing_since or now
        if not following and now - mirror.missing_since < self.patience:
            return True
        mirror.lost(_lost_event(mirror))
        self._forget(mirror)
        return False

    def _forget(self, mirror: Mirror) -> None:
        if self._mirrors.get(mirror.reply_id) is mirror:
            del self._mirrors[mirror.reply_id]
            self.link.unsubscribe(names.reply_channel(mirror.reply_id))


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[int, str, bool]:
    """A log entry: its seq, its text, whether it is reasoning (field ``r``, else ``t``)."""
    text = fields.get(b"t")
    return int(entry_id.split(b"-")[0]), (fields[b"r"] if text is None else text).decode(), text is None


def _lost_event(mirror: Mirror) -> ReplyEnded:
    return ReplyEnded(mirror.reply_id, mirror.message_id, "error", None, resume_unavailable())
