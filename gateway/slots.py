"""Which replies stream now: one per conversation, a bounded number in all, and the drain."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog

from .errors import ErrorCode, GatewayError, ProtocolError
from .reply import Reply, StopReason

__all__ = ["Slots"]

_log: Any = structlog.get_logger("gateway.replies")
STOP_WAIT = 15.0  # seconds stopped replies get to store what they streamed (a final save may retry for 10)


class _Gauge(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class Slots:
    """The streaming replies by conversation. A slot is taken when a message is admitted
    (before it is stored) and freed when its reply ends or preparing it fails; none is
    given once the drain began (``accepting`` is False)."""

    def __init__(self, gauge: _Gauge) -> None:
        self._by_conversation: dict[str, Reply] = {}
        self._gauge = gauge
        self._none = asyncio.Event()  # set while no slot is taken
        self._none.set()
        self.accepting = True

    def __len__(self) -> int:
        return len(self._by_conversation)

    def of(self, conversation_id: str) -> Reply | None:
        return self._by_conversation.get(conversation_id)

    def take(self, reply: Reply, max_replies: int) -> None:
        """Give ``reply`` its conversation's slot, or say why not."""
        if not self.accepting:
            raise GatewayError(ErrorCode.OVERLOADED, "the server is restarting; send again in a moment", retry_after=1)
        if reply.conversation_id in self._by_conversation:
            raise ProtocolError(ErrorCode.BUSY, "a reply is already streaming in this conversation")
        if len(self._by_conversation) >= max_replies:
            raise GatewayError(ErrorCode.OVERLOADED, "the server is busy; try again shortly", retry_after=2)
        self._by_conversation[reply.conversation_id] = reply
        self._none.clear()
        self._gauge.inc()

    def free(self, reply: Reply) -> None:
        if self._by_conversation.get(reply.conversation_id) is reply:
            del self._by_conversation[reply.conversation_id]
            self._gauge.dec()
            if not self._by_conversation:
                self._none.set()

    async def drain(self, timeout: float, hurry: asyncio.Event) -> None:
        """Give no more slots; give the replies streaming, and those still being prepared
        (their message being stored), ``timeout`` seconds (less if ``hurry`` is set
        meanwhile), then stop them: each stores what it streamed."""
        self.accepting = False
        await _first(self._none, hurry, timeout)
        for reply in list(self._by_conversation.values()):
            reply.stop(StopReason.SHUTDOWN)
        await _first(self._none, asyncio.Event(), STOP_WAIT)
        if self._by_conversation:
            _log.error("replies_not_stopped", count=len(self._by_conversation), waited_s=STOP_WAIT)


async def _first(one: asyncio.Event, other: asyncio.Event, timeout: float | None) -> None:
    """Wait until ``one`` or ``other`` is set, or ``timeout`` seconds passed."""
    waiters = [asyncio.ensure_future(one.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
