"""The deployment files as shipped: systemd units, Caddyfile, installer.

Static checks with the real tools (``systemd-analyze verify`` and ``security``,
``caddy validate``/``adapt``/``fmt``, ``bash -n``, ``shellcheck``) and the installer
run for real into a ``DESTDIR`` (install, keep config, upgrade, rollback, uninstall).
No running systemd is needed; test_systemd_e2e.py boots one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sysroot
from conftest import ROOT

from gateway import config

SYSTEMD = ROOT / "systemd"
SERVICE = SYSTEMD / "gateway.service"
TEMPLATE = SYSTEMD / "gateway@.service"
SOCKETS = {"ws": SYSTEMD / "gateway-ws.socket", "http": SYSTEMD / "gateway-http.socket"}
CADDYFILE = ROOT / "Caddyfile"
INSTALL = SYSTEMD / "install.sh"
DEFAULTS = {s.name: s.default for s in config.SETTINGS}

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (apt-get install systemd)")
needs_caddy = pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (apt-get install caddy)")


def directives(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, every value of each key in order."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "m": 60}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min|m)?", value)
    assert match, value
    return float(match.group(1)) * units[match.group(2) or "s"]


# systemd units


def fake_release(tmp_path: Path) -> Path:
    """``systemd-analyze verify`` checks that ExecStart exists: a stand-in with the layout
    of /opt/gateway/current."""
    fake = tmp_path / "opt"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "gateway").write_text("#!/bin/sh\n")
    (fake / "bin" / "gateway").chmod(0o755)
    return fake


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    fake = fake_release(tmp_path)
    for unit in (SERVICE, *SOCKETS.values()):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/gateway/current", str(fake)))
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u.name) for u in (SERVICE, *SOCKETS.values()))],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@needs_analyze
def test_exposure_score_at_most_1_2() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=12", "--no-pager", str(SERVICE)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-1500:]
    score = re.search(r"Overall exposure level for gateway\.service: (\d+\.\d)", result.stdout)
    assert score and float(score.group(1)) <= 1.2, result.stdout[-300:]


@needs_analyze
def test_the_instance_template_verifies_and_is_as_confined(tmp_path: Path) -> None:
    fake = fake_release(tmp_path)
    instance = tmp_path / "gateway@2.service"  # %i = 2
    instance.write_text(TEMPLATE.read_text().replace("/opt/gateway/current", str(fake)))
    result = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=12", "--no-pager", str(instance)],
        capture_output=True, text=True, timeout=60,
    )
    score = re.search(r"Overall exposure level for gateway@2\.service: (\d+\.\d)", result.stdout)
    assert score and float(score.group(1)) <= 1.2, result.stdout[-300:]


def test_the_template_is_the_service_with_its_own_ports_and_no_sockets() -> None:
    service, template = directives(SERVICE), directives(TEMPLATE)
    assert "Requires" not in template and "Also" not in template
    assert template["Environment"][-1] == "GATEWAY_WS_ADDR=127.0.0.1:871%i GATEWAY_HTTP_ADDR=127.0.0.1:881%i"
    assert template["StateDirectory"] == ["gateway-%i"], "not under gateway.service's (another dynamic user's) directory"
    assert seconds(template["TimeoutStopSec"][0]) >= DEFAULTS["server.drain_timeout"] + 15
    different = {"Description", "After", "Environment", "StateDirectory", "WorkingDirectory", "Requires", "Also"}
    for key in set(service) | set(template):
        if key not in different:
            assert service.get(key) == template.get(key), key


def test_service_is_notify_supervised_and_drains_within_the_stop_timeout() -> None:
    d = directives(SERVICE)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert seconds(d["WatchdogSec"][0]) >= 5, "the gateway pings every WatchdogSec/2"
    assert d["Restart"] == ["on-failure"] and d["RestartPreventExitStatus"] == ["2"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert seconds(d["TimeoutStopSec"][0]) >= DEFAULTS["server.drain_timeout"] + 10
    assert d["ExecStart"] == ["/opt/gateway/current/bin/gateway serve --config %E/gateway/gateway.toml"]
    assert set(d["Requires"][0].split()) == {"gateway-ws.socket", "gateway-http.socket"}


def test_service_hardening_as_the_issue_asks() -> None:
    d = directives(SERVICE)
    assert d["DynamicUser"] == ["yes"]
    assert d["StateDirectory"] == ["gateway"] and d["ConfigurationDirectory"] == ["gateway"]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"]
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert d["SystemCallFilter"][0] == "@system-service"
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]
    assert d["MemoryMax"] and int(d["LimitNOFILE"][0]) >= 65536


def test_no_secret_in_the_unit() -> None:
    d = directives(SERVICE)
    assert d["LoadCredential"] == ["api_key:/etc/gateway/api_key"]
    env = " ".join(d.get("Environment", []))
    assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", env, re.I), env
    assert "EnvironmentFile" not in d
    assert not re.search(r"sk-|api[_-]?key", " ".join(d["ExecStart"]), re.I)


def test_sockets_name_their_fds_and_match_the_gateways_defaults() -> None:
    # systemd names every fd of one .socket unit alike, hence one unit per listener.
    for name, path in SOCKETS.items():
        d = directives(path)
        assert d["FileDescriptorName"] == [name]
        assert d["Service"] == ["gateway.service"]
        assert d["ListenStream"] == [DEFAULTS[f"server.{name}_addr"]], "the gateway's own default address"
    caddy = CADDYFILE.read_text()
    assert "{$GATEWAY_WS_UPSTREAM:" + DEFAULTS["server.ws_addr"] + "}" in caddy
    assert "{$GATEWAY_HTTP_UPSTREAM:" + DEFAULTS["server.http_addr"] + "}" in caddy


# Caddyfile


@pytest.fixture
def caddy_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }


@needs_caddy
def test_caddyfile_validates_with_test_and_production_values(caddy_env: dict[str, str]) -> None:
    test_values = {"CADDY_BIND": "127.0.0.1", "CADDY_HTTPS_PORT": "8443", "CADDY_HTTP_PORT": "8081",
                   "CADDY_ADMIN": "127.0.0.1:2999", "GATEWAY_WS_UPSTREAM": "127.0.0.1:9765"}
    production = {"GATEWAY_SITE": "chat.example.com", "GATEWAY_TLS": "admin@example.com"}
    for values in (test_values, production, {}):
        result = subprocess.run(
            ["caddy", "validate", "--adapter", "caddyfile", "--config", str(CADDYFILE)],
            env={**caddy_env, **values}, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0 and "Valid configuration" in result.stdout + result.stderr, result.stderr[-1500:]
        assert "not formatted" not in result.stderr


@needs_caddy
def test_caddyfile_routes_headers_and_defaults(caddy_env: dict[str, str]) -> None:
    result = subprocess.run(
        ["caddy", "adapt", "--adapter", "caddyfile", "--config", str(CADDYFILE)],
        env=caddy_env, capture_output=True, text=True, timeout=60, check=True,
    )
    cfg = json.loads(result.stdout)
    http = cfg["apps"]["http"]
    assert (http["http_port"], http["https_port"]) == (80, 443)
    server = http["servers"]["srv0"]
    assert server["listen"] == ["[::]:443"]
    assert server["routes"][0]["match"] == [{"host": ["localhost"]}]
    assert cfg["apps"]["tls"]["automation"]["policies"][0]["issuers"][0]["module"] == "internal"
    assert cfg["admin"]["listen"] == "localhost:2019", "what Debian's caddy.service reloads through"
    text = json.dumps(server)
    upstreams = re.findall(r'"dial": "([^"]+)"', text)
    assert upstreams == [DEFAULTS["server.ws_addr"], DEFAULTS["server.http_addr"]]
    assert '"path": ["/chat"]' in text and '"path": ["/metrics", "/metrics/*"]' in text
    assert '"encodings": {"gzip": {}, "zstd": {}}' in text or ('"zstd"' in text and '"gzip"' in text)
    assert "Strict-Transport-Security" in text and "Content-Security-Policy" not in text, "the gateway's CSP passes"
    timeouts = server.get("read_header_timeout"), server.get("idle_timeout")
    assert timeouts[0] and timeouts[1] and "write_timeout" not in server and "read_timeout" not in server


@needs_caddy
def test_caddyfile_is_formatted(caddy_env: dict[str, str]) -> None:
    result = subprocess.run(["caddy", "fmt", str(CADDYFILE)], env=caddy_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == CADDYFILE.read_text()


# scripts


def test_scripts_parse() -> None:
    for script in (INSTALL, ROOT / "tests" / "deploy" / "boot-systemd.sh"):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert os.access(script, os.X_OK), f"{script} is executable"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_scripts_pass_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", str(INSTALL), str(ROOT / "tests" / "deploy" / "boot-systemd.sh")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout


# the installer, for real, into a DESTDIR


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 (apt-get install python3 python3-venv)")
    return sysroot.shared_wheelhouse(ROOT, tmp_path_factory)


def installer(*args: str, destdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        env={"PATH": os.environ.get("PATH", ""), "DESTDIR": str(destdir), **env},
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def destdir(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    root.mkdir()
    yield root


def releases(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "opt/gateway/releases").iterdir())


def test_install_upgrade_rollback_uninstall(destdir: Path, wheelhouse: Path) -> None:
    first = installer("install", "--wheelhouse", str(wheelhouse), destdir=destdir, GATEWAY_SITE="chat.example.org")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "systemctl enable --now gateway" in first.stdout, "prints the next steps"
    etc = destdir / "etc/gateway"
    toml, key = etc / "gateway.toml", etc / "api_key"
    assert toml.stat().st_mode & 0o777 == 0o644
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_text() == ""
    assert 'allowed_origins = ["https://chat.example.org"]' in toml.read_text()
    assert (ROOT / "gateway.example.toml").read_text().splitlines()[-1] in toml.read_text()
    for unit in ("gateway.service", "gateway-ws.socket", "gateway-http.socket", "gateway@.service"):
        assert (destdir / "etc/systemd/system" / unit).read_text() == (SYSTEMD / unit).read_text()
    current = destdir / "opt/gateway/current"
    assert current.is_symlink() and os.readlink(current).startswith("releases/")
    version = subprocess.run([str(current / "bin/gateway"), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("gateway ")
    assert (current / "share/doc/llm-ws-gateway/operations.md").exists()
    assert (current / "share/doc/llm-ws-gateway/Caddyfile").read_text() == CADDYFILE.read_text()
    check = subprocess.run([str(current / "bin/gateway"), "check-config", "--config", str(toml)],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stderr

    # The sysadmin edits the config and puts the key in; an upgrade keeps both.
    toml.write_text(toml.read_text() + "\n# edited by the sysadmin\n")
    key.write_text("sk-kept\n")
    second = installer("install", "--wheelhouse", str(wheelhouse), destdir=destdir, KEEP_RELEASES="2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "gateway.toml exists: kept" in second.stdout and "api_key exists: kept" in second.stdout
    assert toml.read_text().endswith("# edited by the sysadmin\n") and key.read_text() == "sk-kept\n"
    assert key.stat().st_mode & 0o777 == 0o600
    old, new = releases(destdir)
    assert os.readlink(current) == f"releases/{new}"

    # A release that refuses the config in use is not switched to, and not kept.
    edited = toml.read_text()
    toml.write_text("[server]\nnonsense = 1\n")
    refused = installer("install", "--wheelhouse", str(wheelhouse), destdir=destdir)
    assert refused.returncode != 0 and "server.nonsense" in refused.stderr
    assert releases(destdir) == [old, new] and os.readlink(current) == f"releases/{new}"
    toml.write_text(edited)

    rollback = installer("rollback", destdir=destdir)
    assert rollback.returncode == 0, rollback.stderr
    assert os.readlink(current) == f"releases/{old}"
    assert installer("rollback", destdir=destdir).returncode != 0, "nothing older than the oldest"

    uninstall = installer("uninstall", destdir=destdir)
    assert uninstall.returncode == 0, uninstall.stderr
    assert not (destdir / "opt/gateway").exists()
    assert not list((destdir / "etc/systemd/system").iterdir())
    assert toml.exists() and key.read_text() == "sk-kept\n", "config and key are kept"
    assert "Kept: /etc/gateway/" in uninstall.stdout


def test_installer_usage_and_python_checks(destdir: Path) -> None:
    assert installer("--help", destdir=destdir).returncode == 0
    assert installer("frobnicate", destdir=destdir).returncode == 2
    missing = installer("install", destdir=destdir, INSTALL_PYTHON="/nonexistent/python3")
    assert missing.returncode != 0 and "/nonexistent/python3" in missing.stderr
    home = Path(sys.base_prefix).resolve()
    if str(home).startswith(("/root/", "/home/")):  # e.g. a pyenv Python: the service could not see it
        refused = installer("install", destdir=destdir, INSTALL_PYTHON=sys.executable)
        assert refused.returncode != 0 and "ProtectHome" in refused.stderr
