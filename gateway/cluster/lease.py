"""This instance's lease in Redis, and the end of the replies of instances that lost theirs.

Every ``lease_timeout``/3 the instance renews its lease (a key that expires unless
renewed) and looks at the others' leases. An instance whose lease expired (killed, out
of memory, powered off, cut from Redis) has its replies taken over in one atomic step
(:data:`~.scripts.TAKEOVER`: a new fencing epoch for each, so the old owner's writes are
refused from then on) and ended here: their text is what reached their log, stored as
final with ``finish_reason`` error, and every follower gets the end.

The ``cluster`` key holds a token set once: when it is gone or another, Redis lost the
cluster's data (restarted without persistence); that is logged and counted, and each
owner registers its replies again as it ships (:mod:`.shipper`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ..metrics import Metrics
from . import names, scripts
from .link import Link, LinkDown

__all__ = ["Lease"]

_log: Any = structlog.get_logger("gateway.cluster")


class Lease:
    def __init__(
        self,
        link: Link,
        lease_timeout: float,
        metrics: Metrics,
        on_taken: Callable[[list[tuple[str, int]]], Awaitable[None]],
    ) -> None:
        self._link = link
        self.timeout = lease_timeout
        self._metrics = metrics
        self._on_taken = on_taken
        self._takeover = link.redis.register_script(scripts.TAKEOVER)
        self._token: bytes | None = None

    @property
    def me(self) -> str:
        return self._link.instance_id

    async def run(self) -> None:
        """Renew and sweep until cancelled."""
        while True:
            try:
                await self.renew()
                await self.sweep()
            except LinkDown:
                pass
            except Exception:
                _log.exception("lease_failed")
            await asyncio.sleep(self.timeout / 3)

    async def renew(self) -> None:
        async with self._link.using() as redis:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set(names.lease(self.me), os.getpid(), px=round(self.timeout * 1000))
                pipe.sadd(names.INSTANCES, self.me)
                pipe.set(names.CLUSTER, secrets.token_hex(8), nx=True)
                pipe.get(names.CLUSTER)
                *_, token = await pipe.execute()
        if self._token is not None and token != self._token:
            _log.error("redis_data_lost", reason="the cluster token changed: Redis restarted without its data")
            self._metrics.redis_data_lost.inc()
        self._token = token

    async def release(self) -> None:
        """A clean stop, once this instance's replies ended: others need not wait for the lease."""
        try:
            async with self._link.using() as redis:
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.delete(names.lease(self.me))
                    pipe.srem(names.INSTANCES, self.me)
                    await pipe.execute()
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
                    await self._on_taken(pairs)
