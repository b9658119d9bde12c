"""The gateway's two listening sockets: ``/chat`` (websockets) and HTTP (aiohttp).

Either may be inherited from systemd (socket activation); otherwise each binds the
configured address. Ports are read back from the sockets (``:0`` in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from socket import socket

from aiohttp import web
from websockets.asyncio.server import Server

from .chat_listener import ChatListener
from .config import Config
from .connection import Hub
from .web import WebState, start_http

__all__ = ["Listeners"]


class Listeners:
    def __init__(self) -> None:
        self._ws: Server | None = None
        self._http: web.AppRunner | None = None

    async def open_http(self, cfg: Config, web_state: WebState, inherited: Mapping[str, socket]) -> None:
        """The page, health and readiness: first, so that ``/readyz`` can say "starting"."""
        self._http = await start_http(
            web_state, cfg.server.http_addr, inherited.get("http"), cfg.server.http_idle_timeout
        )

    async def open_chat(
        self, hub: Hub, origins: Callable[[], tuple[str, ...]], inherited: Mapping[str, socket]
    ) -> None:
        """``/chat``: last, once conversations can be stored."""
        self._ws = await ChatListener(hub, origins).listen(inherited.get("ws"))

    @property
    def ws_port(self) -> int:
        assert self._ws is not None
        return int(self._ws.sockets[0].getsockname()[1])

    @property
    def http_port(self) -> int:
        assert self._http is not None
        return int(self._http.addresses[0][1])

    def urls(self) -> tuple[str, str]:
        """Where the chat socket and the page are, for the start-up log line."""
        assert self._ws is not None and self._http is not None
        ws_host = str(self._ws.sockets[0].getsockname()[0])
        return (
            f"ws://{_hostport(ws_host, self.ws_port)}/chat",
            f"http://{_hostport(str(self._http.addresses[0][0]), self.http_port)}/",
        )

    def stop_accepting(self) -> bool:
        """Stop taking new chat connections; False if the chat listener never opened."""
        if self._ws is None:
            return False
        self._ws.server.close()
        return True

    async def close_chat(self) -> None:
        """Close the chat listener (its connections were closed before)."""
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()

    async def close_http(self) -> None:
        if self._http is not None:
            await self._http.cleanup()


def _hostport(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
