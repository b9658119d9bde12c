"""What a reload may change live, and what needs a restart (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import Config

__all__ = ["FIXED_ON_RELOAD", "live_config"]

# Settings bound at start-up (a whole section, or one key of it): a reload reports
# changes to them instead of applying them.
FIXED_ON_RELOAD = (
    "server.ws_addr", "server.http_addr", "server.state_dir", "server.static_dir", "store",
    "server.compression", "server.http_idle_timeout", "limits.max_message_bytes", "limits.write_limit",
    "server.ping_interval", "log.format", "limits.socket_send_buffer", "cluster", "stt", "server.event_loop",
    "server.gc_threshold",
)


def live_config(old: Config, new: Config) -> tuple[Config, tuple[str, ...]]:
    """``new`` with the settings bound at start-up kept from ``old``, and the names of
    those that changed (they need a restart)."""
    needs_restart = tuple(name for name in FIXED_ON_RELOAD if _get(new, name) != _get(old, name))
    for name in FIXED_ON_RELOAD:
        new = _put(new, name, _get(old, name))
    return new, needs_restart


def _get(config: Config, name: str) -> Any:
    section, _, key = name.partition(".")
    value = getattr(config, section)
    return getattr(value, key) if key else value


def _put(config: Config, name: str, value: Any) -> Config:
    section, _, key = name.partition(".")
    if key:
        value = dataclasses.replace(getattr(config, section), **{key: value})
    return dataclasses.replace(config, **{section: value})
