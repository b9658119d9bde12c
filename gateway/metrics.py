"""Prometheus metrics, in a registry of the gateway's own (no process-global state).

Label values are bounded enums (protocol, reason, finish reason, error code,
store operation): never ids, origins or addresses. On the per-delta path there
is one increment of a :class:`Tally`, a plain integer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from .stores.base import StoreUnavailable

__all__ = ["CONTENT_TYPE", "Metrics", "Tally", "TimedStore"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_STORE = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class Tally:
    """A counter for the per-delta path: a plain integer, without prometheus_client's
    lock (only the event loop's thread adds to it), exposed as a counter."""

    __slots__ = ("name", "documentation", "value")

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.value = name, documentation, 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


class Metrics:
    """Every metric the gateway exposes on ``GET /metrics``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        GCCollector(registry=r)  # python_gc_*: the collections [server] gc_threshold spaces out
        self.connections = Gauge("gateway_connections_open", "Open WebSocket connections", ["protocol"], registry=r)
        self.handshakes = Counter("gateway_handshakes", "WebSocket handshakes accepted", ["protocol"], registry=r)
        self.refusals = Counter("gateway_handshakes_refused", "Handshakes or connections refused", ["reason"], registry=r)
        self.auth_failures = Counter(
            "gateway_auth_failures", "Credentials that proved nobody, by reason", ["reason"], registry=r
        )
        self.auth_refreshes = Counter("gateway_auth_refreshes", "Credentials renewed by a refresh frame", registry=r)
        self.auth_expiries = Counter("gateway_auth_expired", "Sockets closed when their credential expired", registry=r)
        self.limited = Counter(
            "gateway_limited", "Requests refused by a per-subject limit or budget", ["limit"], registry=r
        )
        self.charged = Counter(
            "gateway_charged_tokens", "Tokens charged to budgets, as reported by providers or estimated", ["how"],
            registry=r,
        )
        self.messages = Counter("gateway_messages", "User messages accepted", registry=r)
        self.replies = Counter("gateway_replies", "Replies ended", ["finish_reason"], registry=r)
        self.replies_in_flight = Gauge("gateway_replies_in_flight", "Replies streaming now", registry=r)
        self.deltas = Counter("gateway_deltas", "Deltas produced (one per upstream read with text)", registry=r)
        self.frames = Tally("gateway_delta_frames", "reply.delta frames written (deltas merge when behind)", r)
        self.tokens = Counter("gateway_completion_tokens", "Completion tokens reported by providers", registry=r)
        self.ttft = Histogram("gateway_time_to_first_token_seconds", "Time to first delta", buckets=_LATENCY, registry=r)
        self.duration = Histogram("gateway_reply_duration_seconds", "Reply duration", buckets=_LATENCY, registry=r)
        self.upstream_errors = Counter("gateway_upstream_errors", "Upstream failures", ["code"], registry=r)
        # Per model and deployment: configured ids only (bounded by the configuration).
        self.attempts = Counter(
            "gateway_upstream_attempts", "Upstream requests by model, deployment and outcome (ok, or the failure "
            "before the first token: connect, timeout, rate_limited, server_error, stream_error, auth, refused)",
            ["model", "deployment", "outcome"], registry=r,
        )
        self.retries = Counter(
            "gateway_upstream_retries", "Attempts after a reply's first, by model and deployment",
            ["model", "deployment"], registry=r,
        )
        self.fallbacks = Counter(
            "gateway_fallbacks", "Replies answered by a fallback model", ["model", "fallback"], registry=r
        )
        self.cooldowns = Counter(
            "gateway_deployment_cooldowns", "Deployments taken out of rotation after a failure", ["deployment", "kind"],
            registry=r,
        )
        self.model_tokens = Counter(
            "gateway_model_tokens", "Tokens reported by providers, by model (prompt, completion)", ["model", "kind"],
            registry=r,
        )
        self.slow_clients = Counter("gateway_slow_client_disconnects", "Connections closed for not reading", registry=r)
        self.queued_bytes = Gauge(
            "gateway_output_queued_bytes", "Bytes queued or being written for all clients (limits.max_total_pending_bytes)",
            registry=r,
        )
        self.redis_up = Gauge("gateway_redis_up", "1 while Redis answers (cluster mode), else 0", registry=r)
        self.redis_outages = Counter("gateway_redis_outages", "Times Redis stopped answering (cluster mode)", registry=r)
        self.redis_refusals = Counter(
            "gateway_redis_refusals", "Commands Redis refused (out of memory, read-only...) (cluster mode)", registry=r
        )
        self.redis_data_lost = Counter(
            "gateway_redis_data_lost", "Times Redis was found to have lost the cluster's data (cluster mode)", registry=r
        )
        self.takeovers = Counter(
            "gateway_replies_taken_over", "Replies ended here after their owner's lease expired", registry=r
        )
        self.store_latency = Histogram(
            "gateway_store_seconds", "Conversation store operation latency", ["op"], buckets=_STORE, registry=r
        )
        self.dictations = Counter(
            "gateway_dictations", "Voice dictations ended, by outcome (final, limit, shutdown, error, bad_audio, "
            "dropped, refused)", ["outcome"], registry=r,
        )
        self.dictations_active = Gauge("gateway_dictations_active", "Voice dictations open or being recognised",
                                       registry=r)
        self.dictation_seconds = Counter("gateway_dictation_audio_seconds", "Seconds of audio dictated", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimedStore:
    """A :class:`~gateway.stores.ConversationStore` that records each operation's latency."""

    def __init__(self, store: Any, metrics: Metrics) -> None:
        self.inner = store
        self.failing = False  # its last operation could not reach it (StoreUnavailable)
        self._observe = {
            op: metrics.store_latency.labels(op).observe
            for op in (
                "open", "create", "get", "add", "append", "save", "delete", "history", "prune", "export", "close",
                "conversations", "rename", "remove", "claim", "record_usage", "usage",
            )
        }

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        observe = self._observe.get(name)
        if observe is None:
            return attr

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = await attr(*args, **kwargs)
            except StoreUnavailable:
                self.failing = True
                raise
            finally:
                observe(time.perf_counter() - start)
            self.failing = False
            return result

        return timed
