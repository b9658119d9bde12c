"""Whether a WebSocket handshake is let in: path, repeated headers, auth, Origin (pure).

The server calls :func:`admit` from websockets' ``process_request`` and turns a
:class:`Refusal` into the HTTP answer; everything here is testable without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .auth import Authenticator
from .wire import SUBPROTOCOL

__all__ = ["Refusal", "RequestHeaders", "admit"]

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


def admit(path: str, headers: RequestHeaders, authenticator: Authenticator, origins: tuple[str, ...]) -> Refusal | None:
    """None if the handshake may proceed; else why not."""
    if path.split("?", 1)[0] != CHAT_PATH:
        return Refusal(404, "path", "Not Found: the chat endpoint is /chat\n")
    for name in ("Origin", "Authorization"):
        if len(headers.get_all(name)) > 1:
            return Refusal(400, "duplicate_header", f"Bad Request: more than one {name} header\n")
    # Sec-WebSocket-Protocol may be repeated (RFC 6455 11.3.4): all its values count.
    plain = SUBPROTOCOL not in ",".join(headers.get_all("Sec-WebSocket-Protocol"))
    authorization = _first(headers, "Authorization")
    if plain and authenticator.required and authenticator.from_authorization(authorization) is None:
        # JSON mode may also authenticate with its first frame; plain mode only here.
        return Refusal(401, "unauthorized", "Unauthorized: send Authorization: Bearer TOKEN\n")
    origin = _first(headers, "Origin")
    if origin is not None and "*" not in origins and origin.lower() not in origins:
        return Refusal(403, "origin", "Forbidden: this Origin is not allowed\n", origin=origin[:200])
    return None


def _first(headers: RequestHeaders, name: str) -> str | None:
    values = headers.get_all(name)
    return values[0] if values else None
