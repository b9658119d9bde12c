"""When a connected client's credential runs out: a warning first, then the end.

Two timers on the event loop (no task): ``warn`` fires ``warn_before`` seconds before
the credential's ``expires_at``, or halfway through what is left of it if that is
sooner (so a short-lived credential is not warned about at once, again and again
as it is renewed), and ``expire`` at ``expires_at`` plus ``leeway``. :meth:`CredentialTimers.set` replaces both (a refresh); :meth:`cancel`
stops them (the socket closed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["CredentialTimers"]


class CredentialTimers:
    def __init__(self, warn: Callable[[float], None], expire: Callable[[], None]) -> None:
        self._warn = warn
        self._expire = expire
        self._handles: list[asyncio.TimerHandle] = []

    def set(self, expires_at: float | None, *, warn_before: float, leeway: float) -> None:
        """Time the credential valid until ``expires_at`` (epoch seconds; None: never expires)."""
        self.cancel()
        if expires_at is None:
            return
        loop = asyncio.get_running_loop()
        left = expires_at - time.time()
        at = loop.time() + left  # the loop's clock, not the wall clock
        self._handles = [
            loop.call_at(at - min(warn_before, max(left, 0.0) / 2), self._warn, expires_at),
            loop.call_at(at + leeway, self._expire),
        ]

    def cancel(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles = []
