"""The gateway: both listeners in one event loop, and its lifecycle.

start → serve → (SIGHUP) reload … → (SIGTERM/SIGINT) drain → close.

Drain stops accepting, turns ``/readyz`` to 503, tells systemd ``STOPPING=1``,
gives replies in flight ``drain_timeout`` seconds, stores what is left as
partial, and closes sockets with 1001 once what was queued for them is sent.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from . import __version__
from .auth.factory import make_authenticator
from .config import Config, own_origins
from .connection import CLOSE_SERVICE_RESTART, Hub
from .errors import StartupError
from .lifecycle import Lifecycle, Phase
from .listeners import Listeners
from .metrics import Metrics, TimedStore
from .reloader import Reloader
from .replies import ReplyRegistry
from .runtime import Runtime
from .stores import ConversationStore, StoreUnavailable, StoreUnusable, make_store
from .supervisor import Supervisor, open_store, prune_forever, status_line
from .systemd import Notifier, listen_sockets
from .tasks import TaskSet
from .upstream import client_session, make_provider
from .stt import Recogniser, make_recogniser
from .voice import Voice
from .web import WebState

if TYPE_CHECKING:
    from .cluster.node import ClusterNode

__all__ = ["Gateway"]

_log: Any = structlog.get_logger("gateway.server")
SHIP_TIMEOUT = 5.0  # seconds, after the drain, for Redis to take the last replies' text
DICTATION_END_TIMEOUT = 5.0  # seconds, at the drain's start, for open dictations' final texts


class Gateway:
    """One gateway process. Build it with a :class:`Config`, then ``await run()``.

    ``reload`` builds a fresh Config (from the same file and environment) on SIGHUP;
    what follows from the configuration is one :class:`Runtime`, swapped whole.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: ConversationStore | None = None,
        reload: Callable[[], Config] | None = None,
        env: dict[str, str] | None = None,
        configure_logs: Callable[[Config], None] | None = None,
    ) -> None:
        self._config = config
        self.metrics = Metrics()
        self.store: ConversationStore = TimedStore(store or make_store(config), self.metrics)
        self.lifecycle = Lifecycle()
        self.hub: Hub | None = None
        self._env = dict(os.environ if env is None else env)
        self._notifier = Notifier(self._env)
        self._reloader = Reloader(reload, self._swap, self._notifier, configure_logs=configure_logs) if reload else None
        self._session: aiohttp.ClientSession | None = None
        self.listeners = Listeners()
        self._web_state: WebState | None = None
        self._tasks = TaskSet()  # the supervisor and the pruner
        self.cluster: ClusterNode | None = None  # with [cluster] redis_url
        self._recogniser: Recogniser | None = None  # with [stt] provider

    @property
    def runtime(self) -> Runtime | None:
        """The configuration in force and what is built from it (from start() on)."""
        return self.hub.runtime if self.hub is not None else None

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self.hub.runtime.config if self.hub is not None else self._config

    @property
    def closed(self) -> bool:
        """Whether the drain has begun (or is over)."""
        return self.lifecycle.phase in (Phase.DRAINING, Phase.CLOSED)

    @property
    def ws_port(self) -> int:
        return self.listeners.ws_port

    @property
    def http_port(self) -> int:
        return self.listeners.http_port

    # start

    async def start(self) -> None:
        """Open the HTTP listener (``/readyz`` answers 503 meanwhile), the store (waiting for
        it while it cannot be reached), then ``/chat``. A stop asked for meanwhile ends it."""
        cfg = self.config
        self._session = client_session()
        session = self._session
        runtime = Runtime.of(
            cfg, lambda upstream: make_provider(upstream, session), make_authenticator(cfg, session)
        )
        registry = ReplyRegistry(lambda: hub.runtime, self.store, self.metrics)
        self.hub = hub = Hub(runtime, registry, self.store)
        if cfg.cluster.enabled:
            from .cluster.node import ClusterNode  # Redis's client is loaded in cluster mode only

            self.cluster = ClusterNode(cfg.cluster, registry, self.store, self.metrics, lambda: hub.runtime.limits)
            hub.bus = self.cluster.bus
        inherited = listen_sockets(self._env)
        metrics = self.metrics.render if cfg.server.metrics else None
        self._web_state = WebState(
            cfg.server.static_dir, lambda: self.ws_port, lambda: hub.runtime, metrics, self._origins,
            health=self._health, voice=lambda: hub.voice.offer() if hub.voice else None,
        )
        await self.listeners.open_http(cfg, self._web_state, inherited)
        if (recogniser := make_recogniser(cfg.stt, session)) is not None:
            self._recogniser = recogniser
            await recogniser.open()
            hub.voice = Voice(cfg, recogniser, self.metrics)
        # In a cluster, the replies a crash left streaming are ended by the instance that takes them over.
        report = await open_store(self.store, self._notifier, self.lifecycle.stopped_within, recover=not self.cluster)
        if report is None:
            return
        if report.recovered:
            _log.warning("interrupted_replies_recovered", count=report.recovered)
        if self.cluster is not None:
            await self.cluster.open()
        await self.listeners.open_chat(self.hub, self._origins, inherited)
        self._web_state.ready = True
        supervisor = Supervisor(
            self._notifier, self._env, self._status, lambda: self.hub.cut_off if self.hub else 0
        )
        self._tasks.spawn(supervisor.run(), "supervisor")
        if cfg.store.retention:
            self._tasks.spawn(prune_forever(self.store, cfg.store.retention), "pruner")
        _log_started(self.listeners, runtime, socket_activated=bool(inherited))
        if cfg.auth.mode == "none" and not _loopback(cfg.server.ws_addr.host):
            _log.warning(
                "auth_off_on_public_address", ws_addr=str(cfg.server.ws_addr),
                advice="anyone who reaches this address chats on your API key: set [auth] mode (docs/security.md)",
            )
        self.lifecycle.serving()
        self._notifier.notify("READY=1", f"STATUS={self._status()}", f"MAINPID={os.getpid()}")

    def _health(self) -> dict[str, str]:
        """Each part's state in a word (``/healthz``)."""
        hub = self.hub
        parts = {"store": "unavailable" if getattr(self.store, "failing", False) else "ok"}
        if hub is not None:
            parts["llm"] = llm_state(hub.runtime, hub.registry.health.cooling(asyncio.get_running_loop().time()))
        parts["stt"] = self._recogniser.state() if self._recogniser is not None else "off"
        if self.cluster is not None:
            parts["redis"] = self.cluster.redis_state_now()
        return parts

    def _origins(self) -> tuple[str, ...]:
        """The browser origins allowed now: configured, or those of the gateway's own page."""
        server = self.config.server
        return server.allowed_origins or own_origins(server.http_addr.host, self.http_port)

    # serve

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT (reloading on SIGHUP), then drain and close.

        The handlers stay installed until the drain is over: a second SIGTERM or a
        SIGHUP during it is ignored; a second SIGINT (Ctrl-C twice) ends the drain
        at once, still storing what every reply streamed.
        """
        with self.lifecycle.handling_signals(self._on_reload):
            try:
                await _starting(self.start())
                await self.lifecycle.stopping.wait()
            finally:
                await self.close()

    def _status(self) -> str:
        hub, reloader = self.hub, self._reloader
        return status_line(
            "draining" if self.lifecycle.stopping.is_set() else "serving",
            connections=len(hub.connections) if hub else 0,
            replies=hub.registry.in_flight if hub else 0,
            reload_error=reloader.error if reloader else "",
        )

    # reload

    def _on_reload(self) -> None:
        if refusal := self.lifecycle.not_serving():
            _log.warning("reload_ignored", reason=refusal)
        elif self._reloader is not None:
            _log.info("reload_requested")
            self._reloader.reload(self.config, self._status)

    def _swap(self, cfg: Config) -> Runtime:
        """Make ``cfg`` the configuration in force (one assignment)."""
        hub, session = self.hub, self._session
        assert hub is not None and session is not None
        before = hub.runtime.authenticator
        hub.runtime = hub.runtime.reloaded(
            cfg, lambda upstream: make_provider(upstream, session), lambda new: make_authenticator(new, session)
        )
        if hub.runtime.authenticator is not before and (revoked := hub.revoke()):
            _log.info("credentials_revoked", connections=revoked, mode=cfg.auth.mode)
        return hub.runtime

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
        if self.hub is not None and self.listeners.stop_accepting():
            timeout = self.config.server.drain_timeout
            _log.info("drain_started", replies_in_flight=in_flight, timeout_s=timeout)
            if self.hub.voice is not None:  # each open dictation's text so far, before sockets close
                await self.hub.voice.end_all(DICTATION_END_TIMEOUT)
            moving = None
            if self.cluster is not None and self.cluster.link.up:
                # Clients resume on another instance at once; the replies stream on into Redis meanwhile.
                moving = asyncio.ensure_future(self.hub.close_all(code=CLOSE_SERVICE_RESTART))
            await self.hub.registry.drain(timeout, self.lifecycle.hurry)
            if moving is not None:
                await moving
            await self.hub.close_all()
            await self.listeners.close_chat()
            await self.hub.registry.close()
        if self.cluster is not None:
            await self.cluster.close(SHIP_TIMEOUT)
        if self._recogniser is not None:
            await self._recogniser.close()
        await self._tasks.cancel()
        await self.listeners.close_http()
        if self._session is not None:
            await self._session.close()
        await self.store.close()
        self._notifier.close()
        self.lifecycle.closed()
        if self.lifecycle.served:  # a start that failed is reported by its caller, as startup_failed
            _log.info("gateway_stopped", replies_drained=in_flight)


async def _starting(start: Any) -> None:
    """Await ``start``, turning what can stop a start into a StartupError."""
    try:
        await start
    except OSError as exc:  # an address in use, a directory not writable yet
        raise StartupError(f"{exc.strerror or exc}", retry=True) from exc
    except StoreUnusable as exc:  # retrying cannot help: a person must act
        raise StartupError(str(exc), retry=False) from exc
    except StoreUnavailable as exc:  # the database may come back
        raise StartupError(str(exc), retry=True) from exc


def llm_state(runtime: Runtime, cooling: list[str]) -> str:
    """ok; degraded while some deployments cool down after failures; down while all do."""
    deployments = set(runtime.upstreams)
    cool = deployments & set(cooling)
    return "down" if cool and cool == deployments else "degraded" if cool else "ok"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _log_started(listeners: Listeners, runtime: Runtime, *, socket_activated: bool) -> None:
    ws_url, http_url = listeners.urls()
    _log.info(
        "gateway_started",
        version=__version__,
        ws_url=ws_url,
        http_url=http_url,
        model=runtime.catalog.default.id,
        models=list(runtime.catalog.models),
        deployments=list(runtime.upstreams),
        socket_activated=socket_activated,
        event_loop="uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio",
        gc_threshold=gc.get_threshold()[0],
    )
