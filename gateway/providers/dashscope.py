"""DashScope's native text-generation API with SSE (``X-DashScope-SSE: enable``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..errors import ErrorCode, UpstreamError
from ..sse import SSEEvent
from .base import ChatMessage, Chunk, finish_reason, usage_of

__all__ = ["DashScopeDecoder", "build_body", "error_from_body"]


def build_body(
    model: str,
    messages: Sequence[ChatMessage],
    params: Mapping[str, Any],
    *,
    incremental: bool,
) -> dict[str, Any]:
    parameters = {"result_format": "message", **params, "incremental_output": incremental}
    return {"model": model, "input": {"messages": list(messages)}, "parameters": parameters}


class DashScopeDecoder:
    """Turns DashScope ``event:result`` frames into chunks.

    With cumulative output (``incremental=False``) each frame repeats the whole
    text so far and the decoder computes the new part, as the seed backend did.
    Both ``result_format`` shapes are read: ``output.choices[0].message`` and
    ``output.text``. ``event:error`` frames raise UpstreamError.
    """

    def __init__(self, *, incremental: bool) -> None:
        self.incremental = incremental
        self.done = False
        self.finished = False
        self._text = ""
        self._reasoning = ""

    def receive(self, event: SSEEvent) -> Chunk | None:
        if not event.data:
            return None
        try:
            obj = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise UpstreamError(ErrorCode.UPSTREAM_ERROR, "the provider sent invalid JSON in its stream", retryable=True) from None
        if not isinstance(obj, dict):
            return None
        if event.event == "error" or (obj.get("code") and not obj.get("output")):
            raise error_from_body(obj, None)
        output = obj.get("output") or {}
        text, reasoning, raw_finish = _read_output(output if isinstance(output, dict) else {})
        finish = finish_reason(raw_finish)
        if finish:
            self.finished = self.done = True
        text, reasoning = self._new(text, reasoning)
        usage = usage_of(obj.get("usage"), "input_tokens", "output_tokens") if finish else None
        if not (text or reasoning or finish):
            return None
        return Chunk(text=text, reasoning=reasoning, finish_reason=finish, usage=usage)

    def _new(self, text: str, reasoning: str) -> tuple[str, str]:
        if self.incremental:
            return text, reasoning
        new_text, self._text = _suffix(self._text, text), max(self._text, text, key=len)
        new_reasoning, self._reasoning = _suffix(self._reasoning, reasoning), max(self._reasoning, reasoning, key=len)
        return new_text, new_reasoning


def _suffix(seen: str, whole: str) -> str:
    """The part of cumulative ``whole`` not yet seen (never repeats text)."""
    if whole.startswith(seen):
        return whole[len(seen):]
    return whole[len(seen):] if len(whole) > len(seen) else ""


def _read_output(output: dict[str, Any]) -> tuple[str, str, object]:
    choices = output.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message") or {}
        if not isinstance(message, dict):
            message = {}
        content = message.get("content") or ""
        if isinstance(content, list):  # multimodal models: [{"text": ...}]
            content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        reasoning = message.get("reasoning_content") or ""
        return str(content), str(reasoning), choice.get("finish_reason")
    return str(output.get("text") or ""), "", output.get("finish_reason")


def error_from_body(obj: Mapping[str, Any], status: int | None) -> UpstreamError:
    """Map a DashScope error object (``{"code", "message"}``) to an UpstreamError."""
    code, message = str(obj.get("code") or ""), str(obj.get("message") or "unknown error")
    if code in ("Throttling", "Throttling.RateQuota", "Throttling.AllocationQuota") or status == 429:
        return UpstreamError(
            ErrorCode.RATE_LIMITED, "the provider is rate limiting", detail=message, status=status, retry_after=5
        )
    retryable = code.startswith(("InternalError", "ServiceUnavailable")) or (status or 0) >= 500
    return UpstreamError(
        ErrorCode.UPSTREAM_ERROR, f"the provider answered {code or 'an error'}", detail=message,
        status=status, retryable=retryable,
    )
