"""This instance as a member of a cluster: its link to Redis and what runs on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from ..config import ClusterConfig
from ..metrics import Metrics
from ..replies import ReplyRegistry
from ..runtime import RegistryLimits
from ..stores import ConversationStore, new_id
from ..tasks import TaskSet
from .bus import ClusterBus
from .lease import Lease
from .link import Link, LinkDown
from .quota import RedisQuota
from .shipper import Shipper
from .successor import Successor

__all__ = ["ClusterNode"]

_log: Any = structlog.get_logger("gateway.cluster")
TTL_MARGIN = 60.0  # seconds a streaming reply's keys outlive its longest possible life
STALE_EVERY = 300.0  # seconds between two looks for replies nobody is left to end


class ClusterNode:
    """Owns the link, the bus, the shipper and the lease, and their tasks."""

    def __init__(
        self,
        config: ClusterConfig,
        registry: ReplyRegistry,
        store: ConversationStore,
        metrics: Metrics,
        limits: Callable[[], RegistryLimits],
    ) -> None:
        self.instance_id = new_id()
        self.link = Link(
            config.redis_url, password=config.password, socket_timeout=config.socket_timeout,
            instance_id=self.instance_id, metrics=metrics, on_message=self._message, on_up=self._up,
        )
        self.bus = ClusterBus(registry, self.link, patience=config.lease_timeout)
        ttl = lambda: limits().max_reply_seconds + 2 * config.lease_timeout + TTL_MARGIN  # noqa: E731
        grace_ms = lambda: max(1000, round(limits().resume_grace * 1000))  # noqa: E731
        self.successor = Successor(self.link, store, metrics, grace_ms)
        self._store = store
        # A reply started longer ago than this cannot be live (its producer, final save included, is over).
        self._stale: Callable[[], float] = (
            lambda: limits().max_reply_seconds + limits().save_deadline + config.lease_timeout
        )
        self.lease = Lease(self.link, config.lease_timeout, metrics, owned_ttl=ttl, on_taken=self.successor.take)
        self.shipper = Shipper(self.link, ttl=ttl, grace=lambda: limits().resume_grace, token=lambda: self.lease.token)
        registry.sharing = self.shipper
        self.quota = RedisQuota(self.link)
        registry.accounting.quota = self.quota
        self.poll_every = min(5.0, max(0.5, config.lease_timeout / 5))
        self._tasks = TaskSet()

    def redis_state_now(self) -> str:
        return "up" if self.link.up else "down"

    async def open(self) -> None:
        """Connect (or keep trying in the background: the instance serves alone meanwhile)."""
        await self.link.open()
        self._tasks.spawn(self.lease.run(), "redis-lease")
        self._tasks.spawn(self._poll(), "redis-poll")
        self._tasks.spawn(self._end_stale_forever(), "stale-replies")
        _log.info("cluster_joined", instance=self.instance_id[:12], redis=self.redis_state_now())

    async def close(self, timeout: float) -> None:
        """After the drain: ship what waits (up to ``timeout`` s), give the lease back, disconnect."""
        if not await self.shipper.wait_shipped(timeout):
            _log.warning("redis_not_shipped", reason="Redis did not take the last replies' text in time")
        await self._tasks.cancel()  # no renewal may follow the release
        await self.lease.release()
        await self.successor.close()
        await self.bus.close()
        await self.shipper.close()
        await self.link.close()

    def _message(self, channel: str, data: bytes) -> None:
        self.bus.message(channel, data)

    async def _up(self) -> None:
        try:
            await self.lease.renew()
        except LinkDown:
            return
        self.shipper.recheck()
        self.bus.remote.repair_all()

    async def _end_stale_forever(self) -> None:
        """End the replies nobody is left to end: their owner died when Redis could not
        tell the others (down, or restarted empty), or its successor could not store them.
        A starting instance does not end unfinished replies as a lone gateway does: they
        may be another instance's, live."""
        while True:
            try:
                if ended := await self._store.end_stale(self._stale()):
                    _log.warning("stale_replies_ended", count=ended)
            except Exception as exc:  # the store away: next time
                _log.warning("stale_replies_not_ended", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(STALE_EVERY)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_every)
            if self.link.up:
                self.bus.remote.poll()
                self.successor.kick()
                try:
                    await self.quota.keep()
                except Exception:  # never the end of polling: the counts lapse at worst
                    _log.exception("redis_holds_not_kept")
