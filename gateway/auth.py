"""Who a client is: a principal, and the one authenticator that decides it (pure).

The handshake (an ``Authorization: Bearer`` header) and the first ``hello`` (its
``token``) both ask the same authenticator. With no tokens configured everyone is
the anonymous principal.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol

from .config import Config, token_digest

__all__ = ["ANONYMOUS", "Authenticator", "OpenAccess", "Principal", "TokenAuthenticator", "make_authenticator"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connected: ``subject`` is ``anonymous``, or ``token:`` and the first 12 hex
    digits of the token's SHA-256 (never the token itself)."""

    subject: str


ANONYMOUS = Principal("anonymous")


class Authenticator(Protocol):
    required: bool
    """Whether a client must authenticate before anything else."""

    def from_authorization(self, header: str | None) -> Principal | None:
        """The principal an ``Authorization`` header value proves, or None."""

    def from_token(self, token: str | None) -> Principal | None:
        """The principal a ``hello`` token proves, or None."""


class OpenAccess:
    """No tokens configured: every client is anonymous."""

    required = False

    def from_authorization(self, header: str | None) -> Principal | None:
        return ANONYMOUS

    def from_token(self, token: str | None) -> Principal | None:
        return ANONYMOUS


class TokenAuthenticator:
    """Clients present one of the configured tokens, kept as SHA-256 digests and compared
    in constant time."""

    required = True

    def __init__(self, digests: frozenset[str]) -> None:
        self._digests = digests

    def from_authorization(self, header: str | None) -> Principal | None:
        scheme, _, token = (header or "").partition(" ")
        return self.from_token(token.strip()) if scheme.lower() == "bearer" else None

    def from_token(self, token: str | None) -> Principal | None:
        if not token:
            return None
        digest = token_digest(token)
        if any(hmac.compare_digest(digest, known) for known in self._digests):
            return Principal(f"token:{digest[:12]}")
        return None


def make_authenticator(config: Config) -> Authenticator:
    """The authenticator the configuration asks for (``[auth] tokens_file``)."""
    return TokenAuthenticator(config.auth.tokens) if config.auth.tokens else OpenAccess()
