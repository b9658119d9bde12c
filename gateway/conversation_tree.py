"""The open conversation's branches, instructions and files, over the socket:
``select``, ``delete_branch``, ``settings`` and ``export`` (docs/protocol.md). Each is
checked against the conversation's owner, like ``hello``: another subject's message is
exactly as unknown as one that never existed."""

from __future__ import annotations

from . import wire
from .connection import Hub
from .errors import ErrorCode, ProtocolError
from .exports import EXPORT_MAX_BYTES, EXPORT_MAX_FRAME, export_file
from .intake import store_errors
from .ready import read_page
from .stores import Conversation, ConversationStore

__all__ = ["delete_branch", "export", "select", "set_instructions"]


async def select(hub: Hub, subject: str, conversation_id: str, msg: wire.Select) -> bytes:
    """Show the branch through the message: stored, answered with that branch's newest page."""
    with store_errors(conversation_id):
        await _own(hub.store, subject, conversation_id)
        if await hub.store.select(conversation_id, msg.message_id) is None:
            raise _no_message()
        return await _branch(hub, conversation_id, msg.id)


async def delete_branch(hub: Hub, subject: str, conversation_id: str, msg: wire.DeleteBranch) -> bytes:
    """Delete the message and all under it (not while a reply streams: it may be among
    them); answered with the branch shown now."""
    with store_errors(conversation_id):
        await _own(hub.store, subject, conversation_id)
        if await hub.bus.streaming(conversation_id) is not None:
            raise ProtocolError(ErrorCode.BUSY, "a reply is streaming in this conversation; stop it or let it end")
        if not await hub.store.delete_branch(conversation_id, msg.message_id):
            raise _no_message()
        return await _branch(hub, conversation_id, msg.id)


async def set_instructions(
    store: ConversationStore, subject: str, conversation_id: str, msg: wire.Settings, *, create: bool, max_chars: int
) -> bytes:
    """Store the conversation's own instructions (a new conversation is created for them)."""
    if len(msg.system_prompt) > max_chars:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"the instructions are longer than {max_chars} characters")
    with store_errors(conversation_id):
        if create:
            await store.create(conversation_id, owner=subject)
        if not await store.set_system_prompt(conversation_id, msg.system_prompt, owner=subject):
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such conversation")
    return wire.encode("settings", id=msg.id, conversation_id=conversation_id, system_prompt=msg.system_prompt)


async def export(store: ConversationStore, subject: str, conversation_id: str, msg: wire.Export) -> bytes:
    """The conversation (the branch shown, or every message) as a file's name, type and text."""
    with store_errors(conversation_id):
        conv = await _own(store, subject, conversation_id)
        if msg.scope == "tree":
            messages = await store.messages(conversation_id)
        else:
            messages = await store.history(conversation_id, -1, max_bytes=EXPORT_MAX_BYTES)
    if sum(len(m.content.encode()) + len((m.reasoning or "").encode()) for m in messages) > EXPORT_MAX_BYTES:
        raise _too_large()
    file = export_file(conv, messages, fmt=msg.format, scope=msg.scope)
    frame = wire.encode(
        "export", id=msg.id, conversation_id=conversation_id, format=msg.format, scope=msg.scope,
        filename=file.filename, media_type=file.media_type, content=file.content,
    )
    if len(frame) > EXPORT_MAX_FRAME:
        raise _too_large()
    return frame


async def _branch(hub: Hub, conversation_id: str, ref: str | None) -> bytes:
    """``branch``: the newest page of the branch shown now, and the reply streaming, if any."""
    messages, has_more, active = await read_page(hub, conversation_id, hub.runtime.config.limits.history_limit)
    return wire.encode(
        "branch", id=ref, conversation_id=conversation_id, messages=wire.history_items(messages), has_more=has_more,
        streaming=wire.streaming_item(active) if active else None,
    )


async def _own(store: ConversationStore, subject: str, conversation_id: str) -> Conversation:
    conv = await store.get(conversation_id)
    if conv is None or conv.owner != subject:
        raise ProtocolError(ErrorCode.NOT_FOUND, "no such conversation")
    return conv


def _too_large() -> ProtocolError:
    return ProtocolError(ErrorCode.TOO_LARGE, "this conversation is too large to export here; ask the operator")


def _no_message() -> ProtocolError:
    return ProtocolError(ErrorCode.NOT_FOUND, "no such message in this conversation")
