"""The peer: the cheapest Python stack a competent user would pick instead of the gateway.

Starlette (what FastAPI's WebSockets are) on uvicorn, streaming from an OpenAI-compatible
upstream through ONE shared ``aiohttp.ClientSession``; the SSE read with
``resp.content`` line by line and parsed with ``orjson``; each content delta sent as
one text frame (the plain-text protocol: one text frame in is one user message). A
history per connection, as a chat needs; no store, no limits. Uvicorn as a user would
run it for production: ``ws="websockets-sansio"``, permessage-deflate off (as the
gateway's default), no access log, the event loop pinned to ``asyncio`` like the
gateway's default (``--loop uvloop`` measures that).

    python bench/peer_app.py --upstream http://127.0.0.1:PORT/v1 [--port 0] [--loop asyncio|uvloop]

Prints ``{"event": "bench_ready", "ws_url": …}`` once listening; stops on SIGTERM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
from asgi_serve import arguments, serve
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

UPSTREAM = ""
MODEL = "bench-model"
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
session: aiohttp.ClientSession


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None))
    yield
    await session.close()


async def relay(websocket: WebSocket, history: list[dict[str, str]]) -> str:
    """Stream one reply to the socket; its text."""
    body = orjson.dumps({"model": MODEL, "messages": history, "stream": True})
    reply: list[str] = []
    async with session.post(f"{UPSTREAM}/chat/completions", data=body, headers=HEADERS) as resp:
        if resp.status != 200:
            await websocket.send_text(f"Error: upstream answered HTTP {resp.status}")
            return ""
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                break
            choices = orjson.loads(payload).get("choices")
            if choices:
                delta = choices[0].get("delta", {}).get("content")
                if delta:
                    reply.append(delta)
                    await websocket.send_text(delta)
    return "".join(reply)


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    history: list[dict[str, str]] = []
    try:
        while True:
            history.append({"role": "user", "content": await websocket.receive_text()})
            try:
                history.append({"role": "assistant", "content": await relay(websocket, history)})
            except aiohttp.ClientError as exc:
                await websocket.send_text(f"Error: {type(exc).__name__}")
    except WebSocketDisconnect:
        pass


app = Starlette(routes=[WebSocketRoute("/chat", chat)], lifespan=lifespan)


def main() -> None:
    global UPSTREAM
    args = arguments(__doc__, ("asyncio", "uvloop"))
    UPSTREAM = args.upstream.rstrip("/")
    serve(
        app, args.port, loop=args.loop, ws="websockets-sansio", ws_per_message_deflate=False, access_log=False,
        log_level="warning", lifespan="on",
    )


if __name__ == "__main__":
    main()
