"""What every provider produces, and the interface the gateway streams through."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Chunk", "ChatMessage", "Provider", "Usage", "finish_reason"]

ChatMessage = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one upstream event decoded into.

    ``reasoning`` is a model's thinking (DeepSeek's ``reasoning_content``): it
    is never mixed into ``text``, the answer.
    """

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class Provider(Protocol):
    """Streams a reply for a list of chat messages.

    ``stream`` yields lists of chunks, one list per upstream read, and raises
    :class:`~gateway.errors.UpstreamError` when the upstream fails. Cancelling
    the consumer aborts the upstream request.
    """

    name: str
    model: str

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[list[Chunk], None]: ...


_FINISH = {"stop": "stop", "length": "length", "max_tokens": "length", "eos": "stop"}


def finish_reason(raw: object) -> str | None:
    """Normalise a provider's finish reason to ``stop`` or ``length``.

    ``None``, ``""`` and DashScope's string ``"null"`` mean "not finished".
    Anything else (``content_filter``, ``tool_calls``...) ends the reply as ``stop``.
    """
    if raw is None or raw == "" or raw == "null":
        return None
    return _FINISH.get(str(raw), "stop")
