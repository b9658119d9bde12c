"""``[auth] mode = tokens``: clients present one of the tokens of a file (pure).

The file has one token per line, as ``NAME TOKEN`` (subject ``token:NAME``) or a bare
``TOKEN`` (subject ``token:`` and 12 hex digits of its SHA-256); ``#`` starts a comment.
Only SHA-256 digests are kept, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from .base import AuthRefused, Credentials, Principal, fingerprint

__all__ = ["MIN_TOKEN_CHARS", "TokenAuthenticator", "parse_tokens", "token_digest"]

MIN_TOKEN_CHARS = 16
_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_tokens(text: str) -> dict[str, str]:
    """The digest → name map of a tokens file; ValueError naming the line that is wrong."""
    tokens: dict[str, str] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise ValueError(f"line {number}: expected NAME TOKEN or TOKEN")
        token = fields[-1]
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"line {number}: tokens must be at least {MIN_TOKEN_CHARS} characters")
        digest = token_digest(token)
        name = fields[0] if len(fields) == 2 else digest[:12]
        if not _NAME.fullmatch(name):
            raise ValueError(f"line {number}: a name is 1 to 64 of A-Z a-z 0-9 . _ @ + -")
        if digest in tokens or name in names:
            raise ValueError(f"line {number}: this {'token' if digest in tokens else 'name'} is already in the file")
        tokens[digest] = name
        names.add(name)
    if not tokens:
        raise ValueError("the file holds no token")
    return tokens


class TokenAuthenticator:
    mode = "tokens"
    required = True
    at_handshake = False

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)  # digest -> name

    async def authenticate(self, credentials: Credentials) -> Principal:
        token = credentials.token
        if not token:
            raise AuthRefused("no token", "send hello with a valid token first")
        digest = token_digest(token)
        name = next((n for known, n in self._tokens.items() if hmac.compare_digest(digest, known)), None)
        if name is None:
            raise AuthRefused("unknown token", "this token is not valid")
        return Principal(f"token:{name}", name, credential=fingerprint(token), proof=digest)

    def admits(self, principal: Principal) -> bool:
        name = self._tokens.get(principal.proof)
        return name is not None and principal.subject == f"token:{name}"
