"""Per-subject limits and budgets, without sockets: the counting rules every Quota
follows (LocalQuota here; the cluster's Redis one in test_limits_e2e.py), the ledger
table, and the reply's reservation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.accounting import _used
from gateway.catalog import Catalog
from gateway.errors import ErrorCode, UpstreamError
from gateway.providers import Usage
from gateway.providers.demo import DemoProvider
from gateway.quota import DAY, BudgetExceeded, LocalQuota, QuotaLimits, estimate_tokens, reply_reserve
from gateway.reply import Reply
from gateway.routing import Health
from gateway.stores import UsageTotal
from gateway.usage_report import format_table

MIDNIGHT = 20_833 * DAY  # a UTC midnight in 2027


async def test_messages_are_counted_per_subject_and_calendar_minute() -> None:
    q = LocalQuota()
    start = MIDNIGHT + 600.0  # 00:10:00
    assert [await q.admit_message("token:a", 3, start + i) for i in range(3)] == [None, None, None]
    assert await q.admit_message("token:a", 3, start + 10) == pytest.approx(50.0)  # the rest of the minute
    assert await q.admit_message("token:b", 3, start + 10) is None  # another subject counts apart
    assert await q.admit_message("token:a", 3, start + 60) is None  # a new minute
    assert await q.admit_message("token:a", 3, start + 61) is None


async def test_a_refused_message_is_not_counted() -> None:
    q = LocalQuota()
    for _ in range(2):
        await q.admit_message("s", 2, MIDNIGHT)
    for _ in range(5):
        assert await q.admit_message("s", 2, MIDNIGHT + 1) is not None
    assert await q.admit_message("s", 3, MIDNIGHT + 2) is None  # a higher limit (a reload) lets one more in


async def test_budgets_reserve_settle_and_refuse() -> None:
    q = LocalQuota()
    limits = QuotaLimits(tokens_per_day=1000, global_tokens_per_day=1500)
    first = await q.reserve("token:a", 600, limits, MIDNIGHT + 1)
    with pytest.raises(BudgetExceeded) as refused:
        await q.reserve("token:a", 500, limits, MIDNIGHT + 2)  # 600 + 500 > 1000
    assert refused.value.scope == "subject" and refused.value.resets_at == MIDNIGHT + DAY
    await q.settle(first, 100)  # it used less than reserved
    assert await q.spent("token:a", MIDNIGHT + 3) == (100, 100)
    second = await q.reserve("token:a", 500, limits, MIDNIGHT + 4)
    await q.settle(second, 700)  # more than reserved: charged what it used
    assert await q.spent("token:a", MIDNIGHT + 5) == (800, 800)
    await q.reserve("token:b", 700, limits, MIDNIGHT + 6)  # 800 + 700 = 1500: the gateway's cap, just
    with pytest.raises(BudgetExceeded) as capped:
        await q.reserve("token:c", 1, limits, MIDNIGHT + 7)
    assert capped.value.scope == "global"
    assert await q.spent("token:c", MIDNIGHT + 8) == (0, 1500)  # the refused reserved nothing


async def test_budgets_start_again_each_utc_day() -> None:
    q = LocalQuota()
    limits = QuotaLimits(tokens_per_day=100)
    charge = await q.reserve("s", 100, limits, MIDNIGHT + DAY - 1)
    with pytest.raises(BudgetExceeded):
        await q.reserve("s", 1, limits, MIDNIGHT + DAY - 0.5)
    assert (await q.reserve("s", 100, limits, MIDNIGHT + DAY)).day == charge.day + 1
    await q.settle(charge, 40)  # yesterday's reply ends today: yesterday's count moves
    assert await q.spent("s", MIDNIGHT + DAY + 1) == (100, 100)


async def test_limits_of_zero_are_off() -> None:
    q = LocalQuota()
    assert await q.admit_message("s", 0, MIDNIGHT) is None
    await q.reserve("s", 10**12, QuotaLimits(), MIDNIGHT)


def test_a_reply_reserves_its_max_tokens_or_a_default_and_estimates_are_never_zero() -> None:
    assert reply_reserve({"max_tokens": 300}) == 300
    assert reply_reserve({"max_completion_tokens": 80, "temperature": 0.2}) == 80
    assert reply_reserve({}) == reply_reserve({"max_tokens": True}) == reply_reserve({"max_tokens": -1}) == 1024
    assert [estimate_tokens(n) for n in (0, 1, 4, 5, 400)] == [1, 1, 1, 2, 100]


def test_the_usage_table() -> None:
    table = format_table([
        UsageTotal("token:alice", "gpt-4o-mini", 12, 3400, 12000, 1),
        UsageTotal("user:bob", "qwen-plus", 3, 150, 2500, 0),
    ])
    lines = table.splitlines()
    assert lines[0].split() == ["subject", "model", "replies", "prompt", "completion", "total", "estimated"]
    assert lines[1].split() == ["token:alice", "gpt-4o-mini", "12", "3,400", "12,000", "15,400", "1"]
    assert lines[3].split() == ["all", "15", "3,550", "14,500", "18,050", "1"]
    assert len({len(line) for line in lines[:3]}) == 1  # aligned


def _reply(*, requested: bool, text: str = "", error: Any = None, usage: Usage | None = None) -> Reply:
    catalog = Catalog.single(DemoProvider("demo", 0))
    route = catalog.route(catalog.default, Health(), now=0.0, budget=60.0, rng=random.Random(0))
    reply = Reply("c1", "u1", 10_000, catalog, route, "token:alice")
    reply.requested = requested
    if text:
        reply.log.append(text)
    reply.error, reply.usage = error, usage
    return reply


CONTEXT = [{"role": "user", "content": "x" * 400}]


@pytest.mark.parametrize(
    ("reply", "charged"),
    [
        (lambda: _reply(requested=True, usage=Usage(30, 12)), (30, 12, False)),  # what the provider said
        (lambda: _reply(requested=True, text="y" * 40), (100, 10, True)),  # cancelled mid-way: estimated
        (lambda: _reply(requested=True), (100, 0, True)),  # cut before any text: the prompt went out
        (lambda: _reply(requested=False), (0, 0, False)),  # stopped before it was sent
        (lambda: _reply(requested=True, error=UpstreamError(ErrorCode.UPSTREAM_ERROR, "bad", status=400)), (0, 0, False)),
        (lambda: _reply(requested=True, error=UpstreamError(ErrorCode.UPSTREAM_UNAVAILABLE, "down")), (0, 0, False)),
        (lambda: _reply(requested=True, error=UpstreamError(ErrorCode.UPSTREAM_TIMEOUT, "slow")), (100, 0, True)),
    ],
)
def test_what_a_reply_is_charged(reply: Any, charged: tuple[int, int, bool]) -> None:
    assert _used(reply(), CONTEXT) == charged
