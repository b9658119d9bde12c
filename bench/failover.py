"""What a failover costs: time to first token when a model's first deployment fails
before it answers (HTTP 429 without Retry-After, HTTP 503, a refused connection) and the
next one answers, against the same model served at once, measured in one run.

One gateway process (pinned to CPU 0) serves four models, each over a failing
deployment (weight 1, tried first) and a healthy one (weight 0: the standby), with
``cooldown = 0`` so that every reply meets the failure. The upstreams are an aiohttp
server in this process (CPU 1): the failing ones answer at once, the healthy one
streams a short reply. Rounds alternate the models; the figures are medians of all
replies. Prints a Markdown table and the raw figures as JSON.

    .venv/bin/python bench/failover.py [--rounds 5] [--replies 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiohttp import web
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ServerProc, gateway_argv, pct, pin_load  # noqa: E402

SCENARIOS = ("healthy", "429", "503", "refused")
_CHUNK = 'data: {{"choices":[{{"index":0,"delta":{{"content":"{}"}},"finish_reason":{}}}]}}\n\n'


async def healthy(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i, word in enumerate(("Hello", " from", " the", " healthy", " one")):
        await resp.write(_CHUNK.format(word, '"stop"' if i == 4 else "null").encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def failing(request: web.Request) -> web.Response:
    await request.read()
    status = int(request.match_info["status"])
    return web.json_response({"error": {"message": f"HTTP {status} from the bench", "code": status}}, status=status)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(base: str, path: Path) -> Path:
    urls = {"healthy": f"{base}/ok/v1", "429": f"{base}/fail/429/v1", "503": f"{base}/fail/503/v1",
            "refused": f"http://127.0.0.1:{closed_port()}/v1"}
    text = "[routing]\nretries = 2\ncooldown = 0\n[limits]\nmax_replies = 100\n"
    for name in SCENARIOS:
        first = "ok-" + name if name == "healthy" else name
        text += f'\n[[models]]\nid = "{name}"\ndeployments = ["{first}", "standby-{name}"]\n'
        text += f'\n[[deployments]]\nid = "{first}"\nupstream_url = "{urls[name]}"\nmodel = "m"\nweight = 1\n'
        text += f'\n[[deployments]]\nid = "standby-{name}"\nupstream_url = "{urls["healthy"]}"\nmodel = "m"\nweight = 0\n'
    path.write_text(text)
    return path


async def ttfts(url: str, model: str, replies: int) -> list[float]:
    """Milliseconds from each message sent to its first reply.delta, one reply at a time."""
    out = []
    async with connect(url, subprotocols=["chat.v1"], max_size=None) as ws:
        await ws.send(orjson.dumps({"type": "hello"}).decode())
        while orjson.loads(await ws.recv())["type"] != "ready":
            pass
        for n in range(replies):
            sent = time.perf_counter()
            await ws.send(orjson.dumps({"type": "message", "id": f"m{n}", "content": "hi", "model": model}).decode())
            first = None
            while True:
                event = orjson.loads(await ws.recv())
                if event["type"] == "reply.delta" and first is None:
                    first = (time.perf_counter() - sent) * 1000
                if event["type"] == "error":
                    raise SystemExit(f"{model}: {event}")
                if event["type"] == "reply.done":
                    break
            assert first is not None
            out.append(first)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replies", type=int, default=20)
    args = parser.parse_args()
    pin_load()
    app = web.Application()
    app.router.add_post("/ok/v1/chat/completions", healthy)
    app.router.add_post("/fail/{status}/v1/chat/completions", failing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = "http://127.0.0.1:{}".format(runner.addresses[0][1])
    samples: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    with tempfile.TemporaryDirectory() as state:
        env = {"GATEWAY_STORE": "memory", "GATEWAY_WS_ADDR": "127.0.0.1:0", "GATEWAY_HTTP_ADDR": "127.0.0.1:0",
               "GATEWAY_LOG_FORMAT": "json", "GATEWAY_LOG_LEVEL": "info", "GATEWAY_STATE_DIR": state,
               "GATEWAY_EVENT_LOOP": "asyncio"}
        gateway = ServerProc("gateway", gateway_argv(config=config(base, Path(state) / "gateway.toml")), env)
        async with gateway.running():
            for name in SCENARIOS:  # warm-up
                await ttfts(gateway.url, name, 3)
            for _ in range(args.rounds):
                for name in SCENARIOS:
                    samples[name] += await ttfts(gateway.url, name, args.replies)
    await runner.cleanup()
    base_ms = statistics.median(samples["healthy"])
    print(f"\n{args.rounds} rounds x {args.replies} replies per model, one at a time; gateway pinned to CPU 0\n")
    print("| first deployment | TTFT median (ms) | p90 (ms) | extra over healthy (median, ms) |")
    print("|---|---|---|---|")
    for name in SCENARIOS:
        med = statistics.median(samples[name])
        print(f"| {name} | {med:.2f} | {pct(samples[name], 90):.2f} | {med - base_ms:+.2f} |")
    print()
    print(json.dumps({name: {"median_ms": statistics.median(v), "p90_ms": pct(v, 90), "n": len(v)}
                      for name, v in samples.items()}))


if __name__ == "__main__":
    asyncio.run(main())
