"""Which replies stream now: one per conversation, a bounded number in all, and the drain."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from .errors import ErrorCode, GatewayError, ProtocolError
from .reply import Reply, StopReason

__all__ = ["Slots"]


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
        self._gauge.inc()

    def free(self, reply: Reply) -> None:
        if self._by_conversation.get(reply.conversation_id) is reply:
            del self._by_conversation[reply.conversation_id]
            self._gauge.dec()

    async def drain(self, timeout: float, hurry: asyncio.Event) -> None:
        """Give no more slots; give the replies streaming ``timeout`` seconds (less if
        ``hurry`` is set meanwhile), then stop them: each stores what it streamed."""
        self.accepting = False
        tasks = [r.task for r in self._by_conversation.values() if r.task is not None]
        if tasks:
            await _wait_all(tasks, timeout, hurry)
        for reply in list(self._by_conversation.values()):
            reply.stop(StopReason.SHUTDOWN)
        if tasks:
            await asyncio.wait(tasks)


async def _wait_all(tasks: list[asyncio.Task[None]], timeout: float, hurry: asyncio.Event) -> None:
    """Wait until every task is done, ``timeout`` passed or ``hurry`` is set."""
    hurried = asyncio.ensure_future(hurry.wait())
    pending: set[asyncio.Future[Any]] = set(tasks)
    try:
        async with asyncio.timeout(timeout):
            while pending and not hurried.done():
                _, pending = await asyncio.wait(pending | {hurried}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(hurried)
    except TimeoutError:
        pass
    finally:
        hurried.cancel()
        await asyncio.gather(hurried, return_exceptions=True)
