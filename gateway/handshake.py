"""Whether a WebSocket handshake is let in: path, repeated headers, Origin, and what
it presents to prove who the client is (pure).

The server calls :func:`admit` from websockets' ``process_request`` and turns a
:class:`Refusal` into the HTTP answer, then authenticates the :func:`credentials` when
:func:`authenticates_at_handshake` says so; everything here is testable without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .auth import Authenticator, Credentials
from .wire import SUBPROTOCOL

__all__ = ["Refusal", "RequestHeaders", "admit", "authenticates_at_handshake", "credentials", "is_plain", "refused"]

CHAT_PATH = "/chat"


class RequestHeaders(Protocol):
    def get_all(self, key: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer instead of the upgrade: ``reason`` is the bounded metric label."""

    status: int
    reason: str
    text: str
    origin: str | None = None


def admit(path: str, headers: RequestHeaders, origins: tuple[str, ...]) -> Refusal | None:
    """None if the handshake may proceed (to authentication); else why not."""
    if path.split("?", 1)[0] != CHAT_PATH:
        return Refusal(404, "path", "Not Found: the chat endpoint is /chat\n")
    for name in ("Origin", "Authorization"):
        if len(headers.get_all(name)) > 1:
            return Refusal(400, "duplicate_header", f"Bad Request: more than one {name} header\n")
    origin = _first(headers, "Origin")
    if origin is not None and "*" not in origins and origin.lower() not in origins:
        return Refusal(403, "origin", "Forbidden: this Origin is not allowed\n", origin=origin[:200])
    return None


def is_plain(headers: RequestHeaders) -> bool:
    """Whether the client asks for plain-text mode (it does not offer ``chat.v1``)."""
    # Sec-WebSocket-Protocol may be repeated (RFC 6455 11.3.4): all its values count.
    return SUBPROTOCOL not in ",".join(headers.get_all("Sec-WebSocket-Protocol"))


def credentials(headers: RequestHeaders, peer: str | None, user_header: str | None) -> Credentials:
    """What the handshake presents: an ``Authorization: Bearer`` token, the direct peer,
    and every value of the user header (proxy mode)."""
    scheme, _, token = (_first(headers, "Authorization") or "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    return Credentials(bearer or None, peer, tuple(headers.get_all(user_header)) if user_header else ())


def authenticates_at_handshake(authenticator: Authenticator, presented: Credentials, *, plain: bool) -> bool:
    """Whether the handshake itself decides who the client is. Otherwise (JSON mode, no
    Bearer token, a mode that is not proxy) the first frame does: ``hello`` and its token."""
    return plain or authenticator.at_handshake or presented.token is not None


def refused(message: str) -> Refusal:
    """The answer to a handshake whose credentials prove nobody."""
    return Refusal(401, "unauthorized", f"Unauthorized: {message}\n")


def _first(headers: RequestHeaders, name: str) -> str | None:
    values = headers.get_all(name)
    return values[0] if values else None
