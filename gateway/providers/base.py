"""What every provider produces, and the interface the gateway streams through."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

__all__ = ["Chunk", "ChatMessage", "MAX_TOKENS", "Provider", "Usage", "finish_reason", "usage_of"]

ChatMessage = Mapping[str, Any]  # role and content; to continue a reply, a prefix or partial flag
MAX_TOKENS = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a reply used: reasoning ones are among the completion tokens, cached ones
    among the prompt tokens (0: not reported). ``estimated``: counted by the gateway from
    the text, the provider's count never came."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False

    def as_dict(self) -> dict[str, int]:
        counts = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.reasoning_tokens:
            counts["reasoning_tokens"] = self.reasoning_tokens
        if self.cached_tokens:
            counts["cached_tokens"] = self.cached_tokens
        return counts

    @classmethod
    def of(cls, counts: Mapping[str, Any], estimated: bool = False) -> Usage:
        """The usage :meth:`as_dict` gave."""
        return cls(
            _count(counts.get("prompt_tokens")), _count(counts.get("completion_tokens")),
            _count(counts.get("reasoning_tokens")), _count(counts.get("cached_tokens")), estimated,
        )


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

    Reasoning tokens are read from ``completion_tokens_details`` (OpenAI, OpenRouter,
    vLLM) or ``output_tokens_details`` (DashScope), cached ones from
    ``prompt_tokens_details`` or DeepSeek's ``prompt_cache_hit_tokens``. A count must be
    a whole number from 0 to :data:`MAX_TOKENS`; anything else (missing, negative,
    huge, a float, a string) counts as 0 rather than reach metrics, the store or a client.
    """
    if not isinstance(raw, dict):
        return None
    details = raw.get("completion_tokens_details") or raw.get("output_tokens_details")
    prompt_details = raw.get("prompt_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
    return Usage(
        _count(raw.get(prompt_key)), _count(raw.get(completion_key)), _count(reasoning),
        _count(cached if cached is not None else raw.get("prompt_cache_hit_tokens")),
    )


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        return 0
    return value
