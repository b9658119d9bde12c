"""The gateway: both listeners in one event loop, and its lifecycle.

start → serve → (SIGHUP) reload … → (SIGTERM/SIGINT) drain → close.

Drain stops accepting, turns ``/readyz`` to 503, tells systemd ``STOPPING=1``,
gives replies in flight ``drain_timeout`` seconds, stores what is left as
partial, and closes sockets with 1001 once what was queued for them is sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from websockets.asyncio.server import Server

from . import __version__, logs
from .auth import make_authenticator
from .chat_listener import ChatListener
from .config import Config, own_origins
from .connection import Hub
from .errors import ConfigError, StartupError
from .lifecycle import Lifecycle, Phase
from .metrics import Metrics, TimedStore
from .reload import live_config
from .replies import RegistryLimits, ReplyRegistry
from .stores import ConversationStore, StoreUnusable, make_store
from .supervisor import Supervisor
from .systemd import Notifier, listen_sockets
from .upstream import make_provider
from .web import WebState, make_app

__all__ = ["Gateway"]

_log: Any = structlog.get_logger("gateway.server")
PRUNE_EVERY = 3600.0


class Gateway:
    """One gateway process. Build it with a :class:`Config`, then ``await run()``.

    ``reload`` builds a fresh Config (from the same file and environment) on SIGHUP.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: ConversationStore | None = None,
        reload: Callable[[], Config] | None = None,
        env: dict[str, str] | None = None,
        journal: bool = False,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store: ConversationStore = TimedStore(store or make_store(config), self.metrics)
        self.lifecycle = Lifecycle()
        self.allowed_origins: tuple[str, ...] = config.allowed_origins
        self.hub: Hub | None = None
        self._reload_source = reload
        self._env = dict(os.environ if env is None else env)
        self._notifier = Notifier(self._env)
        self._session: aiohttp.ClientSession | None = None
        self._ws_server: Server | None = None
        self._runner: web.AppRunner | None = None
        self._web_state: WebState | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._journal = journal
        self._reload_error = ""

    @property
    def closed(self) -> bool:
        """Whether the drain has begun (or is over)."""
        return self.lifecycle.phase in (Phase.DRAINING, Phase.CLOSED)

    @property
    def ws_port(self) -> int:
        assert self._ws_server is not None
        return int(self._ws_server.sockets[0].getsockname()[1])

    def _ws_host(self) -> str:
        assert self._ws_server is not None
        return str(self._ws_server.sockets[0].getsockname()[0])

    @property
    def http_port(self) -> int:
        assert self._runner is not None
        return int(self._runner.addresses[0][1])

    # start

    async def start(self) -> None:
        """Open the store, the HTTP client session and both listeners."""
        cfg = self.config
        report = await self.store.open()
        if report.recovered:
            _log.warning("interrupted_replies_recovered", count=report.recovered)
        # No cookie jar: one user's upstream cookies must never ride on another's request.
        # No automatic decompression: upstream.py inflates in bounded pieces.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        provider = make_provider(cfg.provider, self._session)
        self.hub = Hub(cfg, ReplyRegistry(provider, self.store, _limits(cfg), self.metrics), self.store)
        inherited = listen_sockets(self._env)
        self._ws_server = await ChatListener(self.hub, lambda: self.allowed_origins).listen(inherited.get("ws"))
        await self._listen_http(inherited.get("http"), provider.model, provider.name)
        self.allowed_origins = cfg.allowed_origins or own_origins(cfg.http_addr.host, self.http_port)
        supervisor = Supervisor(
            self._notifier, self._env, self._status, lambda: self.hub.cut_off if self.hub else 0
        )
        self._spawn(supervisor.run(), "supervisor")
        if cfg.store.retention:
            self._spawn(self._prune_forever(cfg.store.retention), "pruner")
        _log.info(
            "gateway_started",
            version=__version__,
            ws_url=f"ws://{_hostport(self._ws_host(), self.ws_port)}/chat",
            http_url=f"http://{_hostport(str(self._runner.addresses[0][0]) if self._runner else '', self.http_port)}/",
            provider=provider.name,
            model=provider.model,
            socket_activated=bool(inherited),
            event_loop="uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio",
        )
        self.lifecycle.serving()
        self._notifier.notify("READY=1", f"STATUS={self._status()}", f"MAINPID={os.getpid()}")

    async def _listen_http(self, sock: socket.socket | None, model: str, provider: str) -> None:
        cfg = self.config
        self._web_state = WebState(
            cfg.static_dir, lambda: self.ws_port, cfg.public_ws_url, model, provider,
            self.metrics.render if cfg.metrics else None, lambda: self.allowed_origins,
        )
        # aiohttp's keep-alive timer also runs from the connection's start until a request's
        # headers are complete: it is the header-read timeout as well as the idle one.
        self._runner = web.AppRunner(
            make_app(self._web_state), access_log=None, handle_signals=False, keepalive_timeout=cfg.http_idle_timeout
        )
        await self._runner.setup()
        site: web.BaseSite = (
            web.SockSite(self._runner, sock) if sock else web.TCPSite(self._runner, cfg.http_addr.host, cfg.http_addr.port)
        )
        await site.start()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # serve

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT (reloading on SIGHUP), then drain and close.

        The handlers stay installed until the drain is over: a second SIGTERM or a
        SIGHUP during it is ignored; a second SIGINT (Ctrl-C twice) ends the drain
        at once, still storing what every reply streamed.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.lifecycle.on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        try:
            await _starting(self.start())
            await self.lifecycle.stopping.wait()
        finally:
            try:
                await self.close()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)

    def _status(self) -> str:
        hub = self.hub
        connections = len(hub.connections) if hub else 0
        replies = hub.registry.in_flight if hub else 0
        state = "draining" if self.lifecycle.stopping.is_set() else "serving"
        status = f"{state}: {connections} connections, {replies} replies in flight"
        if self._reload_error:
            status += f"; last reload failed: {self._reload_error}"[:200]
        return status

    # reload

    def _on_reload(self) -> None:
        if self.lifecycle.stopping.is_set():
            _log.warning("reload_ignored", reason="draining")
            return
        _log.info("reload_requested")
        self._spawn(self.reload(), "reload")

    async def reload(self) -> None:
        """Re-read the configuration; apply what can change live, report the rest."""
        if self._reload_source is None or self.hub is None or self.lifecycle.stopping.is_set():
            return
        self._notifier.notify("RELOADING=1", "STATUS=reloading configuration")
        try:
            new = self._reload_source()
        except ConfigError as exc:
            self._reload_error = exc.message
            _log.error("reload_failed", error=exc.message)
        else:
            self._reload_error = ""
            self._apply(new)
        self._notifier.notify("READY=1", f"STATUS={self._status()}")

    def _apply(self, new: Config) -> None:
        old = self.config
        cfg, ignored = live_config(old, new)
        assert self.hub is not None and self._session is not None and self._web_state is not None
        self.config = self.hub.config = cfg
        self.hub.budget.limit = cfg.max_total_pending_bytes
        self.hub.authenticator = make_authenticator(cfg)
        registry = self.hub.registry
        registry.limits = _limits(cfg)
        if cfg.provider != old.provider:
            registry.provider = make_provider(cfg.provider, self._session)
            self._web_state.model, self._web_state.provider = registry.provider.model, registry.provider.name
        self._web_state.public_ws_url = cfg.public_ws_url
        self.allowed_origins = cfg.allowed_origins or own_origins(cfg.http_addr.host, self.http_port)
        logs.configure(cfg.log_level, cfg.log_format, secrets=(cfg.provider.api_key,), journal=self._journal)
        if ignored:
            _log.warning("reload_needs_restart", settings=list(ignored))
        _log.info("config_reloaded", provider=registry.provider.name, model=registry.provider.model)

    # drain and close

    async def close(self) -> None:
        """Drain: stop accepting, let replies finish, close sockets with 1001.

        Safe to call after a partial start, and more than once.
        """
        if not self.lifecycle.draining():
            return
        if self._web_state is not None:
            self._web_state.draining = True
        in_flight = self.hub.registry.in_flight if self.hub else 0
        self._notifier.notify("STOPPING=1", f"STATUS=draining: {in_flight} replies in flight")
        if self._ws_server is not None and self.hub is not None:
            self._ws_server.server.close()
            _log.info("drain_started", replies_in_flight=in_flight, timeout_s=self.config.drain_timeout)
            await self.hub.registry.drain(self.config.drain_timeout, self.lifecycle.hurry)
            await self._close_connections()
            self._ws_server.close()
            await self._ws_server.wait_closed()
            await self.hub.registry.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        await self.store.close()
        self._notifier.close()
        self.lifecycle.closed()
        if self.lifecycle.served:  # a start that failed is reported by its caller, as startup_failed
            _log.info("gateway_stopped", replies_drained=in_flight)

    async def _close_connections(self) -> None:
        """Close every socket with 1001 after what is queued for it is written."""
        assert self.hub is not None
        connections = list(self.hub.connections)
        for conn in connections:
            conn.shutdown()
        if not connections:
            return
        waiters = [asyncio.ensure_future(c.ws.wait_closed()) for c in connections]
        _, pending = await asyncio.wait(waiters, timeout=5)
        for waiter in pending:
            waiter.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _prune_forever(self, older_than: float) -> None:
        """Delete idle conversations now and every hour."""
        while True:
            try:
                deleted = await self.store.prune(older_than)
                _log.info("conversations_pruned", deleted=deleted, older_than_s=older_than)
            except Exception:
                _log.exception("prune_failed")
            await asyncio.sleep(PRUNE_EVERY)

    # connections


async def _starting(start: Any) -> None:
    """Await ``start``, turning what can stop a start into a StartupError."""
    try:
        await start
    except OSError as exc:  # an address in use, a directory not writable yet
        raise StartupError(f"{exc.strerror or exc}", retry=True) from exc
    except StoreUnusable as exc:  # retrying cannot help: a person must act
        raise StartupError(str(exc), retry=False) from exc


def _limits(cfg: Config) -> RegistryLimits:
    return RegistryLimits(
        max_replies=cfg.max_replies,
        max_reply_chars=cfg.max_reply_chars,
        max_reply_seconds=cfg.provider.max_reply_seconds,
        resume_grace=cfg.resume_grace,
        checkpoint_interval=cfg.store.checkpoint_interval,
        system_prompt=cfg.provider.system_prompt,
        context_max_messages=cfg.context_max_messages,
        context_max_chars=cfg.context_max_chars,
    )


def _hostport(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
