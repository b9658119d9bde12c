"""The reply bus: the one interface between connections and replies.

A connection starts replies, follows them from a ``seq``, stops them and watches a
conversation only through this; it receives :mod:`.events`, never a reply. The
in-process implementation is :class:`~gateway.replies.ReplyRegistry`; one shared by
several instances implements the same methods. What may need the network (a claim, a
lookup, a range read of a reply's log, a stop sent to the owner) is a coroutine;
forgetting a subscriber is local bookkeeping and never waits.
"""

from __future__ import annotations

from typing import Protocol

from .events import Streaming, Subscriber
from .stores import StoredMessage

__all__ = ["ReplyBus"]


class ReplyBus(Protocol):
    async def watch(self, conversation_id: str, subscriber: Subscriber, owner: str) -> None:
        """``subscriber`` gets every reply started in ``owner``'s conversation from now on."""

    def unwatch(self, conversation_id: str, subscriber: Subscriber) -> None: ...

    async def watched(self, conversation_id: str) -> str | None:
        """The owner of the conversation if anyone watches it (a new one is open to its
        owner's other connections while so), else None."""

    async def start(
        self, conversation_id: str, message: StoredMessage, subscriber: Subscriber, *, new: bool, owner: str,
        after: str | None = None,
    ) -> str:
        """Store ``message`` (creating the conversation for ``owner`` if ``new``) under the
        active branch's last message or ``after`` that one (an edit), claim the
        conversation and start a reply for ``subscriber`` and the watchers; its id."""

    async def regenerate(
        self, conversation_id: str, request_id: str, subscriber: Subscriber, *, owner: str, model: str | None = None,
        reply_id: str | None = None,
    ) -> str:
        """A new reply beside ``reply_id`` (by default the active branch's last reply),
        charged to ``owner``, by ``model`` (None: the one the user's message asked for); its id."""

    async def extend(
        self, conversation_id: str, request_id: str, subscriber: Subscriber, *, owner: str, reply_id: str
    ) -> str:
        """Continue the stored reply ``reply_id``, cut short; the new reply's id."""

    async def streaming(self, conversation_id: str) -> Streaming | None:
        """The reply streaming in the conversation now, if any."""

    async def follow(
        self, reply_id: str, conversation_id: str | None, subscriber: Subscriber, after_seq: int
    ) -> None:
        """What the reply sent after ``after_seq``, then the rest (``resume``)."""

    def unfollow(self, reply_id: str, subscriber: Subscriber) -> None: ...

    async def cancel(self, reply_id: str, conversation_id: str | None) -> None:
        """Ask the reply's producer to stop."""
