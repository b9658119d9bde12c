"""The gateway's one lifecycle state, and what a signal does to it (no I/O but asyncio's Events).

STARTING → SERVING → DRAINING → CLOSED; a start that fails goes from STARTING to
DRAINING (what was opened is closed) without ever serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
from collections.abc import Callable, Iterator
from typing import Any

import structlog

__all__ = ["Lifecycle", "Phase"]

_log: Any = structlog.get_logger("gateway.server")


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    CLOSED = "closed"


class Lifecycle:
    """``stopping`` is set when a drain is asked for (a signal, or ``close()``);
    ``hurry`` when the drain must end at once (a second SIGINT)."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.served = False
        self.stopping = asyncio.Event()
        self.hurry = asyncio.Event()

    def serving(self) -> None:
        self.phase, self.served = Phase.SERVING, True

    def draining(self) -> bool:
        """Begin the drain; False if it had begun already."""
        if self.phase in (Phase.DRAINING, Phase.CLOSED):
            return False
        self.phase = Phase.DRAINING
        self.stopping.set()
        return True

    def closed(self) -> None:
        self.phase = Phase.CLOSED

    async def stopped_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a stop to be asked for; whether it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        return self.stopping.is_set()

    def not_serving(self) -> str:
        """Why the gateway is not serving ("starting", "draining"), or "" while it is."""
        if self.stopping.is_set() or self.phase in (Phase.DRAINING, Phase.CLOSED):
            return "draining"
        return "" if self.phase is Phase.SERVING else "starting"

    @contextlib.contextmanager
    def handling_signals(self, on_reload: Callable[[], None]) -> Iterator[None]:
        """SIGTERM and SIGINT drive :meth:`on_signal`, SIGHUP calls ``on_reload``, until
        the block ends (after the drain: a signal during it must not kill the process)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, on_reload)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def on_signal(self, sig: signal.Signals) -> None:
        """SIGTERM or SIGINT asks for the drain; during it a second SIGINT hurries it, and
        anything else is ignored (and logged)."""
        if not self.stopping.is_set():
            _log.info("shutdown_requested", signal=sig.name)
            self.stopping.set()
        elif sig is signal.SIGINT and not self.hurry.is_set():
            _log.warning("drain_hurried", signal=sig.name)
            self.hurry.set()
        else:
            _log.warning("second_signal_ignored", signal=sig.name)
