"""Errors, and their one mapping to protocol error codes and exit codes.

Two families, never mixed: what a client is told, and why the gateway cannot start.

::

    GatewayError                 told to a client: code (ErrorCode), message, retryable
    ├── ProtocolError            a client's mistake (bad_request, too_large, busy, ...)
    └── UpstreamError            the provider failed (upstream_*, rate_limited)

    StartupError                 the gateway cannot start as configured; ``exit_code``
    │                            is 3 when trying again can help (``retry``), else 2
    └── ConfigError              the configuration is invalid; ``key`` names the setting (2)

Only :mod:`gateway.connection` and the modes turn GatewayErrors into frames and close
codes; only :mod:`gateway.cli` turns a StartupError into the process's exit code.
"""

from __future__ import annotations

import enum
import html
import math
import re
import urllib.parse

__all__ = [
    "EXIT_CONFIG",
    "EXIT_STARTUP",
    "MAX_RETRY_AFTER",
    "ConfigError",
    "ErrorCode",
    "GatewayError",
    "ProtocolError",
    "StartupError",
    "UpstreamError",
    "WITHHELD",
    "quotes_secret",
    "redact",
]

MAX_RETRY_AFTER = 3600.0
EXIT_CONFIG = 2  # a person must act: configuration, schema, missing dependency
EXIT_STARTUP = 3  # may pass by itself: an address in use, a directory not there yet


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXCEEDED = "budget_exceeded"
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
        resets_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = code in _RETRYABLE if retryable is None else retryable
        self.retry_after = _bounded_delay(retry_after)
        self.resets_at = resets_at  # budget_exceeded: when the budget starts again (epoch seconds)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ProtocolError(GatewayError):
    """A client sent something the protocol refuses; ``ref`` is its frame's ``id``."""

    def __init__(self, code: ErrorCode, message: str, *, ref: str | None = None) -> None:
        super().__init__(code, message)
        self.ref = ref
        self.frame_type: str | None = None  # the refused frame's type, when it had one


class UpstreamError(GatewayError):
    """The upstream provider failed; ``status`` is its HTTP status, if any.

    ``detail`` is the provider's own text (its error message), shown after
    ``message``; :meth:`redact` makes both safe to show before anyone sees them.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        detail: str = "",
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        asked_wait: float | None = None,
    ) -> None:
        super().__init__(code, _joined(message, detail), retryable=retryable, retry_after=retry_after)
        self.summary = message
        self.detail = detail
        self.status = status
        self.asked_wait = asked_wait  # the provider's own Retry-After, None when it gave none

    def redact(self, *secrets: str) -> None:
        """Withhold the provider's text if it quotes a secret in any form; cap and clean both parts."""
        self.message = _joined(redact(self.summary, *secrets), redact(self.detail, *secrets) if self.detail else "")


def _joined(summary: str, detail: str) -> str:
    return f"{summary}: {detail}" if detail else summary


class StartupError(Exception):
    """The gateway could not start: ``reason`` for the log; ``retry`` is True when the
    cause may pass by itself (an address in use), False when a person must act first
    (a database newer than this code, a missing event loop, a bad configuration)."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry

    @property
    def exit_code(self) -> int:
        """What the process exits with: systemd restarts 3 (``RestartPreventExitStatus=2``)."""
        return EXIT_STARTUP if self.retry else EXIT_CONFIG


class ConfigError(StartupError):
    """The configuration is invalid; ``key`` names the offending setting (or variable)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}", retry=False)
        self.key = key

    @property
    def message(self) -> str:
        return self.reason


def _bounded_delay(seconds: float | None) -> float | None:
    """A retry delay fit to send: finite, 0..MAX_RETRY_AFTER, millisecond precision."""
    if seconds is None:
        return None
    if not math.isfinite(seconds):
        return MAX_RETRY_AFTER if seconds > 0 else 0.0
    return round(min(max(seconds, 0.0), MAX_RETRY_AFTER), 3)


# Things that look like credentials: OpenAI/Anthropic/OpenRouter style keys,
# bearer tokens, and long opaque runs of key-ish characters.
_SECRET_PATTERNS = re.compile(
    r"(?<![A-Za-z0-9])(?:sk|pk|rk|ak)-[A-Za-z0-9_\-*]{6,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-=]+"
    r"|\b[A-Za-z0-9_\-]{32,}\b"
)
_MAX_DETAIL = 300
_QUOTE_WINDOW = 8
WITHHELD = "[withheld: it quoted a credential]"


def redact(text: str, *secrets: str) -> str:
    """Return ``text`` fit for a client or a log: secrets removed, length capped.

    Text that quotes any ``secret`` in a form a replacement cannot catch (a
    middle slice, another case, URL- or HTML-encoded, spaced out) is withheld
    whole: see :func:`quotes_secret`. Otherwise the configured key and every
    fragment of four characters or more of it at either end are removed (OpenAI
    echoes masked keys like ``sk-abc***wxyz``), as well as anything shaped like
    a key.
    """
    for secret in secrets:
        if not secret:
            continue
        if quotes_secret(text, secret):
            return WITHHELD
        text = text.replace(secret, "[redacted]")
        for n in range(len(secret) - 1, 3, -1):
            text = text.replace(secret[:n], "[redacted]").replace(secret[-n:], "[redacted]")
    text = _SECRET_PATTERNS.sub("[redacted]", text)
    text = " ".join(text.split())
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 1] + "…"
    return text


def _normal(text: str) -> str:
    """``text`` decoded (URL, HTML entities, up to three layers), case-folded, letters and digits only."""
    for _ in range(3):
        decoded = html.unescape(urllib.parse.unquote_plus(text))
        if decoded == text:
            break
        text = decoded
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def quotes_secret(text: str, secret: str) -> bool:
    """Whether ``text`` holds any run of 8 letters and digits of ``secret``, compared
    decoded, case-insensitively, ignoring spaces and punctuation (shorter secrets: never)."""
    key = _normal(secret)
    if len(key) < _QUOTE_WINDOW:
        return False
    haystack = _normal(text)
    return any(key[i : i + _QUOTE_WINDOW] in haystack for i in range(len(key) - _QUOTE_WINDOW + 1))
