"""What persistence costs: gateway CPU per delivered token, SQLite store vs in-memory.

Runs both stores in alternating rounds in one run (the machine is noisy), the
gateway pinned to CPU 0, this load generator and the fake upstream (its own process,
bench/fakeupstream.py: one SSE event per HTTP chunk, unpaced) on CPU 1, and prints a
Markdown table and the raw figures as JSON.

    .venv/bin/python bench/persistence.py [--rounds 3] [--connections 50] [--messages 5] [--tokens 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FakeUpstream, ServerProc, chat_load, cpu_seconds, gateway_argv, gateway_env, pin_load  # noqa: E402


async def measure(store: str, upstream: FakeUpstream, args: argparse.Namespace, state: Path) -> dict[str, float]:
    target = ServerProc(f"gateway-{store}", gateway_argv(), gateway_env(upstream.url, state, store))
    async with target.running():
        await chat_load(target.url, 5, 1, 20)  # warm-up: imports, first connections
        before = cpu_seconds(target.pid)
        result = await chat_load(target.url, args.connections, args.messages, args.tokens)
        used = cpu_seconds(target.pid) - before
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
    pin_load()
    runs: dict[str, list[dict[str, float]]] = {"memory": [], "sqlite": []}
    async with FakeUpstream(args.tokens) as upstream:
        for _ in range(args.rounds):
            for store in ("memory", "sqlite"):
                with tempfile.TemporaryDirectory() as state:
                    runs[store].append(await measure(store, upstream, args, Path(state)))
    med = {s: statistics.median(r["us_per_token"] for r in runs[s]) for s in runs}
    print(f"\n{args.connections} connections x {args.messages} messages x {args.tokens} unpaced tokens, "
          f"{args.rounds} alternating rounds; gateway pinned to CPU 0, load and fake upstream to CPU 1\n")
    print("| store | CPU µs per delivered token (median) | rounds |")
    print("|---|---|---|")
    for store in runs:
        rounds = ", ".join(f"{r['us_per_token']:.2f}" for r in runs[store])
        print(f"| {store} | {med[store]:.2f} | {rounds} |")
    print(f"\nSQLite / memory = {med['sqlite'] / med['memory']:.3f}\n")
    print(json.dumps({"args": vars(args), "runs": runs, "ratio_sqlite_over_memory": med["sqlite"] / med["memory"]}))


if __name__ == "__main__":
    asyncio.run(main())
