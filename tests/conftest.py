"""Shared fixtures: a real gateway on loopback, a fake upstream, a chat client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakeupstream import FakeUpstream
from pgserver import PgBouncer, PgServer, find_bindir
from redisserver import RedisServer, find_redis
from websockets.asyncio.client import ClientConnection, connect

from gateway import config
from gateway.server import Gateway

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = float(os.environ.get("TEST_TIMEOUT", "10"))


def make_config(tmp_path: Path, env: Mapping[str, str] | None = None, toml: str = "") -> config.Config:
    """A config on free loopback ports, from TOML text and env overrides."""
    base = {
        "GATEWAY_WS_ADDR": "127.0.0.1:0",
        "GATEWAY_HTTP_ADDR": "127.0.0.1:0",
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "GATEWAY_LOG_FORMAT": "json",
    }
    path = None
    if toml:
        path = tmp_path / "gateway.toml"
        path.write_text(toml)
    return config.load(path, {**base, **(env or {})})


class Chat:
    """A chat.v1 client with helpers; every wait is bounded by TIMEOUT."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, **frame: Any) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def recv(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        event: dict[str, Any] = orjson.loads(frame)
        return event

    async def expect(self, event_type: str) -> dict[str, Any]:
        event = await self.recv()
        assert event["type"] == event_type, event
        return event

    async def hello(self, conversation_id: str | None = None) -> dict[str, Any]:
        await self.send(type="hello", conversation_id=conversation_id)
        return await self.expect("ready")

    async def until_done(self) -> tuple[str, list[dict[str, Any]]]:
        """Read to ``reply.done``; return the reply's text and every event read."""
        events, text = [], ""
        while True:
            event = await self.recv()
            events.append(event)
            if event["type"] == "reply.delta":
                text += event["text"]
            if event["type"] == "reply.done":
                return text, events

    async def ask(self, content: str, msg_id: str = "m1") -> tuple[str, list[dict[str, Any]]]:
        await self.send(type="message", id=msg_id, content=content)
        return await self.until_done()


class Running:
    """A started in-process gateway and ways to reach it."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.ws_url = f"ws://127.0.0.1:{gateway.ws_port}/chat"
        self.http_url = f"http://127.0.0.1:{gateway.http_port}"

    @contextlib.asynccontextmanager
    async def chat(self, **kwargs: Any) -> AsyncIterator[Chat]:
        kwargs.setdefault("subprotocols", ["chat.v1"])
        async with connect(self.ws_url, open_timeout=TIMEOUT, **kwargs) as ws:
            yield Chat(ws)

    def raw(self, **kwargs: Any) -> Any:
        return connect(self.ws_url, open_timeout=TIMEOUT, **kwargs)


StartGateway = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[StartGateway]:
    """Start gateways in this test's loop; each is drained and closed at teardown."""
    started: list[Gateway] = []

    async def start(env: Mapping[str, str] | None = None, toml: str = "", store: Any = None) -> Running:
        gateway = Gateway(make_config(tmp_path, env, toml), store=store)
        await gateway.start()
        started.append(gateway)
        return Running(gateway)

    yield start
    for gateway in started:
        if not gateway.closed:
            await gateway.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL for the whole session (started on first use)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_bouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the session's PostgreSQL."""
    if shutil.which("pgbouncer") is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer)")
    bouncer = PgBouncer(pg_server)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a new, empty database (with the password in it)."""
    return pg_server.url(pg_server.create_database())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis for the whole session (started on first use); tests may stop or restart it."""
    binary = find_redis()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_env(redis_server: RedisServer) -> dict[str, str]:
    """Gateway settings for the session's Redis, running again (if a test stopped it) and empty."""
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    return {"GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_REDIS_PASSWORD_FILE": str(redis_server.password_file)}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


def openai_env(up: FakeUpstream, **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_PROVIDER": "openai",
        "GATEWAY_UPSTREAM_URL": up.openai_base,
        "GATEWAY_MODEL": "gpt-test",
        "GATEWAY_API_KEY": "sk-test-secret-key-0123456789",
        "GATEWAY_UPSTREAM_TIMEOUT": "2",
        "GATEWAY_ROUTING_RETRIES": "0",  # one attempt: these tests see each failure as it is (test_models_e2e retries)
        **extra,
    }


def dashscope_env(up: FakeUpstream, **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_PROVIDER": "dashscope",
        "GATEWAY_UPSTREAM_URL": up.dashscope_url,
        "GATEWAY_MODEL": "qwen-test",
        "GATEWAY_API_KEY": "sk-dash-secret-key-9876543210",
        "GATEWAY_UPSTREAM_TIMEOUT": "2",
        "GATEWAY_ROUTING_RETRIES": "0",
        **extra,
    }


class Process:
    """A ``gateway serve`` child process. Its output is read all the time (a full pipe
    would block the gateway's logging); JSON log lines are kept in ``lines``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.ws_url = self.http_url = ""
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            if raw.startswith(b"{"):
                self.lines.append(orjson.loads(raw))
                self._changed.set()
        self._changed.set()

    async def wait_for_event(self, name: str) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if line.get("event") == name:
                        return line
                seen = len(self.lines)
                if self._reader.done():
                    raise AssertionError(f"process ended before logging {name!r}: {self.lines[-5:]}")
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), TIMEOUT)

    async def finish(self) -> int:
        """Wait for exit (reading all remaining output); return the exit code."""
        await asyncio.wait_for(self._reader, TIMEOUT)
        return await asyncio.wait_for(self.proc.wait(), TIMEOUT)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._reader


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Process]]]:
    """Start ``python -m gateway serve`` as a user would, with env vars; killed at teardown."""
    procs: list[Process] = []

    async def start(env: Mapping[str, str] | None = None, *args: str, wait_ready: bool = True) -> Process:
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "GATEWAY_WS_ADDR": "127.0.0.1:0",
            "GATEWAY_HTTP_ADDR": "127.0.0.1:0",
            "GATEWAY_STATE_DIR": str(tmp_path / "state"),
            **(env or {}),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", *args,
            env=full_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        process = Process(proc)
        procs.append(process)
        if wait_ready:
            started = await process.wait_for_event("gateway_started")
            process.ws_url, process.http_url = started["ws_url"], started["http_url"]
        return process

    yield start
    for p in procs:
        await p.kill()


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    def run(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env={"PATH": os.environ.get("PATH", ""), **(env or {})},
            cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT * 3,
        )

    yield run


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped at import, e.g. a missing browser
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (GATEWAY_TEST_FORBID_SKIPS=1) a skipped test fails the run."""
    if _skipped and os.environ.get("GATEWAY_TEST_FORBID_SKIPS") == "1":
        print(f"\n{len(_skipped)} test(s) skipped, which CI forbids: {', '.join(_skipped)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@contextlib.asynccontextmanager
async def loopback_app(routes: Mapping[str, Callable[..., Awaitable[Any]]]) -> AsyncIterator[str]:
    """A small aiohttp server of a test's own (a token issuer, an auth service), on a free
    loopback port, with GET ``routes``; yields its base URL (``http://127.0.0.1:PORT``)."""
    from aiohttp import web

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
