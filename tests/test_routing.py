"""Routing decisions without sockets: failure kinds, the order of attempts, waits, cooldowns."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from gateway.errors import ErrorCode, GatewayError, UpstreamError
from gateway.routing import Attempt, Candidate, Health, Kind, Route, Wait, kind_of, weighted_order

ALL = ("connect", "timeout", "rate_limited", "server_error", "stream_error")


def route(
    *groups: list[Candidate], health: Health | None = None, now: float = 0.0, budget: float = 60.0,
    retries: int = 2, retry_on: tuple[str, ...] = ALL, retry_after_max: float = 10.0, cooldown: float = 30.0,
) -> Route:
    return Route(
        list(groups), health or Health(), now=now, budget=budget, retries=retries, retry_on=retry_on,
        retry_after_max=retry_after_max, cooldown=cooldown, rng=random.Random(7),
    )


def http(status: int, *, asked: float | None = None) -> UpstreamError:
    code = ErrorCode.RATE_LIMITED if status == 429 else ErrorCode.UPSTREAM_ERROR
    return UpstreamError(code, f"HTTP {status}", status=status, retryable=status >= 500, asked_wait=asked)


CONNECT = UpstreamError(ErrorCode.UPSTREAM_UNAVAILABLE, "cannot connect to the provider")
STALL = UpstreamError(ErrorCode.UPSTREAM_TIMEOUT, "no token")
IN_BAND = UpstreamError(ErrorCode.UPSTREAM_ERROR, "the provider failed mid-stream", retryable=True)
A, B, C = (Candidate("m", d) for d in "abc")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (CONNECT, Kind.CONNECT),
        (STALL, Kind.TIMEOUT),
        (http(429), Kind.RATE_LIMITED),
        (UpstreamError(ErrorCode.RATE_LIMITED, "Throttling", retry_after=5), Kind.RATE_LIMITED),
        (http(503), Kind.SERVER_ERROR),
        (http(500), Kind.SERVER_ERROR),
        (http(408), Kind.SERVER_ERROR),
        (http(409), Kind.SERVER_ERROR),
        (IN_BAND, Kind.STREAM_ERROR),
        (http(401), Kind.AUTH),
        (http(403), Kind.AUTH),
        (http(400), Kind.REFUSED),
        (http(404), Kind.REFUSED),
        (http(422), Kind.REFUSED),
        (UpstreamError(ErrorCode.UPSTREAM_ERROR, "DataInspectionFailed", status=400, retryable=False), Kind.REFUSED),
        (UpstreamError(ErrorCode.UPSTREAM_ERROR, "too large", retryable=False), Kind.REFUSED),
        (GatewayError(ErrorCode.INTERNAL, "?"), Kind.REFUSED),
    ],
)
def test_failures_are_classified(exc: GatewayError, kind: Kind) -> None:
    assert kind_of(exc) is kind


def test_a_failure_moves_to_the_next_deployment_at_once_then_to_the_fallback() -> None:
    r = route([A, B], [Candidate("f", "x")], retries=5)
    first = r.next(0.0)
    assert isinstance(first, Attempt) and first.number == 0
    r.failed(first, http(503), 0.0)
    second = r.next(0.0)
    assert isinstance(second, Attempt) and second.deployment != first.deployment and second.model == "m"
    r.failed(second, http(429), 0.0)
    third = r.next(0.0)
    assert third == Attempt("f", "x", 2)


def test_when_every_candidate_failed_the_soonest_is_waited_for() -> None:
    r = route([A, B], retries=5, retry_after_max=10)
    a = r.next(0.0)
    assert isinstance(a, Attempt)
    r.failed(a, http(429, asked=4.0), 0.0)
    b = r.next(0.0)
    assert isinstance(b, Attempt)
    r.failed(b, http(503), 0.0)  # no Retry-After: a backoff of 0.5 s
    assert r.next(0.1) == Wait(pytest.approx(0.4))
    again = r.next(0.5)
    assert isinstance(again, Attempt) and again.deployment == b.deployment
    r.failed(again, http(503), 0.5)  # its second failure: 1 s
    assert r.next(0.5) == Wait(pytest.approx(1.0))
    r.failed(r.next(1.5), http(503), 1.5)  # type: ignore[arg-type]  # third: 2 s, at 3.5, before the 429's 4.0
    assert r.next(1.5) == Wait(pytest.approx(2.0))
    r.failed(r.next(3.5), http(503), 3.5)  # type: ignore[arg-type]  # fourth: 4 s; now the 429's is sooner
    assert r.next(3.5) == Wait(pytest.approx(0.5))
    assert r.next(4.0) == Attempt("m", a.deployment, 5)


def test_retry_after_over_the_cap_is_not_waited_for() -> None:
    r = route([A], retries=3, retry_after_max=10)
    a = r.next(0.0)
    r.failed(a, http(429, asked=30.0), 0.0)  # type: ignore[arg-type]
    assert r.next(0.0) is None
    assert isinstance(r.last_error, UpstreamError) and r.last_error.status == 429


def test_retry_after_within_the_cap_is_honoured() -> None:
    r = route([A], retries=3, retry_after_max=10)
    r.failed(r.next(0.0), http(429, asked=2.0), 0.0)  # type: ignore[arg-type]
    assert r.next(0.0) == Wait(2.0)
    assert r.next(2.0) == Attempt("m", "a", 1)


def test_retries_bound_the_attempts() -> None:
    r = route([A, B, C], retries=1)
    r.failed(r.next(0.0), CONNECT, 0.0)  # type: ignore[arg-type]
    r.failed(r.next(0.0), CONNECT, 0.0)  # type: ignore[arg-type]
    assert r.next(0.0) is None
    assert r.attempts == 2


def test_a_wait_past_the_budget_ends_the_route() -> None:
    r = route([A], budget=1.0, retries=3)
    r.failed(r.next(0.0), http(429, asked=2.0), 0.0)  # type: ignore[arg-type]
    assert r.next(0.0) is None


@pytest.mark.parametrize("exc", [http(400), http(404), http(422)])
def test_a_refused_request_fails_at_once(exc: UpstreamError) -> None:
    r = route([A, B], [Candidate("f", "x")], retries=5)
    health = r._health
    assert r.failed(r.next(0.0), exc, 0.0) is Kind.REFUSED  # type: ignore[arg-type]
    assert r.next(0.0) is None
    assert health.cooling(0.0) == []


def test_a_refused_key_cools_its_deployment_and_moves_on_without_retrying_it() -> None:
    health = Health()
    r = route([A], [Candidate("f", "x")], health=health, retries=5)
    a = r.next(0.0)
    assert r.failed(a, http(401), 0.0) is Kind.AUTH  # type: ignore[arg-type]
    assert health.cooling(0.0) == ["a"]
    assert r.next(0.0) == Attempt("f", "x", 1)
    r.failed(Attempt("f", "x", 1), http(503), 0.0)
    nxt = r.next(0.0)
    assert isinstance(nxt, Wait)  # x again after its backoff; never a again
    assert r.next(0.5) == Attempt("f", "x", 2)


def test_a_kind_not_in_retry_on_fails_at_once() -> None:
    r = route([A, B], retry_on=("connect",))
    assert r.failed(r.next(0.0), http(503), 0.0) is Kind.SERVER_ERROR  # type: ignore[arg-type]
    assert r.next(0.0) is None


def test_a_cooling_deployment_goes_after_its_models_healthy_ones_and_a_fallback_first_when_all_cool() -> None:
    health = Health()
    health.cool("a", 30.0)
    assert [c.deployment for c in route([A, B], health=health).candidates] == ["b", "a"]
    with_fallback = route([A, B], [Candidate("f", "x")], health=health).candidates
    assert [c.deployment for c in with_fallback] == ["b", "a", "x"]  # the model's own deployments first
    health.cool("b", 20.0)
    r = route([A, B], [Candidate("f", "x")], health=health)
    assert [(c.model, c.deployment) for c in r.candidates] == [("f", "x"), ("m", "b"), ("m", "a")]
    assert r.first == Candidate("f", "x") and r.requested == "m"
    assert [c.deployment for c in route([A, B], health=health, now=31.0).candidates] in (["a", "b"], ["b", "a"])
    assert health.cooling(31.0) == []


def test_failures_cool_for_the_cooldown_or_the_longer_retry_after() -> None:
    health = Health()
    r = route([A, B], health=health, cooldown=30.0)
    r.failed(r.next(0.0), http(429, asked=120.0), 0.0)  # type: ignore[arg-type]
    r.failed(r.next(0.0), http(503), 0.0)  # type: ignore[arg-type]
    assert {d: health.until(d, 0.0) for d in "ab"} in ({"a": 120.0, "b": 30.0}, {"a": 30.0, "b": 120.0})
    off = Health()
    r = route([A], health=off, cooldown=0.0)
    r.failed(r.next(0.0), http(503), 0.0)  # type: ignore[arg-type]
    assert off.cooling(0.0) == []


def test_a_huge_retry_after_cools_for_an_hour_at_most() -> None:
    health = Health()
    r = route([A], health=health)
    r.failed(r.next(0.0), http(429, asked=1e300), 0.0)  # type: ignore[arg-type]
    assert health.until("a", 0.0) == 3600.0


def test_weights_share_the_first_attempts_and_standbys_come_last() -> None:
    rng = random.Random(1)
    heavy, light, standby = Candidate("m", "heavy", 3.0), Candidate("m", "light", 1.0), Candidate("m", "sb", 0.0)
    firsts = Counter(weighted_order([heavy, light, standby], rng)[0].deployment for _ in range(4000))
    assert firsts["sb"] == 0
    assert 2.5 < firsts["heavy"] / firsts["light"] < 3.5
    assert all(weighted_order([standby, light], rng)[-1] == standby for _ in range(50))


def test_no_candidate_is_tried_twice_before_all_were_tried_once() -> None:
    r = route([A, B, C], retries=10)
    seen = []
    for _ in range(3):
        step = r.next(0.0)
        assert isinstance(step, Attempt)
        seen.append(step.deployment)
        r.failed(step, CONNECT, 0.0)
    assert sorted(seen) == ["a", "b", "c"]
    assert not math.isinf(r.deadline)


def test_what_a_failure_leaves_belongs_to_the_deployment_whichever_model_tried_it() -> None:
    """A fallback sharing a deployment does not hit it again before its Retry-After."""
    r = route([A], [Candidate("f", "a"), Candidate("f", "y")], retries=5)
    r.failed(r.next(0.0), http(429, asked=8.0), 0.0)  # type: ignore[arg-type]
    assert r.next(0.0) == Attempt("f", "y", 1)
    r.failed(Attempt("f", "y", 1), http(401), 0.0)
    assert r.next(0.0) == Wait(8.0)
    assert r.next(8.0) == Attempt("m", "a", 2)


def test_the_budget_counts_from_the_start_of_the_producer() -> None:
    r = route([A], budget=5.0, now=0.0)
    r.start(100.0)
    assert r.deadline == 105.0 and isinstance(r.next(104.0), Attempt)
    assert r.next(105.0) is None


def test_alternatives_are_other_deployments() -> None:
    assert not route([A]).alternatives
    assert not route([A], [Candidate("f", "a")]).alternatives
    assert route([A, B]).alternatives
