"""Telling systemd the gateway is alive and what it does, waiting for the store at
start, handing memory back, and deleting conversations past their retention.

Every ``WATCHDOG_USEC``/2 (at most every 5 s) the supervisor sends ``WATCHDOG=1``
from the event loop, so a stuck loop gets the process restarted; every 5 s it
sends ``STATUS=``; for a minute after slow clients were cut off it returns the
memory their output held to the system (:mod:`.heap`), every 15 s at most.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from . import heap
from .stores import ConversationStore, OpenReport, StoreUnavailable
from .systemd import Notifier, watchdog_interval

__all__ = ["PRUNE_EVERY", "STATUS_EVERY", "Supervisor", "open_store", "prune_forever", "status_line"]

_log: Any = structlog.get_logger("gateway.server")
PRUNE_EVERY = 3600.0
STORE_RETRY_MAX = 30.0  # seconds between attempts to reach the store, at most
STATUS_EVERY = 5.0
TRIM_FOR = 60.0
TRIM_EVERY = 15.0


def status_line(state: str, *, connections: int, replies: int, reload_error: str) -> str:
    """What ``systemctl status`` shows (``STATUS=``)."""
    status = f"{state}: {connections} connections, {replies} replies in flight"
    if reload_error:
        status += f"; last reload failed: {reload_error}"[:200]
    return status


class Supervisor:
    """The gateway's one periodic task; ``status`` and ``cut_offs`` are read at each tick."""

    def __init__(
        self, notifier: Notifier, env: Mapping[str, str], status: Callable[[], str], cut_offs: Callable[[], int]
    ) -> None:
        self._notifier = notifier
        self._watchdog = watchdog_interval(env)
        self._status, self._cut_offs = status, cut_offs
        self._seen = 0
        self._trim_until = self._trimmed = 0.0

    async def run(self) -> None:
        interval = self._watchdog
        period = min(interval, STATUS_EVERY) if interval else STATUS_EVERY
        ticks_per_status = max(1, round(STATUS_EVERY / period))
        tick = 0
        while True:
            lines = ["WATCHDOG=1"] if interval else []
            if tick % ticks_per_status == 0:
                lines.append(f"STATUS={self._status()}")
                await self._trim_after_cut_offs()
            self._notifier.notify(*lines)
            tick += 1
            await asyncio.sleep(period)

    async def _trim_after_cut_offs(self) -> None:
        cut_offs, now = self._cut_offs(), asyncio.get_running_loop().time()
        if cut_offs != self._seen:
            self._seen, self._trim_until = cut_offs, now + TRIM_FOR
        if now < self._trim_until and now - self._trimmed >= TRIM_EVERY:
            await heap.trim()
            self._trimmed = now


async def prune_forever(store: ConversationStore, older_than: float) -> None:
    """Delete conversations idle for ``older_than`` seconds, now and every hour."""
    while True:
        try:
            deleted = await store.prune(older_than)
            _log.info("conversations_pruned", deleted=deleted, older_than_s=older_than)
        except Exception:
            _log.exception("prune_failed")
        await asyncio.sleep(PRUNE_EVERY)


async def open_store(
    store: ConversationStore,
    notifier: Notifier,
    stopped_within: Callable[[float], Awaitable[bool]],
    *,
    recover: bool = True,
) -> OpenReport | None:
    """Open ``store`` (ending the replies a crash left streaming if ``recover``); while it cannot be reached, try again (1 s, doubling to 30 s), saying
    why each time in the log and to systemd (whose start timeout is extended meanwhile).
    None if a stop was asked for meanwhile."""
    for attempt in itertools.count(1):
        try:
            return await store.open(recover=recover)
        except StoreUnavailable as exc:
            delay = min(STORE_RETRY_MAX, 2.0 ** (attempt - 1))
            _log.warning("store_unavailable", attempt=attempt, retry_in_s=delay, error=str(exc))
            notifier.notify(
                f"STATUS=waiting for the conversation store (attempt {attempt}): {exc}"[:250],
                f"EXTEND_TIMEOUT_USEC={round((delay + STORE_RETRY_MAX) * 1_000_000)}",
            )
            if await stopped_within(delay):
                return None
    raise AssertionError("unreachable")
