"""The seed stack, re-created for comparison: FastAPI + uvicorn + httpx.

A faithful minimal copy of the backend the gateway replaces: a ``/chat`` WebSocket,
a per-connection history list, the reply streamed from an OpenAI-compatible upstream
with ``httpx`` (``client.stream("POST", …)`` + ``aiter_lines()``, ``data:`` lines
parsed with ``json.loads``), each content delta sent with ``websocket.send_text``;
errors as one frame ``Error: …`` (the plain-text protocol). Uvicorn with its
defaults (``ws="auto"`` → websockets-sansio, permessage-deflate on, pings every
20 s, access and connection logs at info, to a pipe the benchmark drains).

Two departures, both for a fair comparison, not for speed: ONE shared
``httpx.AsyncClient`` (the seed opened one per message), with no pool limit and a
60 s timeout (httpx's defaults, 100 connections and 5 s to get one, would turn the
scale run into pool-timeout errors); and the event loop is pinned to ``asyncio``
like the gateway's default (uvicorn's ``loop="auto"`` would pick uvloop when it is
installed; ``--loop uvloop`` measures that).

    python bench/seed_app.py --upstream http://127.0.0.1:PORT/v1 [--port 0] [--loop asyncio|uvloop]

Prints ``{"event": "bench_ready", "ws_url": …}`` once listening; stops on SIGTERM.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from asgi_serve import arguments, serve
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

UPSTREAM = ""
MODEL = "bench-model"
client: httpx.AsyncClient


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global client
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
    )
    yield
    await client.aclose()


app = FastAPI(lifespan=lifespan)


@app.websocket("/chat")
async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    history: list[dict[str, str]] = []
    try:
        while True:
            user_text = await websocket.receive_text()
            history.append({"role": "user", "content": user_text})
            reply = ""
            try:
                async with client.stream(
                    "POST",
                    f"{UPSTREAM}/chat/completions",
                    json={"model": MODEL, "messages": history, "stream": True},
                    headers={"Accept": "text/event-stream"},
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        await websocket.send_text(f"Error: upstream returned {response.status_code}")
                        continue
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[len("data:"):].strip()
                        if data == "[DONE]":
                            break
                        chunk = json.loads(data)
                        choices = chunk.get("choices") or []
                        if not choices:
                            continue
                        delta = choices[0].get("delta", {}).get("content")
                        if delta:
                            reply += delta
                            await websocket.send_text(delta)
            except WebSocketDisconnect:
                raise
            except Exception as exc:  # the seed sent every failure to the client as text
                await websocket.send_text(f"Error: {exc}")
                continue
            history.append({"role": "assistant", "content": reply})
    except WebSocketDisconnect:
        pass


def main() -> None:
    global UPSTREAM
    args = arguments(__doc__, ("asyncio", "uvloop", "auto"))
    UPSTREAM = args.upstream.rstrip("/")
    serve(app, args.port, loop=args.loop, log_level="info")


if __name__ == "__main__":
    main()
