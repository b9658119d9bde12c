"""What the two uvicorn targets (bench/seed_app.py, bench/peer_app.py) share: their
command line, a loopback socket bound before uvicorn starts, and the ready line."""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Sequence
from typing import Any

import uvicorn

__all__ = ["arguments", "serve"]


def arguments(doc: str, loops: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL, …/v1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", default="asyncio", choices=list(loops))
    return parser.parse_args()


def serve(app: Any, port: int, **config: Any) -> None:
    """Bind 127.0.0.1:``port``, print ``{"event": "bench_ready", "ws_url": …}``, run uvicorn.
    The socket listens before uvicorn starts: clients that connect meanwhile wait in the backlog."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    print(json.dumps({"event": "bench_ready", "ws_url": f"ws://127.0.0.1:{sock.getsockname()[1]}/chat"}), flush=True)
    uvicorn.Server(uvicorn.Config(app, **config)).run(sockets=[sock])
