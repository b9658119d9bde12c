"""Structured logs: JSON lines in production, readable console in a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

__all__ = ["configure"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _scrubbed(renderer: Any, secrets: tuple[str, ...]) -> Any:
    """Remove ``secrets`` from each rendered line, tracebacks included (defence in depth)."""
    secrets = tuple(s for s in secrets if len(s) >= 4)
    if not secrets:
        return renderer

    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        line = str(renderer(logger, name, event))
        for secret in secrets:
            if secret in line:
                line = line.replace(secret, "[redacted]")
        return line

    return render


# Tracebacks without local variables: locals hold message text and request headers.
_tracebacks = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))


def _dumps(obj: Any, **kw: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


_SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def _journal_priority(renderer: Any) -> Any:
    """Prefix each line with ``<N>`` so journald records its real priority."""

    def render(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        priority = _SYSLOG_PRIORITY.get(str(event.get("level", "info")), 6)
        return f"<{priority}>{renderer(logger, name, event)}"

    return render


def configure(level: str, fmt: str, *, secrets: tuple[str, ...] = (), journal: bool = False) -> None:
    """Route structlog and the stdlib loggers (websockets, aiohttp) to stdout.

    ``journal``: stdout is journald's stream (``$JOURNAL_STREAM``), so lines carry
    syslog priority prefixes.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer(serializer=_dumps)
        shared.append(_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty(), exception_formatter=structlog.dev.plain_traceback  # never locals
        )
    renderer = _scrubbed(renderer, secrets)
    if journal:
        renderer = _journal_priority(renderer)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=False,  # a reload may change the level
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    # No caller lookup per record (logging's documented optimisation): no line here
    # shows it, and the lookup kept a frame object alive for each open connection.
    logging._srcfile = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # A client's broken handshake is its problem, not ours: no tracebacks for it.
    logging.getLogger("websockets").setLevel(max(_LEVELS[level], logging.WARNING))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
