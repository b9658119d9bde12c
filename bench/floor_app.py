"""The floor: the thinnest relay from an OpenAI-compatible upstream to WebSocket clients.

``websockets`` (library defaults: permessage-deflate negotiated when offered, pings
every 20 s) and one shared ``aiohttp.ClientSession``; the upstream's SSE is read with
``iter_any()`` and a minimal line split, and each content delta goes out as one text
frame (the plain-text protocol: one text frame in is one user message). No history,
no store, no logs, no limits: what any relay must at least spend.

    python bench/floor_app.py --upstream http://127.0.0.1:PORT/v1 [--port 0] [--tracemalloc FILE]

Prints one JSON line ``{"event": "bench_ready", "ws_url": …}`` when it listens;
stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import aiohttp
import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def main(upstream: str, port: int) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    url = upstream.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}

    async def relay(ws: ServerConnection, text: str) -> None:
        body = orjson.dumps({"model": "bench-model", "messages": [{"role": "user", "content": text}], "stream": True})
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                await ws.send(f"Error: upstream answered HTTP {resp.status}")
                return
            rest = b""
            async for data in resp.content.iter_any():
                *lines, rest = (rest + data).split(b"\n")
                for line in lines:
                    if not line.startswith(b"data: "):
                        continue
                    payload = line[6:]
                    if payload == b"[DONE]":
                        return
                    choices = orjson.loads(payload).get("choices")
                    if choices:
                        delta = choices[0].get("delta", {}).get("content")
                        if delta:
                            await ws.send(delta)

    async def handler(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                try:
                    await relay(ws, message if isinstance(message, str) else message.decode())
                except aiohttp.ClientError as exc:
                    await ws.send(f"Error: {type(exc).__name__}")
        except ConnectionClosed:
            pass

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(handler, "127.0.0.1", port) as server:
        bound = server.sockets[0].getsockname()[1]
        print(json.dumps({"event": "bench_ready", "ws_url": f"ws://127.0.0.1:{bound}/chat"}), flush=True)
        await stop.wait()
    await session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL, …/v1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tracemalloc", metavar="FILE", help="as bench/gateway_launch.py's (SIGUSR1, SIGUSR2)")
    args = parser.parse_args()
    if args.tracemalloc:
        from gateway_launch import _trace_memory

        _trace_memory(args.tracemalloc)
    asyncio.run(main(args.upstream, args.port))
