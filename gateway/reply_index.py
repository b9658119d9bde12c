"""Every reply this process knows, by id, for as long as it may be resumed."""

from __future__ import annotations

import asyncio

from .reply import Reply

__all__ = ["ReplyIndex"]


class ReplyIndex:
    """Replies by id: streaming ones, and ended ones for a grace period after their end
    (a client that lost its connection resumes them from a ``seq``); then forgotten."""

    def __init__(self) -> None:
        self._replies: dict[str, Reply] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    def add(self, reply: Reply) -> None:
        self._replies[reply.id] = reply

    def get(self, reply_id: str) -> Reply | None:
        return self._replies.get(reply_id)

    def find(self, reply_id: str, conversation_id: str | None) -> Reply | None:
        """The reply, if it is still known and belongs to ``conversation_id``."""
        reply = self._replies.get(reply_id)
        return reply if reply is not None and reply.conversation_id == conversation_id else None

    def ended(self, reply: Reply, grace: float) -> None:
        """``reply`` ended: forget it ``grace`` seconds from now."""
        loop = asyncio.get_running_loop()
        self._expiry[reply.id] = loop.call_later(grace, self._forget, reply.id)

    def _forget(self, reply_id: str) -> None:
        self._expiry.pop(reply_id, None)
        self._replies.pop(reply_id, None)

    def clear(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        self._replies.clear()
