"""This instance's lease in Redis, and the takeover of the replies of instances that lost theirs.

Every ``lease_timeout``/3 the instance renews its lease (a key that expires unless
renewed) and looks at the others' leases. An instance whose lease expired (killed, out
of memory, powered off, cut from Redis) has its replies taken over in one atomic step
(:data:`~.scripts.TAKEOVER`: a new fencing epoch for each, so the old owner's writes are
refused from then on); the :class:`~.successor.Successor` then ends them. An instance
sweeps only once it has held its own lease without a break for a whole
``lease_timeout``: after a fault that made every lease lapse (Redis unreachable for
all, every instance paused), the others must first have had the time to renew theirs.

An instance that finds its own lease lapsed (it could not renew in time: a long pause,
Redis cut off) logs it; any of its replies another instance took over meanwhile is
refused at its next write and stopped there (fenced, :mod:`.shipper`).

The ``cluster`` key holds a token set once: when it is gone or another, Redis lost the
cluster's data (restarted without persistence); that is logged and counted, and each
owner registers its replies again as it ships (:mod:`.shipper`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import structlog

from ..metrics import Metrics
from . import names, scripts
from .link import Link, LinkDown

__all__ = ["Lease"]

_log: Any = structlog.get_logger("gateway.cluster")

# Drop this instance from the cluster at a clean stop: its lease goes at once; the
# instance itself only if it owns no reply any more (else others take those over now).
# KEYS: instance:<me>, owned:<me>, instances. ARGV: me.
RELEASE = """
redis.call('DEL', KEYS[1])
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return 1
"""


class Lease:
    def __init__(
        self,
        link: Link,
        lease_timeout: float,
        metrics: Metrics,
        *,
        owned_ttl: Callable[[], float],
        on_taken: Callable[[list[tuple[str, int]]], None],
    ) -> None:
        self._link = link
        self.timeout = lease_timeout
        self._metrics = metrics
        self._owned_ttl = owned_ttl
        self._on_taken = on_taken
        self._takeover = link.redis.register_script(scripts.TAKEOVER)
        self._release = link.redis.register_script(RELEASE)
        self.token: bytes | None = None  # the cluster's token as last seen
        self._renewed = False
        self._held_since = 0.0  # since when the lease was held without a break (monotonic)

    @property
    def me(self) -> str:
        return self._link.instance_id

    async def run(self) -> None:
        """Renew and sweep until cancelled."""
        while True:
            try:
                await self.renew()
                if time.monotonic() - self._held_since >= self.timeout:
                    await self.sweep()
            except LinkDown:
                pass
            except Exception:
                _log.exception("lease_failed")
            await asyncio.sleep(self.timeout / 3)

    async def renew(self) -> None:
        async with self._link.using() as redis:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set(names.lease(self.me), os.getpid(), px=round(self.timeout * 1000), get=True)
                pipe.sadd(names.INSTANCES, self.me)
                pipe.pexpire(names.owned(self.me), round(self._owned_ttl() * 1000))
                pipe.set(names.CLUSTER, secrets.token_hex(8), nx=True)
                pipe.get(names.CLUSTER)
                previous, *_, token = await pipe.execute()
        lost_data = self.token is not None and token != self.token
        if lost_data:
            _log.error("redis_data_lost", reason="the cluster token changed: Redis restarted without its data")
            self._metrics.redis_data_lost.inc()
        elif self._renewed and previous is None:
            _log.warning("instance_lease_lapsed", reason="not renewed in time: its replies may have been taken over")
        if previous is None:
            self._held_since = time.monotonic()
        self.token, self._renewed = token, True

    async def release(self) -> None:
        """A clean stop, once this instance's replies ended."""
        try:
            async with self._link.using():
                await self._release(keys=[names.lease(self.me), names.owned(self.me), names.INSTANCES], args=[self.me])
        except LinkDown:
            pass

    async def sweep(self) -> None:
        """Take over the replies of every instance whose lease expired."""
        async with self._link.using() as redis:
            members: Any = await redis.smembers(names.INSTANCES)
            others = [i.decode() for i in members if i.decode() != self.me]
            for other in others:
                if await redis.exists(names.lease(other)):
                    continue
                taken = await self._takeover(
                    keys=[names.INSTANCES, names.owned(other), names.owned(self.me), names.lease(other)],
                    args=[other, self.me],
                )
                pairs = [(taken[i].decode(), int(taken[i + 1])) for i in range(0, len(taken), 2)]
                _log.warning("instance_lease_expired", instance=other[:12], replies=len(pairs))
                if pairs:
                    self._on_taken(pairs)
