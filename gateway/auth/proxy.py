"""``[auth] mode = proxy``: a reverse proxy that signed the person in names them in a
header (``Remote-User`` by default), believed only from ``trusted_proxies`` (pure).

The value must be one header, non-empty, at most 128 printable characters, and must not
hold ``{``: a Caddy placeholder left unexpanded (``{http.auth.user.id}`` when no one
signed in) would otherwise make everyone the same user.
"""

from __future__ import annotations

from ..clientip import Networks, is_trusted
from .base import AuthRefused, Credentials, Principal

__all__ = ["MAX_USER_CHARS", "ProxyAuthenticator"]

MAX_USER_CHARS = 128


class ProxyAuthenticator:
    mode = "proxy"
    required = True
    at_handshake = True

    def __init__(self, user_header: str, trusted: Networks) -> None:
        self.user_header = user_header
        self._trusted = trusted

    async def authenticate(self, credentials: Credentials) -> Principal:
        if not is_trusted(credentials.peer, self._trusted):
            raise AuthRefused("untrusted peer", "sign in through the gateway's proxy")
        if len(credentials.user) != 1:
            reason = "no user header" if not credentials.user else "repeated user header"
            raise AuthRefused(reason, "the proxy did not say who signed in")
        user = credentials.user[0].strip()
        if not user or len(user) > MAX_USER_CHARS or not user.isprintable() or "{" in user:
            raise AuthRefused("bad user header", "the proxy's user header is not a user name")
        return Principal(f"user:{user}", user)

    def admits(self, principal: Principal) -> bool:
        return principal.subject.startswith("user:")
