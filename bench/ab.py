"""A/B: the gateway's CPU per paced token in two source trees, in alternating rounds.

For measuring one change: check the revision before it out beside this one
(``git worktree add /tmp/before REV``) and compare. Each round starts a fresh gateway
from each tree (SQLite, JSON mode, asyncio's loop, pinned to CPU 0; the load and the
fake upstream on CPU 1) and runs the paced scenario of ``bench/run.py`` (100
connections × 2 messages × 100 tokens 20 ms apart); the order alternates. Prints each
round and the median of the per-round ratios B/A.

    .venv/bin/python bench/ab.py /tmp/before . [--rounds 6] [--store sqlite] [--protocol json]
    .venv/bin/python bench/ab.py . . --a-env GATEWAY_GC_THRESHOLD=0    # one setting, one tree
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FakeUpstream, ServerProc, cpu_seconds, gateway_env, pin_load, raise_nofile, run_chat  # noqa: E402

# The tree's package first on the path, and a check that it is the one imported.
_LAUNCH = (
    "import sys; sys.path.insert(0, {tree!r}); import gateway; "
    "assert gateway.__file__.startswith({tree!r}), gateway.__file__; "
    "from gateway.cli import main; sys.exit(main(['serve']))"
)


async def _paced(up: FakeUpstream, tree: Path, env: dict[str, str], store: str, protocol: str) -> float:
    with tempfile.TemporaryDirectory() as state:
        code = _LAUNCH.format(tree=str(tree))
        srv = ServerProc(tree.name, [sys.executable, "-c", code], gateway_env(up.url, Path(state), store, **env))
        async with srv.running():
            await run_chat(srv.url, protocol, 10, 1, 20)  # warm-up
            marks: dict[str, float] = {}

            def mark(name: str) -> None:
                marks[name] = cpu_seconds(srv.pid)

            gc.collect()
            gc.disable()
            try:
                r = await run_chat(srv.url, protocol, 100, 2, 100, 20.0, spread=1.0,
                                   on_ready=lambda: mark("a"), on_done=lambda: mark("b"))
            finally:
                gc.enable()
            if r.errors:
                raise RuntimeError(f"{tree}: {r.errors} errors: {r.error_samples[:2]}")
            return (marks["b"] - marks["a"]) / r.tokens * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="the tree before the change")
    parser.add_argument("b", type=Path, help="the tree after it")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE", help="for A's gateway")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE", help="for B's gateway")
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "memory"])
    parser.add_argument("--protocol", default="json", choices=["json", "plain"])
    args = parser.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    envs = {"A": dict(kv.split("=", 1) for kv in args.a_env), "B": dict(kv.split("=", 1) for kv in args.b_env)}
    pin_load()
    raise_nofile()
    got: dict[str, list[float]] = {"A": [], "B": []}
    async with FakeUpstream() as up:
        for n in range(args.rounds):
            for key in ("A", "B") if n % 2 == 0 else ("B", "A"):
                got[key].append(await _paced(up, trees[key], envs[key], args.store, args.protocol))
            print(f"round {n + 1}: A {got['A'][-1]:.1f}  B {got['B'][-1]:.1f} µs/token  "
                  f"B/A {got['B'][-1] / got['A'][-1]:.3f}", flush=True)
    ratios = [b / a for a, b in zip(got["A"], got["B"])]
    print(f"median: A {statistics.median(got['A']):.1f}  B {statistics.median(got['B']):.1f} µs/token; "
          f"B/A {statistics.median(ratios):.3f} (rounds: {min(ratios):.3f}–{max(ratios):.3f})")


if __name__ == "__main__":
    asyncio.run(main())
