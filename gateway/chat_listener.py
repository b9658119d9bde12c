"""The WebSocket listener: the handshake's checks, then one connection per socket,
with its metrics and its opened/closed log lines."""

from __future__ import annotations

import socket
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import NegotiationError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from . import __version__, wire
from .auth import AuthRefused, Principal, fingerprint
from .clientip import client_ip
from .connection import CLOSE_OVERLOADED, Hub
from .handshake import Refusal, admit, authenticates_at_handshake, credentials, is_plain, refused
from .json_chat import JsonConnection
from .plain_chat import PlainConnection

__all__ = ["ChatListener"]

_log: Any = structlog.get_logger("gateway.server")
READY_PATH = "/readyz"  # as on the HTTP listener: Caddy checks each upstream where it proxies to

# permessage-deflate with a small window: measured (docs/performance.md) to compress
# token streams as well as the library's default for 46 KiB per connection instead of 54.
_DEFLATE = ServerPerMessageDeflateFactory(
    server_max_window_bits=10, client_max_window_bits=10, compress_settings={"memLevel": 4}
)


class ChatListener:
    """Serves ``/chat`` for the gateway; ``origins`` gives the allowed origins now."""

    def __init__(self, hub: Hub, origins: Callable[[], tuple[str, ...]]) -> None:
        self.hub = hub
        self._origins = origins
        # Who a handshake proved to be, until its connection starts.
        self._principals: weakref.WeakKeyDictionary[ServerConnection, Principal] = weakref.WeakKeyDictionary()

    async def listen(self, sock: socket.socket | None) -> Server:
        cfg = self.hub.runtime.config
        where: dict[str, Any] = {"sock": sock} if sock else {"host": cfg.server.ws_addr.host, "port": cfg.server.ws_addr.port}
        return await serve(
            self._handle,
            create_connection=ChatSocket,
            select_subprotocol=_select_subprotocol,
            process_request=self._check_request,
            compression=None,
            extensions=[_DEFLATE] if cfg.server.compression else None,
            max_size=cfg.limits.max_message_bytes,
            max_queue=16,
            write_limit=cfg.limits.write_limit,
            ping_interval=cfg.server.ping_interval or None,
            ping_timeout=cfg.server.ping_interval or None,
            server_header=f"llm-ws-gateway/{__version__}",
            **where,
        )

    async def _check_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.path == READY_PATH:  # a load balancer's health check of this listener
            ready = self.hub.registry.accepting
            return conn.respond(200 if ready else 503, "ready\n" if ready else "draining\n")
        refusal = admit(request.path, request.headers, self._origins())
        if refusal is None:
            refusal = await self._authenticate(conn, request)
        if refusal is None:
            return None
        _log.info("handshake_refused", reason=refusal.reason, status=refusal.status, origin=refusal.origin)
        self.hub.metrics.refusals.labels(refusal.reason).inc()
        return conn.respond(refusal.status, refusal.text)

    async def _authenticate(self, conn: ServerConnection, request: Request) -> Refusal | None:
        """Authenticate what the handshake presents, if it is what decides (else the first frame does)."""
        runtime = self.hub.runtime
        authenticator = runtime.authenticator
        peer = conn.remote_address[0] if conn.remote_address else None
        user_header = runtime.config.auth.user_header if authenticator.mode == "proxy" else None
        presented = credentials(request.headers, peer, user_header)
        if not authenticates_at_handshake(authenticator, presented, plain=is_plain(request.headers)):
            return None
        try:
            self._principals[conn] = await authenticator.authenticate(presented)
        except AuthRefused as exc:
            _log.info(
                "auth_failed", reason=exc.reason, mode=authenticator.mode, at="handshake",
                credential=fingerprint(presented.token) if presented.token else None,
            )
            self.hub.metrics.auth_failures.labels(exc.reason).inc()
            return refused("send Authorization: Bearer TOKEN" if exc.reason == "no token" else str(exc))
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        hub, cfg, metrics = self.hub, self.hub.runtime.config, self.hub.metrics
        principal = self._principals.pop(ws, None)
        conn = (JsonConnection if ws.subprotocol == wire.SUBPROTOCOL else PlainConnection)(ws, hub, principal)
        peer = ws.remote_address[0] if ws.remote_address else None
        forwarded = ", ".join(ws.request.headers.get_all("X-Forwarded-For")) if ws.request else None
        conn.client_ip = client_ip(peer, forwarded, cfg.server.trusted_proxies)
        structlog.contextvars.bind_contextvars(session_id=conn.session_id, client_ip=conn.client_ip)
        if len(hub.connections) >= cfg.limits.max_connections:
            _log.warning("connection_refused", reason="max_connections")
            metrics.refusals.labels("max_connections").inc()
            await ws.close(CLOSE_OVERLOADED, "server full; try again later")
            return
        _bound_send_buffer(ws, cfg.limits.socket_send_buffer)
        hub.connections.add(conn)
        gauge = metrics.connections.labels(conn.mode)
        gauge.inc()
        metrics.handshakes.labels(conn.mode).inc()
        _log.info("connection_opened", mode=conn.mode)
        try:
            await conn.run()
        finally:
            gauge.dec()
            hub.connections.discard(conn)
            code, closed_by = _how_closed(ws)
            _log.info(
                "connection_closed", mode=conn.mode, code=code, closed_by=closed_by, conversation_id=conn.conversation_id
            )


def _how_closed(ws: ServerConnection) -> tuple[int, str]:
    """The close code of the side that closed first, and which side that was: the
    gateway's own code (1009, 1013...) when it closed, not the echo the client sent back."""
    protocol = ws.protocol
    sent, received = protocol.close_sent, protocol.close_rcvd
    if sent is not None and (received is None or not protocol.close_rcvd_then_sent):
        return sent.code, "gateway"
    if received is not None:
        return received.code, "client"
    return 1006, "network"


class ChatSocket(ServerConnection):
    """websockets' server connection, laid out for many sockets.

    CPython keeps an object's attributes in a table of names shared by its class while
    the table has room, and each instance created leaves it one name less (3.11). A
    burst of connections accepted before the first one's ``connection_made()`` used to
    leave the two names set there out of the table, and from then on every socket
    carried a dictionary of its own: 1.5 KiB each. ``__init__`` sets every other
    attribute at once; naming these two there too keeps them all in the table.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in _SET_ON_CONNECT:
            if not hasattr(self, name):
                setattr(self, name, None)


_SET_ON_CONNECT = ("recv_messages", "transport")


def _bound_send_buffer(ws: ServerConnection, size: int) -> None:
    """A fixed SO_SNDBUF: a client that stops reading then backs up into the outbox,
    where its deltas merge and its bound applies, instead of into megabytes of kernel buffer."""
    sock = ws.transport.get_extra_info("socket")
    if size and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _select_subprotocol(conn: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``chat.v1`` when offered; none offered is plain-text mode; others are refused."""
    if wire.SUBPROTOCOL in offered:
        return Subprotocol(wire.SUBPROTOCOL)
    if offered:
        raise NegotiationError(f"unsupported subprotocol; this server speaks {wire.SUBPROTOCOL}")
    return None
