"""OpenAI-compatible ``/chat/completions`` streaming (OpenAI, OpenRouter, DeepSeek,
vLLM, Ollama, LiteLLM, DashScope compatible mode)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..errors import ErrorCode, UpstreamError
from ..sse import SSEEvent
from .base import ChatMessage, Chunk, finish_reason, usage_of

__all__ = ["OpenAIDecoder", "build_body", "endpoint"]


def endpoint(base_url: str) -> str:
    """The chat completions URL for a base URL as OpenAI's SDKs take it."""
    return base_url.rstrip("/") + "/chat/completions"


def build_body(
    model: str,
    messages: Sequence[ChatMessage],
    params: Mapping[str, Any],
    *,
    include_usage: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {**params, "model": model, "messages": list(messages), "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


class OpenAIDecoder:
    """Turns SSE events of a chat completions stream into chunks.

    ``[DONE]`` sets :attr:`done`; a usage chunk (empty ``choices``) yields a
    chunk with ``usage``; an ``{"error": ...}`` object raises UpstreamError.
    """

    def __init__(self) -> None:
        self.done = False
        self.finished = False

    def receive(self, event: SSEEvent) -> Chunk | None:
        data = event.data
        if data == "[DONE]":
            self.done = True
            return None
        if not data or event.event not in ("message", "error"):
            return None
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(ErrorCode.UPSTREAM_ERROR, "the provider sent invalid JSON in its stream", retryable=True) from None
        if not isinstance(obj, dict):
            return None
        if "error" in obj or event.event == "error":
            raise _stream_error(obj)
        return self._chunk(obj)

    def _chunk(self, obj: dict[str, Any]) -> Chunk | None:
        raw_usage = obj.get("usage")
        usage = usage_of(raw_usage, "prompt_tokens", "completion_tokens") if raw_usage is not None else None
        choices = obj.get("choices") or []
        if type(choices) is not list:
            raise UpstreamError(
                ErrorCode.UPSTREAM_ERROR, "the provider sent a malformed chunk ('choices' is not a list)", retryable=True
            )
        choice = choices[0] if choices and type(choices[0]) is dict else {}
        delta = choice.get("delta") or {}
        if type(delta) is not dict:
            delta = {}
        text = delta.get("content") or ""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        raw_finish = choice.get("finish_reason")
        finish = finish_reason(raw_finish) if raw_finish is not None else None
        if finish:
            self.finished = True
        if not (text or reasoning or finish or usage):
            return None
        return Chunk(
            text if type(text) is str else "", reasoning if type(reasoning) is str else "", finish, usage,
        )


def _stream_error(obj: dict[str, Any]) -> UpstreamError:
    err = obj.get("error")
    message = err.get("message") if isinstance(err, dict) else err
    code = err.get("code") if isinstance(err, dict) else None
    if code in (429, "429", "rate_limit_exceeded"):
        return UpstreamError(ErrorCode.RATE_LIMITED, "the provider is rate limiting", detail=str(message), retry_after=5)
    if _refusal(code):  # the request itself (a moderation flag, a bad parameter): no retry will do
        return UpstreamError(
            ErrorCode.UPSTREAM_ERROR, "the provider refused the request", detail=str(message or code), retryable=False
        )
    return UpstreamError(
        ErrorCode.UPSTREAM_ERROR, "the provider failed mid-stream", detail=str(message or "unknown error"), retryable=True
    )


_REFUSALS = ("content", "policy", "moderation", "filter", "invalid", "not_found", "unsupported")


def _refusal(code: object) -> bool:
    """Whether an in-band error code says the request is refused (OpenRouter sends HTTP
    codes, 400/403/404/422 among them; others send names like ``content_filter``)."""
    if isinstance(code, int | str) and str(code) in ("400", "401", "403", "404", "422"):
        return True
    return isinstance(code, str) and any(word in code.lower() for word in _REFUSALS)
