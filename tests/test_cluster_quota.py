"""The cluster's limits in a real Redis (RedisQuota over the gateway's Link): budgets and
holds shared by two instances, and a hold released while Redis was unreachable (paused,
its data kept) taken off when it answers again."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest
from redisserver import REDIS_PASSWORD, RedisServer

from gateway.cluster.link import Link
from gateway.cluster.quota import RedisQuota
from gateway.metrics import Metrics
from gateway.quota import DAY, BudgetExceeded, QuotaLimits
from gateway.stores import new_id

NOON = 20_833 * DAY + 12 * 3600.0


class Instance:
    def __init__(self, server: RedisServer) -> None:
        self.back = asyncio.Event()  # set each time the link comes (back) up

        async def up() -> None:
            self.back.set()

        self.link = Link(
            server.url, password=REDIS_PASSWORD, socket_timeout=0.5, instance_id=new_id(), metrics=Metrics(),
            on_message=lambda channel, data: None, on_up=up,
        )
        self.quota = RedisQuota(self.link)


@pytest.fixture
async def two(redis_server: RedisServer, redis_env: dict[str, str]) -> AsyncIterator[tuple[Instance, Instance]]:
    pair = (Instance(redis_server), Instance(redis_server))
    for instance in pair:
        await instance.link.open()
    yield pair
    for instance in pair:
        await instance.link.close()


async def test_budgets_and_holds_are_shared(two: tuple[Instance, Instance]) -> None:
    a, b = two
    limits = QuotaLimits(tokens_per_day=100, global_tokens_per_day=150)
    charge = await a.quota.reserve("token:alice", 90, limits, NOON)
    with pytest.raises(BudgetExceeded):
        await b.quota.reserve("token:alice", 20, limits, NOON)
    await a.quota.settle(charge, 30)
    assert await b.quota.spent("token:alice", NOON) == (30, 30)
    await b.quota.reserve("token:alice", 20, limits, NOON)
    assert await a.quota.hold("replies", "token:alice", "r1", 1, 600)
    assert not await b.quota.hold("replies", "token:alice", "r2", 1, 600)
    await a.quota.release("replies", "token:alice", "r1")
    assert await b.quota.hold("replies", "token:alice", "r2", 1, 600)


async def test_a_hold_released_while_redis_was_away_is_taken_off_when_it_is_back(
    two: tuple[Instance, Instance], redis_server: RedisServer
) -> None:
    a, b = two
    assert await a.quota.hold("replies", "token:alice", "r1", 1, 600)
    pid = redis_server.pid
    assert pid is not None
    a.back.clear()
    os.kill(pid, signal.SIGSTOP)  # unreachable, its data kept
    try:
        await a.quota.spent("token:alice", NOON)  # times out: the link is down
        assert not a.link.up
        await a.quota.release("replies", "token:alice", "r1")  # never reaches Redis: r1 still counted there
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.wait_for(a.back.wait(), 10)  # the link is up again
    assert not await b.quota.hold("replies", "token:alice", "r2", 1, 600)  # still counted there
    await a.quota.keep()
    assert await b.quota.hold("replies", "token:alice", "r2", 1, 600)
