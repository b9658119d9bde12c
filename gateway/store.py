"""Conversation storage behind one small async interface.

:class:`MemoryStore` keeps everything in memory, bounded (least recently used
conversations and the oldest messages are dropped). A persistent store
implements the same :class:`ConversationStore` protocol.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

__all__ = [
    "Conversation",
    "ConversationStore",
    "MemoryStore",
    "StoreFull",
    "StoreUnusable",
    "StoredMessage",
    "export_document",
    "new_id",
    "newest_within",
    "title_of",
]

Role = Literal["user", "assistant"]
_TITLE_CHARS = 80


def new_id() -> str:
    """A 128-bit random, unguessable id (32 hex digits)."""
    return secrets.token_hex(16)


class StoreUnusable(Exception):
    """The store cannot be opened by this code: a database newer than it, a damaged file."""


class StoreFull(Exception):
    """The store holds as many conversations as it may: a new one is refused, none is dropped."""


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
    """Where conversations live. One process owns a store; every method is a coroutine
    so that implementations can do I/O (SQLite's thread today, Redis tomorrow)."""

    async def open(self) -> None:
        """Prepare the store (create, migrate, recover); called once at start-up."""

    async def create(self, conversation_id: str | None = None) -> Conversation:
        """A new, empty conversation with a new id; or the one with ``conversation_id``,
        created if absent. StoreFull if the store may hold no more."""

    async def get(self, conversation_id: str) -> Conversation | None: ...

    async def add(self, conversation_id: str, message: StoredMessage) -> bool:
        """Insert a new message; False (and nothing written) if its id is taken."""

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        """Insert ``message``, or replace the one with the same id (checkpoints, final text)."""

    async def delete(self, conversation_id: str, message_id: str) -> bool:
        """Remove one message; False if there was none."""

    async def history(
        self, conversation_id: str, limit: int, before: str | None = None, *, max_bytes: int | None = None
    ) -> list[StoredMessage]:
        """Up to ``limit`` messages (all if negative), oldest first, ending just before message ``before``.

        With ``max_bytes``, messages are read newest first and reading stops one message
        after the text read (UTF-8) passes ``max_bytes``: a caller paging by bytes then
        knows whether older messages exist without reading them all.
        """

    async def prune(self, older_than: float) -> int:
        """Delete conversations idle for ``older_than`` seconds; return how many."""

    async def export(self, conversation_id: str) -> dict[str, Any] | None:
        """A conversation with all its messages as plain data, or None."""

    async def close(self) -> None: ...


@dataclass
class _Entry:
    conversation: Conversation
    messages: OrderedDict[str, StoredMessage]


class MemoryStore:
    """A bounded in-memory :class:`ConversationStore`: when full it refuses new
    conversations rather than drop someone's (retention frees room)."""

    def __init__(self, *, max_conversations: int, max_messages: int) -> None:
        self._max_conversations = max_conversations
        self._max_messages = max_messages
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    async def open(self) -> None:
        pass

    async def create(self, conversation_id: str | None = None) -> Conversation:
        if conversation_id is not None and conversation_id in self._entries:
            return self._entries[conversation_id].conversation
        if len(self._entries) >= self._max_conversations:
            raise StoreFull(f"{self._max_conversations} conversations")
        now = time.time()
        conv = Conversation(conversation_id or new_id(), "", now, now)
        self._entries[conv.id] = _Entry(conv, OrderedDict())
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
        old = entry.messages.get(message.id)
        entry.messages[message.id] = replace(message, created_at=old.created_at) if old else message
        while len(entry.messages) > self._max_messages:
            entry.messages.popitem(last=False)
        conv = entry.conversation
        title = conv.title or (title_of(message.content) if message.role == "user" else "")
        entry.conversation = replace(conv, title=title, updated_at=time.time())
        self._entries.move_to_end(conversation_id)

    async def delete(self, conversation_id: str, message_id: str) -> bool:
        entry = self._entries.get(conversation_id)
        return entry is not None and entry.messages.pop(message_id, None) is not None

    async def history(
        self, conversation_id: str, limit: int, before: str | None = None, *, max_bytes: int | None = None
    ) -> list[StoredMessage]:
        entry = self._entries.get(conversation_id)
        if entry is None:
            return []
        messages = list(entry.messages.values())
        if before is not None:
            ids = list(entry.messages)
            messages = messages[: ids.index(before)] if before in entry.messages else []
        if limit == 0:
            return []
        messages = messages[-limit:] if limit > 0 else messages
        return list(reversed(newest_within(reversed(messages), max_bytes)))

    async def prune(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        old = [cid for cid, e in self._entries.items() if e.conversation.updated_at < cutoff]
        for cid in old:
            del self._entries[cid]
        return len(old)

    async def export(self, conversation_id: str) -> dict[str, Any] | None:
        entry = self._entries.get(conversation_id)
        return export_document(entry.conversation, list(entry.messages.values())) if entry else None

    async def close(self) -> None:
        self._entries.clear()


def newest_within(newest_first: Iterable[StoredMessage], max_bytes: int | None) -> list[StoredMessage]:
    """Messages taken newest first until one past the point where their text passes ``max_bytes``."""
    taken: list[StoredMessage] = []
    size, past = 0, False
    for message in newest_first:
        taken.append(message)
        if past:
            break
        size += len(message.content.encode())
        past = max_bytes is not None and size > max_bytes
    return taken


def title_of(content: str) -> str:
    """A conversation's title: its first user message, on one line, cut short."""
    text = " ".join(content.split())
    return text if len(text) <= _TITLE_CHARS else text[: _TITLE_CHARS - 1] + "…"


def export_document(conv: Conversation, messages: list[StoredMessage]) -> dict[str, Any]:
    return {
        "id": conv.id,
        "title": conv.title,
        "created_at": conv.created_at,
        "updated_at": conv.updated_at,
        "messages": [
            {
                "id": m.id, "role": m.role, "content": m.content, "created_at": m.created_at,
                "finish_reason": m.finish_reason, "usage": dict(m.usage) if m.usage else None,
            }
            for m in messages
        ],
    }
