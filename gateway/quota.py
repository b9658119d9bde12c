"""How much each subject may send and spend: messages per minute, and tokens per day,
for the subject and for the whole gateway (pure).

A :class:`Quota` counts; :class:`LocalQuota` counts in this process, the cluster's
(:mod:`.cluster.quota`) in Redis, so that several instances share one count. Both
follow the same rules:

* Messages: a fixed window per calendar minute (UTC). Past the limit,
  ``admit_message`` answers how many seconds remain in the minute.
* Tokens: one counter per subject and one for the gateway per UTC day. A reply
  *reserves* an estimate before its upstream request (refused with
  :class:`BudgetExceeded` if either counter would pass its limit), and *settles* at its
  end to what the provider reported, or to an estimate of what was streamed: the
  counter moves by the difference. A reply that never settles (its process died) stays
  charged its estimate, never zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "DAY",
    "GLOBAL",
    "MINUTE",
    "BudgetExceeded",
    "Charge",
    "LocalQuota",
    "Quota",
    "QuotaLimits",
    "day_of",
    "estimate_tokens",
    "reply_reserve",
    "resets_at",
]

DAY = 86_400.0
MINUTE = 60.0
GLOBAL = "*"  # the gateway's own counter: not a subject (subjects have a mode prefix)


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """0 is off."""

    messages_per_minute: int = 0
    tokens_per_day: int = 0
    global_tokens_per_day: int = 0


@dataclass(frozen=True, slots=True)
class Charge:
    """Tokens reserved for one reply on ``day``, to settle at its end."""

    subject: str
    day: int
    tokens: int
    shared: bool = False  # reserved in Redis (cluster mode), not in this process


class BudgetExceeded(Exception):
    """A reply would pass a daily token budget: ``scope`` ``subject`` or ``global``;
    the budget starts again at ``resets_at`` (epoch seconds)."""

    def __init__(self, scope: str, resets_at: float) -> None:
        super().__init__(f"the {scope} daily token budget is spent")
        self.scope = scope
        self.resets_at = resets_at


def day_of(now: float) -> int:
    return int(now // DAY)


def resets_at(day: int) -> float:
    return (day + 1) * DAY


DEFAULT_REPLY_RESERVE = 1024  # tokens reserved for a reply when the provider's max_tokens is not set


def reply_reserve(params: Mapping[str, Any]) -> int:
    """Tokens to reserve for a reply before it starts: its ``max_tokens`` if the
    provider's params cap it, else :data:`DEFAULT_REPLY_RESERVE`."""
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_REPLY_RESERVE


def estimate_tokens(chars: int) -> int:
    """Tokens in ``chars`` characters of text, by the usual rule of thumb (4 per token),
    at least 1: what is charged when the provider reports no usage."""
    return max(1, math.ceil(chars / 4))


class Quota(Protocol):
    async def admit_message(self, subject: str, limit: int, now: float) -> float | None:
        """Count one message of ``subject``; None if it is within ``limit`` this minute,
        else the seconds until the next minute (nothing counted)."""

    async def reserve(self, subject: str, tokens: int, limits: QuotaLimits, now: float) -> Charge:
        """Reserve ``tokens`` for a reply of ``subject`` today; BudgetExceeded if that
        would pass the subject's or the gateway's budget (nothing reserved)."""

    async def settle(self, charge: Charge, tokens: int) -> None:
        """The reply of ``charge`` used ``tokens``: correct both counters of its day."""

    async def spent(self, subject: str, now: float) -> tuple[int, int]:
        """Tokens counted today for ``subject`` and for the gateway."""

    async def hold(self, kind: str, subject: str, member: str, limit: int, ttl: float) -> bool:
        """Count ``member`` (a connection, a reply) among ``subject``'s ``kind``; False,
        and nothing counted, if the subject holds ``limit`` already. A count whose holder
        vanished without :meth:`release` (its process died) lapses after ``ttl`` seconds
        unless the process that holds it keeps it."""

    async def release(self, kind: str, subject: str, member: str) -> None: ...


class LocalQuota:
    """Counts in this process: right for one instance, lost at a restart."""

    def __init__(self) -> None:
        self._minute = 0  # the minute the counts are of
        self._minutes: dict[str, int] = {}  # subject -> messages this minute
        self._tokens: dict[tuple[str, int], int] = {}  # (subject or GLOBAL, day) -> tokens
        self._held: dict[tuple[str, str], set[str]] = {}  # (kind, subject) -> members

    async def admit_message(self, subject: str, limit: int, now: float) -> float | None:
        minute = int(now // MINUTE)
        if minute != self._minute:  # a new minute: the counts of the last are of no use
            self._minute, self._minutes = minute, {}
        count = self._minutes.get(subject, 0)
        if limit and count >= limit:
            return (minute + 1) * MINUTE - now
        self._minutes[subject] = count + 1
        return None

    async def reserve(self, subject: str, tokens: int, limits: QuotaLimits, now: float) -> Charge:
        day = day_of(now)
        self._forget_before(day)
        for scope, key, limit in (("subject", subject, limits.tokens_per_day),
                                  ("global", GLOBAL, limits.global_tokens_per_day)):
            if limit and self._tokens.get((key, day), 0) + tokens > limit:
                raise BudgetExceeded(scope, resets_at(day))
        for key in (subject, GLOBAL):
            self._tokens[(key, day)] = self._tokens.get((key, day), 0) + tokens
        return Charge(subject, day, tokens)

    async def settle(self, charge: Charge, tokens: int) -> None:
        for key in (charge.subject, GLOBAL):
            if (key, charge.day) in self._tokens:
                self._tokens[(key, charge.day)] += tokens - charge.tokens

    async def spent(self, subject: str, now: float) -> tuple[int, int]:
        day = day_of(now)
        return self._tokens.get((subject, day), 0), self._tokens.get((GLOBAL, day), 0)

    async def hold(self, kind: str, subject: str, member: str, limit: int, ttl: float) -> bool:
        held = self._held.get((kind, subject), set())
        if member not in held and len(held) >= limit:
            return False
        self._held.setdefault((kind, subject), held).add(member)
        return True

    async def release(self, kind: str, subject: str, member: str) -> None:
        held = self._held.get((kind, subject))
        if held is not None:
            held.discard(member)
            if not held:
                del self._held[(kind, subject)]

    def _forget_before(self, day: int) -> None:
        if any(d < day - 1 for _, d in self._tokens):
            self._tokens = {k: v for k, v in self._tokens.items() if k[1] >= day - 1}
