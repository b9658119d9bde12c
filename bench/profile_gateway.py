"""Where the gateway's CPU goes per delivered token, in the throughput (or paced) scenario.

(``--target floor`` or ``seed`` samples those instead, with the same buckets, to compare.)

Two profilers, each on its own gateway process (pinned to CPU 0, load on CPU 1):

* ``py-spy`` (sampling, ``--nonblocking``, the profiler itself on CPU 1): the share
  of the samples whose innermost frame is each line, turned into µs per delivered
  token with the CPU time per token measured meanwhile from /proc; also the
  inclusive share of the gateway's own functions;
* ``cProfile`` (through bench/gateway_launch.py): calls per token and own time per
  call (it slows small functions down; read its times as relative).

    .venv/bin/python bench/profile_gateway.py [--store sqlite|memory] [--protocol json|plain]
        [--scenario throughput|paced|burst] [--repeat 2] [--top 25] [--uvloop] [--no-cprofile]

Writes the raw outputs (py-spy collapsed stacks, the cProfile stats) to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BENCH, LOAD_CPU, ROOT, FakeUpstream, ServerProc, abort_all, cpu_seconds, floor_argv, gateway_argv, gateway_env,
    open_idle, pin_load, raise_nofile, rss_bytes, run_chat, seed_argv, written,
)

# connections, messages, tokens, pace (ms), spread of the first messages (s)
SCENARIOS = {
    "throughput": (100, 5, 200, 0.0, 0.0), "paced": (100, 2, 100, 20.0, 1.0), "burst": (100, 1, 10, 20.0, 0.0),
}
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Where a sample's time goes: walking out from the innermost frame, the first frame in
# one of these places names the bucket; asyncio, selectors and contextlib internals are
# charged to whoever called them.
BUCKETS = [
    ("gateway/sse.py", "SSE decoding (gateway/sse.py)"),
    ("gateway/providers/", "provider decoding (gateway/providers/)"),
    ("gateway/upstream.py", "upstream read loop (gateway/upstream.py)"),
    ("gateway/replies.py", "replies: relay, publish, checkpoints (gateway/replies.py)"),
    ("gateway/replylog.py", "replies: relay, publish, checkpoints (gateway/replies.py)"),
    ("gateway/outbox.py", "outbox and writer (gateway/outbox.py, connection.py)"),
    ("gateway/connection.py", "outbox and writer (gateway/outbox.py, connection.py)"),
    ("gateway/wire.py", "wire encode/parse (gateway/wire.py)"),
    ("gateway/stores/", "store calls on the loop (stores, TimedStore, executor)"),
    ("gateway/metrics.py", "store calls on the loop (stores, TimedStore, executor)"),
    ("concurrent/futures/", "store calls on the loop (stores, TimedStore, executor)"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("structlog/", "logging (structlog, logging)"),
    ("logging/", "logging (structlog, logging)"),
    ("aiohttp/", "aiohttp client: HTTP parser, StreamReader, timeouts"),
    ("websockets/", "websockets: frames in and out, socket writes"),
    ("gateway/chat_listener.py", "handshakes, connection open/close (gateway/chat_listener.py)"),
    ("gateway/", "gateway, other"),
    ("bench/floor_app.py", "the floor's relay code (bench/floor_app.py)"),
    ("floor_app.py", "the floor's relay code (bench/floor_app.py)"),
    ("seed_app.py", "the seed's handler (bench/seed_app.py)"),
    ("bench/seed_app.py", "the seed's handler (bench/seed_app.py)"),
    ("httpx/", "httpx, httpcore, h11 (HTTP client)"),
    ("httpcore/", "httpx, httpcore, h11 (HTTP client)"),
    ("h11/", "httpx, httpcore, h11 (HTTP client)"),
    ("anyio/", "anyio"),
    ("starlette/", "starlette, fastapi"),
    ("fastapi/", "starlette, fastapi"),
    ("uvicorn/", "uvicorn (HTTP/WebSocket server)"),
]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker.startswith("/lib") else tail
    root = str(ROOT) + "/"
    return path[len(root):] if path.startswith(root) else path


def _frame(raw: str) -> tuple[str, str, str]:
    m = FRAME.match(raw)
    if not m:
        return raw, "", ""
    return m["func"], _short(m["file"]), m["line"] or ""


def _idle(frames: list[tuple[str, str, str]]) -> bool:
    """A thread blocked waiting for work (py-spy does not always see it idle)."""
    func, file, _ = frames[-1]
    return (func == "_worker" and file.endswith("concurrent/futures/thread.py")) or (
        file == "threading.py" and func in ("wait", "_wait_for_tstate_lock"))


_ROOTS = ("gateway/__main__.py", "gateway/cli.py", "uvicorn/server.py", "uvicorn/main.py")


def _bucket(frames: list[tuple[str, str, str]]) -> str:
    files = [file for _, file, _ in frames]
    if any(f == "threading.py" for f in files[:3]):
        return "threads off the loop (the SQLite store's)" if any("stores/sqlite" in f for f in files) else "other threads"
    if frames[-1][0].endswith("select") and files[-1] == "selectors.py":
        return "waiting in epoll_wait (one call per loop wake-up)"
    for func, file, _ in reversed(frames):
        if file in _ROOTS or func == "<module>" or (func == "main" and file.endswith("seed_app.py")):
            continue  # the process's entry frames: everything runs under them
        for prefix, name in BUCKETS:
            if file.startswith(prefix):
                return name
    return "asyncio event loop internals"


async def load(url: str, protocol: str, scenario: str, repeat: int) -> int:
    c, m, t, pace, spread = SCENARIOS[scenario]
    tokens = 0
    for _ in range(repeat):
        r = await run_chat(url, protocol, c, m, t, pace, spread=spread, timeout=300)
        if r.errors:
            raise SystemExit(f"load failed: {r.error_samples}")
        tokens += r.tokens
    return tokens


async def with_pyspy(args: argparse.Namespace, up: FakeUpstream, out: Path) -> None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as state:
        if args.target == "floor":
            srv = ServerProc("floor", floor_argv(up.url))
        elif args.target == "seed":
            srv = ServerProc("seed", seed_argv(up.url))
        else:
            srv = ServerProc("gateway", gateway_argv(uvloop=args.uvloop), gateway_env(up.url, Path(state), args.store))
        async with srv.running():
            await run_chat(srv.url, args.protocol, 5, 1, 20)
            raw = out / f"pyspy-{args.scenario}-{label(args)}.txt"
            spy = subprocess.Popen(
                ["taskset", "-c", str(LOAD_CPU), pyspy, "record", "--pid", str(srv.pid), "--rate", str(args.rate),
                 *(["--nonblocking"] if args.nonblocking else []), "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            await asyncio.sleep(1.0)  # py-spy attaches
            c0, t0 = cpu_seconds(srv.pid), time.perf_counter()
            tokens = await load(srv.url, args.protocol, args.scenario, args.repeat)
            cpu, wall = cpu_seconds(srv.pid) - c0, time.perf_counter() - t0
            spy.send_signal(signal.SIGINT)
            _, err = await asyncio.to_thread(spy.communicate)
            if spy.returncode not in (0, -signal.SIGINT) and not raw.exists():
                raise SystemExit(f"py-spy failed: {err.decode(errors='replace')}")
    us_per_token = cpu / tokens * 1e6
    print(f"\n## py-spy: {args.scenario}, {label(args)}\n")
    print(f"{tokens} tokens in {wall:.1f} s; gateway CPU {cpu:.2f} s = **{us_per_token:.2f} µs per delivered token** "
          f"({cpu / wall * 100:.0f} % of CPU 0). Samples at {args.rate} Hz, idle excluded.\n")
    buckets: collections.Counter[str] = collections.Counter()
    self_line: collections.Counter[str] = collections.Counter()
    self_func: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames or _idle(frames):
            continue
        total += count
        buckets[_bucket(frames)] += count
        func, file, lineno = frames[-1]
        self_line[f"{file}:{lineno} {func}"] += count
        self_func[f"{file} {func}"] += count
        seen = set()
        for func, file, _ in frames:
            if file.startswith("gateway/"):
                key = f"{file} {func}"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += count
    if not total:
        print("no samples")
        return

    def table(title: str, counter: collections.Counter[str]) -> None:
        print(f"### {title}\n")
        print("| where | share | µs/token |")
        print("|---|---:|---:|")
        for key, n in counter.most_common(args.top):
            print(f"| `{key}` | {n / total * 100:.1f} % | {n / total * us_per_token:.2f} |")
        print()

    table("Where the time goes (each sample charged to the innermost frame in one of these places; asyncio "
          "internals to their caller)", buckets)
    table("Self time by line (innermost Python frame; C calls and syscalls count in the line that made them)",
          self_line)
    table("Self time by function", self_func)
    table("Inclusive time of the gateway's own functions", inclusive)
    print(f"Raw collapsed stacks: {raw} (for a flame graph: flamegraph.pl or speedscope.app read this format)")


def label(args: argparse.Namespace) -> str:
    if args.target != "gateway":
        return str(args.target)
    return f"gateway-{args.store}-{args.protocol}{'-uvloop' if args.uvloop else ''}"


async def with_cprofile(args: argparse.Namespace, up: FakeUpstream, out: Path) -> None:
    stats_path = out / f"cprofile-{args.scenario}-{label(args)}.pstats"
    with tempfile.TemporaryDirectory() as state:
        srv = ServerProc("gateway", gateway_argv(uvloop=args.uvloop, cprofile=stats_path),
                         gateway_env(up.url, Path(state), args.store))
        async with srv.running():
            await run_chat(srv.url, args.protocol, 5, 1, 20)
            tokens = await load(srv.url, args.protocol, args.scenario, args.repeat)
    for _ in range(100):
        if stats_path.exists():
            break
        await asyncio.sleep(0.1)
    stats = pstats.Stats(str(stats_path))
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{_short(file)}:{line} {func}"))
    total = sum(r[0] for r in rows)
    print(f"\n## cProfile: {args.scenario}, {label(args)} (whole process, start-up included; {tokens} tokens)\n")
    print(f"Profiled own time in all: {total:.2f} s = {total / tokens * 1e6:.1f} µs/token (with cProfile's overhead).\n")
    print("| function | calls/token | own µs/token | cumulative µs/token |")
    print("|---|---:|---:|---:|")
    for tt, ct, nc, name in sorted(rows, reverse=True)[: args.top]:
        print(f"| `{name}` | {nc / tokens:.3f} | {tt / tokens * 1e6:.2f} | {ct / tokens * 1e6:.2f} |")
    print(f"\nStats: {stats_path} (python -m pstats)")


async def idle_memory(args: argparse.Namespace, up: FakeUpstream, out: Path) -> None:
    """What one idle connection allocates in the gateway, or the floor (Python objects, by line), via tracemalloc."""
    dump = out / f"tracemalloc-idle-{label(args)}.json"
    dump.unlink(missing_ok=True)
    n = args.idle
    with tempfile.TemporaryDirectory() as state:
        if args.target == "floor":
            srv = ServerProc("floor", [*floor_argv(up.url), "--tracemalloc", str(dump)])
        else:
            srv = ServerProc("gateway", gateway_argv(uvloop=args.uvloop, tracemalloc=dump),
                             gateway_env(up.url, Path(state), args.store))
        async with srv.running():
            await run_chat(srv.url, args.protocol, 5, 1, 20)
            await asyncio.sleep(0.5)
            rss0 = rss_bytes(srv.pid)
            os.kill(srv.pid, signal.SIGUSR1)
            await asyncio.sleep(0.5)
            conns, failures = await open_idle(srv.url, args.protocol, n, compression=False)
            await asyncio.sleep(1.0)
            rss1 = rss_bytes(srv.pid)
            os.kill(srv.pid, signal.SIGUSR2)
            await written(dump)
            abort_all(conns)
    got = len(conns)
    data = json.loads(dump.read_text())
    print(f"\n## Idle memory: {got} connections, {label(args)} (tracemalloc)\n")
    print(f"RSS grew {(rss1 - rss0) / got / 1024:.1f} KiB per connection here (tracemalloc's own bookkeeping "
          f"inflates it; bench/run.py measures without it); the Python objects allocated and still alive come to "
          f"{data['lineno_total'] / got / 1024:.2f} KiB per connection.\n")
    print("| where (innermost line) | bytes / connection | objects / connection |")
    print("|---|---:|---:|")
    for st in data["lineno"][: args.top]:
        print(f"| `{_short(st['where'][0])}` | {st['size_diff'] / got:.0f} | {st['count_diff'] / got:.2f} |")
    print("\nBy traceback (first frames from the gateway or the libraries that allocate):\n")
    print("| traceback (innermost first) | bytes / connection |")
    print("|---|---:|")
    for st in data["traceback"][: args.top]:
        where = " ← ".join(_short(w) for w in reversed(st["where"][-4:]))
        print(f"| `{where}` | {st['size_diff'] / got:.0f} |")
    if failures:
        print(f"\n{len(failures)} connections failed: {failures[:2]}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="gateway", choices=["gateway", "floor", "seed"],
                        help="floor and seed: py-spy (and the floor --idle), plain protocol (to compare)")
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "memory"])
    parser.add_argument("--protocol", default="json", choices=["json", "plain"])
    parser.add_argument("--scenario", default="throughput", choices=sorted(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=3, help="times the scenario runs while sampling")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--nonblocking", action="store_true",
                        help="py-spy does not pause the gateway per sample (cheaper, but stacks may be torn)")
    parser.add_argument("--no-cprofile", action="store_true")
    parser.add_argument("--no-pyspy", action="store_true")
    parser.add_argument("--idle", type=int, default=0, metavar="N",
                        help="instead: what N idle connections allocate, by line (tracemalloc)")
    args = parser.parse_args()
    if args.target != "gateway":
        args.protocol, args.no_cprofile = "plain", True
    pin_load()
    raise_nofile()
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    async with FakeUpstream() as up:
        if args.idle:
            await idle_memory(args, up, out)
            return
        if not args.no_pyspy:
            await with_pyspy(args, up, out)
        if not args.no_cprofile:
            await with_cprofile(args, up, out)


if __name__ == "__main__":
    if os.geteuid() != 0 and Path("/proc/sys/kernel/yama/ptrace_scope").exists():
        print("note: py-spy needs ptrace rights (root, or kernel.yama.ptrace_scope = 0)", file=sys.stderr)
    asyncio.run(main())
