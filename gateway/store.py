"""Conversation storage behind one small async interface.

:class:`MemoryStore` keeps everything in memory, bounded (least recently used
conversations and the oldest messages are dropped). A persistent store
implements the same :class:`ConversationStore` protocol.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

__all__ = ["Conversation", "ConversationStore", "MemoryStore", "StoredMessage", "new_id"]

Role = Literal["user", "assistant"]
_TITLE_CHARS = 80


def new_id() -> str:
    """A 128-bit random, unguessable id (32 hex digits)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    role: Role
    content: str
    created_at: float = field(default_factory=time.time)
    finish_reason: str | None = None
    usage: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    title: str
    created_at: float
    updated_at: float


class ConversationStore(Protocol):
    async def create(self) -> Conversation: ...

    async def get(self, conversation_id: str) -> Conversation | None: ...

    async def add(self, conversation_id: str, message: StoredMessage) -> bool:
        """Insert a new message; False (and nothing written) if its id is taken."""

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        """Insert ``message``, or replace the one with the same id (checkpoints, final text)."""

    async def history(
        self, conversation_id: str, limit: int, before: str | None = None
    ) -> list[StoredMessage]:
        """Up to ``limit`` messages, oldest first, ending just before message ``before``."""

    async def close(self) -> None: ...


@dataclass
class _Entry:
    conversation: Conversation
    messages: OrderedDict[str, StoredMessage]


class MemoryStore:
    """A bounded in-memory :class:`ConversationStore`."""

    def __init__(self, *, max_conversations: int, max_messages: int) -> None:
        self._max_conversations = max_conversations
        self._max_messages = max_messages
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    async def create(self) -> Conversation:
        now = time.time()
        conv = Conversation(new_id(), "", now, now)
        self._entries[conv.id] = _Entry(conv, OrderedDict())
        while len(self._entries) > self._max_conversations:
            self._entries.popitem(last=False)
        return conv

    async def get(self, conversation_id: str) -> Conversation | None:
        entry = self._entries.get(conversation_id)
        return entry.conversation if entry else None

    async def add(self, conversation_id: str, message: StoredMessage) -> bool:
        entry = self._entries.get(conversation_id)
        if entry is not None and message.id in entry.messages:
            return False
        await self.save(conversation_id, message)
        return True

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        entry = self._entries.get(conversation_id)
        if entry is None:
            raise KeyError(conversation_id)
        entry.messages[message.id] = message
        while len(entry.messages) > self._max_messages:
            entry.messages.popitem(last=False)
        conv = entry.conversation
        title = conv.title or (_title(message.content) if message.role == "user" else "")
        entry.conversation = replace(conv, title=title, updated_at=time.time())
        self._entries.move_to_end(conversation_id)

    async def history(
        self, conversation_id: str, limit: int, before: str | None = None
    ) -> list[StoredMessage]:
        entry = self._entries.get(conversation_id)
        if entry is None:
            return []
        messages = list(entry.messages.values())
        if before is not None:
            ids = list(entry.messages)
            messages = messages[: ids.index(before)] if before in entry.messages else []
        return messages[-limit:]

    async def close(self) -> None:
        self._entries.clear()


def _title(content: str) -> str:
    text = " ".join(content.split())
    return text if len(text) <= _TITLE_CHARS else text[: _TITLE_CHARS - 1] + "…"
