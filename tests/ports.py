"""Loopback ports for servers a test starts itself (Caddy, PostgreSQL, Redis, a gateway
restarted at the same address)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_FLOOR = 10_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A loopback port free right now, below the kernel's range for outgoing connections:
    between this call and the server's bind, no client connection can be given it (a
    port the kernel handed out as port 0 could be, and was: "address already in use")."""
    top = _ephemeral_start()
    for _ in range(200):
        port = random.randrange(_FLOOR, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {_FLOOR}..{top}")
