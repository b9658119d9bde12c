"""The authenticator a configuration asks for (``[auth] mode``)."""

from __future__ import annotations

import aiohttp

from ..config import Config
from .anonymous import OpenAccess
from .base import Authenticator
from .jwks import JwksKeys
from .jwt_auth import JwtAuthenticator, KeySource, SharedSecret
from .proxy import ProxyAuthenticator
from .tokens import TokenAuthenticator

__all__ = ["make_authenticator"]


def make_authenticator(config: Config, session: aiohttp.ClientSession | None) -> Authenticator:
    auth = config.auth
    if auth.mode == "tokens":
        return TokenAuthenticator(auth.tokens)
    if auth.mode == "proxy":
        return ProxyAuthenticator(auth.user_header, config.server.trusted_proxies)
    if auth.mode == "jwt":
        keys: KeySource
        if auth.jwks_url:
            if session is None:
                raise ValueError("fetching a JWKS needs the gateway's HTTP client session")
            keys = JwksKeys(auth.jwks_url, session)
        else:
            keys = SharedSecret(auth.jwt_secret)
        return JwtAuthenticator(keys, issuer=auth.jwt_issuer, audience=auth.jwt_audience, leeway=auth.jwt_leeway)
    return OpenAccess()
