"""Errors, and their one mapping to protocol error codes.

::

    GatewayError                 code: ErrorCode, message for people, retryable
    ├── ConfigError              bad configuration (CLI exits 2)
    ├── ProtocolError            a client's mistake (bad_request, too_large, busy, ...)
    └── UpstreamError            the provider failed (upstream_*, rate_limited)

Only :mod:`gateway.connection` turns these into frames and close codes.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "ConfigError",
    "ErrorCode",
    "GatewayError",
    "ProtocolError",
    "UpstreamError",
    "redact",
]


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    RESUME_UNAVAILABLE = "resume_unavailable"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"


_RETRYABLE = frozenset(
    {
        ErrorCode.BUSY,
        ErrorCode.RATE_LIMITED,
        ErrorCode.UPSTREAM_TIMEOUT,
        ErrorCode.UPSTREAM_UNAVAILABLE,
        ErrorCode.OVERLOADED,
        ErrorCode.INTERNAL,
    }
)


class GatewayError(Exception):
    """Base class: carries a protocol error code and a message safe to show."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = code in _RETRYABLE if retryable is None else retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigError(GatewayError):
    """The configuration is invalid; ``key`` names the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, f"{key}: {message}", retryable=False)
        self.key = key


class ProtocolError(GatewayError):
    """A client sent something the protocol refuses; ``ref`` is its frame's ``id``."""

    def __init__(self, code: ErrorCode, message: str, *, ref: str | None = None) -> None:
        super().__init__(code, message)
        self.ref = ref


class UpstreamError(GatewayError):
    """The upstream provider failed; ``status`` is its HTTP status, if any."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, message, retryable=retryable, retry_after=retry_after)
        self.status = status


# Things that look like credentials: OpenAI/Anthropic/OpenRouter style keys,
# bearer tokens, and long opaque runs of key-ish characters.
_SECRET_PATTERNS = re.compile(
    r"(?<![A-Za-z0-9])(?:sk|pk|rk|ak)-[A-Za-z0-9_\-*]{6,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-=]+"
    r"|\b[A-Za-z0-9_\-]{32,}\b"
)
_MAX_DETAIL = 300


def redact(text: str, *secrets: str) -> str:
    """Return ``text`` fit for a client or a log: secrets removed, length capped.

    Providers echo the key they were given in their error messages (OpenAI does
    for short or malformed keys), so the configured key and every fragment of
    four characters or more of it at either end are removed, as well as
    anything shaped like a key.
    """
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, "[redacted]")
        for n in range(len(secret) - 1, 3, -1):
            text = text.replace(secret[:n], "[redacted]").replace(secret[-n:], "[redacted]")
    text = _SECRET_PATTERNS.sub("[redacted]", text)
    text = " ".join(text.split())
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 1] + "…"
    return text
