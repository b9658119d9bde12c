"""The few pieces of systemd's protocols the gateway speaks, all no-ops elsewhere.

- ``sd_notify``: ``READY=1``, ``STATUS=…``, ``RELOADING=1``, ``STOPPING=1`` and
  ``WATCHDOG=1`` datagrams to ``$NOTIFY_SOCKET`` (see sd_notify(3)).
- The watchdog interval from ``$WATCHDOG_USEC`` (for this process: ``$WATCHDOG_PID``).
- Socket activation: listening sockets passed as fds 3… with ``$LISTEN_FDS``,
  named by ``$LISTEN_FDNAMES`` (see sd_listen_fds(3)).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "listen_sockets", "watchdog_interval"]

_FIRST_FD = 3


class Notifier:
    """Sends state changes to systemd; does nothing when not started by systemd."""

    def __init__(self, env: Mapping[str, str]) -> None:
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> None:
        """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=serving"``) as one datagram."""
        if self._address is None:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            pass  # systemd is gone or busy: nothing useful to do about it

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """How often to send ``WATCHDOG=1`` (half the timeout), or None when not asked to."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def listen_sockets(env: Mapping[str, str]) -> dict[str, socket.socket]:
    """Sockets passed by systemd, by name (``LISTEN_FDNAMES``, else ``fd3``, ``fd4``…)."""
    count = env.get("LISTEN_FDS", "")
    if not count.isdigit() or env.get("LISTEN_PID") != str(os.getpid()):
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":")
    sockets = {}
    for i in range(int(count)):
        fd = _FIRST_FD + i
        os.set_inheritable(fd, False)
        name = names[i] if i < len(names) and names[i] else f"fd{fd}"
        sockets[name] = socket.socket(fileno=fd)
    return sockets
