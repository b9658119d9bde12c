"""Shared benchmark parts: server processes pinned to a CPU, the fake upstream, the load.

Everything runs on 127.0.0.1, is bounded in count and time, and stops by itself.
CPU time is read from /proc/PID/stat (steadier than wall time on a shared machine);
the servers under test run on CPU 0 (``taskset``), this load generator and the fake
upstream on CPU 1. Only processes started here are ever signalled, by their PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from fakeupstream import EOT, prompt, reply_text  # noqa: E402

__all__ = [
    "BENCH", "EOT", "FakeUpstream", "LoadResult", "ROOT", "ServerProc", "TARGET_CPU", "LOAD_CPU",
    "abort_all", "chat_load", "cpu_busy_seconds", "negotiated_deflate", "cpu_seconds", "floor_argv", "gateway_argv", "gateway_env", "median",
    "open_idle", "pct", "pin_load", "prompt", "raise_nofile", "reply_text", "rss_bytes", "run_chat",
    "seed_argv", "self_cpu_seconds",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_CPU = 0
LOAD_CPU = 1
NOFILE = 20_000  # the hard limit on this machine; raising it needs CAP_SYS_RESOURCE


# /proc readings


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads, from /proc.

    The sum of each thread's ``schedstat`` run time (nanoseconds) where the kernel
    has it, else user + system time from ``stat`` (clock ticks, 10 ms). The servers
    measured here keep their threads for their whole life, so no time is lost
    with a thread that exited.
    """
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError):
        return stat_cpu_seconds(pid)


def stat_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads, dead ones too), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_busy_seconds(cpu: int) -> float:
    """Time CPU ``cpu`` spent busy (anything but idle and iowait), from /proc/stat, for
    everything running on it: the target and whatever else shares the machine."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    return float("nan")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pin_load() -> bool:
    """Pin this process (the load and its threads) to the load CPU, if there are two."""
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {LOAD_CPU})
        return True
    return False


def raise_nofile(want: int = NOFILE) -> int:
    """Raise this process's open-file limit as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:
    raise_nofile()


# Processes


@dataclass
class ServerProc:
    """A server process pinned to one CPU; ready when it prints its ready line.

    Its stdout and stderr go to one pipe drained by a thread here (logs at info, as
    in production, written to a pipe that never fills).
    """

    name: str
    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cpu: int | None = TARGET_CPU
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    tail: list[bytes] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return str(self.ready.get("ws_url") or self.ready.get("url"))

    @contextlib.asynccontextmanager
    async def running(self, timeout: float = 60) -> AsyncIterator[ServerProc]:
        env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", "HOME": os.environ.get("HOME", "/tmp"), **self.env}
        argv = self.argv
        if self.cpu is not None and (os.cpu_count() or 1) > 1:
            argv = ["taskset", "-c", str(self.cpu), *argv]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=_child_setup
        )
        try:
            self.ready = await asyncio.wait_for(asyncio.to_thread(self._read_ready), timeout)
            yield self
        finally:
            await asyncio.sleep(0.05)  # let this loop finish closing what it aborted
            await asyncio.to_thread(self.stop)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _read_ready(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        for raw in stream:
            self.tail = (self.tail + [raw])[-20:]
            line = raw.decode(errors="replace").strip()
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") in ("gateway_started", "bench_ready"):
                    threading.Thread(target=_drain, args=(stream.fileno(),), daemon=True).start()
                    return dict(event)
        tail = b"".join(self.tail).decode(errors="replace")
        raise RuntimeError(f"{self.name} exited before it was ready:\n{tail}")


def _drain(fd: int) -> None:
    """Read a child's output in large chunks until it closes (the GIL is released in read)."""
    while os.read(fd, 1 << 16):
        pass


PY = sys.executable


def gateway_env(upstream_url: str, state_dir: Path, store: str = "memory", **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_PROVIDER": "openai",
        "GATEWAY_UPSTREAM_URL": upstream_url,
        "GATEWAY_MODEL": "bench-model",
        "GATEWAY_STORE": store,
        "GATEWAY_WS_ADDR": "127.0.0.1:0",
        "GATEWAY_HTTP_ADDR": "127.0.0.1:0",
        "GATEWAY_LOG_LEVEL": "info",
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_STATE_DIR": str(state_dir),
        # asyncio's own loop, as the floor, the seed and the peer use, unless asked otherwise
        # (the product's default is uvloop when installed: bench/run.py's gateway-uvloop row)
        "GATEWAY_EVENT_LOOP": "asyncio",
        **extra,
    }


def gateway_argv(*, uvloop: bool = False, deflate: str | None = None, config: Path | None = None,
                 cprofile: Path | None = None, tracemalloc: Path | None = None) -> list[str]:
    """``python -m gateway serve``, or the bench launcher when a variation is asked for."""
    serve = ["serve", *(["--config", str(config)] if config else [])]
    if not (uvloop or deflate or cprofile or tracemalloc):
        return [PY, "-m", "gateway", *serve]
    launcher = [PY, str(BENCH / "gateway_launch.py")]
    if uvloop:
        launcher.append("--uvloop")
    if deflate:
        launcher += ["--deflate", deflate]
    if cprofile:
        launcher += ["--cprofile", str(cprofile)]
    if tracemalloc:
        launcher += ["--tracemalloc", str(tracemalloc)]
    return [*launcher, "--", *serve]


def floor_argv(upstream_url: str) -> list[str]:
    return [PY, str(BENCH / "floor_app.py"), "--upstream", upstream_url]


def seed_argv(upstream_url: str, loop: str = "asyncio") -> list[str]:
    return [PY, str(BENCH / "seed_app.py"), "--upstream", upstream_url, "--loop", loop]


class FakeUpstream:
    """The fake upstream (``bench/fakeupstream.py``) in its own process on the load CPU.

    Replies are chosen per message (see :func:`prompt`); ``tokens``/``pace_ms`` here
    are only the defaults of :meth:`prompt`.
    """

    def __init__(self, tokens: int = 200, pace_ms: float = 0.0) -> None:
        self.tokens, self.pace_ms = tokens, pace_ms
        self.server = ServerProc("fake-upstream", [PY, str(BENCH / "fakeupstream.py"), "--uvloop"], cpu=LOAD_CPU)
        self._cm: Any = None
        self.url = ""

    def prompt(self) -> str:
        return prompt(self.tokens, self.pace_ms)

    @property
    def pid(self) -> int:
        return self.server.pid

    async def __aenter__(self) -> FakeUpstream:
        self._cm = self.server.running()
        await self._cm.__aenter__()
        self.url = self.server.url
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)


# Load


class CountingClient(ClientConnection):
    """A client connection that counts the bytes it receives off the wire."""

    received = 0

    def data_received(self, data: bytes) -> None:
        CountingClient.received += len(data)
        super().data_received(data)


@dataclass
class LoadResult:
    replies: int = 0
    tokens: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    frames: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:200])


def _connect(url: str, protocol: str, compression: bool, open_timeout: float = 60) -> Any:
    return connect(
        url,
        subprotocols=[Subprotocol("chat.v1")] if protocol == "json" else None,
        compression="deflate" if compression else None,
        max_size=None,
        open_timeout=open_timeout,
        ping_interval=None,  # the servers ping; the load only answers
        close_timeout=5,
        create_connection=CountingClient,
    )


async def _json_client(ws: Any, n: int, messages: int, tokens: int, pace_ms: float, result: LoadResult) -> None:
    text, expected = prompt(tokens, pace_ms), len(reply_text(tokens))
    loads, now = orjson.loads, time.perf_counter
    ttft, gaps = result.ttft, result.gaps
    for i in range(messages):
        sent = now()
        last = 0.0
        chars = 0
        await ws.send(orjson.dumps({"type": "message", "id": f"c{n}m{i}", "content": text}).decode())
        while True:
            event = loads(await ws.recv())
            kind = event["type"]
            if kind == "reply.delta":
                t = now()
                if chars == 0:
                    ttft.append(t - sent)
                else:
                    gaps.append(t - last)
                last = t
                chars += len(event["text"])
                result.frames += 1
            elif kind == "reply.done":
                if event.get("finish_reason") == "stop" and chars == expected:
                    result.replies += 1
                    result.tokens += tokens
                elif event.get("finish_reason") == "stop":
                    result.error(f"short reply: {chars} of {expected} chars")
                break
            elif kind == "error":
                result.error(f"{event.get('code')}: {event.get('message')}")
                if "reply_id" not in event:
                    break


async def _plain_client(ws: Any, n: int, messages: int, tokens: int, pace_ms: float, result: LoadResult) -> None:
    text, expected = prompt(tokens, pace_ms), len(reply_text(tokens))
    now = time.perf_counter
    ttft, gaps = result.ttft, result.gaps
    for _ in range(messages):
        sent = now()
        last = 0.0
        chars = 0
        await ws.send(text)
        while True:
            frame = await ws.recv()
            t = now()
            if frame.startswith("Error: "):
                result.error(frame)
                break
            if chars == 0:
                ttft.append(t - sent)
            else:
                gaps.append(t - last)
            last = t
            chars += len(frame)
            result.frames += 1
            if frame.endswith(EOT):
                if chars == expected:
                    result.replies += 1
                    result.tokens += tokens
                else:
                    result.error(f"short reply: {chars} of {expected} chars")
                break


async def run_chat(
    url: str,
    protocol: str,
    connections: int,
    messages: int,
    tokens: int,
    pace_ms: float = 0.0,
    *,
    compression: bool = False,
    timeout: float = 120,
    ramp: int = 50,
    spread: float = 0.0,
    on_ready: Callable[[], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> LoadResult:
    """``connections`` clients, opened ``ramp`` at a time, each send ``messages``
    prompts one after another and read each reply to its end; then they close.

    Sending starts once every client is connected (``on_ready`` is called then),
    client ``n`` waiting ``n / connections * spread`` seconds first; ``on_done`` is
    called when the last client has read its last reply, before the closes. So a
    measurement between the two hooks leaves out handshakes and closes. Bounded by
    ``timeout`` in all.
    """
    result = LoadResult()
    client = _json_client if protocol == "json" else _plain_client
    gate = asyncio.Semaphore(ramp)
    opened = asyncio.Event()
    finished = asyncio.Event()
    to_open = to_finish = connections
    sockets: list[Any] = []

    def _opened() -> None:
        nonlocal to_open
        to_open -= 1
        if to_open == 0:
            if on_ready is not None:
                on_ready()
            opened.set()

    def _finished() -> None:
        nonlocal to_finish
        to_finish -= 1
        if to_finish == 0:
            if on_done is not None:
                on_done()
            finished.set()

    async def one(n: int) -> None:
        try:
            async with gate:
                ws = await _connect(url, protocol, compression)
            sockets.append(ws)
        except Exception as exc:
            result.error(f"connect: {type(exc).__name__}: {exc}")
            _opened()
            _finished()
            return
        _opened()
        try:
            await opened.wait()
            if spread:
                await asyncio.sleep(n / connections * spread)
            await client(ws, n, messages, tokens, pace_ms, result)
        except Exception as exc:
            result.error(f"{type(exc).__name__}: {exc}")
        finally:
            _finished()
        await finished.wait()
        await ws.close()

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(one(n) for n in range(connections)))
    except TimeoutError:
        result.error(f"timed out after {timeout} s")
        if not finished.is_set() and on_done is not None:
            on_done()
        abort_all(sockets)
    return result


async def chat_load(url: str, connections: int, messages: int, tokens: int = 200, *, timeout: float = 300) -> LoadResult:
    """``connections`` chat.v1 clients each sending ``messages`` unpaced prompts."""
    return await run_chat(url, "json", connections, messages, tokens, timeout=timeout)


async def written(path: Path, timeout: float = 20.0) -> None:
    """Until ``path`` exists and is not empty (a server writes it when signalled), or ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def open_idle(
    url: str, protocol: str, n: int, *, compression: bool, ramp: int = 50, timeout: float = 240
) -> tuple[list[Any], list[str]]:
    """Open ``n`` connections that then stay idle; returns them and the failures."""
    conns: list[Any] = []
    failures: list[str] = []
    gate = asyncio.Semaphore(ramp)

    async def one() -> None:
        async with gate:
            try:
                conns.append(await _connect(url, protocol, compression))
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(one() for _ in range(n)))
    except TimeoutError:
        failures.append(f"timed out after {timeout} s")
    return conns, failures


def abort_all(conns: Sequence[Any]) -> None:
    """Drop connections at once (RST): closing thousands politely costs minutes."""
    for ws in conns:
        ws.transport.abort()


def negotiated_deflate(ws: Any) -> bool:
    return any(ext.name == "permessage-deflate" for ext in ws.protocol.extensions)


# Statistics


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def median(values: Sequence[float]) -> float:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
