"""This instance's connection to Redis: commands, the one pub/sub connection, and
whether Redis answers.

Any command that fails for want of Redis (refused, reset, timed out) marks the link
down: :class:`LinkDown` is raised to the caller, who falls back to this instance
alone, and a recovery task tries Redis again (0.5 s, doubling to 5 s). A command
Redis refuses (out of memory, read-only replica, no permission) raises LinkDown too,
logged, without marking the link down. When Redis
answers again the link is up and ``on_up`` runs (register the instance again, ship
what waited, repair what was followed). The pub/sub reader dispatches every message
to ``on_message``; when its connection breaks while commands still work (a killed
client), it reconnects at once and calls ``on_up`` too: messages may have been lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..metrics import Metrics
from ..tasks import TaskSet
from . import names

__all__ = ["Link", "LinkDown"]

_log: Any = structlog.get_logger("gateway.cluster")
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
RETRY_MIN, RETRY_MAX = 0.5, 5.0
READ_EVERY = 1.0  # the pub/sub reader wakes at least this often (health checks ride on it)
REFUSED_LOG_EVERY = 10.0  # seconds between two redis_refused lines


class LinkDown(Exception):
    """Redis cannot be reached now; the caller falls back to this instance alone."""


class Link:
    def __init__(
        self,
        url: str,
        *,
        password: str,
        socket_timeout: float,
        instance_id: str,
        metrics: Metrics,
        on_message: Callable[[str, bytes], None],
        on_up: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self.instance_id = instance_id
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, password=password or None, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
            socket_keepalive=True, health_check_interval=max(1, round(socket_timeout * 2)),
            retry=Retry(NoBackoff(), 0), client_name=f"gateway-{instance_id[:12]}",
        )
        self.timeout = socket_timeout
        self.up = False
        self._metrics = metrics
        self._on_message, self._on_up = on_message, on_up
        self._pubsub = self.redis.pubsub()
        self._confirmed: set[str] = set()
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._wanted: set[str] = set()
        self._tasks = TaskSet()
        self._recovering = False
        self._refused_at = -REFUSED_LOG_EVERY

    async def open(self) -> None:
        """Connect and start reading pub/sub; if Redis does not answer, keep trying in the
        background (the instance serves alone meanwhile)."""
        self._metrics.redis_up.set(0)
        self._tasks.spawn(self._read_forever(), "redis-pubsub")
        try:
            await self._connected()
        except (*_DOWN, RedisError) as exc:
            self._down(exc)

    async def close(self) -> None:
        await self._tasks.cancel()
        with contextlib.suppress(*_DOWN):
            await self._pubsub.aclose()
        with contextlib.suppress(*_DOWN):
            await self.redis.aclose()

    @contextlib.asynccontextmanager
    async def using(self) -> AsyncIterator[aioredis.Redis]:
        """The client, for commands; a failure for want of Redis marks the link down and
        raises LinkDown. While the link is down, LinkDown is raised at once."""
        if not self.up:
            raise LinkDown("Redis is down")
        try:
            yield self.redis
        except _DOWN as exc:
            self._down(exc)
            raise LinkDown(str(exc) or type(exc).__name__) from None
        except RedisError as exc:  # refused: out of memory, MISCONF, READONLY, NOPERM...
            self._refused(exc)
            raise LinkDown(str(exc) or type(exc).__name__) from None

    async def subscribe(self, channel: str) -> None:
        """Subscribe and wait until Redis confirms it (messages published from then on
        arrive)."""
        self._wanted.add(channel)
        if channel in self._confirmed:
            return
        if not self.up:
            raise LinkDown("Redis is down")
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(channel, []).append(waiter)
        try:
            async with self.using():
                await self._pubsub.subscribe(channel)
                async with asyncio.timeout(self.timeout):
                    await waiter
        except LinkDown:
            raise
        except Exception as exc:  # the pub/sub connection caught mid-reconnect: not this caller's to fail
            _log.warning("redis_subscribe_failed", error=str(exc) or type(exc).__name__)
            raise LinkDown(str(exc) or type(exc).__name__) from None
        finally:
            waiters = self._waiting.get(channel)
            if waiters is not None and waiter in waiters and not waiter.done():
                waiters.remove(waiter)

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` (soon; a subscribe meanwhile keeps it)."""
        self._wanted.discard(channel)
        if self.up and channel in self._confirmed:
            self._tasks.spawn(self._unsubscribe(channel), "redis-unsubscribe")

    async def _unsubscribe(self, channel: str) -> None:
        if channel not in self._wanted and channel in self._confirmed:
            self._confirmed.discard(channel)
            with contextlib.suppress(*_DOWN):
                await self._pubsub.unsubscribe(channel)

    async def _connected(self) -> None:
        """Check Redis answers, subscribe this instance's own channel, and mark the link up."""
        await self.redis.ping()
        await self._pubsub.subscribe(names.instance_channel(self.instance_id), *self._wanted)
        self.up = True
        self._metrics.redis_up.set(1)
        self._tasks.spawn(self._on_up(), "redis-up")

    def _refused(self, exc: RedisError) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._refused_at >= REFUSED_LOG_EVERY:
            self._refused_at = now
            _log.warning("redis_refused", error=str(exc)[:300] or type(exc).__name__)
        self._metrics.redis_refusals.inc()

    def _down(self, exc: BaseException) -> None:
        if self.up:
            _log.warning("redis_down", error=str(exc) or type(exc).__name__)
            self._metrics.redis_outages.inc()
        self.up = False
        self._metrics.redis_up.set(0)
        self._confirmed.clear()
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(LinkDown("Redis is down"))
        self._waiting.clear()
        if not self._recovering:
            self._recovering = True
            self._tasks.spawn(self._recover(), "redis-recover")

    async def _recover(self) -> None:
        delay = RETRY_MIN
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._connected()
                except (*_DOWN, RedisError) as exc:
                    if not isinstance(exc, _DOWN):
                        self._refused(exc)
                    delay = min(RETRY_MAX, delay * 2)
                    continue
                _log.info("redis_up")
                return
        finally:
            self._recovering = False

    async def _read_forever(self) -> None:
        while True:
            if not self.up or not self._pubsub.subscribed:
                await asyncio.sleep(READ_EVERY / 4)
                continue
            try:
                message = await self._pubsub.get_message(timeout=READ_EVERY)
            except _DOWN as exc:
                await self._reconnect(exc)
                continue
            except Exception:  # a protocol surprise: reconnect rather than read on, or stop reading
                _log.exception("redis_pubsub_failed")
                await self._reconnect(ConnectionError("pub/sub reader failed"))
                continue
            if message is not None:
                self._dispatch(message)

    async def _reconnect(self, exc: BaseException) -> None:
        """The pub/sub connection broke: if Redis still answers, subscribe again at once
        (and repair, through ``on_up``); else the link is down."""
        _log.warning("redis_pubsub_lost", error=str(exc) or type(exc).__name__)
        self._confirmed.clear()
        try:
            if self._pubsub.connection is not None:
                await self._pubsub.connection.disconnect()
            await self._connected()
        except (*_DOWN, RedisError) as again:
            self._down(again)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        if kind == "message":
            try:
                self._on_message(channel, message["data"])
            except Exception:
                _log.exception("redis_message_failed", channel=channel)
        elif kind == "subscribe":
            self._confirmed.add(channel)
            for waiter in self._waiting.pop(channel, ()):
                if not waiter.done():
                    waiter.set_result(None)
            if channel not in self._wanted and channel != names.instance_channel(self.instance_id):
                self._tasks.spawn(self._unsubscribe(channel), "redis-unsubscribe")  # resubscribed after a reconnect
