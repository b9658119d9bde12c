"""The reply bus of an instance in a cluster: its own replies, and the others' through Redis.

Replies produced here are the registry's (:mod:`gateway.replies`), shared by the
:class:`~.shipper.Shipper`; replies produced elsewhere are followed through
:class:`~.followers.RemoteFollowers`. A conversation watched here listens to its
channel, so that a reply started on another instance reaches this instance's tabs.
While Redis is down every method falls back to this instance alone.
"""

from __future__ import annotations

from typing import Any

from ..errors import ErrorCode, GatewayError, ProtocolError
from ..events import Streaming, Subscriber
from ..replies import ReplyRegistry, StopReason
from ..stores import StoredMessage
from . import names, scripts
from .followers import RemoteFollowers
from .link import Link, LinkDown

__all__ = ["ClusterBus"]

OPEN_FOR = 3600  # seconds a new, unsaved conversation stays open to other instances' tabs


class ClusterBus:
    """A :class:`~gateway.bus.ReplyBus` over this instance's registry and Redis."""

    def __init__(self, registry: ReplyRegistry, link: Link, patience: float) -> None:
        self.local = registry
        self.link = link
        self.remote = RemoteFollowers(link, patience)
        self._cancel = link.redis.register_script(scripts.CANCEL)

    async def close(self) -> None:
        await self.remote.close()

    # watching conversations

    async def watch(self, conversation_id: str, subscriber: Subscriber, owner: str) -> None:
        await self.local.watch(conversation_id, subscriber, owner)
        try:
            await self.link.subscribe(names.conversation_channel(conversation_id))
            async with self.link.using() as redis:
                await redis.set(names.open_key(conversation_id), owner, ex=OPEN_FOR)
        except LinkDown:
            pass

    def unwatch(self, conversation_id: str, subscriber: Subscriber) -> None:
        self.local.unwatch(conversation_id, subscriber)
        if not self.local.watchers(conversation_id):
            self.link.unsubscribe(names.conversation_channel(conversation_id))

    async def watched(self, conversation_id: str) -> str | None:
        owner = await self.local.watched(conversation_id)
        if owner is not None:
            return owner
        try:
            async with self.link.using() as redis:
                found = await redis.get(names.open_key(conversation_id))
        except LinkDown:
            return None
        return found.decode() if isinstance(found, bytes) else found

    # starting, and what streams

    async def start(
        self, conversation_id: str, message: StoredMessage, subscriber: Subscriber, *, new: bool, owner: str,
        after: str | None = None,
    ) -> str:
        return await self.local.start(conversation_id, message, subscriber, new=new, owner=owner, after=after)

    async def regenerate(
        self, conversation_id: str, request_id: str, subscriber: Subscriber, *, owner: str, model: str | None = None,
        reply_id: str | None = None,
    ) -> str:
        return await self.local.regenerate(
            conversation_id, request_id, subscriber, owner=owner, model=model, reply_id=reply_id
        )

    async def extend(
        self, conversation_id: str, request_id: str, subscriber: Subscriber, *, owner: str, reply_id: str
    ) -> str:
        return await self.local.extend(conversation_id, request_id, subscriber, owner=owner, reply_id=reply_id)

    async def streaming(self, conversation_id: str) -> Streaming | None:
        local = await self.local.streaming(conversation_id)
        if local is not None:
            return local
        try:
            async with self.link.using() as redis:
                reply_id: Any = await redis.get(names.slot(conversation_id))
                if reply_id is None:
                    return None
                meta: Any = await redis.hmget(
                    names.reply(reply_id.decode()), "seq", "chars", "state", "parent", "mid"
                )
                seq, chars, state, parent, stored = meta
        except LinkDown:
            return None
        if state != b"streaming":
            return None
        rid = reply_id.decode()
        return Streaming(rid, int(seq), int(chars), (parent or b"").decode(), (stored or b"").decode() or rid)

    # following a reply

    async def follow(
        self, reply_id: str, conversation_id: str | None, subscriber: Subscriber, after_seq: int
    ) -> None:
        if self.local.get(reply_id) is not None or not conversation_id:
            return await self.local.follow(reply_id, conversation_id, subscriber, after_seq)
        await self.remote.follow(reply_id, conversation_id, subscriber, after_seq)

    def unfollow(self, reply_id: str, subscriber: Subscriber) -> None:
        self.local.unfollow(reply_id, subscriber)
        self.remote.leave(reply_id, subscriber)

    async def cancel(self, reply_id: str, conversation_id: str | None) -> None:
        if self.local.get(reply_id) is not None or not conversation_id:
            return await self.local.cancel(reply_id, conversation_id)
        try:
            async with self.link.using():
                owner = await self._cancel(keys=[names.reply(reply_id)], args=[conversation_id, reply_id])
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
            self.remote.message(name, data)
        elif kind == "c":
            self._started_elsewhere(name, data)
        elif kind == "i" and data[:1] == b"C":
            reply = self.local.get(data[1:].decode())
            if reply is not None:
                reply.stop(StopReason.CANCELLED)

    def _started_elsewhere(self, conversation_id: str, data: bytes) -> None:
        event, owner = names.decode_start(data)
        watchers = self.local.watchers(conversation_id)
        if owner != self.link.instance_id and watchers:
            self.remote.started(event, watchers)
