"""The public keys of a token issuer, from its JWKS URL, cached.

Fetched with the gateway's one aiohttp session when first needed; fetched again when a
token names a key id the cache does not hold (a rotation), at most once every
``REFETCH_INTERVAL`` seconds whatever tokens arrive, and when the cache is older than
``MAX_AGE``. A failed fetch keeps the keys already known.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

import aiohttp
import jwt
import orjson
import structlog

from .base import AuthRefused
from .jwt_auth import ASYMMETRIC

__all__ = ["JwksKeys", "Key", "keys_of"]

REFETCH_INTERVAL = 30.0
MAX_AGE = 600.0
MAX_JWKS_BYTES = 1 << 20
_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}

_log: Any = structlog.get_logger("gateway.auth")


class Key(NamedTuple):
    key: jwt.PyJWK
    alg: str | None  # the algorithm the JWK pins, if it does

    def fits(self, algorithm: str) -> bool:
        """Whether a token signed with ``algorithm`` may be verified with this key."""
        if self.alg is not None:
            return self.alg == algorithm
        return self.key.key_type == _KTY.get(algorithm[:2])


def keys_of(document: Any) -> dict[str | None, Key]:
    """The signing keys of a JWKS document by key id; symmetric keys, encryption keys and
    keys PyJWT cannot use are left out. ValueError if the document is not a JWKS."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no keys list)")
    keys: dict[str | None, Key] = {}
    for item in document["keys"]:
        if not isinstance(item, dict) or item.get("kty") == "oct" or item.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(item)
        except jwt.PyJWTError:
            continue
        alg = item.get("alg") if isinstance(item.get("alg"), str) else None
        if key.algorithm_name in ASYMMETRIC:
            keys[item.get("kid") if isinstance(item.get("kid"), str) else None] = Key(key, alg)
    return keys


class JwksKeys:
    algorithms: tuple[str, ...] = ASYMMETRIC

    def __init__(self, url: str, session: aiohttp.ClientSession, *, clock: Any = time.monotonic) -> None:
        self._url = url
        self._session = session
        self._clock = clock
        self._keys: dict[str | None, Key] = {}
        self._fetched_at: float | None = None  # the last attempt, successful or not
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None, algorithm: str) -> Any:
        key = self._find(kid)
        if key is None or self._stale():
            await self._refresh()
            key = self._find(kid)
        if key is None:
            raise AuthRefused("unknown key", "the token is not valid (unknown key)")
        if not key.fits(algorithm):
            raise AuthRefused("algorithm not allowed", "the token is not valid (algorithm not allowed)")
        return key.key.key

    def _find(self, kid: str | None) -> Key | None:
        if kid is None:  # a token without kid: only unambiguous with one key
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _stale(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at > MAX_AGE

    async def _refresh(self) -> None:
        async with self._lock:  # concurrent misses share one fetch
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < REFETCH_INTERVAL:
                return
            self._fetched_at = now
            try:
                self._keys = await self._fetch()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                _log.warning("jwks_fetch_failed", url=self._url, error=str(exc) or type(exc).__name__)
                return
            self._loaded_at = self._clock()
            _log.info("jwks_fetched", url=self._url, keys=len(self._keys))

    async def _fetch(self) -> dict[str | None, Key]:
        timeout = aiohttp.ClientTimeout(total=10)
        # The shared session does not inflate (it bounds what upstreams send): ask for none.
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        async with self._session.get(self._url, timeout=timeout, headers=headers) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise ValueError("the JWKS document came compressed although identity was asked for")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("the JWKS document is larger than 1 MiB")
        try:
            return keys_of(orjson.loads(bytes(body)))
        except orjson.JSONDecodeError:
            raise ValueError("the JWKS document is not JSON") from None
