"""Which deployment answers, and what a failure before the first token leads to (pure).

A :class:`Route` is one reply's way through its model's deployments, then the model's
fallbacks: healthy deployments first (shuffled by weight), deployments cooling down
last. Each failure is classified (:func:`kind_of`); one that may pass elsewhere moves
to the next candidate at once, and once every candidate was tried, the route waits for
the soonest one to be worth trying again (its ``Retry-After``, or a backoff), within
the retries and the time left. :class:`Health` remembers, for the whole process, which
deployments failed lately (the cooldown). Times are the event loop's clock.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import MAX_RETRY_AFTER, ErrorCode, GatewayError, UpstreamError

__all__ = ["Attempt", "Candidate", "Health", "Kind", "Route", "Wait", "kind_of", "weighted_order"]

_BACKOFF = 0.5  # seconds before the first retry of a deployment that gave no Retry-After; doubles


class Kind(enum.StrEnum):
    """What went wrong with one attempt."""

    CONNECT = "connect"  # cannot connect (refused, DNS, connect timeout)
    TIMEOUT = "timeout"  # no first token in time
    RATE_LIMITED = "rate_limited"  # 429, or the provider's own throttling error
    SERVER_ERROR = "server_error"  # 408, 409, 5xx
    STREAM_ERROR = "stream_error"  # an in-band error, a broken or malformed stream
    AUTH = "auth"  # 401, 403: this deployment's key is refused
    REFUSED = "refused"  # 400, 404, 422, content policy...: the request itself; no other will do


def kind_of(exc: GatewayError) -> Kind:
    status = exc.status if isinstance(exc, UpstreamError) else None
    if exc.code is ErrorCode.UPSTREAM_UNAVAILABLE:
        return Kind.CONNECT
    if exc.code is ErrorCode.UPSTREAM_TIMEOUT:
        return Kind.TIMEOUT
    if exc.code is ErrorCode.RATE_LIMITED:
        return Kind.RATE_LIMITED
    if status in (401, 403):
        return Kind.AUTH
    if status is not None and (status in (408, 409) or status >= 500):
        return Kind.SERVER_ERROR
    if status is None and exc.code is ErrorCode.UPSTREAM_ERROR and exc.retryable:
        return Kind.STREAM_ERROR
    return Kind.REFUSED


_COOLS = frozenset(Kind) - {Kind.REFUSED}


class Health:
    """The deployments cooling down after a failure, and until when."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def cool(self, deployment: str, until: float) -> None:
        self._until[deployment] = max(until, self._until.get(deployment, 0.0))

    def until(self, deployment: str, now: float) -> float:
        """When ``deployment`` is back in rotation (``now`` or earlier if it is)."""
        until = self._until.get(deployment, 0.0)
        if until <= now:
            self._until.pop(deployment, None)
        return until

    def cooling(self, now: float) -> list[str]:
        return sorted(d for d in list(self._until) if self.until(d, now) > now)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A deployment of a model that may answer: ``weight`` 0 is a standby."""

    model: str
    deployment: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Attempt:
    model: str
    deployment: str
    number: int  # 0 for the first attempt of the reply


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


def weighted_order(candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    """``candidates`` shuffled so that each comes first with a chance proportional to its
    weight (Efraimidis and Spirakis); standbys (weight 0) after them, in their order."""
    weighted = [c for c in candidates if c.weight > 0]
    keyed = sorted(weighted, key=lambda c: rng.random() ** (1.0 / c.weight), reverse=True)
    return keyed + [c for c in candidates if c.weight <= 0]


class Route:
    """One reply's attempts. :meth:`start` its clock, ask :meth:`next` what to do, tell
    :meth:`failed` how an attempt failed (before anything was sent to clients).

    What a failure leaves (when to try again, a refused key) belongs to the deployment,
    whichever model it was tried for."""

    def __init__(
        self,
        chain: Sequence[Sequence[Candidate]],
        health: Health,
        *,
        now: float,
        budget: float,
        retries: int,
        retry_on: Sequence[str],
        retry_after_max: float,
        cooldown: float,
        rng: random.Random,
    ) -> None:
        self.candidates = _order(chain, health, now, rng)
        self.requested = chain[0][0].model
        self.budget, self.deadline = budget, now + budget
        self.last_error: GatewayError | None = None
        self._health, self._left, self._retry_on = health, retries + 1, frozenset(retry_on)
        self._retry_after_max, self._cooldown = retry_after_max, cooldown
        self._again: dict[str, float] = {}  # deployments tried: when worth trying again (inf: never)
        self._failures: dict[str, int] = {}
        self._number = 0

    def start(self, now: float) -> None:
        """The reply's producer begins: the budget counts from now."""
        self.deadline = now + self.budget

    @property
    def attempts(self) -> int:
        """How many attempts were made."""
        return self._number

    @property
    def alternatives(self) -> bool:
        """Whether more than one deployment may answer."""
        return len({c.deployment for c in self.candidates}) > 1

    def cools(self, kind: Kind) -> bool:
        """Whether a failure of ``kind`` cools its deployment down."""
        return kind in _COOLS and self._cooldown > 0

    @property
    def first(self) -> Candidate:
        """The candidate tried first: a fallback when the model's deployments all cool down."""
        return self.candidates[0]

    def next(self, now: float) -> Attempt | Wait | None:
        """The next attempt, a wait before it, or None: no attempt is left."""
        if self._left <= 0 or now >= self.deadline:
            return None
        fresh = next((c for c in self.candidates if c.deployment not in self._again), None)
        if fresh is not None:
            return self._attempt(fresh)
        soonest = min(self.candidates, key=lambda c: self._again[c.deployment])  # the first such one on ties
        at = self._again[soonest.deployment]
        if math.isinf(at) or at > self.deadline:
            return None
        return Wait(at - now) if at > now else self._attempt(soonest)

    def _attempt(self, c: Candidate) -> Attempt:
        self._left -= 1
        self._again[c.deployment] = math.inf  # until it fails in a way worth another try
        attempt = Attempt(c.model, c.deployment, self._number)
        self._number += 1
        return attempt

    def failed(self, attempt: Attempt, exc: GatewayError, now: float) -> Kind:
        """Note how ``attempt`` failed; cool its deployment down if it is to blame."""
        kind = kind_of(exc)
        self.last_error = exc
        deployment = attempt.deployment
        asked = exc.asked_wait if isinstance(exc, UpstreamError) else None
        if self.cools(kind):
            self._health.cool(deployment, now + max(self._cooldown, min(asked or 0.0, MAX_RETRY_AFTER)))
        if kind is Kind.REFUSED or (kind is not Kind.AUTH and kind.value not in self._retry_on):
            self._left = 0  # the request itself failed: no other deployment would do better
        elif kind is not Kind.AUTH:  # a refused key is not retried; the others are
            self._failures[deployment] = n = self._failures.get(deployment, 0) + 1
            wait = asked if asked is not None else min(_BACKOFF * 2 ** (n - 1), self._retry_after_max)
            self._again[deployment] = now + wait if wait <= self._retry_after_max else math.inf
        return kind


def _order(chain: Sequence[Sequence[Candidate]], health: Health, now: float, rng: random.Random) -> list[Candidate]:
    """Each model's healthy deployments (by weight), then its cooling ones (soonest back
    first); a model whose deployments all cool down comes after every other model."""
    ordered: list[Candidate] = []
    deferred: list[Candidate] = []
    back = {c: health.until(c.deployment, now) for group in chain for c in group}
    for group in chain:
        shuffled = weighted_order(group, rng)
        healthy = [c for c in shuffled if back[c] <= now]
        cooling = sorted((c for c in shuffled if back[c] > now), key=back.__getitem__)  # stable: ties keep weight order
        if healthy:
            ordered += healthy + cooling
        else:
            deferred += cooling
    return ordered + sorted(deferred, key=back.__getitem__)
