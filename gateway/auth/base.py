"""Who a client is: what it presents, who that proves, and the seam that decides (pure).

Every mode (:mod:`.anonymous`, :mod:`.tokens`, :mod:`.proxy`, :mod:`.jwt_auth`) is one
:class:`Authenticator`: it turns the :class:`Credentials` of a handshake, a ``hello``
or a ``refresh`` into a :class:`Principal`, or raises :class:`AuthRefused`. Nothing
else in the gateway reads a credential.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ANONYMOUS",
    "AuthRefused",
    "Authenticator",
    "Credentials",
    "MAX_SUBJECT_CHARS",
    "Principal",
    "fingerprint",
]

MAX_SUBJECT_CHARS = 256


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connected.

    ``subject`` owns conversations: ``anonymous``, ``anon:…``, ``token:NAME``,
    ``user:NAME`` or ``jwt:SUB`` by mode. ``name`` is for display. ``expires_at`` (epoch
    seconds) is when the credential stops being valid, if ever. ``credential`` is a short
    fingerprint of what was presented, for logs: never the credential itself.
    """

    subject: str
    name: str = ""
    expires_at: float | None = None
    credential: str = ""
    proof: str = ""  # tokens mode: the token's SHA-256, to tell after a reload whether it is still valid


ANONYMOUS = Principal("anonymous", "anonymous")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presents: ``token`` (a ``hello`` or ``refresh`` token, else the
    handshake's ``Authorization: Bearer``), the direct ``peer`` address, and the values of
    the trusted user header (proxy mode) as they arrived."""

    token: str | None = None
    peer: str | None = None
    user: tuple[str, ...] = ()


class AuthRefused(Exception):
    """The credentials prove nobody. ``reason`` is a short fixed phrase for logs and
    metrics (never the credential); ``str()`` is what the client may be told."""

    def __init__(self, reason: str, message: str = "authentication failed") -> None:
        super().__init__(message)
        self.reason = reason


class Authenticator(Protocol):
    mode: str
    """``none``, ``tokens``, ``proxy`` or ``jwt``."""

    required: bool
    """Whether a client must prove who it is before anything else (every mode but ``none``)."""

    at_handshake: bool
    """Whether only the handshake can prove it (``proxy``: a header the proxy set)."""

    async def authenticate(self, credentials: Credentials) -> Principal:
        """The principal ``credentials`` prove; AuthRefused if none."""

    def admits(self, principal: Principal) -> bool:
        """Whether a principal proved earlier (perhaps by another configuration, before a
        reload) may stay connected: a removed token, another mode, may not."""


def fingerprint(secret: str) -> str:
    """A short, stable name for a credential in logs: 8 hex digits of its SHA-256."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:8]
