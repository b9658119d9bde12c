"""A rolling restart of a cluster through a real Caddy, under load: three gateway
instances on one Redis and one PostgreSQL, fifty `gateway-loadtest` users, each
instance restarted in turn (SIGTERM, then started again on its ports). Every reply
must arrive complete, with no delta lost or repeated."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from conftest import ROOT, TIMEOUT, Process
from pgserver import PgServer
from ports import free_port
from test_caddy_e2e import Caddy

Spawn = Callable[..., Awaitable[Process]]
USERS, PROMPTS = 50, 8


async def test_a_rolling_restart_through_caddy_under_load_loses_nothing(
    spawn: Spawn, pg_server: PgServer, redis_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[cluster]\nlease_timeout = 5\n[provider]\ndemo_delay_ms = 20\n")
    env = {
        **redis_env,
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_STORE": "postgres",
        "GATEWAY_DATABASE_URL": pg_server.url(pg_server.create_database()),
        "GATEWAY_LOG_FORMAT": "json",
    }
    ports = [(free_port(), free_port()) for _ in range(3)]

    def start(i: int) -> Awaitable[Process]:
        ws, http = ports[i]
        return spawn({**env, "GATEWAY_WS_ADDR": f"127.0.0.1:{ws}", "GATEWAY_HTTP_ADDR": f"127.0.0.1:{http}"})

    instances = [await start(i) for i in range(3)]
    caddy = Caddy(tmp_path)
    await asyncio.to_thread(
        caddy.start, " ".join(f"127.0.0.1:{ws}" for ws, _ in ports), " ".join(f"127.0.0.1:{h}" for _, h in ports)
    )
    try:
        root = caddy.data / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        load = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.loadtest", f"wss://localhost:{caddy.https_port}/chat",
            "-c", str(USERS), "-n", str(PROMPTS), "--ramp", "1", "--duration", "100", "--json", "--quiet",
            env={"PATH": "", "SSL_CERT_FILE": str(root), "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for i in range(3):
            await instances[i].wait_for_event("reply_finished")  # under load
            instances[i].proc.send_signal(signal.SIGTERM)
            closed = await instances[i].wait_for_event("drain_started")
            assert closed["replies_in_flight"] >= 0
            assert await asyncio.wait_for(instances[i].finish(), TIMEOUT * 4) == 0
            instances[i] = await start(i)
        out, err = await asyncio.wait_for(load.communicate(), 110)
        (tmp_path / "loadtest.json").write_bytes(out)
        assert load.returncode == 0, (out.decode()[-3000:], err.decode()[-2000:])
        report = orjson.loads(out)
    finally:
        await asyncio.to_thread(caddy.stop)
    assert report["replies"] == {"requested": USERS * PROMPTS, "completed": USERS * PROMPTS}, report
    assert report["errors"] == {} and report["connections"]["failed"] == 0, report
    assert report["integrity"] == {"repeated_deltas": 0, "distinct_texts": 1}, report
    assert report["resumes"] > 0 and report["close_codes"].get("1012", 0) > 0, report
