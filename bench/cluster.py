"""Cluster mode measured: what Redis costs per token, what a second instance adds, and
what a rolling restart loses. One run, every figure against a baseline of the same run.

    python bench/cluster.py [--rounds 3] [--out bench/results]

1. **CPU per delivered token**, one gateway on PostgreSQL alone (``single``) against one
   on PostgreSQL and Redis (``cluster``: every delta shipped to Redis), paced (a token
   every 20 ms per reply, as people read) and unpaced, alternating rounds on CPU 0.
   Redis's own CPU per token is reported beside it.
2. **Throughput behind Caddy**, unpaced: one instance against two (each pinned to a
   CPU of its own); Caddy, Redis, PostgreSQL, the fake upstream and this load share
   the machine's two CPUs with them. The same without Caddy (clients split between
   the instances) shows what the proxy itself takes.
3. **A rolling restart under load**: three instances behind Caddy, ``gateway-loadtest``
   with 50 users on the demo provider, each instance restarted in turn (SIGTERM, then
   started again on its ports once the previous one is back): replies lost, deltas
   repeated, reply texts that differ.

Everything runs on 127.0.0.1, is bounded in count and time, and stops by itself; only
processes started here are signalled, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
from pgserver import PgServer, find_bindir  # noqa: E402
from ports import free_port  # noqa: E402
from redisserver import RedisServer, find_redis  # noqa: E402
from common import (  # noqa: E402
    LOAD_CPU, PY, ROOT, FakeUpstream, ServerProc, cpu_seconds, gateway_argv, gateway_env, median, pct, run_chat,
    self_cpu_seconds,
)

PACE_MS = 20.0
TOKENS = 200


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pg = PgServer(_need(find_bindir(), "PostgreSQL (apt-get install postgresql)"))
        self.redis = RedisServer(_need(find_redis(), "redis-server (apt-get install redis-server)"))
        self._n = 0

    def start(self) -> None:
        self.pg.start()
        self.redis.start()
        for pidfile in (self.pg.data / "postmaster.pid",):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(pidfile.read_text().split()[0]), {LOAD_CPU})

    def close(self) -> None:
        self.redis.cleanup()
        self.pg.stop()

    def env(self, upstream: str, *, cluster: bool, database: str, **extra: str) -> dict[str, str]:
        self._n += 1
        state = self.tmp / f"state{self._n}"
        state.mkdir()
        env = gateway_env(upstream, state, "postgres", GATEWAY_DATABASE_URL=database, **extra)
        if cluster:
            env |= {"GATEWAY_REDIS_URL": self.redis.url, "GATEWAY_REDIS_PASSWORD_FILE": str(self.redis.password_file)}
        return env


def _need(found: Any, what: str) -> Any:
    if found is None:
        raise SystemExit(f"bench/cluster.py needs {what}")
    return found


async def measure(urls: Sequence[str], pids: Sequence[int], conns: int, msgs: int, pace: float) -> dict[str, Any]:
    """``conns`` clients split over ``urls``; CPU of ``pids`` and wall time between ready and done."""
    marks: dict[str, tuple[float, float, float]] = {}
    share = [conns // len(urls) + (1 if i < conns % len(urls) else 0) for i in range(len(urls))]
    ready = done = 0

    def on_ready() -> None:
        nonlocal ready
        ready += 1
        if ready == len(urls):
            marks["a"] = (time.perf_counter(), sum(cpu_seconds(p) for p in pids), self_cpu_seconds())

    def on_done() -> None:
        nonlocal done
        done += 1
        if done == len(urls):
            marks["b"] = (time.perf_counter(), sum(cpu_seconds(p) for p in pids), self_cpu_seconds())

    gc.collect()
    results = await asyncio.gather(*(
        run_chat(url, "json", n, msgs, TOKENS, pace, timeout=300, on_ready=on_ready, on_done=on_done)
        for url, n in zip(urls, share, strict=True)
    ))
    (t0, c0, l0), (t1, c1, l1) = marks["a"], marks["b"]
    tokens = sum(r.tokens for r in results)
    errors = [s for r in results for s in r.error_samples]
    return {
        "tokens": tokens, "errors": sum(r.errors for r in results), "error_samples": errors[:3],
        "wall_s": t1 - t0, "cpu_s": c1 - c0, "us_per_token": (c1 - c0) / max(tokens, 1) * 1e6,
        "tokens_per_s": tokens / (t1 - t0) if t1 > t0 else 0.0,
        "gateway_cpu_per_instance": (c1 - c0) / (t1 - t0) / len(pids) if t1 > t0 else 0.0,
        "load_cpu": (l1 - l0) / (t1 - t0) if t1 > t0 else 0.0,
        "ttft_ms_p99": pct([x for r in results for x in r.ttft], 99) * 1e3,
    }


@contextlib.asynccontextmanager
async def gateway(name: str, env: dict[str, str], cpu: int | None = 0) -> AsyncIterator[ServerProc]:
    proc = ServerProc(name, gateway_argv(), env, cpu=cpu)
    async with proc.running():
        yield proc


async def cpu_per_token(bench: Bench, up: FakeUpstream, rounds: int) -> dict[str, Any]:
    """Single against cluster, paced and unpaced, alternating."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in range(rounds):
        for mode in ("single", "cluster"):
            database = bench.pg.url(bench.pg.create_database())
            async with gateway(mode, bench.env(up.url, cluster=mode == "cluster", database=database)) as g:
                await run_chat(g.url, "json", 5, 1, 20, timeout=30)  # warm up
                for load, (conns, msgs, pace) in (("paced", (200, 2, PACE_MS)), ("unpaced", (100, 4, 0.0))):
                    redis0 = cpu_seconds(bench.redis.pid or 0) if mode == "cluster" else 0.0
                    fig = await measure([g.url], [g.pid], conns, msgs, pace)
                    if mode == "cluster":
                        fig["redis_us_per_token"] = (cpu_seconds(bench.redis.pid or 0) - redis0) / max(fig["tokens"], 1) * 1e6
                    out.setdefault(f"{mode} {load}", []).append(fig)
                    print(f"round {r + 1} {mode:7} {load:7}: {fig['us_per_token']:6.2f} µs/token "
                          f"{fig['tokens_per_s']:8.0f} tokens/s errors {fig['errors']}", file=sys.stderr)
    summary = {k: {"us_per_token": median([f["us_per_token"] for f in v]),
                   "tokens_per_s": median([f["tokens_per_s"] for f in v]),
                   "ttft_ms_p99": median([f["ttft_ms_p99"] for f in v]),
                   "redis_us_per_token": median([f.get("redis_us_per_token", 0.0) for f in v]),
                   "errors": sum(f["errors"] for f in v)} for k, v in out.items()}
    for load in ("paced", "unpaced"):
        summary[f"ratio {load}"] = {
            "cluster_over_single": summary[f"cluster {load}"]["us_per_token"] / summary[f"single {load}"]["us_per_token"]
        }
    return summary


class Caddy:
    """``caddy run`` on the project's Caddyfile, balancing over ``upstreams``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.root = tmp / "caddy-data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def start(self, ws: Sequence[str], http: Sequence[str]) -> None:
        env = {
            "PATH": os.environ["PATH"], "HOME": str(self.tmp), "XDG_DATA_HOME": str(self.tmp / "caddy-data"),
            "XDG_CONFIG_HOME": str(self.tmp / "caddy-config"), "GATEWAY_SITE": "localhost", "CADDY_BIND": "127.0.0.1",
            "CADDY_HTTPS_PORT": str(self.port), "CADDY_HTTP_PORT": str(free_port()),
            "CADDY_ADMIN": f"127.0.0.1:{free_port()}", "GATEWAY_WS_UPSTREAM": " ".join(ws),
            "GATEWAY_HTTP_UPSTREAM": " ".join(http),
        }
        self.proc = subprocess.Popen(
            ["caddy", "run", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not self.root.exists():  # the local CA, made at start; then TLS serves
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("caddy did not start")
            time.sleep(0.1)
        time.sleep(1.0)
        os.environ["SSL_CERT_FILE"] = str(self.root)  # the load trusts Caddy's local CA

    @property
    def url(self) -> str:
        return f"wss://localhost:{self.port}/chat"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


async def throughput(bench: Bench, up: FakeUpstream, rounds: int) -> dict[str, Any]:
    """One instance against two, behind Caddy and direct, unpaced."""
    out: dict[str, list[dict[str, Any]]] = {}
    conns, msgs = 100, 6
    for r in range(rounds):
        for count in (1, 2):
            database = bench.pg.url(bench.pg.create_database())
            async with contextlib.AsyncExitStack() as stack:
                gws = [await stack.enter_async_context(
                    gateway(f"g{i}", bench.env(up.url, cluster=True, database=database), cpu=i)) for i in range(count)]
                for g in gws:
                    await run_chat(g.url, "json", 5, 1, 20, timeout=30)
                caddy = Caddy(bench.tmp / f"caddy{r}{count}")
                await asyncio.to_thread(
                    caddy.start, [g.url.removeprefix("ws://").removesuffix("/chat") for g in gws],
                    [g.ready["http_url"].removeprefix("http://").rstrip("/") for g in gws],
                )
                stack.callback(caddy.stop)
                for via, urls in (("caddy", [caddy.url]), ("direct", [g.url for g in gws])):
                    fig = await measure(urls, [g.pid for g in gws], conns, msgs, 0.0)
                    out.setdefault(f"{count} {via}", []).append(fig)
                    print(f"round {r + 1} {count} instance(s) {via:6}: {fig['tokens_per_s']:8.0f} tokens/s, CPU per "
                          f"instance {fig['gateway_cpu_per_instance']:.2f}, load {fig['load_cpu']:.2f}, "
                          f"errors {fig['errors']} {fig['error_samples'][:1]}", file=sys.stderr)
    summary = {k: {"tokens_per_s": median([f["tokens_per_s"] for f in v]), "errors": sum(f["errors"] for f in v),
                   "gateway_cpu_per_instance": median([f["gateway_cpu_per_instance"] for f in v]),
                   "load_cpu": median([f["load_cpu"] for f in v])}
               for k, v in out.items()}
    for via in ("caddy", "direct"):
        summary[f"ratio {via}"] = {"two_over_one": summary[f"2 {via}"]["tokens_per_s"] / summary[f"1 {via}"]["tokens_per_s"]}
    return summary


async def rolling_restart(bench: Bench) -> dict[str, Any]:
    """Three instances behind Caddy, 50 users, each instance restarted in turn."""
    database = bench.pg.url(bench.pg.create_database())
    config = bench.tmp / "rolling.toml"
    config.write_text("[cluster]\nlease_timeout = 5\n[provider]\ndemo_delay_ms = 20\n")
    ports = [(free_port(), free_port()) for _ in range(3)]

    def env(i: int) -> dict[str, str]:
        e = bench.env("", cluster=True, database=database, GATEWAY_PROVIDER="demo", GATEWAY_CONFIG=str(config))
        return e | {"GATEWAY_WS_ADDR": f"127.0.0.1:{ports[i][0]}", "GATEWAY_HTTP_ADDR": f"127.0.0.1:{ports[i][1]}"}

    procs = [ServerProc(f"g{i}", gateway_argv(), env(i), cpu=None) for i in range(3)]
    stack = contextlib.AsyncExitStack()
    async with stack:
        running = [await stack.enter_async_context(p.running()) for p in procs]
        caddy = Caddy(bench.tmp / "caddy-rolling")
        await asyncio.to_thread(caddy.start, [f"127.0.0.1:{w}" for w, _ in ports], [f"127.0.0.1:{h}" for _, h in ports])
        stack.callback(caddy.stop)
        load = await asyncio.create_subprocess_exec(
            PY, "-m", "gateway.loadtest", caddy.url, "-c", "50", "-n", "8", "--ramp", "1", "--json", "--quiet",
            "--duration", "120", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(3)  # the load is on every instance
        for i in range(3):
            running[i].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await asyncio.to_thread(running[i].proc.wait, 60)  # type: ignore[union-attr]
            restarted = ServerProc(f"g{i}'", gateway_argv(), env(i), cpu=None)
            running[i] = await stack.enter_async_context(restarted.running())
        out, _ = await asyncio.wait_for(load.communicate(), 150)
    report: dict[str, Any] = json.loads(out)
    return {
        "replies": report["replies"], "errors": report["errors"], "resumes": report["resumes"],
        "close_codes": report["close_codes"], "integrity": report["integrity"], "wall_s": report["wall_s"],
        "replies_lost": report["replies"]["requested"] - report["replies"]["completed"],
    }


def render(results: dict[str, Any]) -> str:
    cpu, tp, roll = results["cpu"], results["throughput"], results["rolling"]
    lines = [f"# Cluster mode, {results['when']} ({results['rounds']} rounds, medians)", "",
             "## CPU per delivered token (one gateway, CPU 0)", "",
             "| mode | load | gateway µs/token | Redis µs/token | tokens/s | TTFT p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for mode in ("single", "cluster"):
        for load in ("paced", "unpaced"):
            f = cpu[f"{mode} {load}"]
            lines.append(f"| {mode} | {load} | {f['us_per_token']:.2f} | {f['redis_us_per_token']:.2f} | "
                         f"{f['tokens_per_s']:.0f} | {f['ttft_ms_p99']:.1f} | {f['errors']} |")
    lines += ["", f"cluster / single: paced **{cpu['ratio paced']['cluster_over_single']:.2f}×**, unpaced "
              f"**{cpu['ratio unpaced']['cluster_over_single']:.2f}×** (goal ≤ 1.3× paced)", "",
              "## Throughput, unpaced (tokens/s delivered)", "",
              "| instances | via Caddy | CPU per instance | load CPU | direct | CPU per instance | load CPU |",
              "|---|---|---|---|---|---|---|"]
    for count in (1, 2):
        c, d = tp[f"{count} caddy"], tp[f"{count} direct"]
        lines.append(f"| {count} | {c['tokens_per_s']:.0f} | {c['gateway_cpu_per_instance']:.2f} | {c['load_cpu']:.2f} | "
                     f"{d['tokens_per_s']:.0f} | {d['gateway_cpu_per_instance']:.2f} | {d['load_cpu']:.2f} |")
    lines += ["", f"two / one: via Caddy **{tp['ratio caddy']['two_over_one']:.2f}×**, direct "
              f"**{tp['ratio direct']['two_over_one']:.2f}×** (goal ≥ 1.7×)", "",
              "## Rolling restart under load (3 instances behind Caddy, 50 users × 8 prompts)", "",
              f"replies {roll['replies']['completed']}/{roll['replies']['requested']} (lost {roll['replies_lost']}), "
              f"repeated deltas {roll['integrity']['repeated_deltas']}, distinct texts per prompt "
              f"{roll['integrity']['distinct_texts']}, resumes {roll['resumes']}, close codes {roll['close_codes']}, "
              f"errors {roll['errors'] or 'none'}", ""]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--only", choices=("cpu", "throughput", "rolling"), action="append")
    args = parser.parse_args()
    if shutil.which("caddy") is None:
        raise SystemExit("bench/cluster.py needs caddy (apt-get install caddy)")
    only = set(args.only or ("cpu", "throughput", "rolling"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    bench = Bench(tmp)
    bench.start()
    results: dict[str, Any] = {"when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
                               "rounds": args.rounds}
    try:
        async with FakeUpstream(TOKENS, PACE_MS) as up:
            if "cpu" in only:
                results["cpu"] = await cpu_per_token(bench, up, args.rounds)
            if "throughput" in only:
                results["throughput"] = await throughput(bench, up, args.rounds)
        if "rolling" in only:
            results["rolling"] = await rolling_restart(bench)
    finally:
        bench.close()
        shutil.rmtree(tmp, ignore_errors=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cluster-{stamp}.json").write_text(json.dumps(results, indent=2))
    if only == {"cpu", "throughput", "rolling"}:
        text = render(results)
        (args.out / f"cluster-{stamp}.md").write_text(text)
        print(text)
    else:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
