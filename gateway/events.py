"""What a reply tells the connections that follow it: typed, immutable events (pure).

A connection never sees a reply itself, only these: the in-process registry sends
them today; a bus shared by several instances sends the same ones.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from .errors import GatewayError
from .providers import Usage

__all__ = ["ReplyDelta", "ReplyEnded", "ReplyEvent", "ReplyStarted", "Streaming", "Subscriber"]


class ReplyStarted(NamedTuple):
    """A reply began. ``content`` is the user's message, for connections that did not send it."""

    reply_id: str
    conversation_id: str
    message_id: str
    replaces: str | None = None
    content: str | None = None


class ReplyDelta(NamedTuple):
    """Text numbered ``seq``: new text, or for a resuming connection all it missed, at once."""

    reply_id: str
    seq: int
    text: str


class ReplyEnded(NamedTuple):
    """The reply's end: ``finish_reason`` stop, length, cancelled or error (then ``error``)."""

    reply_id: str
    message_id: str
    finish_reason: str
    usage: Usage | None = None
    error: GatewayError | None = None


class Streaming(NamedTuple):
    """The reply streaming in a conversation now: its id and how far it has come."""

    reply_id: str
    seq: int
    chars: int


ReplyEvent = ReplyStarted | ReplyDelta | ReplyEnded


class Subscriber(Protocol):
    """A connection following replies; called synchronously, must not block."""

    def reply_event(self, event: ReplyEvent) -> None: ...
