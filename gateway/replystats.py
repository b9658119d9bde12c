"""What the gateway counts and logs of every reply: metrics and the canonical log line."""

from __future__ import annotations

import time
from typing import Any

import structlog

from .errors import UpstreamError
from .metrics import Metrics
from .reply import Reply

__all__ = ["ReplyStats"]

_log: Any = structlog.get_logger("gateway.replies")


class ReplyStats:
    """Observes replies: one ``reply_finished`` line and the metrics of each, at its end."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def started(self) -> None:
        self.metrics.messages.inc()

    def finished(self, reply: Reply, followers: int) -> None:
        now = time.monotonic()
        usage = reply.usage.as_dict() if reply.usage else {}
        m = self.metrics
        m.replies.labels(reply.finish_reason).inc()
        m.deltas.inc(reply.log.seq)
        m.duration.observe(now - reply.started_at)
        if reply.first_delta_at is not None:
            m.ttft.observe(reply.first_delta_at - reply.started_at)
        if usage.get("completion_tokens"):
            m.tokens.inc(usage["completion_tokens"])
        if isinstance(reply.error, UpstreamError):
            m.upstream_errors.labels(str(reply.error.code)).inc()
        _log.info(
            "reply_finished",
            reply_id=reply.id,
            conversation_id=reply.conversation_id,
            provider=reply.provider.name,
            model=reply.provider.model,
            finish_reason=reply.finish_reason,
            error_code=str(reply.error.code) if reply.error else None,
            deltas=reply.log.seq,
            chars=reply.log.chars,
            reasoning_chars=reply.reasoning_chars,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            ttft_ms=round((reply.first_delta_at - reply.started_at) * 1000, 1) if reply.first_delta_at else None,
            duration_ms=round((now - reply.started_at) * 1000, 1),
            subscribers=followers,
        )
