"""What every provider produces, and the interface the gateway streams through."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

__all__ = ["Chunk", "ChatMessage", "MAX_TOKENS", "Provider", "Usage", "finish_reason", "usage_of"]

ChatMessage = Mapping[str, str]
MAX_TOKENS = 2**31 - 1


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


class Chunk(NamedTuple):
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


def usage_of(raw: object, prompt_key: str, completion_key: str) -> Usage | None:
    """A provider's usage object as :class:`Usage`, or None if it is not an object.

    A count must be a whole number from 0 to :data:`MAX_TOKENS`; anything else
    (missing, negative, huge, a float, a string) counts as 0 rather than reach
    metrics, the store or a client.
    """
    if not isinstance(raw, dict):
        return None
    return Usage(_count(raw.get(prompt_key)), _count(raw.get(completion_key)))


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        return 0
    return value
