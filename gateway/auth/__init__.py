"""Who may chat: the :class:`Authenticator` seam and one implementation per ``[auth] mode``.

The pure parts are here; :mod:`.jwks` fetches an issuer's keys and :mod:`.factory`
builds the authenticator a configuration asks for.
"""

from __future__ import annotations

from .anonymous import OpenAccess
from .base import ANONYMOUS, AuthRefused, Authenticator, Credentials, Principal, fingerprint
from .jwt_auth import JwtAuthenticator, SharedSecret
from .proxy import ProxyAuthenticator
from .tokens import TokenAuthenticator, parse_tokens, token_digest

__all__ = [
    "ANONYMOUS",
    "AuthRefused",
    "Authenticator",
    "Credentials",
    "JwtAuthenticator",
    "OpenAccess",
    "Principal",
    "ProxyAuthenticator",
    "SharedSecret",
    "TokenAuthenticator",
    "fingerprint",
    "parse_tokens",
    "token_digest",
]
