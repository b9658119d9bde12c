"""Who watches each conversation: the connections (tabs) that see its new replies (pure)."""

from __future__ import annotations

from .events import Subscriber

__all__ = ["Watchers"]


class Watchers:
    """Subscribers by conversation id; a conversation nobody watches has no entry."""

    def __init__(self) -> None:
        self._by_conversation: dict[str, set[Subscriber]] = {}

    def add(self, conversation_id: str, subscriber: Subscriber) -> None:
        self._by_conversation.setdefault(conversation_id, set()).add(subscriber)

    def discard(self, conversation_id: str, subscriber: Subscriber) -> None:
        watchers = self._by_conversation.get(conversation_id)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self._by_conversation[conversation_id]

    def __contains__(self, conversation_id: str) -> bool:
        return conversation_id in self._by_conversation

    def of(self, conversation_id: str) -> tuple[Subscriber, ...]:
        """A snapshot: telling one may make another stop watching."""
        return tuple(self._by_conversation.get(conversation_id, ()))
