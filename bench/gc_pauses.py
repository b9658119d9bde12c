"""The garbage collector's full collections at scale, for several ``[server] gc_threshold``.

For each threshold: a gateway (SQLite, JSON mode, pinned to CPU 0) whose collections
are timed through ``gc.callbacks``; 10,000 idle connections are opened, then 1,000 more
stream one reply of 60 tokens 100 ms apart each (the scale scenario of ``bench/run.py``).
Prints the full collections (generation 2) seen in each phase, and the streams' gap and
first-token p99 and the CPU per token.

    .venv/bin/python bench/gc_pauses.py [--thresholds 0,50000] [--idle 10000] [--streams 1000]

(0 is Python's own thresholds, 700.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FakeUpstream, ServerProc, abort_all, cpu_seconds, gateway_env, open_idle, pct, pin_load, raise_nofile, run_chat,
    written,
)

# The gateway, with every full collection's wall time and end written to a file on SIGUSR1.
_LAUNCH = """
import gc, json, signal, sys, time
out, started, seen = sys.argv[1], [0.0], []
def timed(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    elif info["generation"] == 2:
        seen.append((time.time(), (time.perf_counter() - started[0]) * 1e3))
gc.callbacks.append(timed)
signal.signal(signal.SIGUSR1, lambda *a: open(out, "w").write(json.dumps(seen)))
from gateway.cli import main
sys.exit(main(["serve", "--config", sys.argv[2]]))
"""


async def _one(up: FakeUpstream, threshold: int, idle: int, streams: int) -> str:
    with tempfile.TemporaryDirectory() as state:
        dump, config = Path(state) / "gc.json", Path(state) / "gateway.toml"
        config.write_text(f"[limits]\nmax_connections = {idle + streams + 100}\nmax_replies = {streams * 2}\n")
        env = gateway_env(up.url, Path(state), "sqlite", GATEWAY_GC_THRESHOLD=str(threshold))
        srv = ServerProc(f"gc-{threshold}", [sys.executable, "-c", _LAUNCH, str(dump), str(config)], env)
        async with srv.running():
            await run_chat(srv.url, "json", 10, 1, 20)
            t0 = time.time()
            conns, failures = await open_idle(srv.url, "json", idle, compression=False)
            t1, cpu0 = time.time(), cpu_seconds(srv.pid)
            r = await run_chat(srv.url, "json", streams, 1, 60, 100.0, spread=1.0)
            t2, cpu = time.time(), cpu_seconds(srv.pid) - cpu0
            os.kill(srv.pid, signal.SIGUSR1)
            await written(dump)
            abort_all(conns)
            seen = json.loads(dump.read_text())
    opening = [f"{ms:.0f}" for at, ms in seen if t0 <= at < t1]
    streaming = [f"{ms:.0f}" for at, ms in seen if t1 <= at <= t2]
    name = f"{threshold:,}" if threshold else "700 (Python's)"
    return (f"| {name} | {len(opening)}: {', '.join(opening) or '–'} | {len(streaming)}: {', '.join(streaming) or '–'} | "
            f"{pct(r.gaps, 99) * 1e3:.1f} | {pct(r.ttft, 99) * 1e3:.1f} | {cpu / max(r.tokens, 1) * 1e6:.1f} | "
            f"{r.errors + len(failures)} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", default="0,50000")
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=1_000)
    args = parser.parse_args()
    pin_load()
    raise_nofile()
    print("| young collections every | full collections while the idle connections opened (ms) "
          "| while the replies streamed (ms) | gap p99 ms | TTFT p99 ms | CPU µs/token | errors |")
    print("|---|---|---|---:|---:|---:|---:|")
    async with FakeUpstream() as up:
        for threshold in (int(t) for t in args.thresholds.split(",")):
            print(await _one(up, threshold, args.idle, args.streams), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
