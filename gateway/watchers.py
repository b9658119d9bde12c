"""Who watches each conversation: the connections (tabs) that see its new replies (pure)."""

from __future__ import annotations

from .events import Subscriber

__all__ = ["Watchers"]


class Watchers:
    """Subscribers by conversation id; a conversation nobody watches has no entry."""

    def __init__(self) -> None:
        self._by_conversation: dict[str, set[Subscriber]] = {}
        self._owners: dict[str, str] = {}  # whose conversation each watched one is

    def add(self, conversation_id: str, subscriber: Subscriber, owner: str) -> None:
        self._by_conversation.setdefault(conversation_id, set()).add(subscriber)
        self._owners.setdefault(conversation_id, owner)

    def discard(self, conversation_id: str, subscriber: Subscriber) -> None:
        watchers = self._by_conversation.get(conversation_id)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self._by_conversation[conversation_id]
                del self._owners[conversation_id]

    def __contains__(self, conversation_id: str) -> bool:
        return conversation_id in self._by_conversation

    def set_owner(self, conversation_id: str, owner: str) -> None:
        if conversation_id in self._owners:
            self._owners[conversation_id] = owner

    def owner(self, conversation_id: str) -> str | None:
        """The subject whose conversation it is, if anyone watches it."""
        return self._owners.get(conversation_id)

    def of(self, conversation_id: str) -> tuple[Subscriber, ...]:
        """A snapshot: telling one may make another stop watching."""
        return tuple(self._by_conversation.get(conversation_id, ()))
