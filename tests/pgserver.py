"""A real PostgreSQL for the tests: Debian's package, a temporary cluster on loopback.

PostgreSQL refuses to run as root, so the cluster belongs to the ``postgres`` user
(created by the package) when the tests run as root, and to the current user
otherwise. One server per test session, on a free port, password authentication
(scram-sha-256) for role ``gateway``; each test gets a database of its own. The
server is stopped by its PID file's process at the end of the session.
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
from pathlib import Path

import psycopg

__all__ = ["PASSWORD", "PgServer", "find_bindir"]

PASSWORD = "pg-test-password-7f3a9c"
ROLE = "gateway"


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (``/usr/lib/postgresql/N/bin``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory; ``url(db)`` reaches a database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
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
