"""``gateway-loadtest``: size a deployment by driving a gateway like many users.

Opens N connections (ramped over ``--ramp`` seconds), sends M prompts on each, one
after another, and reports time to first delta, gaps between deltas, throughput and
errors with percentiles; a progress line on stderr while it runs; ``--json`` for
scripts. Bounded by count and by ``--duration``; stops by itself.

Plain-text mode has no end-of-reply marker (as the seed backend had none): a reply
is taken as finished after ``--plain-idle`` seconds without a frame.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

__all__ = ["main"]

EXIT_OK, EXIT_ERRORS, EXIT_UNREACHABLE = 0, 1, 2


@dataclass
class Stats:
    opened: int = 0
    failed_connects: int = 0
    replies: int = 0
    deltas: int = 0
    chars: int = 0
    tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    closes: Counter[int] = field(default_factory=Counter)


class Unreachable(Exception):
    """The target refused or could not be reached at all."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway-loadtest", description=__doc__.splitlines()[0])
    p.add_argument("url", nargs="?", default="ws://127.0.0.1:8765/chat", help="WebSocket URL (default %(default)s)")
    p.add_argument("-c", "--connections", type=int, default=10, help="concurrent connections (default 10)")
    p.add_argument("-n", "--messages", type=int, default=3, help="prompts per connection, sent in turn (default 3)")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which connections open (default 1)")
    p.add_argument("--duration", type=float, default=300, help="hard stop after this many seconds (default 300)")
    p.add_argument("--reply-timeout", type=float, default=120, help="give up on one reply after this (default 120)")
    p.add_argument("--protocol", choices=("json", "plain"), default="json", help="chat.v1 JSON or plain text")
    p.add_argument("--prompt", default="Say hello and explain what you are in three sentences.")
    p.add_argument("--plain-idle", type=float, default=1.0, help="plain mode: silence that ends a reply (default 1 s)")
    p.add_argument("--token", help="client token (sent in hello and as Authorization: Bearer)")
    p.add_argument("--origin", help="Origin header to send (browsers send one; scripts usually don't)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.connections < 1 or args.messages < 1 or args.duration <= 0:
        print("gateway-loadtest: --connections, --messages and --duration must be positive", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        stats, wall = asyncio.run(_run(args))
    except Unreachable as exc:
        print(f"gateway-loadtest: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_ERRORS
    report = _report(args, stats, wall)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(_table(report))
    return EXIT_OK if not stats.errors and not stats.failed_connects else EXIT_ERRORS


async def _run(args: argparse.Namespace) -> tuple[Stats, float]:
    stats = Stats()
    await _probe(args)
    start = time.perf_counter()
    progress = None if args.quiet or args.json and not sys.stderr.isatty() else asyncio.create_task(_progress(stats, args, start))
    delays = [args.ramp * i / args.connections for i in range(args.connections)]
    clients = [asyncio.create_task(_client(args, stats, delay)) for delay in delays]
    try:
        done, pending = await asyncio.wait(clients, timeout=args.duration)
        for task in pending:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    finally:
        if progress is not None:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            print(file=sys.stderr)
    return stats, time.perf_counter() - start


async def _probe(args: argparse.Namespace) -> None:
    """One connection first, so that a wrong address fails clearly, once."""
    try:
        async with _connect(args):
            pass
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = {403: " (Origin not allowed?)", 401: " (a token is required)", 404: " (the path is /chat)"}.get(status, "")
        raise Unreachable(f"{args.url} refused the WebSocket handshake: HTTP {status}{hint}") from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise Unreachable(f"cannot connect to {args.url}: {exc}") from None


def _connect(args: argparse.Namespace) -> Any:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    return connect(
        args.url,
        subprotocols=["chat.v1"] if args.protocol == "json" else None,  # type: ignore[list-item]
        origin=args.origin,
        additional_headers=headers,
        max_size=None,
        open_timeout=30,
    )


async def _client(args: argparse.Namespace, stats: Stats, delay: float) -> None:
    await asyncio.sleep(delay)
    try:
        async with _connect(args) as ws:
            stats.opened += 1
            if args.protocol == "json" and args.token:
                await ws.send(orjson.dumps({"type": "hello", "token": args.token}).decode())
            for i in range(args.messages):
                reply = _json_reply if args.protocol == "json" else _plain_reply
                await asyncio.wait_for(reply(ws, args, stats, i), args.reply_timeout)
    except TimeoutError:
        stats.errors["reply_timeout"] += 1
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else 1006
        stats.closes[code] += 1
        stats.errors[f"closed_{code}"] += 1
    except (OSError, InvalidHandshake):
        stats.failed_connects += 1


async def _json_reply(ws: ClientConnection, args: argparse.Namespace, stats: Stats, i: int) -> None:
    sent = time.perf_counter()
    await ws.send(orjson.dumps({"type": "message", "id": f"lt{i}", "content": args.prompt}).decode())
    last = None
    while True:
        event = orjson.loads(await ws.recv())
        kind = event.get("type")
        if kind == "reply.delta":
            last = _delta(stats, sent, last, len(event["text"]))
        elif kind == "error":
            stats.errors[event.get("code", "error")] += 1
        elif kind == "reply.done":
            stats.replies += 1
            stats.tokens += (event.get("usage") or {}).get("completion_tokens", 0)
            return


async def _plain_reply(ws: ClientConnection, args: argparse.Namespace, stats: Stats, i: int) -> None:
    sent = time.perf_counter()
    await ws.send(args.prompt)
    last = None
    while True:
        try:
            frame = await asyncio.wait_for(ws.recv(), args.plain_idle if last else args.reply_timeout)
        except TimeoutError:
            stats.replies += 1
            return
        if isinstance(frame, str) and frame.startswith("Error: "):
            stats.errors["plain_error"] += 1
            return
        last = _delta(stats, sent, last, len(frame))


def _delta(stats: Stats, sent: float, last: float | None, chars: int) -> float:
    now = time.perf_counter()
    if last is None:
        stats.ttft.append(now - sent)
    else:
        stats.gaps.append(now - last)
    stats.deltas += 1
    stats.chars += chars
    return now


async def _progress(stats: Stats, args: argparse.Namespace, start: float) -> None:
    total = args.connections * args.messages
    for spin in itertools.cycle("|/-\\"):
        elapsed = time.perf_counter() - start
        errors = sum(stats.errors.values()) + stats.failed_connects
        print(
            f"\r{spin} {elapsed:6.1f}s  connections {stats.opened}/{args.connections}  replies {stats.replies}/{total}"
            f"  deltas {stats.deltas}  errors {errors}   ",
            end="", file=sys.stderr, flush=True,
        )
        await asyncio.sleep(0.5)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def _ms(values: list[float]) -> dict[str, float | None]:
    return {
        f"p{p}": None if (v := _pct(values, p)) is None else round(v * 1000, 2) for p in (50, 90, 99)
    } | {"max": round(max(values) * 1000, 2) if values else None}


def _report(args: argparse.Namespace, stats: Stats, wall: float) -> dict[str, Any]:
    return {
        "url": args.url,
        "protocol": args.protocol,
        "connections": {"requested": args.connections, "opened": stats.opened, "failed": stats.failed_connects},
        "replies": {"requested": args.connections * args.messages, "completed": stats.replies},
        "errors": dict(stats.errors),
        "close_codes": {str(k): v for k, v in stats.closes.items()},
        "wall_s": round(wall, 3),
        "ttft_ms": _ms(stats.ttft),
        "gap_ms": _ms(stats.gaps),
        "throughput": {
            "replies_per_s": round(stats.replies / wall, 2) if wall else None,
            "deltas_per_s": round(stats.deltas / wall, 1) if wall else None,
            "chars_per_s": round(stats.chars / wall, 1) if wall else None,
            "tokens_per_s": round(stats.tokens / wall, 1) if wall and stats.tokens else None,
        },
        "totals": {"deltas": stats.deltas, "chars": stats.chars, "tokens": stats.tokens},
    }


def _table(r: dict[str, Any]) -> str:
    def row(name: str, d: dict[str, Any]) -> str:
        return f"| {name} | " + " | ".join("-" if v is None else f"{v}" for v in d.values()) + " |"

    lines = [
        f"\n{r['url']} ({r['protocol']}): {r['connections']['opened']}/{r['connections']['requested']} connections, "
        f"{r['replies']['completed']}/{r['replies']['requested']} replies in {r['wall_s']} s",
        "",
        "| latency (ms) | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|",
        row("time to first delta", r["ttft_ms"]),
        row("gap between deltas", r["gap_ms"]),
        "",
        "| throughput | replies/s | deltas/s | chars/s | tokens/s |",
        "|---|---|---|---|---|",
        row("", r["throughput"]),
        "",
        f"errors: {r['errors'] or 'none'}; failed connections: {r['connections']['failed']}",
        "",
    ]
    return "\n".join(lines)



if __name__ == "__main__":
    raise SystemExit(main())
