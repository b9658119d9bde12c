"""A real Redis for the tests: Debian's package, a throwaway server on loopback.

One server per test session, on a free port, with a password (``requirepass``) that
the gateway reads from a file, and no persistence (no RDB snapshots, no AOF): a
restart loses every key, which is what the fault tests want. The server daemonizes
and is stopped by its PID file's process; :meth:`RedisServer.restart` brings it back
on the same port, :meth:`RedisServer.kill` simulates a crash.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from ports import free_port

__all__ = ["REDIS_PASSWORD", "RedisServer", "find_redis"]

REDIS_PASSWORD = "redis-test-password-41c9e2"
HOST = "127.0.0.1"
TIMEOUT = 10.0  # seconds to start or stop


def find_redis() -> str | None:
    """The ``redis-server`` executable on PATH (Debian's ``/usr/bin/redis-server``)."""
    return shutil.which("redis-server")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie counts as gone (a daemon's reaper may be slow or absent)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class RedisServer:
    """One Redis server in a temporary directory; ``url`` reaches database 0 (no password in it)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="gateway-redis-"))
        self.port = free_port()
        self.pidfile = self.root / "redis.pid"
        self.logfile = self.root / "redis.log"
        self.password_file = self.root / "redis_password"
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(REDIS_PASSWORD + "\n")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's PID from its PID file, if it has one and that process is a running Redis."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(self.pidfile.read_text())
            if Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server" and _alive(pid):
                return pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def client(self) -> redis.Redis:
        """A new sync client, authenticated; close it (``with server.client() as c:``)."""
        return redis.Redis(
            host=HOST, port=self.port, password=REDIS_PASSWORD,
            socket_timeout=5, socket_connect_timeout=5, decode_responses=False,
        )

    def start(self) -> None:
        """Launch the server and wait until it answers PING."""
        self.pidfile.unlink(missing_ok=True)  # stale after a crash
        subprocess.run(
            [
                self.binary, "--save", "", "--appendonly", "no", "--daemonize", "yes",
                "--pidfile", str(self.pidfile), "--dir", str(self.root), "--bind", HOST,
                "--port", str(self.port), "--requirepass", REDIS_PASSWORD, "--logfile", str(self.logfile),
            ],
            check=True, capture_output=True, timeout=TIMEOUT,
        )
        deadline = time.monotonic() + TIMEOUT
        with self.client() as client:
            while True:  # until it answers (process startup; it has no readiness signal to wait on)
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping() and self.running:
                        return
                if time.monotonic() > deadline:
                    log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
                    raise RuntimeError(f"redis-server did not start: {log}")
                time.sleep(0.05)

    def _signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the server and wait until it is gone; nothing if it does not run."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + TIMEOUT
        while _alive(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server (pid {pid}) did not exit after {signum.name}")
            time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)  # a killed server leaves it behind

    def stop(self) -> None:
        """SIGTERM the server and wait until it has exited; idempotent."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the server (a crash) and wait until it is gone."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port; every key is lost."""
        self.stop()
        self.start()

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def kill_pubsub_clients(self) -> int:
        """Disconnect every client in Pub/Sub mode (``CLIENT KILL TYPE pubsub``); how many."""
        with self.client() as client:
            return int(client.client_kill_filter(_type="pubsub"))

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
