"""SIGHUP: the configuration read again and applied without dropping a connection.

What may change live (:func:`~gateway.reload.live_config`) goes into a new runtime
that the gateway swaps in; what needs a restart is kept and named in the log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from .config import Config
from .errors import ConfigError
from .reload import live_config
from .runtime import Runtime
from .systemd import Notifier

__all__ = ["Reloader"]

_log: Any = structlog.get_logger("gateway.server")


class Reloader:
    """Reads the configuration again with ``source`` and hands the result to ``swap``,
    which makes it the runtime in force, then to ``configure_logs`` (level, secrets to
    mask). ``error`` is the last failure, or ""."""

    def __init__(
        self,
        source: Callable[[], Config],
        swap: Callable[[Config], Runtime],
        notifier: Notifier,
        *,
        configure_logs: Callable[[Config], None] | None = None,
    ) -> None:
        self._source, self._swap, self._notifier = source, swap, notifier
        self._configure_logs = configure_logs  # the process's logging, when it is this gateway's to set
        self.error = ""

    def reload(self, current: Config, status: Callable[[], str]) -> None:
        """Apply what can change live over ``current``; report the rest, or the failure."""
        self._notifier.notify("RELOADING=1", "STATUS=reloading configuration")
        try:
            new = self._source()
        except ConfigError as exc:
            self.error = exc.message
            _log.error("reload_failed", error=exc.message)
        else:
            self.error = ""
            cfg, needs_restart = live_config(current, new)
            runtime = self._swap(cfg)
            if self._configure_logs is not None:
                self._configure_logs(cfg)
            if needs_restart:
                _log.warning("reload_needs_restart", settings=list(needs_restart))
            _log.info(
                "config_reloaded", model=runtime.catalog.default.id, models=list(runtime.catalog.models),
                deployments=list(runtime.upstreams),
            )
        self._notifier.notify("READY=1", f"STATUS={status()}")
