"""One chat socket, whatever its mode: the driver that writes its frames, follows
replies for it and closes it. :mod:`.json_chat` and :mod:`.plain_chat` read and
answer the client's frames; those three modules are the one place where errors
become protocol frames and close codes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State
from websockets.exceptions import ConnectionClosed

from .auth import Principal
from .bus import ReplyBus
from .events import ReplyDelta, ReplyEnded, ReplyEvent, ReplyReasoning, ReplyStarted
from .expiry import CredentialTimers
from .outbox import Close, Frame, Outbox, OutputBudget
from .replies import ReplyRegistry
from .runtime import Runtime
from .stores import ConversationStore, StoredMessage

if TYPE_CHECKING:
    from .voice import Voice

__all__ = ["CLOSE_GOING_AWAY", "CLOSE_OVERLOADED", "CLOSE_POLICY", "CLOSE_SERVICE_RESTART", "Connection", "Hub"]

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_SERVICE_RESTART = 1012
CLOSE_OVERLOADED = 1013
CLOSE_TIMEOUT = 10.0
CONNECTION_LAPSE = 90.0  # seconds a connection's count outlives its process (a cluster renews it meanwhile)

_log: Any = structlog.get_logger("gateway.connection")


class Hub:
    """What connections share: the runtime in force, the reply bus, the store and the
    output budget."""

    def __init__(self, runtime: Runtime, registry: ReplyRegistry, store: ConversationStore) -> None:
        self.runtime = runtime  # the one place the runtime in force lives: a reload replaces it
        self.metrics = registry.metrics
        self.registry = registry
        self.bus: ReplyBus = registry
        self.store = store
        self.budget = OutputBudget(lambda: self.runtime.config.limits.max_total_pending_bytes)
        self.cut_off = 0  # connections closed for not reading, ever
        self.metrics.queued_bytes.set_function(lambda: self.budget.total)
        self.connections: set[Connection] = set()
        self.voice: Voice | None = None  # [stt] on: the recogniser and its slots

    async def join(self, conn: Connection, subject: str) -> bool:
        """Count ``conn`` among ``subject``'s connections (on every instance, in a cluster);
        False, not counted, past ``connections_per_subject``."""
        limit = self.runtime.config.limits.connections_per_subject
        if not limit:
            return True
        if await self.registry.accounting.quota.hold("connections", subject, conn.session_id, limit, CONNECTION_LAPSE):
            conn.counted = True
            return True
        self.metrics.limited.labels("connections").inc()
        return False

    async def leave(self, conn: Connection, subject: str) -> None:
        if conn.counted:
            await self.registry.accounting.quota.release("connections", subject, conn.session_id)

    async def watch(self, conn: Connection, conversation_id: str) -> None:
        """Make ``conn`` the watcher of ``conversation_id``, its subject's (and of nothing else)."""
        assert conn.principal is not None
        self.unwatch(conn)
        await self.bus.watch(conversation_id, conn, conn.principal.subject)
        conn.conversation_id = conversation_id

    def revoke(self) -> int:
        """After a reload changed who may chat: sign out every connection whose subject the
        authenticator in force no longer admits (1008); return how many."""
        authenticator = self.runtime.authenticator
        revoked = [c for c in self.connections if c.principal is not None and not authenticator.admits(c.principal)]
        for conn in revoked:
            conn.sign_out("sign-in changed; sign in again")
        return len(revoked)

    def taken_over(self, conversation_id: str, owner: str) -> None:
        """The conversation passed to ``owner`` (it had none, or a keyless one): this
        instance's connections of other subjects that have it open lose it (their next
        request about it is refused), and it is ``owner``'s from now on."""
        for conn in list(self.connections):
            if conn.conversation_id == conversation_id and conn.principal and conn.principal.subject != owner:
                self.unwatch(conn)
                conn.conversation_id = None
        self.registry.owned(conversation_id, owner)

    def unwatch(self, conn: Connection) -> None:
        """``conn`` watches nothing any more (it still knows its last conversation)."""
        if conn.conversation_id is not None:
            self.bus.unwatch(conn.conversation_id, conn)

    async def close_all(self, timeout: float = 5.0, code: int = CLOSE_GOING_AWAY) -> None:
        """Close every socket with ``code`` once what is queued for it is written; after
        ``timeout`` seconds stop waiting (each connection bounds its own close)."""
        connections = list(self.connections)
        for conn in connections:
            conn.shutdown(code)
        if not connections:
            return
        waiters = [asyncio.ensure_future(c.ws.wait_closed()) for c in connections]
        _, pending = await asyncio.wait(waiters, timeout=timeout)
        for waiter in pending:
            waiter.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class Connection:
    """What every chat socket does; a mode (JSON, plain) reads and answers its frames
    in :meth:`_read` and renders reply events in :meth:`_on_started` and :meth:`_on_ended`."""

    mode = ""

    def __init__(
        self,
        ws: ServerConnection,
        hub: Hub,
        encode_delta: Callable[[str, int, str], Frame],
        principal: Principal | None,
        encode_reasoning: Callable[[str, int, str], Frame] | None = None,
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.session_id = secrets.token_hex(8)
        self.client_ip: str | None = None
        self.conversation_id: str | None = None
        self.unsaved: str | None = None  # a conversation id given in `ready`, stored with its first message
        # ids of the replies this connection follows (a dict: an empty one is a quarter of an empty set)
        self.replies: dict[str, None] = {}
        self._encoders = encode_delta, encode_reasoning
        self._outbox: Outbox | None = None
        self._closer: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.peer: str | None = ws.remote_address[0] if ws.remote_address else None
        # Who the client is: known from the handshake, or (JSON mode) from its first frame.
        self.principal: Principal | None = principal
        self.signed_out = False  # its credential expired or was revoked: nothing more it sends is read
        self._credential: CredentialTimers | None = None  # made for a credential that expires
        self._failed_refreshes = 0
        self._joined: str | None = None  # the subject this connection counts for
        self.counted = False  # held among its subject's connections (connections_per_subject on)

    @property
    def outbox(self) -> Outbox:
        """Made on first use: most sockets are idle, and many never get a frame."""
        if self._outbox is None:
            encode_delta, encode_reasoning = self._encoders
            self._outbox = Outbox(
                self.hub.runtime.config.limits.max_pending_bytes, encode_delta, self._overflowed,
                self.hub.metrics.frames.inc, self.hub.budget, self._write_now, encode_reasoning,
            )
        return self._outbox

    async def run(self) -> None:
        """Serve the socket until it closes; replies it watched go on without it."""
        try:
            if self.principal is not None and not await self._identify(self.principal):
                return  # timed and counted from here: a socket refused before never is
            await self._read()
        except ConnectionClosed:
            pass
        finally:
            self._stop_credential_timers()
            if self._writer is not None:
                self._writer.cancel()
            self.hub.unwatch(self)
            for reply_id in self.replies:
                self.hub.bus.unfollow(reply_id, self)
            try:
                await self._left()
                if self._writer is not None:
                    await asyncio.gather(self._writer, return_exceptions=True)
                self.outbox.close()
                if self._closer is not None:
                    await self._closer
            finally:
                if self._joined is not None:
                    await self.hub.leave(self, self._joined)

    async def _read(self) -> None:
        """Read and answer the client's frames until the socket closes."""
        raise NotImplementedError

    async def _left(self) -> None:
        """The client left: what its mode does about the replies it followed."""

    async def _start(self, message: StoredMessage, after: str | None = None) -> str:
        """Start a reply to ``message`` in this connection's conversation, creating it if new;
        ``message`` goes under the active branch's last message, or ``after`` that one."""
        conv_id = self.conversation_id
        assert conv_id is not None
        new = conv_id == self.unsaved
        assert self.principal is not None
        reply_id = await self.hub.bus.start(
            conv_id, message, self, new=new, owner=self.principal.subject, after=after
        )
        if new:
            self.unsaved = None
        return reply_id

    async def _identify(self, principal: Principal) -> bool:
        """The client is ``principal`` (again, after a refresh): its logs say so, and its
        credential's expiry is timed. False, and the socket closing with 1013, if the
        subject has as many connections as it may."""
        if self._joined is None:
            if not await self.hub.join(self, principal.subject):
                _log.info("connection_refused", reason="connections_per_subject", subject=principal.subject)
                self.signed_out = True
                self.close(CLOSE_OVERLOADED, "too many connections for this account; close one")
                return False
            self._joined = principal.subject
        self.principal = principal
        structlog.contextvars.bind_contextvars(subject=principal.subject, credential=principal.credential or None)
        auth = self.hub.runtime.config.auth
        if principal.expires_at is not None and self._credential is None:
            self._credential = CredentialTimers(self._credential_expiring, self._credential_expired)
        if self._credential is not None:
            self._credential.set(principal.expires_at, warn_before=auth.expiry_warning, leeway=auth.jwt_leeway)
        return True

    def _stop_credential_timers(self) -> None:
        if self._credential is not None:
            self._credential.cancel()

    def _credential_expiring(self, expires_at: float) -> None:
        """The credential expires soon (JSON mode tells the client, which may refresh it)."""

    def _credential_expired(self) -> None:
        _log.info("auth_expired", session_id=self.session_id, subject=self.principal and self.principal.subject)
        self.hub.metrics.auth_expiries.inc()
        self._expired()
        self.sign_out("credential expired; sign in again and resume")

    def sign_out(self, reason: str) -> None:
        """End the session: nothing the client sends from now on is read; close with 1008
        once what is queued is written (bounded like any close)."""
        self.signed_out = True
        self._stop_credential_timers()
        self.shutdown(CLOSE_POLICY, reason)

    def _expired(self) -> None:
        """Tell the client its credential expired, before the close (if its mode does)."""

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

    def _write_now(self, frame: Frame) -> bool:
        """Write ``frame`` without waiting, if the socket is open and has nothing left to
        send (so it never holds more than this one frame beyond what the outbox counts)."""
        ws = self.ws
        if ws.state is not State.OPEN or ws.transport.get_write_buffer_size():
            return False
        broadcast((ws,), frame, text=True)  # type: ignore[arg-type]
        return True

    def shutdown(self, code: int = CLOSE_GOING_AWAY, reason: str = "server restarting; reconnect and resume") -> None:
        """Close with ``code`` (1001, or 1012 in a cluster) once every frame already queued is written."""
        if self._writer is None:
            self.close(code, reason)
        else:
            self.outbox.put(Close(code, reason))

    def _overflowed(self) -> None:
        budget = self.hub.budget
        # Named explicitly: another connection's task may be the one that needed the room.
        _log.warning(
            "client_too_slow", session_id=self.session_id, client_ip=self.client_ip,
            pending_limit=self.hub.runtime.config.limits.max_pending_bytes,
            total_pending=budget.total, total_limit=budget.limit,
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

    # Subscriber: reply events, delivered synchronously

    def reply_event(self, event: ReplyEvent) -> None:
        if type(event) is ReplyDelta:  # the hot path first
            self.outbox.put_delta(event.reply_id, event.seq, event.text)
        elif type(event) is ReplyReasoning:
            self._on_reasoning(event)
        elif isinstance(event, ReplyStarted):
            self._reply_started(event)
        elif isinstance(event, ReplyEnded):
            self._reply_ended(event)

    def _reply_started(self, event: ReplyStarted) -> None:
        self.replies[event.reply_id] = None
        self._on_started(event)

    def _reply_ended(self, event: ReplyEnded) -> None:
        self.replies.pop(event.reply_id, None)
        self._on_ended(event)

    def _on_reasoning(self, event: ReplyReasoning) -> None:
        """Pass the model's thinking on (if the mode does)."""

    def _on_started(self, event: ReplyStarted) -> None:
        """Tell the client a reply began (if its mode does)."""

    def _on_ended(self, event: ReplyEnded) -> None:
        """Tell the client a reply ended."""
