"""What is sent upstream: the history, bounded, newest turns kept first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["CONTINUE_PROMPT", "build_context", "continuation"]

CONTINUE_PROMPT = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without repeating"
    " any of it and without any preamble."
)


class _Message(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


def build_context(
    history: Sequence[_Message],
    *,
    system_prompt: str,
    max_messages: int,
    max_chars: int,
) -> list[dict[str, str]]:
    """Chat messages for the upstream, oldest first.

    ``history`` ends with the new user message (or, to continue it, a reply cut short),
    which is always kept, as is the system prompt; older turns are dropped first past ``max_messages`` or
    ``max_chars``. Empty messages (a reply cancelled before any text) are skipped.
    """
    kept: list[dict[str, str]] = []
    budget = max_chars - len(system_prompt)
    for i, message in enumerate(reversed(history)):
        if not message.content:
            continue
        if i > 0 and (len(kept) >= max_messages or len(message.content) > budget):
            break
        kept.append({"role": message.role, "content": message.content})
        budget -= len(message.content)
    kept.reverse()
    while kept and kept[0]["role"] == "assistant":
        kept.pop(0)
    if system_prompt:
        kept.insert(0, {"role": "system", "content": system_prompt})
    return kept


def continuation(messages: Sequence[Mapping[str, Any]], style: str) -> list[Mapping[str, Any]]:
    """``messages`` as sent to ask for more of the reply they end with: that reply marked
    as a prefix the model extends (``prefix``: DeepSeek, Mistral; ``partial``: Qwen, Kimi),
    or followed by a request to go on (``prompt``: any model). Messages that end with the
    user's are sent as they are."""
    if not messages or messages[-1].get("role") != "assistant":
        return list(messages)
    if style in ("prefix", "partial"):
        return [*messages[:-1], {**messages[-1], style: True}]
    return [*messages, {"role": "user", "content": CONTINUE_PROMPT}]
