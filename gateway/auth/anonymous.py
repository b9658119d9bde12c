"""``[auth] mode = none``: nobody signs in, yet each browser keeps its own conversations (pure).

A client may present a key of its own (the page makes a random one of 32 bytes and
keeps it): its subject is ``anon:`` and 24 hex digits of the key's SHA-256, so whoever
holds the key is that subject, and nobody else can list its conversations (as long as
the key is hard to guess: that is the client's choice). A client that presents
nothing (a script, plain-text mode) is ``anonymous``: all such clients share it, so
it has no conversation list (each of its conversations is reached by id alone).
"""

from __future__ import annotations

import hashlib

from .base import ANONYMOUS, AuthRefused, Credentials, Principal, fingerprint

__all__ = ["OpenAccess"]

MAX_KEY_CHARS = 256


class OpenAccess:
    mode = "none"
    required = False
    at_handshake = False

    async def authenticate(self, credentials: Credentials) -> Principal:
        key = credentials.token
        if not key:
            return ANONYMOUS
        if len(key) > MAX_KEY_CHARS or not key.isprintable():
            raise AuthRefused("bad anonymous key", f"an anonymous key is at most {MAX_KEY_CHARS} printable characters")
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return Principal(f"anon:{digest[:24]}", "anonymous", credential=fingerprint(key))

    def admits(self, principal: Principal) -> bool:
        return principal.subject == ANONYMOUS.subject or principal.subject.startswith("anon:")
