"""Limits and budgets shared by the instances of a cluster, counted in Redis.

Each count is one atomic script: a message counted in the subject's key of the
current minute, tokens reserved in the subject's and the gateway's keys of the day
(both or neither). Keys expire on their own a while after their minute or day. While
Redis cannot be reached, this instance counts alone (:class:`~gateway.quota.LocalQuota`),
as the rest of cluster mode serves alone; a charge settles where it was reserved.
"""

from __future__ import annotations

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


def _tokens_key(day: int, subject: str) -> str:
    return f"{PREFIX}tokens:{day}:{subject}"


class RedisQuota:
    def __init__(self, link: Link) -> None:
        self._link = link
        self._local = LocalQuota()
        self._message = link.redis.register_script(_MESSAGE)
        self._reserve = link.redis.register_script(_RESERVE)

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
        delta = tokens - charge.tokens
        try:
            async with self._link.using() as redis:
                async with redis.pipeline(transaction=True) as pipe:
                    for key in (_tokens_key(charge.day, charge.subject), _tokens_key(charge.day, GLOBAL)):
                        pipe.incrby(key, delta)
                    await pipe.execute()
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
