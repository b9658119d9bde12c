"""A real Caddy (Debian 12's 2.6.2) on the project's Caddyfile, as a child process of a
test: its own XDG directories, loopback-only unprivileged ports, its admin API on a free
loopback port, stopped by PID."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

from conftest import ROOT, TIMEOUT
from ports import free_port

__all__ = ["CADDYFILE", "CADDY_IDLE", "Caddy"]

CADDYFILE = ROOT / "Caddyfile"
CADDY_IDLE = 2  # Caddy's HTTP idle timeout in the tests (the default is 5 minutes)


class Caddy:
    """A ``caddy run`` child process on the project's Caddyfile."""

    def __init__(self, tmp: Path) -> None:
        self.https_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.origin = f"https://localhost:{self.https_port}"
        self.data = tmp / "caddy-data"
        self.log = tmp / "caddy.log"
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp),
            "XDG_DATA_HOME": str(self.data),
            "XDG_CONFIG_HOME": str(tmp / "caddy-config"),
            "GATEWAY_SITE": "localhost",
            "CADDY_BIND": "127.0.0.1",
            "CADDY_HTTPS_PORT": str(self.https_port),
            "CADDY_HTTP_PORT": str(self.http_port),
            "CADDY_ADMIN": f"127.0.0.1:{self.admin_port}",
            "CADDY_IDLE_TIMEOUT": f"{CADDY_IDLE}s",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssl: ssl.SSLContext | None = None

    def start(self, ws_upstream: str, http_upstream: str) -> None:
        self.env |= {"GATEWAY_WS_UPSTREAM": ws_upstream, "GATEWAY_HTTP_UPSTREAM": http_upstream}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["caddy", "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        root = self.data / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        deadline = time.monotonic() + TIMEOUT * 2
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"caddy exited: {self.log.read_text()[-2000:]}"
            if root.exists():
                try:
                    ctx = ssl.create_default_context(cafile=str(root))
                    with socket.create_connection(("127.0.0.1", self.https_port), timeout=1) as raw:
                        with ctx.wrap_socket(raw, server_hostname="localhost"):
                            self.ssl = ctx
                            return
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.1)
        raise AssertionError(f"caddy did not serve TLS in time: {self.log.read_text()[-2000:]}")

    def reload(self) -> None:
        """``caddy reload`` through the admin API, as ``systemctl reload caddy`` does."""
        subprocess.run(
            ["caddy", "reload", "--config", str(CADDYFILE), "--adapter", "caddyfile",
             "--address", f"127.0.0.1:{self.admin_port}", "--force"],
            env=self.env, check=True, capture_output=True, timeout=TIMEOUT * 2,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
