"""What a reply tells the connections that follow it: typed, immutable events (pure).

A connection never sees a reply itself, only these: the in-process registry sends
them today; a bus shared by several instances sends the same ones.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from .errors import GatewayError
from .providers import Usage

__all__ = ["ReplyDelta", "ReplyEnded", "ReplyEvent", "ReplyReasoning", "ReplyStarted", "Streaming", "Subscriber"]


class ReplyStarted(NamedTuple):
    """A reply began. ``content`` is the user's message, for connections that did not send it;
    ``model`` the model asked to answer (``fallback_from``: the one picked, if it is another);
    ``parent_id`` the message it answers; ``continues`` the reply it extends, if it is a
    continuation (its text then starts with that reply's); ``message_parent_id`` the
    message that a new user's message (``message``, ``edit``) follows."""

    reply_id: str
    conversation_id: str
    message_id: str
    replaces: str | None = None
    content: str | None = None
    model: str | None = None
    fallback_from: str | None = None
    parent_id: str | None = None
    continues: str | None = None
    message_parent_id: str | None = None


class ReplyDelta(NamedTuple):
    """Text numbered ``seq``: new text, or for a resuming connection all it missed, at once."""

    reply_id: str
    seq: int
    text: str


class ReplyReasoning(NamedTuple):
    """The model's thinking, numbered ``seq`` in the same sequence as the text: new
    reasoning, or for a resuming connection a run of it, at once."""

    reply_id: str
    seq: int
    text: str


class ReplyEnded(NamedTuple):
    """The reply's end: ``finish_reason`` stop, length, cancelled or error (then ``error``);
    the model that answered (``fallback_from``: the one asked, if it is another) and what
    the usage cost at its prices."""

    reply_id: str
    message_id: str
    finish_reason: str
    usage: Usage | None = None
    error: GatewayError | None = None
    model: str | None = None
    fallback_from: str | None = None
    cost: float | None = None


class Streaming(NamedTuple):
    """The reply streaming in a conversation now: its id, how far it has come, the message
    it answers and the stored message it writes (its own id but for a continuation)."""

    reply_id: str
    seq: int
    chars: int
    parent_id: str = ""
    message_id: str = ""


ReplyEvent = ReplyStarted | ReplyDelta | ReplyReasoning | ReplyEnded


class Subscriber(Protocol):
    """A connection following replies; called synchronously, must not block."""

    def reply_event(self, event: ReplyEvent) -> None: ...
