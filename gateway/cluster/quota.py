"""Limits and budgets shared by the instances of a cluster, counted in Redis.

Each count is one atomic script: a message counted in the subject's key of the
current minute, tokens reserved in the subject's and the gateway's keys of the day
(both or neither). Keys expire on their own a while after their minute or day. While
Redis cannot be reached, this instance counts alone (:class:`~gateway.quota.LocalQuota`),
as the rest of cluster mode serves alone; a charge settles where it was reserved.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..quota import DAY, GLOBAL, MINUTE, BudgetExceeded, Charge, LocalQuota, QuotaLimits, day_of, resets_at
from .link import Link, LinkDown
from .names import PREFIX

__all__ = ["RedisQuota"]

# KEYS: the subject's key of the minute. ARGV: limit, ttl (s). 1: refused (nothing counted).
_MESSAGE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then return 1 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""

# KEYS: the subject's and the gateway's keys of the day. ARGV: tokens, the subject's
# limit, the gateway's limit (0: none), ttl (s). 1 or 2: which budget refused (nothing reserved).
_RESERVE = """
local n = tonumber(ARGV[1])
for i = 1, 2 do
  local limit = tonumber(ARGV[i + 1])
  if limit > 0 and tonumber(redis.call('GET', KEYS[i]) or '0') + n > limit then return i end
end
for i = 1, 2 do
  redis.call('INCRBY', KEYS[i], n)
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return 0
"""


# KEYS: the subject's set of held members of a kind (scores: when each lapses).
# ARGV: member, limit, now (s), lapse (s). 1: refused (nothing held).
_HOLD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 1
end
redis.call('ZADD', KEYS[1], ARGV[3] + ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(ARGV[4]))
return 0
"""
# KEYS: the subject's and the gateway's keys of the reply's day. ARGV: the correction.
# Only keys that still exist: one lost (Redis restarted empty) is not recreated without
# its expiry, nor made negative.
_SETTLE = """
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('INCRBY', KEYS[i], ARGV[1]) < 0 then
    redis.call('SET', KEYS[i], 0, 'KEEPTTL')  -- a key made anew after a restart: never below 0
  end
end
return 0
"""
KEEP_EVERY = 0.3  # of a hold's ttl: how often this instance renews what it holds


def _held_key(kind: str, subject: str) -> str:
    return f"{PREFIX}held:{kind}:{subject}"


def _tokens_key(day: int, subject: str) -> str:
    return f"{PREFIX}tokens:{day}:{subject}"


class RedisQuota:
    def __init__(self, link: Link) -> None:
        self._link = link
        self._local = LocalQuota()
        self._message = link.redis.register_script(_MESSAGE)
        self._reserve = link.redis.register_script(_RESERVE)
        self._hold = link.redis.register_script(_HOLD)
        self._settle = link.redis.register_script(_SETTLE)
        self._held: dict[tuple[str, str, str], float] = {}  # (kind, subject, member) -> ttl, held in Redis
        self._stale: set[tuple[str, str, str]] = set()  # released while Redis was away: to remove there
        self._kept_at = 0.0  # monotonic

    async def admit_message(self, subject: str, limit: int, now: float) -> float | None:
        minute = int(now // MINUTE)
        try:
            async with self._link.using():
                refused = await self._message(keys=[f"{PREFIX}rate:{minute}:{subject}"], args=[limit, 2 * int(MINUTE)])
        except LinkDown:
            return await self._local.admit_message(subject, limit, now)
        return (minute + 1) * MINUTE - now if refused else None

    async def reserve(self, subject: str, tokens: int, limits: QuotaLimits, now: float) -> Charge:
        day = day_of(now)
        keys = [_tokens_key(day, subject), _tokens_key(day, GLOBAL)]
        args: list[Any] = [tokens, limits.tokens_per_day, limits.global_tokens_per_day, int(2 * DAY)]
        try:
            async with self._link.using():
                refused = await self._reserve(keys=keys, args=args)
        except LinkDown:
            return await self._local.reserve(subject, tokens, limits, now)
        if refused:
            raise BudgetExceeded("subject" if refused == 1 else "global", resets_at(day))
        return Charge(subject, day, tokens, shared=True)

    async def settle(self, charge: Charge, tokens: int) -> None:
        if not charge.shared:
            return await self._local.settle(charge, tokens)
        keys = [_tokens_key(charge.day, charge.subject), _tokens_key(charge.day, GLOBAL)]
        try:
            async with self._link.using():
                await self._settle(keys=keys, args=[tokens - charge.tokens])
        except LinkDown:
            pass  # the reservation stands: an estimate, never nothing

    async def spent(self, subject: str, now: float) -> tuple[int, int]:
        day = day_of(now)
        try:
            async with self._link.using() as redis:
                mine, everyone = await redis.mget(_tokens_key(day, subject), _tokens_key(day, GLOBAL))
        except LinkDown:
            return await self._local.spent(subject, now)
        return int(mine or 0), int(everyone or 0)

    async def hold(self, kind: str, subject: str, member: str, limit: int, ttl: float) -> bool:
        try:
            async with self._link.using():
                refused = await self._hold(keys=[_held_key(kind, subject)], args=[member, limit, time.time(), ttl])
        except LinkDown:
            self._stale.add((kind, subject, member))  # the script may have run before the answer was lost
            return await self._local.hold(kind, subject, member, limit, ttl)
        if refused:
            return False
        self._held[(kind, subject, member)] = ttl
        return True

    async def release(self, kind: str, subject: str, member: str) -> None:
        if self._held.pop((kind, subject, member), None) is None:
            return await self._local.release(kind, subject, member)
        try:
            async with self._link.using() as redis:
                await redis.zrem(_held_key(kind, subject), member)
        except LinkDown:
            self._stale.add((kind, subject, member))  # removed at the next keep(), once Redis is back

    async def keep(self) -> None:
        """Remove from Redis what was released while it was away, and renew what this
        instance holds before it lapses (called often: it renews when a third of the
        shortest ttl has passed). A dead instance renews nothing."""
        if self._stale:
            await self._forget_stale()
        if not self._held:
            return
        now = time.monotonic()
        if now - self._kept_at < KEEP_EVERY * min(self._held.values()):
            return
        self._kept_at = now
        until = time.time()
        try:
            async with self._link.using() as redis:
                async with redis.pipeline(transaction=False) as pipe:
                    for (kind, subject, member), ttl in list(self._held.items()):
                        pipe.zadd(_held_key(kind, subject), {member: until + ttl}, xx=True)
                        pipe.expire(_held_key(kind, subject), math.ceil(ttl))
                    await pipe.execute()
        except LinkDown:
            pass

    async def _forget_stale(self) -> None:
        stale, self._stale = self._stale, set()
        stale -= self._held.keys()  # held again since (a retry of the same member): keep it
        try:
            async with self._link.using() as redis:
                async with redis.pipeline(transaction=False) as pipe:
                    for kind, subject, member in stale:
                        pipe.zrem(_held_key(kind, subject), member)
                    await pipe.execute()
        except LinkDown:
            self._stale |= stale
