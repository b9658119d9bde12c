"""What a reload may change live, and what needs a restart (pure)."""

from __future__ import annotations

import dataclasses

from .config import Config

__all__ = ["FIXED_ON_RELOAD", "live_config"]

# Settings bound at start-up: a reload reports changes to them instead of applying them.
FIXED_ON_RELOAD = (
    "ws_addr", "http_addr", "state_dir", "static_dir", "store", "compression", "http_idle_timeout",
    "max_message_bytes", "write_limit", "ping_interval", "log_format", "socket_send_buffer",
)


def live_config(old: Config, new: Config) -> tuple[Config, tuple[str, ...]]:
    """``new`` with the settings bound at start-up kept from ``old``, and the names of
    those that changed (they need a restart)."""
    needs_restart = tuple(name for name in FIXED_ON_RELOAD if getattr(new, name) != getattr(old, name))
    return dataclasses.replace(new, **{name: getattr(old, name) for name in FIXED_ON_RELOAD}), needs_restart
