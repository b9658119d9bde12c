"""The gateway as a sysadmin runs it: installed by systemd/install.sh into a real systemd
(252, booted as PID 1 in namespaces by tests/sysroot.py) and driven with systemctl.

One system is booted for the module and the tests run in order, as a sysadmin's day
would go: install, start, chat, reload, restart mid-reply, crash, hang, logs, backup,
stop, uninstall. Each test brings the service to the state it needs first.

The namespace has no network, so the installer runs inside it offline, from a
wheelhouse built on the host with ``install.sh wheelhouse`` (that step needs PyPI).
The gateway runs the built-in demo provider; the API key is a fake one, there only to
check that it never shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sysroot
from conftest import ROOT, TIMEOUT, Chat
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

REASON = sysroot.missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

UNIT = "gateway.service"
WS, HTTP = 8765, 8080
API_KEY = "sk-e2e-fake-key-do-not-show-7f3a9c01d2e4"
TOML = Path("/etc/gateway/gateway.toml")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sysroot.Sysroot]:
    wheels = sysroot.shared_wheelhouse(ROOT, tmp_path_factory)
    box = sysroot.Sysroot(tmp_path_factory.mktemp("systemd"), binds=[ROOT, wheels])
    try:
        box.boot()
        out = box.run("bash", str(ROOT / "systemd" / "install.sh"), "install", "--wheelhouse", str(wheels),
                      timeout=180, env={"GATEWAY_SITE": "localhost"}).stdout
        assert "systemctl enable --now gateway" in out, out
        box.path("/etc/gateway/api_key").write_text(API_KEY + "\n")
        # A sysadmin's edit: a slower demo model, so that a reply is still streaming
        # when the test restarts or kills the gateway.
        toml = box.path(str(TOML))
        toml.write_text(toml.read_text().replace("# demo_delay_ms = 30.0", "demo_delay_ms = 25"))
        yield box
    finally:
        box.close()


# helpers


def active(box: sysroot.Sysroot, unit: str = UNIT) -> str:
    return box.systemctl("is-active", unit, check=False).stdout.strip()


def ensure_started(box: sysroot.Sysroot) -> str:
    if active(box) != "active":
        box.systemctl("start", UNIT)
    return box.show(UNIT, "MainPID")


def events(box: sysroot.Sysroot, name: str | None = None, pid: str | None = None) -> list[dict[str, Any]]:
    """The gateway's JSON log lines from the journal, with the journal's _PID."""
    found = []
    for entry in box.journal(UNIT):
        message = entry.get("MESSAGE")
        if not isinstance(message, str) or not message.startswith("{"):
            continue
        line = orjson.loads(message)
        line["_PID"] = entry.get("_PID")
        if (name is None or line.get("event") == name) and (pid is None or line["_PID"] == pid):
            found.append(line)
    return found


def wait_event(box: sysroot.Sysroot, name: str, pid: str | None = None, count: int = 1) -> list[dict[str, Any]]:
    return box.wait_for(  # type: ignore[no-any-return]
        f"{count} x {name} in the journal", lambda: (e := events(box, name, pid)) and len(e) >= count and e
    )


def journal_text(box: sysroot.Sysroot) -> str:
    return box.run("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout


def new_main_pid(box: sysroot.Sysroot, old: str, timeout: float = 30) -> str:
    def ready() -> str | None:
        pid = box.show(UNIT, "MainPID")
        return pid if pid not in ("0", old) and active(box) == "active" else None

    return box.wait_for(f"a new MainPID (was {old})", ready, timeout=timeout)  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def chat_inside(box: sysroot.Sysroot, **kwargs: Any) -> AsyncIterator[Chat]:
    """A chat.v1 client on the namespace's loopback, through the gateway-ws.socket."""
    sock = await asyncio.to_thread(box.connect, WS)
    kwargs.setdefault("subprotocols", ["chat.v1"])
    kwargs.setdefault("open_timeout", 30)
    async with connect(f"ws://127.0.0.1:{WS}/chat", sock=sock, **kwargs) as ws:
        yield Chat(ws)


async def read_reply(chat: Chat, text: str = "") -> tuple[str, dict[str, Any]]:
    while True:
        event = await chat.recv()
        if event["type"] == "reply.delta":
            text += event["text"]
        elif event["type"] == "reply.done":
            return text, event


# the tests, in a sysadmin's order


def test_installed_units_verify_and_score_at_most_1_2(system: sysroot.Sysroot) -> None:
    units = [f"/etc/systemd/system/{u}" for u in ("gateway.service", "gateway-ws.socket", "gateway-http.socket")]
    verify = system.run("systemd-analyze", "verify", *units, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    for how in (["--offline=true", units[0]], [UNIT]):  # the file, and the unit as loaded
        security = system.run("systemd-analyze", "security", "--threshold=12", "--no-pager", *how, check=False)
        assert security.returncode == 0, security.stdout[-500:]
        score = re.search(r"Overall exposure level for gateway\.service: (\d+\.\d)", security.stdout)
        assert score and float(score.group(1)) <= 1.2, security.stdout[-300:]
    assert system.path("/etc/gateway/api_key").stat().st_mode & 0o777 == 0o600
    assert 'allowed_origins = ["https://localhost"]' in system.path(str(TOML)).read_text()
    assert system.path("/opt/gateway/current").is_symlink()


def test_start_returns_after_ready_and_status_shows_the_gateways_status(system: sysroot.Sysroot) -> None:
    system.systemctl("start", UNIT)
    # Type=notify: `start` returned only after READY=1, so it is serving right now.
    assert active(system) == "active"
    assert system.show(UNIT, "StatusText").startswith("serving: ")
    status = system.systemctl("status", UNIT, check=False).stdout
    assert 'Status: "serving: 0 connections, 0 replies in flight"' in status, status
    assert "TriggeredBy:" in status and "gateway-ws.socket" in status
    for sock in ("gateway-ws.socket", "gateway-http.socket"):
        assert active(system, sock) == "active"
    started = wait_event(system, "gateway_started", pid=system.show(UNIT, "MainPID"))[-1]
    assert started["socket_activated"] is True
    assert system.show(UNIT, "UID") not in ("0", "", "[not set]"), "DynamicUser: not root"
    assert system.http_get(HTTP, "/readyz")[0] == 200


async def test_chat_through_the_socket_units(system: sysroot.Sysroot) -> None:
    pid = ensure_started(system)
    async with chat_inside(system) as chat:
        await chat.hello()
        text, events_ = await chat.ask("Hello from a sysadmin")
        assert "Hello from a sysadmin" in text and events_[-1]["finish_reason"] == "stop"
        await asyncio.to_thread(
            system.wait_for, "STATUS= counting the connection",
            lambda: system.show(UNIT, "StatusText").startswith("serving: 1 connections"), 10,
        )
    finished = wait_event(system, "reply_finished", pid=pid)[-1]
    assert finished["provider"] == "demo" and finished["finish_reason"] == "stop"
    status, body = system.http_get(HTTP, "/")
    assert status == 200 and b"<html" in body.lower()


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (apt-get install caddy)")
async def test_https_chat_through_caddy_run_as_debian_runs_it(system: sysroot.Sysroot) -> None:
    # The operations guide's steps: the shipped Caddyfile in /etc/caddy, Debian's own
    # caddy.service (user caddy, ports 80 and 443 of this namespace), site localhost
    # with Caddy's internal CA, which the client trusts.
    ensure_started(system)
    system.run("install", "-m", "644", "/opt/gateway/current/share/doc/llm-ws-gateway/Caddyfile", "/etc/caddy/Caddyfile")
    system.systemctl("restart", "caddy.service")
    try:
        root = system.path("/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt")
        await asyncio.to_thread(system.wait_for, "Caddy's local CA", root.exists, 20)
        tls = ssl.create_default_context(cafile=str(root))
        status, headers, body = await asyncio.to_thread(_https_get, system, tls, "/config.json")
        assert status == 200 and orjson.loads(body)["ws_url"] is None, body
        assert "strict-transport-security" in headers
        sock = await asyncio.to_thread(system.connect, 443)
        async with connect("wss://localhost/chat", sock=sock, ssl=tls, server_hostname="localhost",
                           origin="https://localhost", subprotocols=["chat.v1"], open_timeout=30) as ws:
            chat = Chat(ws)
            await chat.hello()
            text, _ = await chat.ask("Hello over https")
            assert "Hello over https" in text
    finally:
        system.systemctl("stop", "caddy.service", check=False)


def _https_get(box: sysroot.Sysroot, tls: ssl.SSLContext, path: str) -> tuple[int, dict[str, str], bytes]:
    deadline = time.monotonic() + 20
    while True:  # until Caddy has its certificate
        try:
            with tls.wrap_socket(box.connect(443), server_hostname="localhost") as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            break
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(lines[0].split()[1]), headers, body


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + rest[:n], rest[n + 2:]
    return out


def test_the_api_key_is_a_credential_and_shows_nowhere(system: sysroot.Sysroot) -> None:
    pid = ensure_started(system)
    show = system.systemctl("show", UNIT).stdout
    assert API_KEY not in show
    for where in (f"/proc/{pid}/environ", f"/proc/{pid}/cmdline"):
        assert API_KEY not in system.run("cat", where).stdout
    unit = system.run("systemctl", "cat", UNIT).stdout
    assert "LoadCredential=api_key:/etc/gateway/api_key" in unit and API_KEY not in unit
    assert API_KEY not in journal_text(system)
    # It did reach the gateway, through $CREDENTIALS_DIRECTORY.
    assert system.run("cat", f"/run/credentials/{UNIT}/api_key").stdout.strip() == API_KEY
    assert f"CREDENTIALS_DIRECTORY=/run/credentials/{UNIT}" in system.run("cat", f"/proc/{pid}/environ").stdout.replace("\0", "\n")


def test_the_sandbox_is_enforced(system: sysroot.Sysroot) -> None:
    # The shipped unit's sandbox with the probe as ExecStart (Type=oneshot).
    unit = system.path("/etc/systemd/system/gateway.service").read_text()
    probe = re.sub(r"(?m)^(Type|NotifyAccess|WatchdogSec|Restart|RestartSec|ExecReload|RestartPreventExitStatus"
                   r"|Requires|After|WantedBy|Also)=.*\n", "", unit)
    probe = probe.replace("StateDirectory=gateway", "StateDirectory=gateway-probe")
    probe = probe.replace("WorkingDirectory=%S/gateway", "WorkingDirectory=%S/gateway-probe")
    probe = re.sub(r"(?m)^ExecStart=.*$", "Type=oneshot\nExecStart=/opt/gateway/current/bin/python "
                   "/usr/local/lib/gateway-test/sandbox_probe.py", probe)
    system.path("/usr/local/lib/gateway-test").mkdir(parents=True, exist_ok=True)
    system.path("/usr/local/lib/gateway-test/sandbox_probe.py").write_text(
        (ROOT / "tests" / "deploy" / "sandbox_probe.py").read_text())
    system.path("/etc/systemd/system/gateway-probe.service").write_text(probe)
    system.systemctl("daemon-reload")
    result = system.systemctl("start", "gateway-probe.service", check=False)
    lines = system.run("journalctl", "-u", "gateway-probe.service", "-o", "cat", "--no-pager").stdout
    report = [orjson.loads(line) for line in lines.splitlines() if line.startswith('{"sandbox_checks"')]
    assert result.returncode == 0 and report and report[-1]["failed"] == [], lines[-2000:]
    assert report[-1]["sandbox_checks"] >= 15
    # LimitNOFILE=65536, or the most this host allows (a manager without
    # CAP_SYS_RESOURCE cannot raise the hard limit it inherited).
    assert system.show(UNIT, "LimitNOFILE") == "65536"
    assert report[-1]["nofile"][0] == min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


async def test_reload_keeps_open_connections_and_refuses_a_bad_file(system: sysroot.Sysroot) -> None:
    pid = ensure_started(system)
    toml = system.path(str(TOML))
    good = toml.read_text()
    async with chat_inside(system) as chat:
        await chat.hello()
        with pytest.raises(InvalidStatus):  # not an allowed origin yet
            async with chat_inside(system, origin="https://other.example.test"):
                pass
        toml.write_text(good.replace('allowed_origins = ["https://localhost"]',
                                     'allowed_origins = ["https://localhost", "https://other.example.test"]'))
        system.systemctl("reload", UNIT)
        wait_event(system, "config_reloaded", pid=pid)
        async with chat_inside(system, origin="https://other.example.test") as other:
            await other.hello()  # the live change applied
        # A broken file: the gateway logs it and keeps the configuration it has.
        toml.write_text(good.replace("demo_delay_ms = 25", 'demo_delay_ms = "slow"'))
        system.systemctl("reload", UNIT)
        assert "provider.demo_delay_ms" in wait_event(system, "reload_failed", pid=pid)[-1]["error"]
        assert active(system) == "active" and system.show(UNIT, "MainPID") == pid
        toml.write_text(good)
        system.systemctl("reload", UNIT)
        wait_event(system, "config_reloaded", pid=pid, count=2)
        # The connection opened before all this is still there.
        await asyncio.wait_for(await chat.ws.ping(), TIMEOUT)
        await chat.send(type="ping")
        await chat.expect("pong")
        text, _ = await chat.ask("after the reloads", msg_id="m2")
        assert "after the reloads" in text
    assert system.show(UNIT, "MainPID") == pid


async def test_restart_while_a_reply_streams_loses_nothing(system: sysroot.Sysroot) -> None:
    old = ensure_started(system)
    async with chat_inside(system) as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.send(type="message", id="r1", content="What happens on a restart?")
        await chat.expect("reply.start")
        first = await chat.expect("reply.delta")
        restart = asyncio.create_task(asyncio.to_thread(system.systemctl, "restart", UNIT))
        await asyncio.to_thread(wait_event, system, "drain_started", old)
        # While the old process drains, a new client is not refused: the socket stays
        # open (socket activation) and the new process answers it.
        late = asyncio.create_task(_hello_inside(system))
        text, done = await read_reply(chat, first["text"])
        assert done["finish_reason"] == "stop", "the reply completed within the drain"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(chat.ws.recv(), 30)
        assert chat.ws.close_code == 1001
        await restart
    new = system.show(UNIT, "MainPID")
    assert new != old and active(system) == "active"
    assert (await asyncio.wait_for(late, 30))["type"] == "ready"
    assert events(system, "connection_opened", pid=new), "the late client was served by the new process"
    stopped = events(system, "gateway_stopped", pid=old)
    assert stopped and stopped[-1]["replies_drained"] == 1
    async with chat_inside(system) as chat:
        history = (await chat.hello(conversation_id))["history"]
    reply = history[-1]
    assert reply["role"] == "assistant" and reply["content"] == text and reply["finish_reason"] == "stop"


async def _hello_inside(box: sysroot.Sysroot) -> dict[str, Any]:
    async with chat_inside(box) as chat:
        return await chat.hello()


async def test_kill_9_restarts_and_the_partial_reply_is_kept(system: sysroot.Sysroot) -> None:
    old = ensure_started(system)
    restarts = int(system.show(UNIT, "NRestarts"))
    async with chat_inside(system) as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.send(type="message", id="k1", content="Crash in the middle of this")
        await chat.expect("reply.start")
        text, _ = await asyncio.wait_for(_deltas_for(chat, 1.5), TIMEOUT)  # past a checkpoint
        system.systemctl("kill", "-s", "SIGKILL", "--kill-whom=main", UNIT)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(chat.ws.recv(), TIMEOUT)
    new = new_main_pid(system, old)
    assert int(system.show(UNIT, "NRestarts")) == restarts + 1
    assert wait_event(system, "interrupted_replies_recovered", pid=new)[-1]["count"] == 1
    async with chat_inside(system) as chat:
        reply = (await chat.hello(conversation_id))["history"][-1]
    assert reply["role"] == "assistant" and reply["finish_reason"] == "error"
    assert reply["content"] and text.startswith(reply["content"]), "the last checkpoint survived"


async def _deltas_for(chat: Chat, seconds: float) -> tuple[str, int]:
    text, n, until = "", 0, time.monotonic() + seconds
    while time.monotonic() < until:
        event = await chat.recv()
        assert event["type"] == "reply.delta", event
        text, n = text + event["text"], n + 1
    return text, n


def test_a_wedged_event_loop_is_killed_by_the_watchdog(system: sysroot.Sysroot) -> None:
    # SIGSTOP freezes the process as a blocked loop would: no more WATCHDOG=1.
    old = ensure_started(system)
    restarts = int(system.show(UNIT, "NRestarts"))
    assert system.show(UNIT, "WatchdogUSec") == "10s"
    system.systemctl("kill", "-s", "SIGSTOP", "--kill-whom=main", UNIT)
    new_main_pid(system, old, timeout=40)
    assert int(system.show(UNIT, "NRestarts")) == restarts + 1
    journal = journal_text(system)
    assert "Watchdog timeout" in journal and "Failed with result 'watchdog'" in journal
    # PYTHONFAULTHANDLER: where the loop was when it was killed. The dying process's
    # stderr may reach the journal after systemd's own lines: wait for it (bounded).
    dumped = system.wait_for(
        "the fault handler's dump in the journal",
        lambda: text if "Fatal Python error: Aborted" in (text := journal_text(system)) else None,
        timeout=20,
    )
    assert "asyncio" in dumped or "uvloop" in dumped


def test_journal_has_structured_fields(system: sysroot.Sysroot) -> None:
    ensure_started(system)
    entries = [e for e in system.journal(UNIT) if str(e.get("MESSAGE", "")).startswith("{")]
    assert entries
    for entry in entries:
        assert entry["_SYSTEMD_UNIT"] == UNIT and entry["SYSLOG_IDENTIFIER"] == "gateway" and entry["_PID"]
        assert entry["_UID"] != "0"
    lines = [orjson.loads(e["MESSAGE"]) for e in entries]
    names = {line["event"] for line in lines}
    assert {"gateway_started", "connection_opened", "connection_closed", "reply_finished",
            "config_reloaded", "drain_started", "gateway_stopped"} <= names, names
    finished = next(line for line in lines if line["event"] == "reply_finished")
    assert {"reply_id", "conversation_id", "provider", "model", "duration_ms", "finish_reason"} <= finished.keys()
    opened = next(line for line in lines if line["event"] == "connection_opened")
    assert opened["client_ip"] == "127.0.0.1" and opened["session_id"]


async def _ask_and_cancel(chat: Chat, content: str) -> None:
    """Store a user message without waiting for the whole demo answer."""
    await chat.send(type="message", id="b1", content=content)
    reply_id = (await chat.expect("reply.start"))["reply_id"]
    await chat.send(type="cancel", reply_id=reply_id)
    _, done = await read_reply(chat)
    assert done["finish_reason"] == "cancelled"


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="sqlite3 is not installed (apt-get install sqlite3)")
async def test_online_backup_and_restore_of_the_state_directory(system: sysroot.Sysroot) -> None:
    ensure_started(system)
    db = "/var/lib/gateway/conversations.db"
    async with chat_inside(system) as chat:
        kept = (await chat.hello())["conversation_id"]
        await _ask_and_cancel(chat, "before the backup")
    system.run("sqlite3", db, ".backup /root/gateway-backup.db")  # online, as documented
    check = system.run("sqlite3", "/root/gateway-backup.db", "PRAGMA integrity_check;").stdout.strip()
    assert check == "ok"
    # The documented way to run the CLI on the live store, as the service's user.
    export = system.run("systemd-run", "--pipe", "--wait", "-q", "-p", "DynamicUser=yes", "-p", "User=gateway",
                        "-p", "StateDirectory=gateway", "-p", "StateDirectoryMode=0700", "-p", "UMask=0077",
                        "/opt/gateway/current/bin/gateway", "conversations", "export", kept)
    assert orjson.loads(export.stdout)["messages"][0]["content"] == "before the backup"
    async with chat_inside(system) as chat:
        lost = (await chat.hello())["conversation_id"]
        await _ask_and_cancel(chat, "after the backup")
    # Restore, as docs/operations.md says.
    system.systemctl("stop", UNIT)
    system.run("sh", "-c", f"cp /root/gateway-backup.db {db} && rm -f {db}-wal {db}-shm "
               f"&& chown --reference=/var/lib/private/gateway {db}")
    system.systemctl("start", UNIT)
    async with chat_inside(system) as chat:
        assert any(m["content"] == "before the backup" for m in (await chat.hello(kept))["history"])
    async with chat_inside(system) as chat:
        await chat.send(type="hello", conversation_id=lost)
        error = await chat.expect("error")
        assert error["code"] == "not_found", "restored to the backup's state"


async def test_voice_input_with_a_vosk_model_under_the_hardened_unit(
    system: sysroot.Sysroot, tmp_path: Path
) -> None:
    # As docs/voice.md says: install with --voice, a model in /opt/vosk readable by all,
    # the memory limits raised in a drop-in, [stt] in the configuration.
    from speech import pcm_of, shared_syllables, speak, vosk_model

    model, pcm = Path(vosk_model()), pcm_of(speak(tmp_path))
    wheels = sysroot.shared_wheelhouse(ROOT, None)
    system.run("bash", str(ROOT / "systemd" / "install.sh"), "install", "--wheelhouse", str(wheels), "--voice",
               timeout=300, env={"GATEWAY_SITE": "localhost"})
    shutil.copytree(model, system.path("/opt/vosk/ko"), dirs_exist_ok=True)
    system.run("chmod", "-R", "a+rX", "/opt/vosk")
    drop_in = system.path("/etc/systemd/system/gateway.service.d/voice.conf")
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text("[Service]\nMemoryHigh=2G\nMemoryMax=3G\n")
    toml = system.path(str(TOML))
    good = toml.read_text()
    assert '# provider = "none"' in good
    toml.write_text(good.replace('# provider = "none"', 'provider = "vosk"').replace(
        '# model_path = ""', 'model_path = "/opt/vosk/ko"'))
    try:
        system.systemctl("daemon-reload")
        system.systemctl("restart", UNIT)
        pid = system.show(UNIT, "MainPID")
        assert wait_event(system, "stt_ready", pid=pid)[-1]["provider"] == "vosk"
        status, body = system.http_get(HTTP, "/healthz")
        assert status == 200 and orjson.loads(body)["stt"] == "ready"
        async with chat_inside(system) as chat:
            assert (await chat.hello())["voice"]["provider"] == "vosk"
            await chat.send(type="voice.start", id="v1")
            await chat.expect("voice.started")
            for i in range(0, len(pcm), 3200):
                await chat.ws.send(pcm[i:i + 3200])
            await chat.send(type="voice.stop", id="v1")
            while (event := await chat.recv())["type"] == "voice.partial":
                pass
        assert event["type"] == "voice.final" and shared_syllables(event["text"]) >= 4, event
        ended = wait_event(system, "dictation_ended", pid=pid)[-1]
        assert ended["chars"] == len(event["text"]) and event["text"] not in journal_text(system)
    finally:
        toml.write_text(good)
        drop_in.unlink()
        system.systemctl("daemon-reload")
        system.systemctl("restart", UNIT)


async def test_stop_drains_and_exits_0_and_the_socket_starts_it_again(system: sysroot.Sysroot) -> None:
    pid = ensure_started(system)
    system.systemctl("stop", UNIT)
    assert active(system) == "inactive"
    assert system.show(UNIT, "Result") == "success"
    assert system.show(UNIT, "ExecMainStatus") == "0"
    assert events(system, "drain_started", pid=pid) and events(system, "gateway_stopped", pid=pid)
    # The sockets are still listening: the next client starts the gateway.
    assert active(system, "gateway-ws.socket") == "active"
    assert (await _hello_inside(system))["type"] == "ready"
    assert active(system) == "active"
    system.systemctl("stop", "gateway-ws.socket", "gateway-http.socket", UNIT)
    assert active(system) == "inactive" and active(system, "gateway-ws.socket") == "inactive"


def logged_at(box: sysroot.Sysroot, unit: str, event: str, pid: str) -> int:
    """When process ``pid`` of ``unit`` logged ``event`` (the journal's microseconds)."""
    for entry in box.journal(unit):
        message = entry.get("MESSAGE")
        if entry.get("_PID") == pid and isinstance(message, str) and f'"event":"{event}"' in message.replace(" ", ""):
            return int(entry["__REALTIME_TIMESTAMP"])
    raise AssertionError(f"{unit} pid {pid} never logged {event}")


def test_rollout_restarts_the_instances_one_at_a_time(system: sysroot.Sysroot) -> None:
    # The instance template, each with its own port pair and state; alone here (no Redis
    # in this namespace): what is tested is the rollout's order and readiness checks.
    instances = ["gateway@1.service", "gateway@2.service"]
    system.systemctl("start", *instances)
    before = {unit: system.show(unit, "MainPID") for unit in instances}
    assert system.http_get(8811, "/readyz")[0] == 200 and system.http_get(8812, "/readyz")[0] == 200
    out = system.run("/opt/gateway/current/bin/gateway", "rollout", timeout=120).stdout
    lines = out.splitlines()
    assert lines == [
        "gateway@1.service: restarting (its clients resume on the other instances)",
        lines[1],
        "gateway@2.service: restarting (its clients resume on the other instances)",
        lines[3],
        "rolled out 2 instance(s)",
    ], out
    assert lines[1].startswith("gateway@1.service: ready again after ") and lines[3].startswith("gateway@2.service")
    after = {unit: system.show(unit, "MainPID") for unit in instances}
    assert all(after[u] not in ("0", before[u]) for u in instances), (before, after)
    # The second was asked to stop only once the first had started again.
    started_1 = logged_at(system, "gateway@1.service", "gateway_started", after["gateway@1.service"])
    stopping_2 = logged_at(system, "gateway@2.service", "shutdown_requested", before["gateway@2.service"])
    assert started_1 < stopping_2
    failed = system.run(
        "/opt/gateway/current/bin/gateway", "rollout", "nothing@1.service", "gateway@1.service", check=False, timeout=60
    )
    assert failed.returncode == 1 and "nothing@1.service: restart failed" in failed.stdout, failed.stdout
    assert "gateway@1.service" not in failed.stdout, "a rollout stops at the first instance that fails"
    assert system.show("gateway@1.service", "MainPID") == after["gateway@1.service"]
    system.systemctl("stop", *instances)


def test_uninstall_keeps_config_and_state(system: sysroot.Sysroot) -> None:
    out = system.run("bash", str(ROOT / "systemd" / "install.sh"), "uninstall").stdout
    assert "Kept: /etc/gateway/" in out
    assert not system.path("/opt/gateway").exists()
    assert not system.path("/etc/systemd/system/gateway.service").exists()
    assert system.systemctl("cat", UNIT, check=False).returncode != 0
    assert system.path("/etc/gateway/api_key").read_text().strip() == API_KEY
    assert system.path(str(TOML)).exists()
    assert system.path("/var/lib/private/gateway/conversations.db").exists()
