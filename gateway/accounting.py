"""What a subject may send and spend, checked before a reply, and what it spent,
settled after it: the limits of :mod:`.quota` turned into the errors a client gets, and
one ledger entry per reply in the store (``gateway usage`` reads them)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from .errors import ErrorCode, GatewayError, ProtocolError, UpstreamError
from .metrics import Metrics
from .providers import ChatMessage, Usage
from .quota import BudgetExceeded, Charge, LocalQuota, Quota, QuotaLimits, day_of, estimate_tokens, resets_at
from .reply import Reply
from .runtime import RegistryLimits
from .stores import ConversationStore, UsageEntry
from .tasks import TaskSet

__all__ = ["Accounting"]

_log: Any = structlog.get_logger("gateway.accounting")
REPLY_LAPSE_MARGIN = 60.0  # seconds a reply's count outlives its longest life if its process dies
LEDGER_TIMEOUT = 10.0  # seconds a ledger write may take (the store away) before it is given up
class Accounting:
    """The gateway's one :class:`~gateway.quota.Quota` (in this process, or the cluster's
    in Redis) and the ledger."""

    def __init__(self, store: ConversationStore, metrics: Metrics) -> None:
        self.quota: Quota = LocalQuota()
        self.store = store
        self.metrics = metrics
        self.clock: Callable[[], float] = time.time  # the wall clock: budgets follow UTC days
        self._ledger = TaskSet()  # ledger writes in flight

    async def admit(self, subject: str, content: str, limits: QuotaLimits, reserve: int) -> Charge | None:
        """Reserve the tokens of a reply to ``subject``'s message, then count the message;
        the error the client gets if either is refused (then neither counts)."""
        now = self.clock()
        charge = await self._reserve(subject, estimate_tokens(len(content)) + reserve, limits, now)
        if limits.messages_per_minute:
            wait = await self.quota.admit_message(subject, limits.messages_per_minute, now)
            if wait is not None:
                if charge is not None:
                    await self.quota.settle(charge, 0)
                self.metrics.limited.labels("messages").inc()
                raise GatewayError(
                    ErrorCode.RATE_LIMITED,
                    f"at most {limits.messages_per_minute} messages a minute; try again in {math.ceil(wait)} s",
                    retry_after=math.ceil(wait),
                )
        return charge

    async def hold_reply(self, reply: Reply, limits: RegistryLimits) -> None:
        """Count ``reply`` among its subject's replies streaming; ``busy`` past the limit."""
        limit = limits.replies_per_subject
        if not limit:
            return
        lapse = limits.max_reply_seconds + limits.save_deadline + REPLY_LAPSE_MARGIN
        if not await self.quota.hold("replies", reply.owner, reply.id, limit, lapse):
            self.metrics.limited.labels("replies").inc()
            raise ProtocolError(ErrorCode.BUSY, f"{limit} of your replies are streaming; wait for one to end")
        reply.held = True

    async def give_back(self, reply: Reply) -> None:
        """``reply`` never started: its tokens and its place among its subject's are free again."""
        if reply.charge is not None:
            await self.quota.settle(reply.charge, 0)
        if reply.held:
            await self.quota.release("replies", reply.owner, reply.id)

    async def _reserve(self, subject: str, tokens: int, limits: QuotaLimits, now: float) -> Charge | None:
        if not (limits.tokens_per_day or limits.global_tokens_per_day):
            return None
        try:
            return await self.quota.reserve(subject, tokens, limits, now)
        except BudgetExceeded as exc:
            self.metrics.limited.labels(f"budget_{exc.scope}").inc()
            whose = "your account's" if exc.scope == "subject" else "this gateway's"
            raise GatewayError(
                ErrorCode.BUDGET_EXCEEDED, f"{whose} daily token budget is spent; it starts again at 00:00 UTC",
                retryable=False, resets_at=exc.resets_at,
            ) from None

    async def budget(self, subject: str, limits: QuotaLimits) -> dict[str, Any] | None:
        """What ``ready`` tells of the budgets, if any is on: the tokens ``subject`` may
        still use today (the least of what its budget and the gateway's leave), and when
        they start again."""
        if not (limits.tokens_per_day or limits.global_tokens_per_day):
            return None
        now = self.clock()
        mine, everyone = await self.quota.spent(subject, now)
        left = [limit - used for limit, used in ((limits.tokens_per_day, mine), (limits.global_tokens_per_day, everyone))
                if limit]
        return {"remaining": max(0, min(left)), "resets_at": resets_at(day_of(now))}

    async def settle(self, reply: Reply, context: Sequence[ChatMessage]) -> None:
        """``reply`` ended: charge what it used (the provider's usage; else an estimate of
        its context and text, never zero; nothing if the provider never took the request),
        then write its ledger entry in the background (a store that is away must not hold
        the reply's end)."""
        prompt, completion, estimated = _used(reply, context)
        if estimated:  # what reply.done tells: the provider's count never came (or said nothing)
            reply.usage = Usage(prompt, completion, estimated=True)
        if reply.held:
            await self.quota.release("replies", reply.owner, reply.id)
        if reply.charge is not None:
            await self.quota.settle(reply.charge, prompt + completion)
        self.metrics.charged.labels("estimated" if estimated else "reported").inc(prompt + completion)
        entry = UsageEntry(
            reply.owner, reply.conversation_id, reply.id, reply.model, prompt, completion, estimated,
            reply.created_at,
        )
        self._ledger.spawn(self._record(entry), f"ledger-{reply.id}")

    async def _record(self, entry: UsageEntry) -> None:
        try:
            async with asyncio.timeout(LEDGER_TIMEOUT):
                await self.store.record_usage(entry)
        except Exception as exc:  # the store away: the budget was charged, the ledger misses this row
            _log.warning("usage_not_recorded", reply_id=entry.reply_id, error=str(exc) or type(exc).__name__)

    async def close(self, timeout: float = LEDGER_TIMEOUT) -> None:
        """Let the ledger writes in flight finish (up to ``timeout``), then stop them."""
        await self._ledger.wait(timeout)


def _used(reply: Reply, context: Sequence[ChatMessage]) -> tuple[int, int, bool]:
    """Prompt and completion tokens of ``reply``, and whether they are estimated."""
    usage = reply.usage
    if usage is not None and usage.prompt_tokens + usage.completion_tokens:
        return usage.prompt_tokens, usage.completion_tokens, False
    chars = reply.log.chars - reply.seeded_chars  # a continuation's earlier text was counted before
    if not chars and _never_taken(reply):
        return 0, 0, False
    prompt = estimate_tokens(sum(len(m["content"]) for m in context))
    return prompt, estimate_tokens(chars) if chars else 0, True


def _never_taken(reply: Reply) -> bool:
    """Whether the provider never took the request: it could not be reached, or it
    answered with an error status, or the reply was stopped before it was sent."""
    error = reply.error
    if not reply.requested:
        return True
    return isinstance(error, UpstreamError) and (error.status is not None or error.code is ErrorCode.UPSTREAM_UNAVAILABLE)
