"""A connection in plain-text mode, compatible with the seed backend: one text frame
in, raw text deltas out, ``Error: ...`` on failure."""

from __future__ import annotations

import asyncio
import contextlib

from websockets.asyncio.server import ServerConnection

from .auth import Principal
from .connection import Connection, Hub
from .errors import GatewayError, ProtocolError
from .events import ReplyEnded
from .outbox import Frame
from .stores import StoredMessage, new_id

__all__ = ["PlainConnection"]


class PlainConnection(Connection):
    """Like the seed: the next message is read once the reply to the last one ended, and a
    client that leaves cancels its reply."""

    mode = "plain"

    def __init__(self, ws: ServerConnection, hub: Hub, principal: Principal | None) -> None:
        super().__init__(ws, hub, _plain_delta, principal)
        self._waiting: tuple[str, asyncio.Event] | None = None  # the reply it waits for

    async def _read(self) -> None:
        async for frame in self.ws:
            self._start_writer()
            if self.signed_out:
                continue
            if not isinstance(frame, str):
                self.outbox.put("Error: binary frames are not supported; send text")
            elif not frame.strip():
                self.outbox.put("Error: the message is empty")
            elif "\x00" in frame:
                self.outbox.put("Error: the message contains a NUL character")
            elif len(frame) > (limit := self.hub.runtime.config.limits.max_content_chars):
                self.outbox.put(f"Error: the message is longer than {limit} characters")
            else:
                await self._plain_message(frame)

    async def _plain_message(self, text: str) -> None:
        if self.conversation_id is None:
            self.conversation_id = self.unsaved = new_id()
        done = asyncio.Event()
        try:
            self._waiting = (await self._start(StoredMessage(new_id(), "user", text)), done)
        except GatewayError as exc:
            self.outbox.put(f"Error: {exc.message}")
            return
        # Like the seed, read the next message once this reply ended, unless the client left.
        ended = asyncio.ensure_future(done.wait())
        closed = asyncio.ensure_future(self.ws.wait_closed())
        try:
            await asyncio.wait((ended, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (ended, closed):
                waiter.cancel()
            await asyncio.gather(ended, closed, return_exceptions=True)

    def _on_ended(self, event: ReplyEnded) -> None:
        if event.error is not None:
            self.outbox.put(f"Error: {event.error.message}")
        if self._waiting is not None and self._waiting[0] == event.reply_id:
            self._waiting[1].set()
            self._waiting = None

    async def _left(self) -> None:
        if self._waiting is not None:
            with contextlib.suppress(ProtocolError):  # ended meanwhile
                await self.hub.bus.cancel(self._waiting[0], self.conversation_id)


def _plain_delta(reply_id: str, seq: int, text: str) -> Frame:
    return text
