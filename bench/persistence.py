"""What persistence costs: gateway CPU per delivered token, SQLite store vs in-memory.

Runs both stores in alternating rounds in one run (the machine is noisy), the
gateway pinned to CPU 0 and this load generator to CPU 1, and prints a Markdown
table and the raw figures as JSON.

    .venv/bin/python bench/persistence.py [--rounds 3] [--connections 50] [--messages 5] [--tokens 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FakeUpstream, chat_load, cpu_seconds, gateway_target  # noqa: E402


async def measure(store: str, upstream: FakeUpstream, args: argparse.Namespace, state: Path) -> dict[str, float]:
    env = {
        "GATEWAY_PROVIDER": "openai",
        "GATEWAY_UPSTREAM_URL": upstream.url,
        "GATEWAY_STORE": store,
    }
    target = gateway_target(f"gateway-{store}", env, state)
    async with target.running():
        assert target.proc is not None
        await chat_load(target.ws_url, 5, 1)  # warm-up: imports, first connections
        before = cpu_seconds(target.proc.pid)
        result = await chat_load(target.ws_url, args.connections, args.messages)
        used = cpu_seconds(target.proc.pid) - before
    tokens = result.replies * args.tokens
    if result.errors or result.replies != args.connections * args.messages:
        raise SystemExit(f"{store}: {result.errors} errors, {result.replies} replies")
    return {"cpu_s": used, "tokens": tokens, "us_per_token": used / tokens * 1e6}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {1})
    runs: dict[str, list[dict[str, float]]] = {"memory": [], "sqlite": []}
    async with FakeUpstream(args.tokens) as upstream:
        for _ in range(args.rounds):
            for store in ("memory", "sqlite"):
                with tempfile.TemporaryDirectory() as state:
                    runs[store].append(await measure(store, upstream, args, Path(state)))
    med = {s: statistics.median(r["us_per_token"] for r in runs[s]) for s in runs}
    print(f"\n{args.connections} connections x {args.messages} messages x {args.tokens} unpaced tokens, "
          f"{args.rounds} alternating rounds; gateway pinned to CPU 0, load to CPU 1\n")
    print("| store | CPU µs per delivered token (median) | rounds |")
    print("|---|---|---|")
    for store in runs:
        rounds = ", ".join(f"{r['us_per_token']:.2f}" for r in runs[store])
        print(f"| {store} | {med[store]:.2f} | {rounds} |")
    print(f"\nSQLite / memory = {med['sqlite'] / med['memory']:.3f}\n")
    print(json.dumps({"args": vars(args), "runs": runs, "ratio_sqlite_over_memory": med["sqlite"] / med["memory"]}))


if __name__ == "__main__":
    asyncio.run(main())
