"""The in-memory conversation store: bounded, and gone when the process ends."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

from .base import (
    CONTINUABLE,
    UNOWNED,
    Branch,
    Conversation,
    ConversationNotFound,
    MessageNotFound,
    OpenReport,
    Page,
    StoredMessage,
    StoreFull,
    UsageEntry,
    UsageTotal,
    descendants,
    export_document,
    leaf_under,
    new_id,
    newest_within,
    title_of,
    total_usage,
    with_siblings,
)
from .listing import page_cursor, parse_cursor

__all__ = ["MemoryStore"]


@dataclass
class _Entry:
    conversation: Conversation
    messages: OrderedDict[str, StoredMessage]
    written: dict[str, float] = field(default_factory=dict)  # when each message was last written


class MemoryStore:
    """A bounded in-memory :class:`ConversationStore`: when full it refuses new
    conversations rather than drop someone's (retention frees room)."""

    def __init__(self, *, max_conversations: int, max_messages: int) -> None:
        self._max_conversations = max_conversations
        self._max_messages = max_messages
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._ledger: list[UsageEntry] = []  # bounded like the conversations: the oldest go first

    async def open(self, *, recover: bool = True) -> OpenReport:
        return OpenReport()

    async def create(self, conversation_id: str | None = None, *, owner: str = UNOWNED) -> Conversation:
        if conversation_id is not None and conversation_id in self._entries:
            return self._entries[conversation_id].conversation
        if len(self._entries) >= self._max_conversations:
            raise StoreFull(f"{self._max_conversations} conversations")
        now = time.time()
        conv = Conversation(conversation_id or new_id(), "", now, now, owner)
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

    async def append(
        self, conversation_id: str, message: StoredMessage, *, create: bool, history: int, owner: str = UNOWNED,
        after: str | None = None,
    ) -> Branch | None:
        if create:
            await self.create(conversation_id, owner=owner)
        entry = self._entries.get(conversation_id)
        if entry is None:
            raise ConversationNotFound(conversation_id)
        if message.id in entry.messages:
            return None
        if after is None:
            after = entry.conversation.active
        elif after and after not in entry.messages:
            raise MessageNotFound(after)
        self._write(entry, replace(message, parent_id=after), active=True)
        return Branch(_branch(entry, message.id, history), entry.conversation.system_prompt)

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        entry = self._entries.get(conversation_id)
        if entry is None:
            raise ConversationNotFound(conversation_id)
        self._write(entry, message, active=False)

    def _write(self, entry: _Entry, message: StoredMessage, *, active: bool) -> None:
        old = entry.messages.get(message.id)
        conv = entry.conversation
        if old is None:
            if not active and message.parent_id and message.parent_id not in entry.messages:
                return  # its branch was deleted meanwhile: it would be out of every branch
            message = replace(message, parent_id=message.parent_id or ("" if active else conv.active))
            entry.messages[message.id] = message
        elif _may_replace(old, message):
            entry.messages[message.id] = message = replace(message, created_at=old.created_at, parent_id=old.parent_id)
        else:
            message = old
        entry.written[message.id] = time.time()
        while len(entry.messages) > self._max_messages:
            entry.written.pop(entry.messages.popitem(last=False)[0], None)
        title = conv.title or (title_of(message.content) if message.role == "user" else "")
        moved = active or conv.active == message.parent_id
        entry.conversation = replace(
            conv, title=title, updated_at=time.time(), active=message.id if moved else conv.active
        )
        self._entries.move_to_end(entry.conversation.id)

    async def delete(self, conversation_id: str, message_id: str) -> bool:
        entry = self._entries.get(conversation_id)
        return entry is not None and entry.messages.pop(message_id, None) is not None

    async def history(
        self, conversation_id: str, limit: int, before: str | None = None, *, max_bytes: int | None = None
    ) -> list[StoredMessage]:
        entry = self._entries.get(conversation_id)
        if entry is None or limit == 0:
            return []
        if before is None:
            last = entry.conversation.active
        else:
            last = entry.messages[before].parent_id if before in entry.messages else ""
        newest_first = islice(reversed(_branch(entry, last, -1)), limit if limit > 0 else None)
        branch = list(reversed(newest_within(newest_first, max_bytes)))
        return with_siblings(branch, ((m.parent_id, m.id) for m in entry.messages.values()))

    async def branch(self, conversation_id: str, message_id: str, limit: int) -> Branch | None:
        entry = self._entries.get(conversation_id)
        if entry is None or message_id not in entry.messages:
            return None
        return Branch(_branch(entry, message_id, limit), entry.conversation.system_prompt)

    async def messages(self, conversation_id: str) -> list[StoredMessage]:
        entry = self._entries.get(conversation_id)
        return list(entry.messages.values()) if entry else []

    async def select(self, conversation_id: str, message_id: str, *, descend: bool = True) -> str | None:
        entry = self._entries.get(conversation_id)
        if entry is None or message_id not in entry.messages:
            return None
        leaf = leaf_under(list(entry.messages.values()), message_id) if descend else message_id
        entry.conversation = replace(entry.conversation, active=leaf)
        return leaf

    async def delete_branch(self, conversation_id: str, message_id: str) -> bool:
        entry = self._entries.get(conversation_id)
        target = entry.messages.get(message_id) if entry else None
        if entry is None or target is None:
            return False
        gone = descendants(entry.messages.values(), message_id)
        for mid in gone:
            del entry.messages[mid]
            entry.written.pop(mid, None)
        if entry.conversation.active in gone:
            leaf = leaf_under(list(entry.messages.values()), target.parent_id)
            entry.conversation = replace(entry.conversation, active=leaf)
        return True

    async def set_system_prompt(self, conversation_id: str, system_prompt: str, *, owner: str) -> bool:
        return self._change(conversation_id, owner, system_prompt=system_prompt)

    async def conversations(self, owner: str, *, limit: int, after: str | None = None, query: str = "") -> Page:
        start = parse_cursor(after, float) if after is not None else None
        needle = query.casefold()
        found = sorted(
            (e.conversation for e in self._entries.values() if e.conversation.owner == owner),
            key=lambda c: (c.updated_at, c.id), reverse=True,
        )
        if start is not None:
            found = [c for c in found if (c.updated_at, c.id) < start]
        if needle:
            found = [c for c in found if self._contains(c, needle)]
        page = found[:limit]
        more = len(found) > limit
        return page, page_cursor(page[-1].updated_at, page[-1].id) if more and page else None

    def _contains(self, conv: Conversation, needle: str) -> bool:
        messages = self._entries[conv.id].messages.values()
        return needle in conv.title.casefold() or any(needle in m.content.casefold() for m in messages)

    async def rename(self, conversation_id: str, title: str, *, owner: str) -> bool:
        return self._change(conversation_id, owner, title=title)

    def _change(self, conversation_id: str, whose: str, /, **changes: Any) -> bool:
        """Change the conversation of ``whose``; False if ``whose`` has none with this id."""
        entry = self._entries.get(conversation_id)
        if entry is None or entry.conversation.owner != whose:
            return False
        entry.conversation = replace(entry.conversation, **changes)
        return True

    async def remove(self, conversation_id: str, *, owner: str | None = None) -> bool:
        entry = self._entries.get(conversation_id)
        if entry is None or owner is not None and entry.conversation.owner != owner:
            return False
        del self._entries[conversation_id]
        return True

    async def claim(self, conversation_id: str, owner: str, *, previous: str) -> bool:
        return self._change(conversation_id, previous, owner=owner)

    async def record_usage(self, entry: UsageEntry) -> None:
        self._ledger.append(entry)
        if len(self._ledger) > self._max_conversations * 10:
            del self._ledger[: len(self._ledger) // 2]

    async def usage(self, subject: str | None, since: float) -> list[UsageTotal]:
        return total_usage(e for e in self._ledger if e.created_at >= since and subject in (None, e.subject))

    async def prune(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        old = [cid for cid, e in self._entries.items() if e.conversation.updated_at < cutoff]
        for cid in old:
            del self._entries[cid]
        return len(old)

    async def reopen(self, conversation_id: str, message_id: str, content: str) -> bool:
        entry = self._entries.get(conversation_id)
        message = entry.messages.get(message_id) if entry else None
        if entry is None or message is None or message.role != "assistant" or message.content != content:
            return False
        if message.finish_reason not in CONTINUABLE:
            return False
        if any(m.parent_id == message_id for m in entry.messages.values()):
            return False
        entry.messages[message_id] = replace(message, finish_reason=None)
        entry.written[message_id] = time.time()
        return True

    async def end_stale(self, older_than: float) -> int:
        cutoff, ended = time.time() - older_than, 0
        for entry in self._entries.values():
            for mid, m in list(entry.messages.items()):
                if m.role == "assistant" and m.finish_reason is None and entry.written.get(mid, 0.0) < cutoff:
                    entry.messages[mid] = replace(m, finish_reason="error")
                    ended += 1
        return ended

    async def export(self, conversation_id: str) -> dict[str, Any] | None:
        entry = self._entries.get(conversation_id)
        return export_document(entry.conversation, list(entry.messages.values())) if entry else None

    async def ids(self, after: str | None, limit: int) -> list[str]:
        return sorted(cid for cid in self._entries if after is None or cid > after)[:limit]

    async def restore(self, conversation: Conversation, messages: Sequence[StoredMessage]) -> bool:
        if conversation.id in self._entries:
            return False
        if len(self._entries) >= self._max_conversations:
            raise StoreFull(f"{self._max_conversations} conversations")
        kept = list(messages)[-self._max_messages :]
        self._entries[conversation.id] = _Entry(conversation, OrderedDict((m.id, m) for m in kept))
        return True

    async def close(self) -> None:
        self._entries.clear()


def _branch(entry: _Entry, last: str, limit: int) -> list[StoredMessage]:
    """The last ``limit`` messages (all if negative) of the branch ending with ``last``,
    oldest first (a branch whose start was dropped to bound memory ends where it was cut)."""
    newest_first: list[StoredMessage] = []
    seen: set[str] = set()
    message = entry.messages.get(last)
    while message is not None and message.id not in seen and (limit < 0 or len(newest_first) < limit):
        newest_first.append(message)
        seen.add(message.id)
        message = entry.messages.get(message.parent_id) if message.parent_id else None
    return newest_first[::-1]


def _may_replace(old: StoredMessage, new: StoredMessage) -> bool:
    """A reply's writes are ordered: never over a final text, never a shorter checkpoint."""
    if old.role == "user":
        return True
    return old.finish_reason is None and (new.finish_reason is not None or len(new.content) >= len(old.content))
