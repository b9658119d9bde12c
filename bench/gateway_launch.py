"""Run ``gateway.cli.main()`` with benchmark-only variations, without touching ``gateway/``.

    python bench/gateway_launch.py [--uvloop] [--deflate WBITS,MEMLEVEL[,nct]] [--cprofile FILE] -- serve [...]

``--uvloop``   installs uvloop's event loop policy before the gateway starts.
``--deflate``  permessage-deflate with these settings instead of the gateway's
               (10 window bits, memLevel 4) when ``[server] compression = true``:
               e.g. ``10,4``; ``,nct`` adds ``server_no_context_takeover``
               (a fresh compressor per message: nothing kept between messages).
``--cprofile`` profiles the whole process with cProfile and writes the stats to
               FILE when the gateway exits (SIGTERM drains and exits cleanly).
``--tracemalloc`` traces Python allocations: SIGUSR1 takes a first snapshot, SIGUSR2
               a second and writes what grew in between, by line, to FILE (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _patch_deflate(spec: str) -> None:
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

    import gateway.chat_listener

    parts = spec.split(",")
    wbits, mem = int(parts[0]), int(parts[1])
    nct = len(parts) > 2 and parts[2] == "nct"
    original = getattr(gateway.chat_listener, "serve")

    def serve(*args: Any, **kwargs: Any) -> Any:
        # The gateway passes its own permessage-deflate factory when compression is on.
        if kwargs.get("extensions"):
            kwargs["extensions"] = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=wbits,
                    client_max_window_bits=wbits,
                    server_no_context_takeover=nct,
                    compress_settings={"memLevel": mem},
                )
            ]
        return original(*args, **kwargs)

    setattr(gateway.chat_listener, "serve", serve)


def _trace_memory(path: str) -> None:
    import json
    import signal
    import tracemalloc

    tracemalloc.start(8)
    first: list[tracemalloc.Snapshot] = []

    def mark(signum: int, frame: Any) -> None:
        first[:] = [tracemalloc.take_snapshot()]

    def dump(signum: int, frame: Any) -> None:
        second = tracemalloc.take_snapshot()
        keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
        old = first[0].filter_traces(keep) if first else None
        new = second.filter_traces(keep)
        out = {}
        for key in ("lineno", "traceback"):
            stats = new.compare_to(old, key) if old is not None else new.statistics(key)
            out[key] = [
                {"size_diff": getattr(st, "size_diff", st.size), "count_diff": getattr(st, "count_diff", st.count),
                 "where": [f"{f.filename}:{f.lineno}" for f in st.traceback]}
                for st in stats[:2000]
            ]
            out[f"{key}_total"] = sum(getattr(st, "size_diff", st.size) for st in stats)
        with open(path, "w") as fh:
            json.dump(out, fh)

    signal.signal(signal.SIGUSR1, mark)
    signal.signal(signal.SIGUSR2, dump)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--deflate", metavar="WBITS,MEMLEVEL[,nct]")
    parser.add_argument("--cprofile", metavar="FILE")
    parser.add_argument("--tracemalloc", metavar="FILE")
    parser.add_argument("gateway_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    rest = args.gateway_args[1:] if args.gateway_args[:1] == ["--"] else args.gateway_args
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.deflate:
        _patch_deflate(args.deflate)
    if args.tracemalloc:
        _trace_memory(args.tracemalloc)
    from gateway.cli import main as gateway_main

    if not args.cprofile:
        return gateway_main(rest)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(gateway_main, rest)
    finally:
        profiler.dump_stats(args.cprofile)


if __name__ == "__main__":
    sys.exit(main())
