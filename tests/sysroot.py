"""A real systemd (the host's, 252 on Debian 12) booted as PID 1 of private namespaces.

:class:`Sysroot` runs ``tests/deploy/boot-systemd.sh`` under ``unshare --pid --fork
--mount --uts --ipc --net --cgroup``: systemd boots over an overlay of the host's ``/``
whose upper layer is a tmpfs, in a cgroup2 subtree of its own and a network namespace
with only a loopback. It takes about half a second, writes nothing to the disk and is
gone at :meth:`Sysroot.close`. Commands run inside with ``nsenter`` (:meth:`run`);
files inside are reached through ``/proc/PID1/root`` (:meth:`path`); TCP connections
to the namespace's loopback are opened from a thread that joined its network namespace
(:meth:`connect`), so asyncio clients in the test can talk to services inside.

Needs root, ``unshare``/``nsenter`` (util-linux), ``/lib/systemd/systemd`` and a
cgroup2 mount; :func:`missing` says what is absent, for a skip reason.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Sysroot", "build_wheelhouse", "missing", "shared_wheelhouse"]

HERE = Path(__file__).resolve().parent
BOOT = HERE / "deploy" / "boot-systemd.sh"
SYSTEMD = Path("/lib/systemd/systemd")
CLONE_NEWNET = 0x40000000
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_LESS": "",
    "TERM": "dumb",
}


def _cgroup2() -> Path | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return Path(fields[4])
    return None


def missing() -> str | None:
    """Why a systemd can't be booted here, or None if it can."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install util-linux)"
    if not SYSTEMD.exists():
        return "no /lib/systemd/systemd (apt-get install systemd)"
    if _cgroup2() is None:
        return "no cgroup2 mount on this host"
    return None


def build_wheelhouse(repo: Path, dest: Path) -> Path:
    """Wheels of the checkout and its dependencies, via the installer (needs PyPI)."""
    result = subprocess.run(
        ["bash", str(repo / "systemd" / "install.sh"), "wheelhouse", str(dest)],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"install.sh wheelhouse failed:\n{result.stdout}\n{result.stderr}")
    return dest


_wheelhouses: dict[Path, Path] = {}


def shared_wheelhouse(repo: Path, tmp_path_factory: Any) -> Path:
    """One wheelhouse per test session (building it takes ~10 s), for every module."""
    if repo not in _wheelhouses:
        _wheelhouses[repo] = build_wheelhouse(repo, tmp_path_factory.mktemp("wheelhouse"))
    return _wheelhouses[repo]


def _join_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
    finally:
        os.close(fd)


class Sysroot:
    """systemd as PID 1 of new namespaces; see the module docstring."""

    def __init__(self, run_dir: Path, binds: Iterable[Path] = ()) -> None:
        self.run_dir = run_dir
        self.binds = [Path(b).resolve() for b in binds]
        self.console = run_dir / "console.log"
        self.pid1 = 0
        self._unshare: subprocess.Popen[bytes] | None = None
        self._cgroup: Path | None = None
        self._net: concurrent.futures.ThreadPoolExecutor | None = None

    # lifecycle

    def boot(self, timeout: float = 30) -> None:
        cg2 = _cgroup2()
        assert cg2 is not None
        self._cgroup = cg2 / f"gateway-test-{os.getpid()}-{time.monotonic_ns()}"
        self._cgroup.mkdir()
        (self.run_dir / "ovl").mkdir(parents=True, exist_ok=True)
        # Move into the new cgroup first: it becomes the root of the cgroup namespace.
        script = 'echo $$ > "$1/cgroup.procs" && shift && exec unshare --pid --fork --mount --uts --ipc --net --cgroup "$@"'
        with self.console.open("wb") as console:
            self._unshare = subprocess.Popen(
                ["sh", "-c", script, "sh", str(self._cgroup), "bash", str(BOOT), str(self.run_dir),
                 *map(str, self.binds)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        while not self.pid1:
            self._check_alive(deadline)
            try:
                self.pid1 = int(children.read_text().split()[0])
            except (OSError, IndexError, ValueError):
                time.sleep(0.02)
        private = Path(f"/proc/{self.pid1}/root/run/systemd/private")
        while not private.exists():
            self._check_alive(deadline)
            time.sleep(0.05)
        state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=timeout).stdout.strip()
        if state != "running":
            failed = self.run("systemctl", "--failed", "--no-pager", check=False).stdout
            raise RuntimeError(f"system state {state!r}:\n{failed}\n{self.console.read_text()[-3000:]}")

    def _check_alive(self, deadline: float) -> None:
        assert self._unshare is not None
        if self._unshare.poll() is not None:
            raise RuntimeError(f"systemd did not boot:\n{self.console.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"systemd did not boot in time:\n{self.console.read_text()[-3000:]}")

    def close(self) -> None:
        """Power off (or kill PID 1, which ends the whole PID namespace); remove the cgroup."""
        if self._net is not None:
            self._net.shutdown(wait=False, cancel_futures=True)
        ush = self._unshare
        if ush is not None and ush.poll() is None:
            if self.pid1:
                self.run("systemctl", "poweroff", check=False, timeout=10)
            try:
                ush.wait(10)
            except subprocess.TimeoutExpired:
                if self.pid1:
                    os.kill(self.pid1, signal.SIGKILL)
                try:
                    ush.wait(10)
                except subprocess.TimeoutExpired:
                    ush.kill()
                    ush.wait()
        if self._cgroup is not None and self._cgroup.exists():
            for path in sorted(self._cgroup.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if path.is_dir():
                    _rmdir(path)
            _rmdir(self._cgroup)

    # inside

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30, input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside (all namespaces, root and working directory of PID 1)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "-r", "-w", *cmd],
            capture_output=True, text=True, timeout=timeout, input=input,
            env={**INSIDE_ENV, **(env or {})},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def path(self, inside: str) -> Path:
        """A path inside, reached from the host (writes go to the overlay's tmpfs)."""
        return Path(f"/proc/{self.pid1}/root") / inside.lstrip("/")

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def journal(self, unit: str, *args: str) -> list[dict[str, Any]]:
        """``journalctl -u UNIT -o json`` as a list of entries."""
        out = self.run("journalctl", "-u", unit, "-o", "json", "--no-pager", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def wait_for(self, what: str, predicate: Any, timeout: float = 30, interval: float = 0.1) -> Any:
        """Poll ``predicate()`` until it returns something truthy (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(interval)

    # the namespace's network

    def connect(self, port: int, host: str = "127.0.0.1", timeout: float = 30) -> socket.socket:
        """A TCP connection to ``host:port`` inside, opened from a thread in its network namespace."""
        if self._net is None:
            self._net = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sysroot-netns",
                initializer=_join_netns, initargs=(f"/proc/{self.pid1}/ns/net",),
            )
        return self._net.submit(socket.create_connection, (host, port), timeout).result(timeout + 5)

    def http_get(self, port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
        """A bare HTTP/1.0 GET inside; (status, body)."""
        with self.connect(port, timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass

