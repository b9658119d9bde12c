"""The HTTP listener: the chat page, health, readiness and the page's config."""

from __future__ import annotations

import mimetypes
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .config import HostPort
from .metrics import CONTENT_TYPE
from .runtime import Runtime

__all__ = ["STATE", "WebState", "make_app"]

_IMMUTABLE = "public, max-age=31536000, immutable"
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}


class WebState:
    """What the HTTP handlers read: set by the gateway, never by a handler."""

    def __init__(
        self,
        static_dir: Path,
        ws_port: Callable[[], int],
        runtime: Callable[[], Runtime],
        metrics: Callable[[], bytes] | None = None,
        origins: Callable[[], tuple[str, ...]] = lambda: (),
        *,
        health: Callable[[], dict[str, str]] = dict,
        voice: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self.metrics = metrics
        self.health = health  # each part's state in a word: llm, store, stt, and redis in a cluster
        self.voice = voice  # what voice input the page is offered (None: off)
        self.origins = origins
        self.static_dir = static_dir.resolve()
        self.ws_port = ws_port
        self.runtime = runtime
        self.ready = False  # set once the store is open and /chat listens
        self.draining = False


STATE = web.AppKey("state", WebState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def start_http(
    state: WebState, addr: HostPort, sock: socket.socket | None, idle_timeout: float
) -> web.AppRunner:
    """Serve the HTTP listener on ``sock`` (socket activation) or ``addr``."""
    # aiohttp's keep-alive timer also runs from the connection's start until a request's
    # headers are complete: it is the header-read timeout as well as the idle one.
    runner = web.AppRunner(make_app(state), access_log=None, handle_signals=False, keepalive_timeout=idle_timeout)
    await runner.setup()
    site: web.BaseSite = web.SockSite(runner, sock) if sock else web.TCPSite(runner, addr.host, addr.port)
    await site.start()
    return runner


def make_app(state: WebState) -> web.Application:
    app = web.Application(middlewares=[_security_headers], handler_args={"max_field_size": 8190})
    app[STATE] = state
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/config.json", _config)
    if state.metrics is not None:
        app.router.add_get("/metrics", _metrics)
    app.router.add_get("/{path:.*}", _static)
    return app


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(_SECURITY_HEADERS)
        raise
    response.headers.update(_SECURITY_HEADERS)
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = _csp(request)
    return response


def _csp(request: web.Request) -> str:
    connect = " ".join(["'self'", *_ws_origins(request), *_token_origin(request)])
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
    )


def _ws_origins(request: web.Request) -> list[str]:
    url = _ws_url(request)
    if url is None:
        return []
    scheme, _, rest = url.partition("://")
    return [f"{scheme}://{rest.split('/', 1)[0]}"]


def _token_origin(request: web.Request) -> list[str]:
    """The origin of ``[auth] token_url`` when it is another site's (the page fetches it)."""
    url = request.app[STATE].runtime().config.auth.token_url
    scheme, sep, rest = url.partition("://")
    return [f"{scheme}://{rest.split('/', 1)[0]}"] if sep and scheme in ("http", "https") else []


def _ws_url(request: web.Request) -> str | None:
    """Where the page should open its WebSocket; None means same origin ``/chat``."""
    state = request.app[STATE]
    if public := state.runtime().config.server.public_ws_url:
        return public
    if "X-Forwarded-Proto" in request.headers or "X-Forwarded-Host" in request.headers:
        return None
    host = _page_host(request, state)
    host = f"[{host}]" if ":" in host else host
    return f"ws://{host}:{state.ws_port()}/chat"


def _page_host(request: web.Request, state: WebState) -> str:
    """The ``Host`` the page was asked for, if the gateway may name it back: the host of
    an allowed origin (the gateway's own page origins by default); else loopback. Never
    reflected raw: anything else could poison a cache or the CSP."""
    try:
        host = (request.url.host or "").lower()
    except ValueError:
        host = ""
    origins = state.origins()
    allowed = "*" in origins and _HOSTNAME.fullmatch(host) is not None
    if allowed or host in {(urlsplit(o).hostname or "").lower() for o in origins if o != "*"}:
        return host
    return "127.0.0.1"


async def _healthz(request: web.Request) -> web.Response:
    """Alive (200 whatever a part's state: the process serves what it can), and each
    part's state: ``llm``, ``store``, ``stt``, and ``redis`` in a cluster (docs/operations.md)."""
    body = {"status": "ok", **request.app[STATE].health()}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining or not state.ready:
        status = "draining" if state.draining else "starting"
        return web.json_response({"status": status}, status=503, headers={"Cache-Control": "no-store"})
    return web.json_response({"status": "ready"}, headers={"Cache-Control": "no-store"})


async def _metrics(request: web.Request) -> web.Response:
    render = request.app[STATE].metrics
    assert render is not None
    return web.Response(body=render(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


async def _config(request: web.Request) -> web.Response:
    if not request.app[STATE].ready:
        return web.json_response({"status": "starting"}, status=503, headers={"Cache-Control": "no-store"})
    runtime = request.app[STATE].runtime()
    model, auth = runtime.catalog.default, runtime.config.auth
    body: dict[str, Any] = {
        "ws_url": _ws_url(request), "model": model.id, "provider": model.provider, "models": runtime.catalog.public(),
        "auth": {"mode": auth.mode, **({"token_url": auth.token_url} if auth.token_url else {})},
    }
    if (voice := request.app[STATE].voice()) is not None:
        body["voice"] = voice
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


async def _static(request: web.Request) -> web.StreamResponse:
    root = request.app[STATE].static_dir
    path = _resolve(root, request.match_info["path"] or "index.html")
    if path is None:
        raise web.HTTPNotFound(text="not found\n")
    content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    hashed = request.match_info["path"].startswith("assets/")
    return web.FileResponse(
        path,
        headers={"Content-Type": content_type, "Cache-Control": _IMMUTABLE if hashed else "no-cache"},
    )


def _resolve(root: Path, name: str) -> Path | None:
    """``name`` inside ``root``, or None: no traversal, no hidden files, no symlink escape."""
    if "\x00" in name or "\\" in name or name.startswith("/"):
        return None
    parts = name.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    path = _inside(root, root.joinpath(*parts))
    if path is not None and path.is_dir():
        path = _inside(root, path / "index.html")  # resolved again: index.html may be a symlink too
    return path if path is not None and path.is_file() else None


def _inside(root: Path, path: Path) -> Path | None:
    """``path`` with every symlink resolved, if that is still inside ``root``."""
    try:
        resolved = path.resolve(strict=True)
        resolved.relative_to(root)
    except (OSError, ValueError):
        return None
    return resolved
