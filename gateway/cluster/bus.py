"""The reply bus of an instance in a cluster: its own replies, and the others' through Redis.

Replies produced here are the registry's (:mod:`gateway.replies`), shared by the
:class:`~.shipper.Shipper`. A reply produced elsewhere is followed through a
:class:`~.mirror.Mirror`: its channel delivers the live deltas, its log in Redis what
was missed (a resume, a gap, a lost connection). A conversation watched here listens
to its channel, so that a reply started on another instance reaches this instance's
tabs. While Redis is down every method falls back to this instance alone.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from ..errors import ErrorCode, GatewayError, ProtocolError
from ..events import ReplyEnded, Streaming, Subscriber
from ..replies import ReplyRegistry, StopReason
from ..stores import StoredMessage
from ..tasks import TaskSet
from . import names, scripts
from .link import Link, LinkDown
from .mirror import Mirror

__all__ = ["ClusterBus"]

_log: Any = structlog.get_logger("gateway.cluster")
OPEN_FOR = 3600  # seconds a new, unsaved conversation stays open to other instances' tabs


class ClusterBus:
    """A :class:`~gateway.bus.ReplyBus` over this instance's registry and Redis."""

    def __init__(self, registry: ReplyRegistry, link: Link, patience: float) -> None:
        self.local = registry
        self.link = link
        self.patience = patience  # seconds a followed reply Redis lost has to come back
        self._mirrors: dict[str, Mirror] = {}
        self._cancel = link.redis.register_script(scripts.CANCEL)
        self._tasks = TaskSet()
        self._repairing: set[str] = set()

    async def close(self) -> None:
        await self._tasks.cancel()

    # watching conversations

    async def watch(self, conversation_id: str, subscriber: Subscriber) -> None:
        await self.local.watch(conversation_id, subscriber)
        try:
            await self.link.subscribe(names.conversation_channel(conversation_id))
            async with self.link.using() as redis:
                await redis.set(names.open_key(conversation_id), 1, ex=OPEN_FOR)
        except LinkDown:
            pass

    def unwatch(self, conversation_id: str, subscriber: Subscriber) -> None:
        self.local.unwatch(conversation_id, subscriber)
        if not self.local.watchers(conversation_id):
            self.link.unsubscribe(names.conversation_channel(conversation_id))

    async def watched(self, conversation_id: str) -> bool:
        if await self.local.watched(conversation_id):
            return True
        try:
            async with self.link.using() as redis:
                return bool(await redis.exists(names.open_key(conversation_id)))
        except LinkDown:
            return False

    # starting, and what streams

    async def start(self, conversation_id: str, message: StoredMessage, subscriber: Subscriber, *, new: bool) -> str:
        return await self.local.start(conversation_id, message, subscriber, new=new)

    async def regenerate(self, conversation_id: str, request_id: str, subscriber: Subscriber) -> str:
        return await self.local.regenerate(conversation_id, request_id, subscriber)

    async def streaming(self, conversation_id: str) -> Streaming | None:
        local = await self.local.streaming(conversation_id)
        if local is not None:
            return local
        try:
            async with self.link.using() as redis:
                reply_id: Any = await redis.get(names.slot(conversation_id))
                if reply_id is None:
                    return None
                meta: Any = await redis.hmget(names.reply(reply_id.decode()), "seq", "chars", "state")
                seq, chars, state = meta
        except LinkDown:
            return None
        if state != b"streaming":
            return None
        return Streaming(reply_id.decode(), int(seq), int(chars))

    # following a reply

    async def follow(
        self, reply_id: str, conversation_id: str | None, subscriber: Subscriber, after_seq: int
    ) -> None:
        if self.local.get(reply_id) is not None or not conversation_id:
            return await self.local.follow(reply_id, conversation_id, subscriber, after_seq)
        mirror = self._mirrors.get(reply_id)
        try:
            if mirror is None:
                mirror = await self._mirror(reply_id, conversation_id, [(subscriber, after_seq)])
            elif mirror.conversation_id == conversation_id:
                mirror.add(subscriber, after_seq)
            if mirror is None or mirror.conversation_id != conversation_id:
                raise _unavailable()
            if not await self._repair(mirror, check_seq=after_seq):
                raise _unavailable()
        except BaseException as exc:
            self._leave(reply_id, subscriber)
            if isinstance(exc, LinkDown):
                raise _unavailable() from None
            raise

    def unfollow(self, reply_id: str, subscriber: Subscriber) -> None:
        self.local.unfollow(reply_id, subscriber)
        self._leave(reply_id, subscriber)

    def _leave(self, reply_id: str, subscriber: Subscriber) -> None:
        mirror = self._mirrors.get(reply_id)
        if mirror is not None:
            mirror.discard(subscriber)
            if mirror.done:
                self._forget(mirror)

    async def cancel(self, reply_id: str, conversation_id: str | None) -> None:
        if self.local.get(reply_id) is not None or not conversation_id:
            return await self.local.cancel(reply_id, conversation_id)
        try:
            async with self.link.using():
                owner = await self._cancel(keys=[names.reply(reply_id)], args=[conversation_id])
        except LinkDown:
            raise GatewayError(
                ErrorCode.OVERLOADED, "this reply streams on another instance, which cannot be reached now",
                retry_after=1,
            ) from None
        if owner in (b"gone", b"other"):
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such reply in this conversation")

    # Redis messages

    def message(self, channel: str, data: bytes) -> None:
        """A pub/sub message (from the link's reader)."""
        kind, _, name = channel.removeprefix(names.PREFIX).partition(":")
        if kind == "r":
            self._reply_message(name, data)
        elif kind == "c":
            self._started_elsewhere(name, data)
        elif kind == "i" and data[:1] == b"C":
            reply = self.local.get(data[1:].decode())
            if reply is not None:
                reply.stop(StopReason.CANCELLED)

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

    def _reply_message(self, reply_id: str, data: bytes) -> None:
        mirror = self._mirrors.get(reply_id)
        if mirror is None:
            return
        if data[:1] == b"D":
            head, _, text = data[1:].partition(b"\n")
            behind = mirror.delta(int(head), text.decode())
        else:
            behind = mirror.ended(names.decode_end(reply_id, data[1:]))
        if behind:
            self._spawn_repair(mirror)
        elif mirror.done:
            self._forget(mirror)

    def _started_elsewhere(self, conversation_id: str, data: bytes) -> None:
        event, owner = names.decode_start(data)
        if owner == self.link.instance_id:
            return
        watchers = self.local.watchers(conversation_id)
        if watchers:
            self._tasks.spawn(self._follow_started(event.reply_id, conversation_id, event, watchers), "redis-follow")

    async def _follow_started(self, reply_id: str, conversation_id: str, event: Any, watchers: Any) -> None:
        mirror = self._mirrors.get(reply_id)
        if mirror is not None:  # a start heard twice: only new watchers are told
            watchers = [w for w in watchers if w not in mirror.positions]
        for watcher in watchers:
            watcher.reply_event(event)
        try:
            if mirror is None:
                mirror = await self._mirror(reply_id, conversation_id, [(w, 0) for w in watchers])
            else:
                for watcher in watchers:
                    mirror.add(watcher, 0)
            if mirror is not None:
                await self._repair(mirror)
        except LinkDown:
            pass  # Redis is back soon: every mirror is repaired then

    async def _mirror(
        self, reply_id: str, conversation_id: str, followers: list[tuple[Subscriber, int]]
    ) -> Mirror | None:
        """A mirror of the reply for ``followers`` (each from its seq), subscribed to its
        channel; None if Redis knows no such reply in the conversation."""
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
        found = [(int(entry_id.split(b"-")[0]), fields[b"t"].decode()) for entry_id, fields in entries]
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


def _unavailable() -> GatewayError:
    return GatewayError(
        ErrorCode.RESUME_UNAVAILABLE,
        "this reply can no longer be resumed; its stored text is in the history",
        retryable=False,
    )


def _lost_event(mirror: Mirror) -> ReplyEnded:
    return ReplyEnded(mirror.reply_id, mirror.message_id, "error", None, _unavailable())
