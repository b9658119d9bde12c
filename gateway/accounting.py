"""What a subject may send and spend, checked before a reply, and what it spent,
settled after it: the limits of :mod:`.quota` turned into the errors a client gets, and
one ledger entry per reply in the store (``gateway usage`` reads them)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from .errors import ErrorCode, GatewayError
from .metrics import Metrics
from .providers import ChatMessage
from .quota import BudgetExceeded, Charge, LocalQuota, Quota, QuotaLimits, day_of, estimate_tokens, resets_at
from .reply import Reply
from .stores import ConversationStore, UsageEntry

__all__ = ["Accounting"]

_log: Any = structlog.get_logger("gateway.accounting")
class Accounting:
    """The gateway's one :class:`~gateway.quota.Quota` (in this process, or the cluster's
    in Redis) and the ledger."""

    def __init__(self, store: ConversationStore, metrics: Metrics) -> None:
        self.quota: Quota = LocalQuota()
        self.store = store
        self.metrics = metrics
        self.clock: Callable[[], float] = time.time  # the wall clock: budgets follow UTC days

    async def admit(self, subject: str, content: str, limits: QuotaLimits, reserve: int) -> Charge | None:
        """Count a message of ``subject`` and reserve the tokens of its reply; the error the
        client gets if either is refused (nothing counted then)."""
        now = self.clock()
        if limits.messages_per_minute:
            wait = await self.quota.admit_message(subject, limits.messages_per_minute, now)
            if wait is not None:
                self.metrics.limited.labels("messages").inc()
                raise GatewayError(
                    ErrorCode.RATE_LIMITED,
                    f"at most {limits.messages_per_minute} messages a minute; try again in {math.ceil(wait)} s",
                    retry_after=math.ceil(wait),
                )
        if not (limits.tokens_per_day or limits.global_tokens_per_day):
            return None
        try:
            return await self.quota.reserve(subject, estimate_tokens(len(content)) + reserve, limits, now)
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
        """``reply`` ended: charge what it used (the provider's usage, else an estimate of
        its context and text, never zero) and write its ledger entry."""
        usage = reply.usage
        estimated = usage is None or usage.prompt_tokens + usage.completion_tokens == 0
        if estimated:
            prompt = estimate_tokens(sum(len(m["content"]) for m in context))
            completion = estimate_tokens(reply.log.chars) if reply.log.chars else 0
        else:
            assert usage is not None
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        if reply.charge is not None:
            await self.quota.settle(reply.charge, prompt + completion)
        self.metrics.charged.labels("estimated" if estimated else "reported").inc(prompt + completion)
        await self.store.record_usage(UsageEntry(
            reply.owner, reply.conversation_id, reply.id, reply.provider.model, prompt, completion, estimated,
            reply.created_at,
        ))
