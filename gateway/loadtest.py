"""``gateway-loadtest``: size a deployment by driving a gateway like many users.

Opens N connections (ramped over ``--ramp`` seconds), sends M prompts on each, one
after another, and reports time to first delta, gaps between deltas, throughput and
errors with percentiles; a progress line on stderr while it runs; ``--json`` for
scripts. Bounded by count and by ``--duration``; stops by itself.

Plain-text mode has no end-of-reply marker (as the seed backend had none): a reply
is taken as finished after ``--plain-idle`` seconds without a frame.

In JSON mode a connection closed by a restarting gateway (1001, or 1012 from an
instance of a cluster) is opened again and the reply in progress resumed from its
last ``seq``, as the chat page does: a rolling restart shows in ``resumes``, and a
delta received twice or out of order in ``integrity.repeated_deltas``. With a
deterministic upstream (the demo provider), the replies to the n-th prompt of every
connection have the same text: ``integrity.distinct_texts`` (the most different texts
for one prompt) above 1 means text was lost or changed.
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
    resumes: int = 0
    retried: Counter[str] = field(default_factory=Counter)
    messages: dict[str, str] = field(default_factory=dict)  # the first message of each error code
    repeated: int = 0
    texts: dict[int, Counter[str]] = field(default_factory=dict)  # by prompt: its reply texts


    def error(self, code: str, message: Any) -> None:
        self.errors[code] += 1
        self.messages.setdefault(code, str(message)[:200])


RESTART_CODES = (1001, 1012)  # the gateway restarts: connect again and resume
MAX_RECONNECTS = 20  # per connection


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
        if args.protocol == "json":
            await _Session(args, stats).run()
        else:
            async with _connect(args) as ws:
                stats.opened += 1
                for i in range(args.messages):
                    await asyncio.wait_for(_plain_reply(ws, args, stats, i), args.reply_timeout)
    except TimeoutError:
        stats.errors["reply_timeout"] += 1
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else 1006
        stats.closes[code] += 1
        stats.errors[f"closed_{code}"] += 1
    except (OSError, InvalidHandshake):
        stats.failed_connects += 1


@dataclass
class _Reply:
    """One prompt's reply, as far as it came (it survives reconnections)."""

    msg_id: str
    sent: float
    reply_id: str | None = None
    seq: int = 0
    text: str = ""
    last: float | None = None


class _Session:
    """One simulated user in JSON mode: a conversation, its prompts in turn, and a new
    connection (resuming the reply in progress) whenever the gateway restarts."""

    def __init__(self, args: argparse.Namespace, stats: Stats) -> None:
        self.args, self.stats = args, stats
        self.conversation_id: str | None = None
        self.done = 0
        self.reply: _Reply | None = None

    async def run(self) -> None:
        for attempt in itertools.count():
            try:
                async with _connect(self.args) as ws:
                    self.stats.opened += attempt == 0
                    await self._serve(ws)
                    return
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                if code not in RESTART_CODES or attempt >= MAX_RECONNECTS:
                    raise
                self.stats.closes[code] += 1
            except (OSError, InvalidHandshake):  # the instance went away: behind Caddy, another answers
                if attempt == 0 or attempt >= MAX_RECONNECTS:
                    raise
            await asyncio.sleep(0.05 * (attempt + 1))

    async def _serve(self, ws: ClientConnection) -> None:
        hello: dict[str, Any] = {"type": "hello", "conversation_id": self.conversation_id}
        if self.args.token:
            hello["token"] = self.args.token
        await ws.send(orjson.dumps(hello).decode())
        while (ready := orjson.loads(await ws.recv())).get("type") != "ready":
            pass
        self.conversation_id = ready["conversation_id"]
        if self.reply is not None and self._adopt(ready):
            self.stats.resumes += 1
            resume = {"type": "resume", "reply_id": self.reply.reply_id, "after_seq": self.reply.seq}
            await ws.send(orjson.dumps(resume).decode())
            await asyncio.wait_for(self._read_reply(ws), self.args.reply_timeout)
        while self.done < self.args.messages:
            if self.reply is None:
                self.reply = _Reply(f"lt{self.done}-{time.monotonic_ns()}", time.perf_counter())
            message = {"type": "message", "id": self.reply.msg_id, "content": self.args.prompt}
            await ws.send(orjson.dumps(message).decode())
            await asyncio.wait_for(self._read_reply(ws), self.args.reply_timeout)

    def _adopt(self, ready: dict[str, Any]) -> bool:
        """After a reconnect: whether the reply of the prompt in progress is to be resumed.
        A message whose ``reply.start`` was lost with the connection was taken if it is in
        the history: its reply is the one streaming now (resumed from 0), or it ended."""
        reply = self.reply
        assert reply is not None
        if reply.reply_id is not None:
            return True
        history = ready.get("history") or []
        ids = [m.get("id") for m in history]
        if reply.msg_id not in ids:
            return False  # not taken: send it (again)
        streaming = ready.get("streaming")
        if streaming:
            reply.reply_id = streaming["reply_id"]
            return True
        answer = history[ids.index(reply.msg_id) + 1:]
        if answer:
            reply.reply_id = answer[0].get("id")
            return True  # ended meanwhile: resumable within the gateway's resume grace
        self.reply = None  # taken but never answered (the reply could not start): the next prompt
        self.done += 1
        return False

    async def _read_reply(self, ws: ClientConnection) -> None:
        reply, stats = self.reply, self.stats
        assert reply is not None
        while True:
            event = orjson.loads(await ws.recv())
            kind = event.get("type")
            if kind == "reply.start" and event.get("id") == reply.msg_id:
                reply.reply_id = event["reply_id"]
            elif kind == "reply.delta" and event.get("reply_id") == reply.reply_id:
                if event["seq"] <= reply.seq:
                    stats.repeated += 1
                    continue
                reply.seq, reply.text = event["seq"], reply.text + event["text"]
                reply.last = _delta(stats, reply.sent, reply.last, len(event["text"]))
            elif kind == "error" and event.get("id") == reply.msg_id and reply.reply_id is None:
                code = event.get("code", "error")
                if code == "overloaded" and event.get("retryable"):  # a restart: send it again, as the page does
                    stats.retried[code] += 1
                    reply.msg_id = f"{reply.msg_id}r"
                    await asyncio.sleep(min(5.0, float(event.get("retry_after") or 1)))
                    return
                stats.error(code, event.get("message"))
                self._next()  # refused (busy, too_large...): counted, not sent again
                return
            elif kind == "error":
                stats.error(event.get("code", "error"), event.get("message"))
            elif kind == "reply.done" and event.get("reply_id") == reply.reply_id:
                stats.replies += 1
                stats.tokens += (event.get("usage") or {}).get("completion_tokens", 0)
                if event.get("finish_reason") == "stop":
                    stats.texts.setdefault(self.done, Counter())[reply.text] += 1
                self._next()
                return

    def _next(self) -> None:
        self.done += 1
        self.reply = None


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
        "error_messages": stats.messages,
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
        "resumes": stats.resumes,
        "retried": dict(stats.retried),
        "integrity": {
            "repeated_deltas": stats.repeated,
            "distinct_texts": max((len(texts) for texts in stats.texts.values()), default=0),
        },
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
        f"resumed after a restart: {r['resumes']}; repeated deltas: {r['integrity']['repeated_deltas']}; "
        f"distinct reply texts: {r['integrity']['distinct_texts']}",
        "",
    ]
    return "\n".join(lines)



if __name__ == "__main__":
    raise SystemExit(main())
