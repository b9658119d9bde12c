"""Where the time to the first token goes under a burst: before ``reply.start`` or after.

100 JSON connections, opened first, send one message each at the same instant (10
tokens, 20 ms apart, as ``bench/run.py``'s burst); for each message this records the
time to its ``reply.start`` (the message stored, the reply registered) and to its first
``reply.delta``. With the in-memory store no store thread or database is involved, so a
difference between the stores is the store's share.

    .venv/bin/python bench/burst_split.py [--stores memory,sqlite] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FakeUpstream, ServerProc, gateway_argv, gateway_env, pct, pin_load, raise_nofile  # noqa: E402

N = 100


async def _one(ws: Any, go: asyncio.Event, mid: str, out: list[tuple[float, float]]) -> None:
    await go.wait()
    sent = time.perf_counter()
    await ws.send(orjson.dumps({"type": "message", "id": mid, "content": "bench 10 20"}).decode())
    started = None
    while True:
        event = orjson.loads(await ws.recv())
        if event["type"] == "reply.start" and started is None:
            started = time.perf_counter()
        elif event["type"] == "reply.delta":
            assert started is not None, "a delta before reply.start"
            out.append((started - sent, time.perf_counter() - sent))
            break
        elif event["type"] == "error":
            raise RuntimeError(f"{event.get('code')}: {event.get('message')}")
    while orjson.loads(await ws.recv())["type"] != "reply.done":
        pass


async def _rounds(url: str, rounds: int) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for r in range(rounds):
        conns = [await connect(url, subprotocols=[Subprotocol("chat.v1")], max_size=None, ping_interval=None)
                 for _ in range(N)]
        go = asyncio.Event()
        tasks = [asyncio.create_task(_one(ws, go, f"r{r}m{i}", out)) for i, ws in enumerate(conns)]
        await asyncio.sleep(0.2)  # every client waiting on the event
        go.set()
        await asyncio.gather(*tasks)
        await asyncio.gather(*(ws.close() for ws in conns))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="memory,sqlite")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pin_load()
    raise_nofile()
    print("| store | message → reply.start p50 / p99 ms | message → first delta p50 / p99 ms |\n|---|---:|---:|")
    async with FakeUpstream() as up:
        for store in args.stores.split(","):
            with tempfile.TemporaryDirectory() as state:
                srv = ServerProc(f"gateway-{store}", gateway_argv(), gateway_env(up.url, Path(state), store))
                async with srv.running():
                    samples = await asyncio.wait_for(_rounds(srv.url, args.rounds), 300)
            start = [s * 1e3 for s, _ in samples]
            first = [f * 1e3 for _, f in samples]
            print(f"| {store} | {pct(start, 50):.1f} / {pct(start, 99):.1f} | {pct(first, 50):.1f} / {pct(first, 99):.1f} |",
                  flush=True)


if __name__ == "__main__":
    asyncio.run(main())
