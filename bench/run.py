"""The benchmark suite: every target on every scenario, side by side, in one run.

Targets (each a server process pinned to CPU 0 with ``taskset -c 0``; this load
generator and the fake upstream are pinned to CPU 1):

* ``floor``            the thinnest relay: websockets + one aiohttp session (bench/floor_app.py)
* ``seed``             the stack the gateway replaces: FastAPI + uvicorn + httpx (bench/seed_app.py)
* ``peer``             the cheapest stack a user could pick instead: Starlette + uvicorn + one
                       aiohttp session (bench/peer_app.py)
* ``gateway-memory``   ``python -m gateway serve``, in-memory store
* ``gateway-sqlite``   the same with the SQLite store (the production default)
* ``gateway-postgres`` the same with the PostgreSQL store: a temporary cluster on this machine
                       (tests/pgserver.py), its processes pinned with the load to CPU 1, a
                       new database per round; its CPU is not in the gateway's figures
* ``gateway-uvloop``   gateway-sqlite on uvloop: the product's default when uvloop is installed
                       (the other gateway rows run on asyncio's loop, as floor, seed and peer do)
* ``gateway-deflate`` permessage-deflate on (``[server] compression = true``) at several
  settings (bench/gateway_launch.py --deflate)

The gateway runs with ``GATEWAY_PROVIDER=openai`` against the fake upstream, logs at
info as JSON to a pipe this process drains, in both protocols (``json`` = chat.v1,
``plain`` = plain-text mode). Scenarios:

* throughput  100 connections x 5 messages x 200 unpaced tokens
* paced       100 connections x 2 messages x 100 tokens, 20 ms apart (below saturation)
* burst       100 connections send one message at the same instant (10 tokens, 20 ms apart):
              time to first token while the messages queue up to be stored
* idle        5,000 idle connections: RSS and CPU per connection, the client offering
              permessage-deflate or not
* deflate     the compression settings: 2,000 idle connections' RSS, then 100 x 1 x 100
              tokens 20 ms apart (one token per frame, as real streams)
* scale       10,000 idle + 1,000 streaming connections (60 tokens, 100 ms apart) at once

Throughput and paced run in alternating rounds (a fresh process per target and
round, the order rotated each round); the tables give medians over rounds, and
latency percentiles over the samples of all rounds.

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--only floor,seed,...] [--skip idle,scale,...]
        [--budget SECONDS] [--priority]

Prints Markdown tables and the raw JSON, also written to bench/results/.
Everything is on 127.0.0.1, bounded in count and time, and stops by itself; a time
budget (780 s by default) skips the rounds and rows that would not fit, and says so.
docs/performance.md explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
from pgserver import PgServer, find_bindir  # noqa: E402  (the tests' temporary PostgreSQL)
from common import (  # noqa: E402
    BENCH, LOAD_CPU, ROOT, TARGET_CPU, CountingClient, FakeUpstream, ServerProc, abort_all, cpu_busy_seconds, cpu_seconds,
    floor_argv,
    gateway_argv, gateway_env, median, negotiated_deflate, open_idle, pct, pin_load, raise_nofile, rss_bytes,
    run_chat, seed_argv, self_cpu_seconds,
)

KIB = 1024


@dataclass(frozen=True)
class Sizes:
    rounds: int
    thr: tuple[int, int, int]  # connections, messages, tokens (unpaced)
    paced: tuple[int, int, int, float]  # connections, messages, tokens, pace_ms
    burst: tuple[int, int, int, float]  # the same, every first message sent at once
    idle: int
    deflate_idle: int
    deflate_chat: tuple[int, int, int, float]  # paced: one token per frame, as real streams
    scale_idle: int
    scale_stream: tuple[int, int, int, float]


FULL = Sizes(3, (100, 5, 200), (100, 2, 100, 20.0), (100, 1, 10, 20.0), 5000, 2000, (100, 1, 100, 20.0), 10_000, (1000, 1, 60, 100.0))
QUICK = Sizes(1, (50, 2, 200), (50, 1, 100, 20.0), (100, 1, 10, 20.0), 1000, 1000, (50, 1, 50, 20.0), 2000, (200, 1, 40, 100.0))

# (row name, server, protocol)
CHAT_ROWS = [
    ("floor", "floor", "plain"),
    ("seed", "seed", "plain"),
    ("peer", "peer", "plain"),
    ("gateway-memory json", "gateway-memory", "json"),
    ("gateway-memory plain", "gateway-memory", "plain"),
    ("gateway-sqlite json", "gateway-sqlite", "json"),
    ("gateway-sqlite plain", "gateway-sqlite", "plain"),
    ("gateway-postgres json", "gateway-postgres", "json"),
    ("gateway-postgres plain", "gateway-postgres", "plain"),
    ("gateway-uvloop json", "gateway-uvloop", "json"),
    ("gateway-uvloop plain", "gateway-uvloop", "plain"),
]
# (row name, server, protocol, client offers deflate), in priority order (the budget skips the last first)
IDLE_ROWS = [
    ("floor", "floor", "plain", False),
    ("seed", "seed", "plain", False),
    ("gateway-memory json", "gateway-memory", "json", False),
    ("floor", "floor", "plain", True),
    ("seed", "seed", "plain", True),
    ("gateway-memory json", "gateway-memory", "json", True),
    ("gateway-memory plain", "gateway-memory", "plain", False),
    ("gateway-sqlite json", "gateway-sqlite", "json", False),
    ("gateway-uvloop json", "gateway-uvloop", "json", False),
]
# permessage-deflate settings measured on the gateway: (label, launcher spec)
DEFLATE = [
    ("12 bits, memLevel 5 (websockets' default)", "12,5"),
    ("10 bits, memLevel 4", "10,4"),
    ("9 bits, memLevel 1", "9,1"),
    ("12 bits, memLevel 5, no context takeover", "12,5,nct"),
    ("15 bits, memLevel 8 (zlib's default)", "15,8"),
]
SCALE_ROWS = [("gateway-sqlite json", "gateway-sqlite", "json"), ("floor", "floor", "plain"), ("seed", "seed", "plain")]


def log(*parts: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, upstream: FakeUpstream, tmp: Path) -> None:
        self.args, self.sizes, self.up, self.tmp = args, sizes, upstream, tmp
        self.configs: dict[str, Path] = {}
        self._n = 0
        self.pg: PgServer | None = None  # started on first use, stopped by close()
        self.deadline = time.perf_counter() + args.budget
        self.phases: list[str] = []  # the phases still to run, this one first
        self.skipped: list[str] = []

    # The time budget: what each later phase needs at least on a quiet machine (seconds,
    # full sizes; a quarter with --quick). Rows that would not fit are skipped and reported.
    RESERVE = {"chat": 70.0, "idle": 45.0, "deflate": 40.0, "scale": 45.0}

    def reserve_after(self, phase: str) -> float:
        later = self.phases[self.phases.index(phase) + 1:] if phase in self.phases else []
        scale = 0.25 if self.args.quick else 1.0
        return sum(self.RESERVE[p] for p in later) * scale

    def fits(self, phase: str, needed: float) -> bool:
        return bool(time.perf_counter() + needed + self.reserve_after(phase) <= self.deadline)

    def skip(self, what: str) -> None:
        self.skipped.append(what)
        log(f"skipped (time budget): {what}")

    def _config(self, name: str, text: str) -> Path:
        if name not in self.configs:
            path = self.tmp / f"{name}.toml"
            path.write_text(text)
            self.configs[name] = path
        return self.configs[name]

    @contextlib.asynccontextmanager
    async def server(self, server: str, *, deflate: str | None = None, scale: bool = False) -> AsyncIterator[ServerProc]:
        """A fresh process of ``server`` (with a fresh state directory)."""
        self._n += 1
        state = self.tmp / f"state{self._n}"
        state.mkdir()
        up = self.up.url
        config = None
        if deflate or scale:
            text = "[server]\ncompression = true\n" if deflate else ""
            text += "[limits]\nmax_connections = 20000\nmax_replies = 2000\n" if scale else ""
            config = self._config(f"cfg-{bool(deflate)}-{scale}", text)
        env: dict[str, str] = {}
        if server == "floor":
            argv = floor_argv(up)
        elif server == "seed":
            argv = seed_argv(up)
        elif server == "peer":
            argv = [sys.executable, str(Path(__file__).resolve().parent / "peer_app.py"), "--upstream", up]
        elif server.startswith("gateway"):
            store = {"gateway-sqlite": "sqlite", "gateway-postgres": "postgres", "gateway-uvloop": "sqlite"}.get(
                server, "memory")
            argv = gateway_argv(deflate=deflate, config=config)
            env = gateway_env(up, state, store)
            env["GATEWAY_EVENT_LOOP"] = "uvloop" if server == "gateway-uvloop" else "asyncio"
            if store == "postgres":
                env["GATEWAY_DATABASE_URL"] = self.database()
        else:
            raise ValueError(server)
        proc = ServerProc(server, argv, env)
        async with proc.running():
            yield proc

    async def warm_up(self, srv: ServerProc, protocol: str) -> None:
        """First connections and replies: imports, caches, the upstream pool."""
        r = await run_chat(srv.url, protocol, 5, 1, 20, timeout=30)
        if r.errors:
            raise RuntimeError(f"{srv.name} {protocol} warm-up failed: {r.error_samples}")

    async def measure(
        self, srv: ServerProc, protocol: str, conns: int, msgs: int, tokens: int, pace: float = 0.0,
        *, compression: bool = False, spread: float = 0.0, timeout: float = 180,
    ) -> tuple[dict[str, Any], Any]:
        marks: dict[str, tuple[float, ...]] = {}

        def snap(name: str) -> Callable[[], None]:
            def mark() -> None:
                marks[name] = (time.perf_counter(), cpu_seconds(srv.pid), self_cpu_seconds(),
                               cpu_seconds(self.up.pid), CountingClient.received, cpu_busy_seconds(TARGET_CPU))
            return mark

        gc.collect()
        gc.disable()  # no collector pauses in the load while it measures
        try:
            r = await run_chat(srv.url, protocol, conns, msgs, tokens, pace, compression=compression, spread=spread,
                               timeout=timeout, on_ready=snap("a"), on_done=snap("b"))
        finally:
            gc.enable()
        (t0, c0, l0, u0, b0, k0), (t1, c1, l1, u1, b1, k1) = marks["a"], marks["b"]
        wall, cpu = t1 - t0, c1 - c0
        tok = max(r.tokens, 1)
        fig = {
            "tokens": r.tokens, "replies": r.replies, "errors": r.errors, "error_samples": r.error_samples,
            "frames": r.frames, "wall_s": wall, "cpu_s": cpu,
            "us_per_token": cpu / tok * 1e6,
            "tokens_per_s": r.tokens / wall if wall else 0.0,
            "tokens_per_frame": r.tokens / r.frames if r.frames else 0.0,
            "wire_bytes_per_token": (b1 - b0) / tok,
            "server_cpu_util": cpu / wall if wall else 0.0,
            "load_cpu_util": (l1 - l0) / wall if wall else 0.0,
            "upstream_cpu_util": (u1 - u0) / wall if wall else 0.0,
            # what else ran on the target's CPU meanwhile (other tenants of the machine)
            "background_cpu_util": max(0.0, (k1 - k0) - cpu) / wall if wall else 0.0,
            "ttft_ms_p50": pct(r.ttft, 50) * 1e3, "ttft_ms_p99": pct(r.ttft, 99) * 1e3,
            "gap_ms_p50": pct(r.gaps, 50) * 1e3, "gap_ms_p99": pct(r.gaps, 99) * 1e3,
        }
        return fig, r

    # Phases

    async def chat_rounds(self) -> dict[str, Any]:
        s = self.sizes
        rows = [r for r in CHAT_ROWS if self.selected(r[1])]
        out: dict[str, Any] = {name: {"rounds": [], "ttft_thr": [], "ttft": [], "gaps": [], "burst": []}
                               for name, _, _ in rows}
        last = 0.0
        for rnd in range(s.rounds):
            if rnd and not self.fits("chat", last):
                self.skip(f"throughput + paced rounds {rnd + 1}..{s.rounds}")
                break
            started = time.perf_counter()
            order = rows[rnd % len(rows):] + rows[: rnd % len(rows)]
            for name, server, protocol in order:
                async with self.server(server) as srv:
                    await self.warm_up(srv, protocol)
                    thr, rt = await self.measure(srv, protocol, *s.thr)
                    c, m, t, pace = s.paced
                    paced, rp = await self.measure(srv, protocol, c, m, t, pace, spread=1.0)
                    burst, rb = await self.measure(srv, protocol, *s.burst)
                out[name]["rounds"].append({"throughput": thr, "paced": paced, "burst": burst})
                out[name]["burst"] += rb.ttft
                out[name]["ttft_thr"] += rt.ttft
                out[name]["ttft"] += rp.ttft
                out[name]["gaps"] += rp.gaps
                last = time.perf_counter() - started
                log(f"round {rnd + 1}/{s.rounds} {name}: {thr['us_per_token']:.2f} µs/token, "
                    f"{thr['tokens_per_s']:.0f} tokens/s, paced TTFT p99 {paced['ttft_ms_p99']:.1f} ms, "
                    f"gap p99 {paced['gap_ms_p99']:.1f} ms, errors {thr['errors'] + paced['errors']}")
        summary: dict[str, Any] = {}
        for name, data in out.items():
            rounds = data["rounds"]
            if not rounds:
                continue
            summary[name] = {
                "us_per_token": median([x["throughput"]["us_per_token"] for x in rounds]),
                "us_per_token_rounds": [x["throughput"]["us_per_token"] for x in rounds],
                "tokens_per_s": median([x["throughput"]["tokens_per_s"] for x in rounds]),
                "tokens_per_frame": median([x["throughput"]["tokens_per_frame"] for x in rounds]),
                "wire_bytes_per_token": median([x["throughput"]["wire_bytes_per_token"] for x in rounds]),
                "thr_ttft_ms_p50": pct(data["ttft_thr"], 50) * 1e3,
                "thr_ttft_ms_p99": pct(data["ttft_thr"], 99) * 1e3,
                "thr_server_cpu_util": median([x["throughput"]["server_cpu_util"] for x in rounds]),
                "thr_load_cpu_util": median([x["throughput"]["load_cpu_util"] for x in rounds]),
                "paced_us_per_token": median([x["paced"]["us_per_token"] for x in rounds]),
                "paced_us_per_token_rounds": [x["paced"]["us_per_token"] for x in rounds],
                "paced_server_cpu_util": median([x["paced"]["server_cpu_util"] for x in rounds]),
                "paced_ttft_ms_p50": pct(data["ttft"], 50) * 1e3,
                "paced_ttft_ms_p99": pct(data["ttft"], 99) * 1e3,
                "paced_gap_ms_p50": pct(data["gaps"], 50) * 1e3,
                "paced_gap_ms_p99": pct(data["gaps"], 99) * 1e3,
                "burst_ttft_ms_p50": pct(data["burst"], 50) * 1e3,
                "burst_ttft_ms_p99": pct(data["burst"], 99) * 1e3,
                # busy all along (near 1.0): the burst is CPU-bound here; low: it waited on something else
                "burst_server_cpu_util": median([x["burst"]["server_cpu_util"] for x in rounds]),
                "errors": sum(x["throughput"]["errors"] + x["paced"]["errors"] for x in rounds),
                "rounds": rounds,
            }
        # Ratios to the floor and the seed: the median of each round's ratio (the two measured
        # minutes apart in the same round), which cancels the machine's slow drifts.
        for ref in ("floor", "seed", "peer"):
            if ref not in summary:
                continue
            base = summary[ref]
            for row in summary.values():
                for key, src in (("us_per_token", "throughput"), ("paced_us_per_token", "paced")):
                    per_round = [a[src]["us_per_token"] / b[src]["us_per_token"]
                                 for a, b in zip(row["rounds"], base["rounds"])]
                    row[f"{key}_vs_{ref}_rounds"] = per_round
                    row[f"{key}_vs_{ref}"] = median(per_round)
        return summary

    async def idle_one(
        self, server: str, protocol: str, offered: bool, n: int, *, deflate: str | None = None,
        chat: tuple[int, int, int, float] | None = None,
    ) -> dict[str, Any]:
        async with self.server(server, deflate=deflate) as srv:
            await self.warm_up(srv, protocol)
            await asyncio.sleep(0.5)
            rss0, cpu0, t0 = rss_bytes(srv.pid), cpu_seconds(srv.pid), time.perf_counter()
            conns, failures = await open_idle(srv.url, protocol, n, compression=offered)
            open_s = time.perf_counter() - t0
            await asyncio.sleep(1.0)
            rss1, cpu1 = rss_bytes(srv.pid), cpu_seconds(srv.pid)
            negotiated = bool(conns) and negotiated_deflate(conns[0])
            abort_all(conns)
            got = len(conns)
            fig: dict[str, Any] = {
                "connections": got, "failures": len(failures), "failure_samples": failures[:3],
                "negotiated": negotiated, "rss_before": rss0, "rss_after": rss1,
                "kib_per_conn": (rss1 - rss0) / max(got, 1) / KIB,
                "us_per_handshake": (cpu1 - cpu0) / max(got, 1) * 1e6,
                "open_s": open_s,
            }
            if chat:
                await asyncio.sleep(1.0)
                fig["chat"], _ = await self.measure(srv, protocol, *chat, compression=offered, spread=1.0)
        return fig

    async def idle(self) -> list[dict[str, Any]]:
        out = []
        last = 10.0
        for name, server, protocol, offered in IDLE_ROWS:
            if not self.selected(server):
                continue
            if not self.fits("idle", last):
                self.skip(f"idle {name}, client offers deflate: {offered}")
                continue
            started = time.perf_counter()
            fig = await self.idle_one(server, protocol, offered, self.sizes.idle)
            last = time.perf_counter() - started
            fig.update(name=name, protocol=protocol, offered=offered)
            out.append(fig)
            log(f"idle {name} offered={offered}: {fig['kib_per_conn']:.1f} KiB/conn, "
                f"{fig['us_per_handshake']:.0f} µs/handshake, negotiated={fig['negotiated']}, "
                f"failures {fig['failures']}")
        return out

    async def deflate(self) -> list[dict[str, Any]]:
        out = []
        runs: list[tuple[str, str, str | None, bool]] = [
            ("off (client offers none)", "floor", None, False),
            ("off (the default)", "gateway-memory", None, True),
            (DEFLATE[0][0], "gateway-memory", DEFLATE[0][1], True),
            ("12 bits, memLevel 5 (websockets' default)", "floor", None, True),
        ]
        runs += [(label, "gateway-memory", spec, True) for label, spec in DEFLATE[1:]]
        last = 10.0
        for label, server, spec, offered in runs:
            if not self.selected(server if server == "floor" else "gateway-deflate"):
                continue
            if not self.fits("deflate", last):
                self.skip(f"deflate {server}: {label}")
                continue
            started = time.perf_counter()
            protocol = "plain" if server == "floor" else "json"
            fig = await self.idle_one(server, protocol, offered, self.sizes.deflate_idle, deflate=spec,
                                      chat=self.sizes.deflate_chat)
            fig.update(name=label, server=server, spec=spec, protocol=protocol, offered=offered)
            last = time.perf_counter() - started
            out.append(fig)
            log(f"deflate {label}: {fig['kib_per_conn']:.1f} KiB/conn, negotiated={fig['negotiated']}, "
                f"{fig['chat']['us_per_token']:.1f} µs/token paced, {fig['chat']['wire_bytes_per_token']:.1f} B/token")
        return out

    async def scale(self) -> list[dict[str, Any]]:
        out = []
        s = self.sizes
        c, m, t, pace = s.scale_stream
        last = 25.0
        for name, server, protocol in SCALE_ROWS:
            if not self.selected(server):
                continue
            if not self.fits("scale", last):
                self.skip(f"scale {name}")
                continue
            started = time.perf_counter()
            async with self.server(server, scale=True) as srv:
                await self.warm_up(srv, protocol)
                await asyncio.sleep(0.5)
                rss0, cpu0, t0 = rss_bytes(srv.pid), cpu_seconds(srv.pid), time.perf_counter()
                conns, failures = await open_idle(srv.url, protocol, s.scale_idle, compression=False)
                open_s = time.perf_counter() - t0
                await asyncio.sleep(1.0)
                rss1, cpu1 = rss_bytes(srv.pid), cpu_seconds(srv.pid)
                chat, _ = await self.measure(srv, protocol, c, m, t, pace, spread=2.0, timeout=300)
                rss2 = rss_bytes(srv.pid)
                abort_all(conns)
            fig = {
                "name": name, "idle": len(conns), "idle_failures": len(failures), "failure_samples": failures[:3],
                "streaming": c, "open_s": open_s, "handshakes_per_s": len(conns) / open_s if open_s else 0.0,
                "us_per_handshake": (cpu1 - cpu0) / max(len(conns), 1) * 1e6,
                "rss_idle_mib": rss1 / 2**20, "rss_streaming_mib": rss2 / 2**20,
                "kib_per_idle_conn": (rss1 - rss0) / max(len(conns), 1) / KIB, "chat": chat,
            }
            out.append(fig)
            last = max(last, time.perf_counter() - started)
            log(f"scale {name}: {len(conns)} idle ({len(failures)} failed) in {open_s:.1f} s, "
                f"RSS {rss2 / 2**20:.0f} MiB, {chat['us_per_token']:.2f} µs/token, "
                f"TTFT p99 {chat['ttft_ms_p99']:.1f} ms, gap p99 {chat['gap_ms_p99']:.1f} ms, errors {chat['errors']}")
        return out

    def database(self) -> str:
        """The URL of a new database on this run's PostgreSQL (started on first use)."""
        if self.pg is None:
            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("gateway-postgres needs PostgreSQL (apt-get install postgresql)")
            self.pg = PgServer(bindir)
            self.pg.start()
            postmaster = int((self.pg.data / "postmaster.pid").read_text().split()[0])
            with contextlib.suppress(OSError):  # its backends, forked later, inherit it
                os.sched_setaffinity(postmaster, {LOAD_CPU})
        return self.pg.url(self.pg.create_database())

    def close(self) -> None:
        if self.pg is not None:
            self.pg.stop()

    def selected(self, server: str) -> bool:
        only = self.args.only
        return not only or server in only or any(server.startswith(o) for o in only)


# Report


def _f(x: float, digits: int = 1) -> str:
    return "–" if x != x else f"{x:.{digits}f}"


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    env = results["environment"]
    add(f"Run {results['started']} on {env['cpu_model']} ({env['cpus']} CPUs), Python {env['python']}, "
        f"{results['duration_s']:.0f} s in all; gateway at {env['revision']}. Servers pinned to CPU {TARGET_CPU} (`taskset -c {TARGET_CPU}`); "
        f"the load generator and the fake upstream pinned to CPU {LOAD_CPU}. Loopback only.")
    if results.get("priority") != "normal":
        add(f"All benchmark processes ran at {results['priority']} (`--priority`).")
    if results.get("skipped"):
        add(f"Skipped to stay within the {results['budget_s']:.0f} s budget: " + "; ".join(results["skipped"]) + ".")
    add("")
    chat = results.get("chat")
    sizes = results["sizes"]
    if chat:
        c, m, t = sizes["thr"]
        pc, pm, pt, pace = sizes["paced"]
        bc = sizes["burst"][0]
        add(f"### Throughput ({c} connections × {m} messages × {t} unpaced tokens), paced "
            f"({pc} × {pm} × {pt} tokens, {pace:g} ms apart) and burst ({bc} messages sent at once)")
        add("")
        add(f"CPU is the server's CPU time (all threads, from /proc) per delivered token: the median of "
            f"{sizes['rounds']} alternating rounds, a fresh process each; × floor, × seed and × peer are the medians "
            "of each round's ratio. Latency percentiles are over all rounds' samples.")
        add("")
        add("| target | protocol | CPU µs/token | × floor | × seed | × peer | tokens/s | tokens/frame | wire B/token | "
            "paced CPU µs/token | paced × floor | paced × peer | paced TTFT p50 / p99 ms | paced gap p50 / p99 ms | "
            "burst TTFT p50 / p99 ms | errors |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        nan = float("nan")
        for name, row in chat.items():
            label, _, protocol = name.partition(" ")
            add(f"| {label} | {protocol or 'plain'} | {_f(row['us_per_token'], 2)} | "
                f"{_f(row.get('us_per_token_vs_floor', nan), 2)} | {_f(row.get('us_per_token_vs_seed', nan), 2)} | "
                f"{_f(row.get('us_per_token_vs_peer', nan), 2)} | {row['tokens_per_s']:.0f} | "
                f"{_f(row['tokens_per_frame'])} | {_f(row['wire_bytes_per_token'])} | {_f(row['paced_us_per_token'])} | "
                f"{_f(row.get('paced_us_per_token_vs_floor', nan), 2)} | {_f(row.get('paced_us_per_token_vs_peer', nan), 2)} | "
                f"{_f(row['paced_ttft_ms_p50'])} / {_f(row['paced_ttft_ms_p99'])} | "
                f"{_f(row['paced_gap_ms_p50'])} / {_f(row['paced_gap_ms_p99'])} | "
                f"{_f(row['burst_ttft_ms_p50'])} / {_f(row['burst_ttft_ms_p99'])} | {row['errors']} |")
        add("")
        bg = [x[k]["background_cpu_util"] for row in chat.values() for x in row["rounds"] for k in ("throughput", "paced")]
        add(f"Other processes' load on CPU {TARGET_CPU} during these measurements: median {median(bg) * 100:.0f} %, "
            f"max {max(bg) * 100:.0f} % (from /proc/stat, minus the target's own time).")
        if median(bg) > 0.15:
            add(f"**Warning: the machine was busy with other work (median {median(bg) * 100:.0f} % of CPU {TARGET_CPU}). "
                "Latencies and tokens/s of this run are not reliable, and CPU per token drifts too (a starved "
                "server batches more). Rerun on a quiet machine, or with `--priority`.**")
        add("")
    idle = results.get("idle")
    if idle:
        add(f"### Idle ({sizes['idle']} connections)")
        add("")
        add("| target | protocol | client offers deflate | negotiated | RSS KiB / connection | CPU µs / handshake | "
            "open s | failures |")
        add("|---|---|---|---|---:|---:|---:|---:|")
        order = [name for name, _, _, _ in IDLE_ROWS]
        for row in sorted(idle, key=lambda r: (order.index(r["name"]), r["offered"])):
            label = row["name"].partition(" ")[0]
            add(f"| {label} | {row['protocol']} | {'yes' if row['offered'] else 'no'} | "
                f"{'yes' if row['negotiated'] else 'no'} | {_f(row['kib_per_conn'])} | {row['us_per_handshake']:.0f} | "
                f"{_f(row['open_s'])} | {row['failures']} |")
        add("")
    deflate = results.get("deflate")
    if deflate:
        c, m, t, pace = sizes["deflate_chat"]
        add(f"### permessage-deflate ({sizes['deflate_idle']} idle connections, the client offering it; then {c} × {m} × {t} "
            f"tokens {pace:g} ms apart, about one token per frame as in real streams)")
        add("")
        add("| target | compression | negotiated | RSS KiB / idle connection | CPU µs / handshake | paced CPU µs/token | "
            "wire B/token | TTFT p99 ms | gap p99 ms |")
        add("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for row in deflate:
            ch = row["chat"]
            target = "floor" if row["server"] == "floor" else "gateway json"
            add(f"| {target} | {row['name']} | {'yes' if row['negotiated'] else 'no'} | {_f(row['kib_per_conn'])} | "
                f"{row['us_per_handshake']:.0f} | {_f(ch['us_per_token'], 1)} | {_f(ch['wire_bytes_per_token'])} | "
                f"{_f(ch['ttft_ms_p99'])} | {_f(ch['gap_ms_p99'])} |")
        add("")
    scale = results.get("scale")
    if scale:
        c, m, t, pace = sizes["scale_stream"]
        add(f"### Scale ({sizes['scale_idle']} idle connections, then {c} streaming × {m} messages × {t} tokens "
            f"{pace:g} ms apart, all open at once)")
        add("")
        add("| target | idle open | handshakes/s | RSS MiB idle / streaming | KiB / idle conn | CPU µs/token | "
            "server CPU % | tokens/s | TTFT p50 / p99 ms | gap p50 / p99 ms | errors |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in scale:
            ch = row["chat"]
            add(f"| {row['name']} | {row['idle']} | {row['handshakes_per_s']:.0f} | "
                f"{row['rss_idle_mib']:.0f} / {row['rss_streaming_mib']:.0f} | {_f(row['kib_per_idle_conn'])} | "
                f"{_f(ch['us_per_token'], 2)} | {ch['server_cpu_util'] * 100:.0f} | {ch['tokens_per_s']:.0f} | "
                f"{_f(ch['ttft_ms_p50'])} / {_f(ch['ttft_ms_p99'])} | {_f(ch['gap_ms_p50'])} / {_f(ch['gap_ms_p99'])} | "
                f"{ch['errors'] + row['idle_failures']} |")
        add("")
    targets = results.get("targets")
    if targets:
        add("### Targets: ratios from this run")
        add("")
        lines += targets_table(targets, results)
        add("")
    return "\n".join(lines)


GATEWAY_ROWS = ("gateway-sqlite json", "gateway-sqlite plain", "gateway-memory json", "gateway-memory plain",
                "gateway-postgres json", "gateway-postgres plain", "gateway-uvloop json", "gateway-uvloop plain")


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance goals (issues 6 and 12), per gateway variant, from this run's medians."""
    out: list[dict[str, Any]] = []
    chat = results.get("chat") or {}
    floor, seed, peer = chat.get("floor"), chat.get("seed"), chat.get("peer")

    def add(goal: str, name: str, ratio: float, measured: str, met: bool | None) -> None:
        out.append({"goal": goal, "row": name, "ratio": ratio, "measured": measured, "met": met})

    for name in GATEWAY_ROWS:
        row = chat.get(name)
        if not row:
            continue
        if peer:
            r = row["paced_us_per_token_vs_peer"]
            add("paced CPU/token ≤ 1.0× peer", name, r, f"{r:.2f}×", r <= 1.0)
        if floor:
            r = row["paced_us_per_token_vs_floor"]
            add("paced CPU/token ≤ 0.9× floor", name, r, f"{r:.2f}×", r <= 0.9)
            r = row["burst_ttft_ms_p99"] / floor["burst_ttft_ms_p99"]
            add("burst TTFT p99 ≤ 1.2× floor", name, r, f"{r:.2f}× ({row['burst_ttft_ms_p99']:.1f} ms)", r <= 1.2)
            r = row["us_per_token_vs_floor"]
            add("throughput CPU/token ≤ 1.0× floor", name, r, f"{r:.2f}×", r <= 1.0)
            r = row["paced_gap_ms_p99"] / floor["paced_gap_ms_p99"]
            add("paced gap p99 ≤ 1.2× floor", name, r, f"{r:.2f}× ({row['paced_gap_ms_p99']:.1f} ms)", r <= 1.2)
            r = row["paced_ttft_ms_p99"] / floor["paced_ttft_ms_p99"]
            add("paced TTFT p99 ≤ 1.2× floor (issue 6)", name, r, f"{r:.2f}× ({row['paced_ttft_ms_p99']:.1f} ms)",
                r <= 1.2)
        if seed:
            r = 1 / row["us_per_token_vs_seed"]
            add("throughput CPU/token ≥ 4× cheaper than seed (issue 6)", name, r, f"{r:.2f}× cheaper", r >= 4.0)
    idle = {r["name"]: r for r in results.get("idle") or [] if not r["offered"]}
    for name, row in idle.items():
        if name in GATEWAY_ROWS and "floor" in idle:
            kib, ref = row["kib_per_conn"], idle["floor"]["kib_per_conn"]
            add("idle KiB/connection ≤ floor's, no compression", name, kib / ref, f"{kib:.1f} KiB", kib <= ref)
    return out


def targets_table(targets: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    rows = [name for name in GATEWAY_ROWS if any(t["row"] == name for t in targets)]
    goals = list(dict.fromkeys(t["goal"] for t in targets))
    chat = results.get("chat") or {}
    ref = {"floor": chat.get("floor"), "seed": chat.get("seed"), "peer": chat.get("peer")}
    lines = ["| goal | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
    for goal in goals:
        cells = []
        for name in rows:
            hit = [t for t in targets if t["goal"] == goal and t["row"] == name]
            if not hit:
                cells.append("–")
                continue
            t = hit[0]
            mark = "" if t["met"] is None else (" ✓" if t["met"] else " ✗")
            cells.append(t["measured"] + mark)
        lines.append(f"| {goal} | " + " | ".join(cells) + " |")
    notes = []
    if ref["floor"]:
        f = ref["floor"]
        notes.append(f"floor: {f['us_per_token']:.2f} µs/token, paced {f['paced_us_per_token']:.1f} µs/token, "
                     f"paced TTFT p99 {f['paced_ttft_ms_p99']:.1f} ms, gap p99 {f['paced_gap_ms_p99']:.1f} ms, "
                     f"burst TTFT p99 {f['burst_ttft_ms_p99']:.1f} ms")
    if ref["peer"]:
        notes.append(f"peer: paced {ref['peer']['paced_us_per_token']:.1f} µs/token")
    if ref["seed"]:
        notes.append(f"seed: {ref['seed']['us_per_token']:.2f} µs/token")
    idle = {r["name"]: r for r in results.get("idle") or [] if not r["offered"]}
    for name in ("floor", "seed"):
        if name in idle:
            notes.append(f"{name} idle: {idle[name]['kib_per_conn']:.1f} KiB/connection")
    lines += ["", "Reference values in this run: " + "; ".join(notes) + ".", "✓ met, ✗ not met."]
    return lines


def environment() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("websockets", "aiohttp", "orjson", "structlog", "uvloop", "fastapi", "starlette", "uvicorn", "httpx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    revision = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway"], cwd=ROOT, capture_output=True,
                               text=True)
        if head.returncode == 0:
            revision = head.stdout.strip() + (" + uncommitted changes in gateway/" if dirty.stdout.strip() else "")
    return {"cpu_model": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "versions": versions, "revision": revision}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, smaller scenarios (about 2 minutes)")
    parser.add_argument("--rounds", type=int, help="rounds of throughput + paced (default 3, quick 1)")
    parser.add_argument("--only", type=lambda s: [x for x in s.split(",") if x],
                        help="servers to run: floor, seed, gateway-memory, gateway-sqlite, gateway-postgres, gateway-uvloop, "
                             "gateway-deflate "
                             "(a prefix works: gateway)")
    parser.add_argument("--skip", type=lambda s: [x for x in s.split(",") if x], default=[],
                        help="phases to skip: chat, idle, deflate, scale")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="directory for the JSON results")
    parser.add_argument("--budget", type=float, help="seconds the whole run may take (default 780, quick 240); "
                        "rounds and rows that would not fit are skipped and reported")
    parser.add_argument("--priority", action="store_true",
                        help="run this load, the fake upstream and every target at nice -10, ahead of whatever else "
                             "the machine runs (needs CAP_SYS_NICE, e.g. root; for shared machines)")
    args = parser.parse_args()
    if args.budget is None:
        args.budget = 240.0 if args.quick else 780.0
    if args.priority:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)  # inherited by every process started from here
        except OSError as exc:
            parser.error(f"--priority: cannot raise the priority: {exc}")
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    pinned = pin_load()
    nofile = raise_nofile()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"), "environment": environment(),
        "sizes": dataclasses.asdict(sizes), "pinned": pinned, "nofile": nofile, "quick": args.quick,
        "priority": "nice -10" if args.priority else "normal", "budget_s": args.budget,
    }
    log(f"load pinned to CPU {LOAD_CPU}: {pinned}; open files limit {nofile}")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        async with FakeUpstream() as upstream:
            bench = Bench(args, sizes, upstream, Path(tmp))
            bench.phases = [p for p in ("chat", "idle", "deflate", "scale") if p not in args.skip]
            try:
                for phase in list(bench.phases):
                    log(f"phase {phase}")
                    results[phase] = await getattr(bench, "chat_rounds" if phase == "chat" else phase)()
            finally:
                bench.close()
            results["skipped"] = bench.skipped
    results["duration_s"] = time.perf_counter() - t0
    results["targets"] = check_targets(results)
    table = report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=1))
    (args.out / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.md").write_text(table + "\n")
    print(table)
    print(f"Raw results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}\n")
    print("Raw JSON:")
    print(json.dumps(results))


if __name__ == "__main__":
    try:  # the load side on uvloop when it is installed: more load per CPU, same for every target
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(main())
