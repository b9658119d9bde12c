"""What the gateway counts and logs of every reply: metrics and the canonical log line."""

from __future__ import annotations

import time
from typing import Any

import structlog

from .errors import UpstreamError
from .metrics import Metrics
from .reply import Reply
from .routing import Attempt, Kind

__all__ = ["ReplyStats"]

_log: Any = structlog.get_logger("gateway.replies")


class ReplyStats:
    """Observes replies: one ``reply_finished`` line and the metrics of each, at its end."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def started(self) -> None:
        self.metrics.messages.inc()

    def answered(self, reply: Reply, attempt: Attempt) -> None:
        """An attempt streams: counted, and a retry if it was not the first."""
        self.metrics.attempts.labels(attempt.model, attempt.deployment, "ok").inc()
        if attempt.number:
            self.metrics.retries.labels(attempt.model, attempt.deployment).inc()
        if attempt.model != reply.route.requested:
            self.metrics.fallbacks.labels(reply.route.requested, attempt.model).inc()

    def failed(self, reply: Reply, attempt: Attempt, kind: Kind, exc: UpstreamError, *, cooled: bool) -> None:
        """An attempt failed before its first token: counted and logged (the client sees
        only the reply's end)."""
        m = self.metrics
        m.attempts.labels(attempt.model, attempt.deployment, kind.value).inc()
        if attempt.number:
            m.retries.labels(attempt.model, attempt.deployment).inc()
        if cooled:
            m.cooldowns.labels(attempt.deployment, kind.value).inc()
        _log.warning(
            "upstream_attempt_failed", reply_id=reply.id, model=attempt.model, deployment=attempt.deployment,
            attempt=attempt.number, kind=kind.value, error_code=str(exc.code), status=exc.status, error=exc.message,
        )

    def finished(self, reply: Reply, followers: int) -> None:
        now = time.monotonic()
        usage = reply.usage.as_dict() if reply.usage and not reply.usage.estimated else {}
        m = self.metrics
        m.replies.labels(reply.finish_reason).inc()
        m.deltas.inc(reply.log.seq - reply.seeded_seq)
        m.duration.observe(now - reply.started_at)
        if reply.first_delta_at is not None:
            m.ttft.observe(reply.first_delta_at - reply.started_at)
        if usage.get("completion_tokens"):
            m.tokens.inc(usage["completion_tokens"])
        for kind in ("prompt_tokens", "completion_tokens"):
            if usage.get(kind):
                m.model_tokens.labels(reply.model, kind.removesuffix("_tokens")).inc(usage[kind])

        if isinstance(reply.error, UpstreamError):
            m.upstream_errors.labels(str(reply.error.code)).inc()
        _log.info(
            "reply_finished",
            reply_id=reply.id,
            conversation_id=reply.conversation_id,
            provider=reply.provider.name,
            model=reply.model,
            deployment=reply.deployment,
            fallback_from=reply.fallback_from,
            attempts=reply.route.attempts,
            finish_reason=reply.finish_reason,
            error_code=str(reply.error.code) if reply.error else None,
            deltas=reply.log.seq - reply.seeded_seq,
            chars=reply.log.chars - reply.seeded_chars,
            continues=reply.continues,
            reasoning_chars=reply.reasoning_chars,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            ttft_ms=round((reply.first_delta_at - reply.started_at) * 1000, 1) if reply.first_delta_at else None,
            duration_ms=round((now - reply.started_at) * 1000, 1),
            subscribers=followers,
        )
