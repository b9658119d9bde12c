"""A real PostgreSQL for the tests: Debian's package, a temporary cluster on loopback.

PostgreSQL refuses to run as root, so the cluster belongs to the ``postgres`` user
(created by the package) when the tests run as root, and to the current user
otherwise. One server per test session, on a free port, password authentication
(scram-sha-256) for role ``gateway``; each test gets a database of its own. The
server is stopped by its PID file's process at the end of the session. :class:`PgBouncer`
puts Debian's PgBouncer in transaction mode in front of it.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from ports import free_port

__all__ = ["PASSWORD", "PgBouncer", "PgServer", "find_bindir"]

PASSWORD = "pg-test-password-7f3a9c"
ROLE = "gateway"


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (``/usr/lib/postgresql/N/bin``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PgServer:
    """One PostgreSQL cluster in a temporary directory; ``url(db)`` reaches a database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._owner = "postgres" if os.geteuid() == 0 else getpass.getuser()
        self._names = itertools.count(1)

    def _as_owner(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self._owner, "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        shutil.chown(self.root, self._owner)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        shutil.chown(pwfile, self._owner)
        self._as_owner(
            self.bindir / "initdb", "-D", str(self.data), "-U", ROLE, "--pwfile", str(pwfile),
            "-A", "scram-sha-256", "-E", "UTF8", "--locale", "C.UTF-8",
        )
        pwfile.unlink()
        self.pg_ctl("start")

    def pg_ctl(self, action: str) -> None:
        """``start``, ``stop`` or ``restart`` (fast shutdown), waiting until done."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        args = ["-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60"]
        if action in ("stop", "restart"):
            args += ["-m", "fast"]
        if action in ("start", "restart"):
            args += ["-o", options]
        self._as_owner(self.bindir / "pg_ctl", action, *args)

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{ROLE}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its name."""
        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.pg_ctl("stop")
        shutil.rmtree(self.root, ignore_errors=True)


class PgBouncer:
    """PgBouncer in transaction mode in front of ``server``, on a free port, for role ``gateway``."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pgbouncer-"))
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.root / "users").write_text(f'"{ROLE}" "{PASSWORD}"\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.root / 'users'}\n"
            "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n"
            f"logfile = {self.root / 'log'}\n"
        )
        shutil.chown(self.root, self.server._owner)
        for name in ("users", "pgbouncer.ini"):
            shutil.chown(self.root / name, self.server._owner)
        command = ["pgbouncer", str(self.root / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.server._owner, "--", *command]
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:  # until it accepts connections (it has no readiness signal of its own)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {(self.root / 'log').read_text(errors='replace')}")
            time.sleep(0.05)

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)
