"""A subject's own conversations, over the socket: ``conversations`` (a page, searched),
``rename`` and ``delete`` (docs/protocol.md). Another subject's conversation is exactly
as unknown as one that never existed: ``not_found`` either way."""

from __future__ import annotations

from . import wire
from .auth import ANONYMOUS
from .bus import ReplyBus
from .errors import ErrorCode, ProtocolError
from .intake import store_errors
from .stores import Conversation, ConversationStore

__all__ = ["delete", "page", "rename"]


async def page(store: ConversationStore, subject: str, msg: wire.Conversations) -> bytes:
    """The ``conversations`` answer: a page of the subject's conversations, and the next
    cursor. Keyless clients (``anonymous``, in ``none`` mode) share one subject, so they
    have no list: each of their conversations is reached by its id alone."""
    if subject == ANONYMOUS.subject:
        return wire.encode("conversations", items=[], query=msg.query or None)
    with store_errors(""):
        try:
            found, after = await store.conversations(subject, limit=msg.limit, after=msg.before, query=msg.query)
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'before' must be a cursor the gateway sent (next)") from None
    items = [{"id": c.id, "title": c.title, "updated_at": c.updated_at} for c in found]
    return wire.encode("conversations", items=items, next=after, query=msg.query or None)


async def rename(store: ConversationStore, subject: str, msg: wire.Rename) -> bytes:
    with store_errors(msg.conversation_id):
        if not await store.rename(msg.conversation_id, msg.title, owner=subject):
            raise _not_found()
    return wire.encode("renamed", conversation_id=msg.conversation_id, title=msg.title)


async def delete(store: ConversationStore, bus: ReplyBus, subject: str, msg: wire.Delete) -> bytes:
    """Delete the conversation; a reply streaming in it is cancelled first."""
    with store_errors(msg.conversation_id):
        await _own(store, subject, msg.conversation_id)
        streaming = await bus.streaming(msg.conversation_id)
        if streaming is not None:
            try:
                await bus.cancel(streaming.reply_id, msg.conversation_id)
            except ProtocolError:
                pass  # it ended meanwhile
        if not await store.remove(msg.conversation_id, owner=subject):
            raise _not_found()
    return wire.encode("deleted", conversation_id=msg.conversation_id)


async def _own(store: ConversationStore, subject: str, conversation_id: str) -> Conversation:
    conv = await store.get(conversation_id)
    if conv is None or conv.owner != subject:
        raise _not_found()
    return conv


def _not_found() -> ProtocolError:
    return ProtocolError(ErrorCode.NOT_FOUND, "no such conversation")
