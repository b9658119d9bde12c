"""``[auth] mode = jwt``: clients present a JSON Web Token another service issued (pure).

Signed with an HS256 secret the gateway shares with the issuer, or with a key of the
issuer's JWKS (asymmetric algorithms only: an HS token is refused there, so a public
key can never be used as an HMAC secret). ``exp`` and ``sub`` are required; ``iss``
and ``aud`` are checked when configured; ``alg: none`` is never accepted. Verification
is PyJWT's; where keys come from is a :class:`KeySource`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jwt

from .base import MAX_SUBJECT_CHARS, AuthRefused, Credentials, Principal, fingerprint

__all__ = ["ASYMMETRIC", "JwtAuthenticator", "KeySource", "SharedSecret"]

ASYMMETRIC: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_JWT_CHARS = 8192

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.MissingRequiredClaimError, "missing claim"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
)


class KeySource(Protocol):
    algorithms: tuple[str, ...]

    async def key_for(self, kid: str | None, algorithm: str) -> Any:
        """The key that verifies a token with this header; AuthRefused if there is none."""


class SharedSecret:
    """One HS256 secret (at least 32 bytes), shared with the token issuer."""

    algorithms: tuple[str, ...] = ("HS256",)

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    async def key_for(self, kid: str | None, algorithm: str) -> Any:
        return self._secret


class JwtAuthenticator:
    mode = "jwt"
    required = True
    at_handshake = False

    def __init__(self, keys: KeySource, *, issuer: str = "", audience: str = "", leeway: float = 10.0) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway

    async def authenticate(self, credentials: Credentials) -> Principal:
        token = credentials.token
        if not token:
            raise AuthRefused("no token", "send hello with a token first")
        if len(token) > MAX_JWT_CHARS:
            raise AuthRefused("malformed token", "the token is not valid (too long)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthRefused("malformed token", "the token is not valid (malformed)") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if not isinstance(algorithm, str) or algorithm not in self._keys.algorithms:
            raise AuthRefused("algorithm not allowed", "the token is not valid (algorithm not allowed)")
        key = await self._keys.key_for(kid if isinstance(kid, str) else None, algorithm)
        return self._principal(self._claims(token, key, algorithm), token)

    def admits(self, principal: Principal) -> bool:
        """A JWT's own expiry still ends its socket; a new issuer or key set does not."""
        return principal.subject.startswith("jwt:") and principal.expires_at is not None

    def _claims(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[algorithm], issuer=self._issuer or None,
                audience=self._audience or None, leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": bool(self._audience)},
            )
        except jwt.PyJWTError as exc:
            reason = next((r for kind, r in _REASONS if isinstance(exc, kind)), "invalid token")
            raise AuthRefused(reason, f"the token is not valid ({reason})") from None
        except (TypeError, ValueError):  # a key that does not fit the algorithm
            raise AuthRefused("bad key", "the token is not valid (bad key)") from None
        return claims

    def _principal(self, claims: dict[str, Any], token: str) -> Principal:
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_CHARS - 4 or not sub.isprintable():
            raise AuthRefused("bad subject", "the token is not valid (bad subject)")
        name = next((n for n in (claims.get("name"), claims.get("preferred_username")) if _displayable(n)), sub)
        assert isinstance(name, str)
        return Principal(f"jwt:{sub}", name, expires_at=float(claims["exp"]), credential=fingerprint(token))


def _displayable(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable()
