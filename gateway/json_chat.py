"""A connection in JSON mode (``chat.v1``): typed frames in, typed events out."""

from __future__ import annotations

from typing import Any

import structlog
from websockets.asyncio.server import ServerConnection

from . import wire
from .connection import CLOSE_POLICY, Connection, Hub
from .errors import ErrorCode, GatewayError, ProtocolError
from .events import ReplyEnded, ReplyStarted, Streaming
from .outbox import Close
from .paging import page, read_bound, without
from .stores import StoredMessage, new_id

__all__ = ["JsonConnection"]

_log: Any = structlog.get_logger("gateway.connection")


class JsonConnection(Connection):
    """``hello``, ``message``, ``resume``, ``history``...: see docs/protocol.md."""

    mode = "json"

    def __init__(self, ws: ServerConnection, hub: Hub) -> None:
        super().__init__(ws, hub, wire.encode_delta)

    async def _read(self) -> None:
        async for frame in self.ws:
            self._start_writer()
            if self.principal is None and not self._authenticate(frame):
                assert self._writer is not None
                await self._writer
                return
            try:
                await self._dispatch(wire.parse_client(frame))
            except ProtocolError as exc:
                self.outbox.put(wire.encode_error(exc, ref=exc.ref))
            except GatewayError as exc:
                self.outbox.put(wire.encode_error(exc))
            except Exception:
                _log.exception("frame_failed")
                self.outbox.put(wire.encode_error(GatewayError(ErrorCode.INTERNAL, "internal error")))

    async def _dispatch(self, msg: wire.ClientMessage) -> None:
        match msg:
            case wire.Message():
                await self._message(msg)
            case wire.Hello():
                await self._hello(msg.conversation_id)
            case wire.Cancel():
                self._cancel(msg.reply_id)
            case wire.Resume():
                self._resume(msg)
            case wire.Ping():
                self.outbox.put(wire.encode("pong", id=msg.id))
            case wire.History():
                await self._history(msg)
            case wire.Regenerate():
                await self._regenerate(msg)

    def _authenticate(self, frame: str | bytes) -> bool:
        """With auth on, the first frame must be a ``hello`` with a valid token."""
        try:
            msg: wire.ClientMessage | None = wire.parse_client(frame)
        except ProtocolError:
            msg = None
        if isinstance(msg, wire.Hello):
            self.principal = self.hub.authenticator.from_token(msg.token)
        if self.principal is not None:
            return True
        _log.info("auth_failed", reason="bad token" if isinstance(msg, wire.Hello) else "no hello")
        error = GatewayError(ErrorCode.UNAUTHORIZED, "send hello with a valid token first", retryable=False)
        self.outbox.put(wire.encode_error(error))
        self.outbox.put(Close(CLOSE_POLICY, "unauthorized"))
        return False

    async def _hello(self, conversation_id: str | None) -> None:
        """Open a stored conversation, or a new one: that is stored with its first message,
        so hellos alone create nothing. A new one is open to other connections (tabs) while
        a connection holds it."""
        store = self.hub.store
        cfg = self.hub.config
        conv = await store.get(conversation_id) if conversation_id else None
        if conv is not None:
            conv_id, title = conv.id, conv.title
            history, _, active = await self._page(conv_id, cfg.history_limit)
        elif conversation_id and not self.hub.bus.watched(conversation_id):
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such conversation")
        else:
            conv_id, title, active, history = conversation_id or new_id(), "", None, []
            self.unsaved = conv_id
        self.hub.watch(self, conv_id)
        self.outbox.put(
            wire.encode(
                "ready",
                session_id=self.session_id,
                conversation_id=conv_id,
                title=title,
                history=wire.history_items(history),
                model=self.hub.registry.provider.model,
                provider=self.hub.registry.provider.name,
                limits={
                    "max_message_bytes": cfg.max_message_bytes,
                    "max_content_chars": cfg.max_content_chars,
                },
                streaming={"reply_id": active.reply_id, "seq": active.seq} if active else None,
            )
        )

    async def _message(self, msg: wire.Message) -> None:
        if len(msg.content) > self.hub.config.max_content_chars:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"the message is longer than {self.hub.config.max_content_chars} characters",
                ref=msg.id,
            )
        if self.conversation_id is None or (msg.conversation_id and msg.conversation_id != self.conversation_id):
            try:
                await self._hello(msg.conversation_id)
            except ProtocolError as exc:
                exc.ref = msg.id
                raise
        assert self.conversation_id is not None
        try:
            await self._start(StoredMessage(msg.id, "user", msg.content))
        except ProtocolError as exc:
            exc.ref = msg.id
            raise
        except GatewayError as exc:
            self.outbox.put(wire.encode_error(exc, ref=msg.id))

    async def _regenerate(self, msg: wire.Regenerate) -> None:
        if self.conversation_id is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "send hello first", ref=msg.id)
        try:
            await self.hub.bus.regenerate(self.conversation_id, msg.id, self)
        except ProtocolError as exc:
            exc.ref = msg.id
            raise
        except GatewayError as exc:
            self.outbox.put(wire.encode_error(exc, ref=msg.id))

    def _cancel(self, reply_id: str) -> None:
        self.hub.bus.cancel(reply_id, self.conversation_id)

    def _resume(self, msg: wire.Resume) -> None:
        reply_id = msg.reply_id
        if reply_id in self.replies or self.outbox.holds_delta(reply_id):
            # Also while an ended reply's catch-up still waits: resuming it again would only queue copies.
            raise ProtocolError(ErrorCode.BAD_REQUEST, "this connection already receives that reply")
        self.replies.add(reply_id)
        try:
            with self.outbox.together():
                self.hub.bus.follow(reply_id, self.conversation_id, self, msg.after_seq)
        except GatewayError:
            self.replies.discard(reply_id)
            raise

    async def _history(self, msg: wire.History) -> None:
        if self.conversation_id is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "send hello first")
        messages, has_more, _ = await self._page(self.conversation_id, msg.limit, msg.before)
        self.outbox.put(
            wire.encode(
                "history",
                conversation_id=self.conversation_id,
                messages=wire.history_items(messages),
                has_more=has_more,
            )
        )

    async def _page(
        self, conversation_id: str, limit: int, before: str | None = None
    ) -> tuple[list[StoredMessage], bool, Streaming | None]:
        """A page of stored history (without the reply streaming now), whether older
        messages exist, and that streaming reply."""
        active = self.hub.bus.streaming(conversation_id)
        max_bytes = self.hub.config.max_history_bytes
        read = await self.hub.store.history(
            conversation_id, limit + 2, before, max_bytes=read_bound(max_bytes, active)
        )
        messages, has_more = page(without(read, active), limit, max_bytes)
        return messages, has_more, active

    def _on_started(self, event: ReplyStarted) -> None:
        self.outbox.put(
            wire.encode(
                "reply.start", id=event.message_id, reply_id=event.reply_id,
                conversation_id=event.conversation_id, content=event.content, replaces=event.replaces,
            )
        )

    def _on_ended(self, event: ReplyEnded) -> None:
        if event.error is not None:
            self.outbox.put(wire.encode_error(event.error, ref=event.message_id, reply_id=event.reply_id))
        usage = event.usage.as_dict() if event.usage else None
        self.outbox.put(
            wire.encode("reply.done", reply_id=event.reply_id, finish_reason=event.finish_reason, usage=usage)
        )
