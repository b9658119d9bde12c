"""One chat socket: reads client frames, watches replies, writes frames.

This is the one place where errors become protocol frames and close codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from . import wire
from .auth import Principal, make_authenticator
from .config import Config
from .errors import ErrorCode, GatewayError, ProtocolError
from .events import ReplyDelta, ReplyEnded, ReplyEvent, ReplyStarted, Streaming
from .outbox import Close, Frame, Outbox, OutputBudget
from .replies import ReplyRegistry
from .stores import ConversationStore, StoredMessage, new_id

__all__ = ["CLOSE_GOING_AWAY", "CLOSE_OVERLOADED", "Connection", "Hub"]

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_OVERLOADED = 1013
CLOSE_TIMEOUT = 10.0

_log: Any = structlog.get_logger("gateway.connection")


class Hub:
    """What connections share: the current config, the registry, the store, the output
    budget and the authenticator."""

    def __init__(self, config: Config, registry: ReplyRegistry, store: ConversationStore) -> None:
        self.config = config
        self.metrics = registry.metrics
        self.registry = registry
        self.store = store
        self.budget = OutputBudget(config.max_total_pending_bytes)
        self.authenticator = make_authenticator(config)
        self.cut_off = 0  # connections closed for not reading, ever
        self.metrics.queued_bytes.set_function(lambda: self.budget.total)
        self.connections: set[Connection] = set()
        self.watchers: dict[str, set[Connection]] = {}

    def watch(self, conn: Connection, conversation_id: str) -> None:
        """Make ``conn`` the watcher of ``conversation_id`` (and of nothing else)."""
        self.unwatch(conn)
        self.watchers.setdefault(conversation_id, set()).add(conn)
        conn.conversation_id = conversation_id

    def unwatch(self, conn: Connection) -> None:
        """``conn`` watches nothing any more (it still knows its last conversation)."""
        old = conn.conversation_id
        if old is not None and old in self.watchers:
            self.watchers[old].discard(conn)
            if not self.watchers[old]:
                del self.watchers[old]


class Connection:
    """A connection in JSON (``chat.v1``) or plain-text mode."""

    def __init__(self, ws: ServerConnection, hub: Hub) -> None:
        self.ws = ws
        self.hub = hub
        self.json = ws.subprotocol == wire.SUBPROTOCOL
        self.session_id = secrets.token_hex(8)
        self.client_ip: str | None = None
        self.conversation_id: str | None = None
        self.unsaved: str | None = None  # a conversation id given in `ready`, stored with its first message
        self.replies: set[str] = set()  # ids of the replies this connection follows
        self._plain_reply: tuple[str, asyncio.Event] | None = None  # plain mode: the reply it waits for
        encode: Callable[[str, int, str], Frame] = wire.encode_delta if self.json else _plain_delta
        self.outbox = Outbox(
            hub.config.max_pending_bytes, encode, self._overflowed, hub.metrics.frames.inc, hub.budget
        )
        self._closer: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        # Who the client is: known from the handshake, or (JSON mode) from its first hello.
        authorization = ws.request.headers.get("Authorization") if ws.request is not None else None
        self.principal: Principal | None = hub.authenticator.from_authorization(authorization)

    async def run(self) -> None:
        """Serve the socket until it closes; replies it watched go on without it."""
        try:
            await (self._read_json() if self.json else self._read_plain())
        except ConnectionClosed:
            pass
        finally:
            if self._writer is not None:
                self._writer.cancel()
            self.hub.unwatch(self)
            registry = self.hub.registry
            for reply_id in self.replies:
                registry.unfollow(reply_id, self)
            if self._plain_reply is not None and self.conversation_id is not None:
                with contextlib.suppress(ProtocolError):  # ended meanwhile
                    registry.cancel(self._plain_reply[0], self.conversation_id)
            if self._writer is not None:
                await asyncio.gather(self._writer, return_exceptions=True)
            self.outbox.close()
            if self._closer is not None:
                await self._closer

    def _start_writer(self) -> None:
        """The writer starts with the client's first frame: an idle socket costs no task."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name=f"writer-{self.session_id}")

    async def _write(self) -> None:
        send, outbox = self.ws.send, self.outbox
        try:
            while True:
                for frame in await outbox.get():
                    if isinstance(frame, Close):
                        await self._close(frame.code, frame.reason)
                        return
                    await send(frame, text=True)
        except ConnectionClosed:
            pass

    def shutdown(self) -> None:
        """Close with 1001 once every frame already queued is written."""
        reason = "server restarting; reconnect and resume"
        if self._writer is None:
            self.close(CLOSE_GOING_AWAY, reason)
        else:
            self.outbox.put(Close(CLOSE_GOING_AWAY, reason))

    def _overflowed(self) -> None:
        budget = self.hub.budget
        # Named explicitly: another connection's task may be the one that needed the room.
        _log.warning(
            "client_too_slow", session_id=self.session_id, client_ip=self.client_ip,
            pending_limit=self.hub.config.max_pending_bytes, total_pending=budget.total, total_limit=budget.limit,
        )
        self.hub.metrics.slow_clients.inc()
        self.hub.cut_off += 1
        self.close(CLOSE_OVERLOADED, "client too slow; reconnect and resume")

    def close(self, code: int, reason: str) -> None:
        """Start closing the socket with ``code`` (once)."""
        if self._closer is None:
            self._closer = asyncio.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        """The closing handshake, bounded: a client that does not read would hold it (and the
        bytes buffered for it) forever, so past ``close_timeout`` the TCP connection is dropped."""
        try:
            async with asyncio.timeout(self.ws.close_timeout or CLOSE_TIMEOUT):
                await self.ws.close(code, reason)
        except TimeoutError:
            _log.info(
                "connection_aborted", session_id=self.session_id, client_ip=self.client_ip, code=code,
                reason="the client did not take the close frame",
            )
            self.ws.transport.abort()

    # JSON mode

    async def _read_json(self) -> None:
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
            active = self.hub.registry.streaming(conv_id)
            bound = _read_bound(cfg.max_history_bytes, active)
            read = await store.history(conv_id, cfg.history_limit + 1, max_bytes=bound)
            history, _ = _page(_without(read, active), cfg.history_limit, cfg.max_history_bytes)
        elif conversation_id and conversation_id not in self.hub.watchers:
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

    async def _start(self, message: StoredMessage) -> str:
        """Start a reply to ``message`` in this connection's conversation, creating it if new."""
        conv_id = self.conversation_id
        assert conv_id is not None
        new = conv_id == self.unsaved
        reply_id = await self.hub.registry.start(conv_id, message, self, self.hub.watchers.get(conv_id, ()), new=new)
        if new:
            self.unsaved = None
        return reply_id

    async def _regenerate(self, msg: wire.Regenerate) -> None:
        if self.conversation_id is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "send hello first", ref=msg.id)
        try:
            await self.hub.registry.regenerate(
                self.conversation_id, msg.id, self, self.hub.watchers.get(self.conversation_id, ())
            )
        except ProtocolError as exc:
            exc.ref = msg.id
            raise
        except GatewayError as exc:
            self.outbox.put(wire.encode_error(exc, ref=msg.id))

    def _cancel(self, reply_id: str) -> None:
        if self.conversation_id is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such reply in this conversation")
        self.hub.registry.cancel(reply_id, self.conversation_id)

    def _resume(self, msg: wire.Resume) -> None:
        reply_id = msg.reply_id
        if self.conversation_id is None:
            raise GatewayError(
                ErrorCode.RESUME_UNAVAILABLE,
                "this reply can no longer be resumed; its stored text is in the history",
                retryable=False,
            )
        if reply_id in self.replies or self.outbox.holds_delta(reply_id):
            # Also while an ended reply's catch-up still waits: resuming it again would only queue copies.
            raise ProtocolError(ErrorCode.BAD_REQUEST, "this connection already receives that reply")
        self.replies.add(reply_id)
        try:
            with self.outbox.together():
                self.hub.registry.follow(reply_id, self.conversation_id, self, msg.after_seq)
        except GatewayError:
            self.replies.discard(reply_id)
            raise

    async def _history(self, msg: wire.History) -> None:
        if self.conversation_id is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "send hello first")
        active = self.hub.registry.streaming(self.conversation_id)
        max_bytes = self.hub.config.max_history_bytes
        read = await self.hub.store.history(
            self.conversation_id, msg.limit + 2, msg.before, max_bytes=_read_bound(max_bytes, active)
        )
        page, has_more = _page(_without(read, active), msg.limit, max_bytes)
        self.outbox.put(
            wire.encode(
                "history",
                conversation_id=self.conversation_id,
                messages=wire.history_items(page),
                has_more=has_more,
            )
        )

    # plain-text mode: one text frame in, raw text deltas out, "Error: ..." on failure

    async def _read_plain(self) -> None:
        async for frame in self.ws:
            self._start_writer()
            if not isinstance(frame, str):
                self.outbox.put("Error: binary frames are not supported; send text")
            elif not frame.strip():
                self.outbox.put("Error: the message is empty")
            elif len(frame) > self.hub.config.max_content_chars:
                self.outbox.put(f"Error: the message is longer than {self.hub.config.max_content_chars} characters")
            else:
                await self._plain_message(frame)

    async def _plain_message(self, text: str) -> None:
        if self.conversation_id is None:
            self.conversation_id = self.unsaved = new_id()
        done = asyncio.Event()
        try:
            self._plain_reply = (await self._start(StoredMessage(new_id(), "user", text)), done)
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

    # Subscriber: reply events, delivered synchronously

    def reply_event(self, event: ReplyEvent) -> None:
        if type(event) is ReplyDelta:  # the hot path first
            self.outbox.put_delta(event.reply_id, event.seq, event.text)
        elif isinstance(event, ReplyStarted):
            self._reply_started(event)
        elif isinstance(event, ReplyEnded):
            self._reply_ended(event)

    def _reply_started(self, event: ReplyStarted) -> None:
        self.replies.add(event.reply_id)
        if self.json:
            self.outbox.put(
                wire.encode(
                    "reply.start", id=event.message_id, reply_id=event.reply_id,
                    conversation_id=event.conversation_id, content=event.content, replaces=event.replaces,
                )
            )

    def _reply_ended(self, event: ReplyEnded) -> None:
        self.replies.discard(event.reply_id)
        if self.json:
            if event.error is not None:
                self.outbox.put(wire.encode_error(event.error, ref=event.message_id, reply_id=event.reply_id))
            usage = event.usage.as_dict() if event.usage else None
            self.outbox.put(
                wire.encode("reply.done", reply_id=event.reply_id, finish_reason=event.finish_reason, usage=usage)
            )
            return
        if event.error is not None:
            self.outbox.put(f"Error: {event.error.message}")
        if self._plain_reply is not None and self._plain_reply[0] == event.reply_id:
            self._plain_reply[1].set()
            self._plain_reply = None


def _without(messages: list[StoredMessage], active: Streaming | None) -> list[StoredMessage]:
    """History without the reply still streaming (its checkpoint): that one is resumed."""
    return [m for m in messages if active is None or m.id != active.reply_id]


def _read_bound(max_bytes: int, active: Streaming | None) -> int:
    """What to read for a page of ``max_bytes``: the streaming reply's checkpoint is read
    too, then left out, so its text (4 bytes a character at most) is read on top."""
    return max_bytes + (4 * active.chars if active else 0)


def _page(messages: list[StoredMessage], limit: int, max_bytes: int) -> tuple[list[StoredMessage], bool]:
    """The newest ``limit`` messages whose text fits in ``max_bytes`` (at least one), and
    whether older ones are left out."""
    size, start = 0, len(messages)
    while start > 0 and len(messages) - start < limit:
        size += len(messages[start - 1].content.encode())
        if size > max_bytes and start < len(messages):
            break
        start -= 1
    return messages[start:], start > 0


def _plain_delta(reply_id: str, seq: int, text: str) -> Frame:
    return text
