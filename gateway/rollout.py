"""``gateway rollout``: restart the instances of a cluster one at a time.

Each instance (a ``gateway@N`` unit) is restarted with ``systemctl restart``, which
returns once the new process told systemd it is ready; then its ``/readyz`` must
answer 200 before the next one is restarted. Meanwhile the instance being restarted
closes its sockets with 1012 and its clients resume on the others (through Caddy).
The rollout stops at the first instance that does not come back, leaving the rest
untouched.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

__all__ = ["active_instances", "http_address", "rollout"]

PATTERN = "gateway@*.service"
Run = Callable[[Sequence[str], float], subprocess.CompletedProcess[str]]


def _run(command: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)


def active_instances(systemctl: str = "systemctl", run: Run = _run) -> list[str]:
    """The active ``gateway@*`` units, in order."""
    listed = run([systemctl, "list-units", "--type=service", "--state=active", "--plain", "--no-legend", PATTERN], 30)
    return sorted(line.split()[0] for line in listed.stdout.splitlines() if line.strip())


def http_address(unit: str, systemctl: str = "systemctl", run: Run = _run) -> str | None:
    """The instance's HTTP listener, from its unit's environment (GATEWAY_HTTP_ADDR)."""
    shown = run([systemctl, "show", "--property=Environment", "--value", unit], 30)
    for item in shown.stdout.split():
        name, _, value = item.partition("=")
        if name == "GATEWAY_HTTP_ADDR" and value:
            return value
    return None


def _ready(address: str, timeout: float) -> bool:
    """Whether ``http://address/readyz`` answers 200 within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/readyz", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def rollout(
    units: Sequence[str],
    *,
    timeout: float,
    say: Callable[[str], None],
    systemctl: str = "systemctl",
    run: Run = _run,
) -> bool:
    """Restart ``units`` one at a time, each once the previous one is ready; whether all came back."""
    if not units:
        say("no active gateway@ instance to restart")
        return False
    if len(units) == 1:
        say(f"only one instance ({units[0]}): its clients wait for it while it restarts")
    for unit in units:
        say(f"{unit}: restarting (its clients resume on the other instances)")
        started = time.monotonic()
        restarted = run([systemctl, "restart", unit], timeout)
        if restarted.returncode != 0:
            say(f"{unit}: restart failed: {(restarted.stderr or restarted.stdout).strip()[:300]}; stopping here")
            return False
        address = http_address(unit, systemctl, run)
        if address is not None and not _ready(address, max(1.0, timeout - (time.monotonic() - started))):
            say(f"{unit}: not ready at http://{address}/readyz within {timeout:g} s; stopping here")
            return False
        say(f"{unit}: ready again after {time.monotonic() - started:.1f} s")
    say(f"rolled out {len(units)} instance(s)")
    return True
