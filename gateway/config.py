"""Configuration: a TOML file plus ``GATEWAY_*`` environment variables.

Every setting is declared once in :data:`SETTINGS` (its TOML section and key,
its environment variable, its type, default and bounds). :func:`load` merges
the file and the environment, validates everything and returns an immutable
:class:`Config`; any problem raises :class:`~gateway.errors.ConfigError`
naming the key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .clientip import Networks, parse_networks
from .errors import ConfigError

__all__ = [
    "Config",
    "HostPort",
    "ProviderConfig",
    "StoreConfig",
    "SETTINGS",
    "Setting",
    "load",
    "own_origins",
    "parse_duration",
    "token_digest",
    "render",
]

ProviderName = Literal["demo", "openai", "dashscope"]
PROVIDERS: tuple[ProviderName, ...] = ("demo", "openai", "dashscope")
DEFAULT_URLS: dict[str, str] = {
    "demo": "",
    "openai": "https://api.openai.com/v1",
    "dashscope": "https://dashscope.aliyuncs.com/api/v1/services/aigc/text-generation/generation",
}
DEFAULT_MODELS: dict[str, str] = {"demo": "demo", "openai": "gpt-4o-mini", "dashscope": "qwen-plus"}


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, scheme: str, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port if port is None else port}"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: ProviderName
    upstream_url: str
    model: str
    api_key: str = field(repr=False)
    connect_timeout: float
    upstream_timeout: float
    max_reply_seconds: float
    max_response_bytes: int
    system_prompt: str
    params: Mapping[str, Any]
    include_usage: bool
    incremental_output: bool
    demo_delay_ms: float


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: Literal["sqlite", "memory"]
    path: Path
    checkpoint_interval: float
    retention: float | None


@dataclass(frozen=True, slots=True)
class Config:
    ws_addr: HostPort
    http_addr: HostPort
    allowed_origins: tuple[str, ...]
    public_ws_url: str
    state_dir: Path
    static_dir: Path
    drain_timeout: float
    trusted_proxies: Networks
    resume_grace: float
    http_idle_timeout: float
    ping_interval: float
    event_loop: str
    metrics: bool
    max_connections: int
    max_replies: int
    max_message_bytes: int
    max_content_chars: int
    max_pending_bytes: int
    max_total_pending_bytes: int
    max_reply_chars: int
    socket_send_buffer: int
    write_limit: int
    compression: bool
    history_limit: int
    max_history_bytes: int
    max_conversations: int
    max_conversation_messages: int
    context_max_messages: int
    context_max_chars: int
    log_level: str
    log_format: Literal["json", "console"]
    provider: ProviderConfig
    store: StoreConfig
    auth_tokens: frozenset[str] = field(default=frozenset(), repr=False)
    unknown_env: tuple[str, ...] = ()
    source: str = "defaults"


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration key: where it lives and how it is checked."""

    section: str
    key: str
    parse: Callable[[Any], Any]
    default: Any
    env: str | None = None
    doc: str = ""
    secret: bool = False

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str):
            value = value.strip()
            if not value.lstrip("-").isdigit():
                raise ValueError(f"expected an integer, got {value!r}")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {value:g}")
        return float(value)

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        value = _str(value).strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return parse


def _addr(value: Any) -> HostPort:
    text = _str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, like [::1]:8765; got {text!r}")
    if int(port) > 65535:
        raise ValueError(f"port out of range in {text!r}")
    return HostPort(host, int(port))


def _origins(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of origins, got {value!r}")
    origins = []
    for item in items:
        origin = _str(item).strip().rstrip("/")
        if origin:
            origins.append(origin if origin == "*" else _origin(origin))
    return tuple(origins)


def _origin(text: str) -> str:
    """An origin as browsers send it: ``scheme://host[:port]``, lower case."""
    scheme, sep, host = text.partition("://")
    if not sep or not scheme or not host or "/" in host:
        raise ValueError(f"an origin looks like https://chat.example.com, got {text!r}")
    return f"{scheme.lower()}://{host.lower()}"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a plain number of seconds."""
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a duration like 30d, 12h or 90m, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return value * _UNITS[unit]


def _duration(value: Any) -> float | None:
    text = _str(value).strip()
    return parse_duration(text) if text else None


def _networks(value: Any) -> Networks:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of addresses or networks, got {value!r}")
    return parse_networks([_str(i) for i in items if _str(i).strip()])


def _params(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected a table of request parameters")
    reserved = {"model", "messages", "stream", "input"} & value.keys()
    if reserved:
        raise ValueError(f"{', '.join(sorted(reserved))} is set by the gateway")
    return dict(value)


def _path(value: Any) -> str:
    return _str(value).strip()


SETTINGS: tuple[Setting, ...] = (
    Setting("server", "ws_addr", _addr, "127.0.0.1:8765", "GATEWAY_WS_ADDR",
            "host:port of the WebSocket listener (path /chat)"),
    Setting("server", "http_addr", _addr, "127.0.0.1:8080", "GATEWAY_HTTP_ADDR",
            "host:port of the HTTP listener (page, /healthz, /readyz, /config.json)"),
    Setting("server", "allowed_origins", _origins, (), "GATEWAY_ALLOWED_ORIGINS",
            "browser origins allowed to open /chat; empty: the gateway's own page origins"),
    Setting("server", "public_ws_url", _str, "", "GATEWAY_PUBLIC_WS_URL",
            "WebSocket URL the page is told in /config.json; empty: derived, or same-origin"),
    Setting("server", "state_dir", _path, "", "GATEWAY_STATE_DIR",
            "directory for state; empty: $STATE_DIRECTORY or ./state"),
    Setting("server", "static_dir", _path, "", "GATEWAY_STATIC_DIR",
            "directory of the chat page; empty: the bundled page"),
    Setting("server", "drain_timeout", _float(0, 3600), 20.0, "GATEWAY_DRAIN_TIMEOUT",
            "seconds in-flight replies get to finish on SIGTERM"),
    Setting("server", "ping_interval", _float(0, 3600), 20.0, None,
            "seconds between WebSocket pings (0 disables)"),
    Setting("server", "compression", _bool, False, None,
            "negotiate permessage-deflate (10 window bits, memLevel 4) when a client offers it"),
    Setting("server", "event_loop", _choice("asyncio", "uvloop", "auto"), "asyncio", "GATEWAY_EVENT_LOOP",
            "asyncio, uvloop (pip install 'llm-ws-gateway[uvloop]'; see docs/performance.md) "
            "or auto (uvloop when installed)"),
    Setting("server", "metrics", _bool, True, None,
            "serve Prometheus metrics at GET /metrics on the HTTP listener (keep it private)"),
    Setting("server", "trusted_proxies", _networks, ["127.0.0.1/8", "::1/128"], "GATEWAY_TRUSTED_PROXIES",
            "peers whose X-Forwarded-For is believed (Caddy on the same host: loopback)"),
    Setting("server", "resume_grace", _float(0, 86_400), 60.0, None,
            "seconds a finished reply stays resumable; a disconnected client's reply also runs on"),
    Setting("server", "http_idle_timeout", _float(1, 3600), 15.0, None,
            "seconds an HTTP connection may stay idle, or take to send a request's headers, before it is closed"),
    Setting("store", "backend", _choice("sqlite", "memory"), "sqlite", "GATEWAY_STORE",
            "sqlite (conversations survive restarts) or memory (lost on exit)"),
    Setting("store", "path", _path, "", None, "SQLite file; empty: conversations.db in the state directory"),
    Setting("store", "checkpoint_interval", _float(0.05, 3600), 1.0, None,
            "seconds between saves of a streaming reply's text (what a crash can lose at most)"),
    Setting("store", "retention", _duration, "", "GATEWAY_RETENTION",
            "delete conversations idle this long, e.g. 30d or 12h (checked hourly); empty: keep forever"),
    Setting("limits", "max_connections", _int(1, 1_000_000), 10_000, None,
            "open WebSocket connections; past it new ones are closed with 1013"),
    Setting("limits", "max_replies", _int(1, 1_000_000), 1_000, None,
            "replies streaming at once; past it a message gets 'overloaded'"),
    Setting("limits", "max_message_bytes", _int(256, 16 << 20), 65_536, "GATEWAY_MAX_MESSAGE_BYTES",
            "largest frame a client may send; larger ones close the connection with 1009"),
    Setting("limits", "max_content_chars", _int(1, 16 << 20), 32_000, None,
            "longest user message in characters; longer ones get 'too_large'"),
    Setting("limits", "max_pending_bytes", _int(1024, 256 << 20), 1 << 20, None,
            "output queued for one slow client (replies, catch-up, history) before it is disconnected (1013)"),
    Setting("limits", "max_total_pending_bytes", _int(1 << 20, 64 << 30), 64 << 20, None,
            "output queued for all clients together; past it the clients holding the most are disconnected (1013)"),
    Setting("limits", "socket_send_buffer", _int(0, 64 << 20), 131_072, None,
            "kernel send buffer per WebSocket (SO_SNDBUF); bounds memory per slow client; 0: kernel autotuning"),
    Setting("limits", "write_limit", _int(1024, 64 << 20), 65_536, None,
            "bytes buffered in a socket's write buffer before sending waits"),
    Setting("limits", "max_reply_chars", _int(1000, 16 << 20), 200_000, None,
            "longest reply kept; a longer one ends with finish_reason length"),
    Setting("limits", "history_limit", _int(1, 10_000), 50, None,
            "messages of history sent in 'ready'"),
    Setting("limits", "max_history_bytes", _int(4096, 64 << 20), 262_144, None,
            "bytes of message text in one history page or 'ready' (at least one message); the rest is paged"),
    Setting("limits", "max_conversations", _int(1, 10_000_000), 10_000, None,
            "conversations kept by the in-memory store; when full, new ones are refused (overloaded)"),
    Setting("limits", "max_conversation_messages", _int(2, 1_000_000), 1_000, None,
            "messages kept per conversation (oldest dropped)"),
    Setting("limits", "context_max_messages", _int(1, 10_000), 40, None,
            "history messages sent upstream with each request (oldest dropped first)"),
    Setting("limits", "context_max_chars", _int(100, 16 << 20), 48_000, None,
            "characters of history sent upstream (oldest dropped first)"),
    Setting("provider", "name", _choice(*PROVIDERS), "demo", "GATEWAY_PROVIDER",
            "demo, openai (any OpenAI-compatible API) or dashscope (native API)"),
    Setting("provider", "upstream_url", _str, "", "GATEWAY_UPSTREAM_URL",
            "openai: base URL (…/v1); dashscope: the full text-generation URL"),
    Setting("provider", "model", _str, "", "GATEWAY_MODEL", "model name sent upstream"),
    Setting("provider", "api_key", _str, "", "GATEWAY_API_KEY",
            "API key (prefer api_key_file or systemd credentials)", secret=True),
    Setting("provider", "api_key_file", _path, "", "GATEWAY_API_KEY_FILE",
            "file holding the API key; default $CREDENTIALS_DIRECTORY/api_key if present"),
    Setting("provider", "connect_timeout", _float(0.1, 600), 10.0, None,
            "seconds to connect to the upstream"),
    Setting("provider", "upstream_timeout", _float(0.1, 3600), 60.0, "GATEWAY_UPSTREAM_TIMEOUT",
            "seconds without a byte from the upstream, before the first token or between tokens"),
    Setting("provider", "max_reply_seconds", _float(1, 86_400), 600.0, None,
            "hard limit on one reply's duration"),
    Setting("provider", "max_response_bytes", _int(65_536, 1 << 30), 64 << 20, None,
            "bytes a compressed upstream response may inflate to (it is inflated 64 KiB at a time)"),
    Setting("provider", "system_prompt", _str, "", None, "system message sent first, if set"),
    Setting("provider", "params", _params, {}, None,
            "extra request body fields, e.g. { temperature = 0.7, max_tokens = 1024 }"),
    Setting("provider", "include_usage", _bool, True, None,
            "openai: ask for a final usage chunk (stream_options.include_usage)"),
    Setting("provider", "incremental_output", _bool, True, None,
            "dashscope: ask for incremental output (false: cumulative, deltas computed)"),
    Setting("provider", "demo_delay_ms", _float(0, 10_000), 30.0, None,
            "demo: milliseconds between tokens"),
    Setting("auth", "tokens_file", _path, "", "GATEWAY_AUTH_TOKENS_FILE",
            "file of client tokens, one per line; when set, clients must present one "
            "(default $CREDENTIALS_DIRECTORY/auth_tokens if present; empty: no auth)"),
    Setting("log", "level", _choice("debug", "info", "warning", "error"), "info",
            "GATEWAY_LOG_LEVEL", "debug, info, warning or error"),
    Setting("log", "format", _choice("auto", "json", "console"), "auto", "GATEWAY_LOG_FORMAT",
            "json, console, or auto (console on a terminal, json otherwise)"),
)

_KNOWN_ENV = {s.env for s in SETTINGS if s.env} | {"GATEWAY_CONFIG", "GATEWAY_SITE"}


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    isatty: bool = False,
) -> Config:
    """Build the effective :class:`Config` from a TOML file and the environment."""
    env = os.environ if env is None else env
    path = path or env.get("GATEWAY_CONFIG") or None
    raw = _read_toml(Path(path)) if path else {}
    values = _merge(raw, env)
    provider = _provider(values, env)
    log_format = values["log.format"]
    if log_format == "auto":
        log_format = "console" if isatty else "json"
    ws_addr, http_addr = values["server.ws_addr"], values["server.http_addr"]
    state_dir = _state_dir(values["server.state_dir"], env)
    return Config(
        ws_addr=ws_addr,
        http_addr=http_addr,
        allowed_origins=values["server.allowed_origins"],
        public_ws_url=values["server.public_ws_url"],
        state_dir=state_dir,
        static_dir=_static_dir(values["server.static_dir"]),
        drain_timeout=values["server.drain_timeout"],
        trusted_proxies=values["server.trusted_proxies"],
        resume_grace=values["server.resume_grace"],
        http_idle_timeout=values["server.http_idle_timeout"],
        ping_interval=values["server.ping_interval"],
        metrics=values["server.metrics"],
        event_loop=values["server.event_loop"],
        max_connections=values["limits.max_connections"],
        max_replies=values["limits.max_replies"],
        max_message_bytes=values["limits.max_message_bytes"],
        max_content_chars=values["limits.max_content_chars"],
        max_pending_bytes=values["limits.max_pending_bytes"],
        max_total_pending_bytes=values["limits.max_total_pending_bytes"],
        max_reply_chars=values["limits.max_reply_chars"],
        socket_send_buffer=values["limits.socket_send_buffer"],
        write_limit=values["limits.write_limit"],
        compression=values["server.compression"],
        history_limit=values["limits.history_limit"],
        max_history_bytes=values["limits.max_history_bytes"],
        max_conversations=values["limits.max_conversations"],
        max_conversation_messages=values["limits.max_conversation_messages"],
        context_max_messages=values["limits.context_max_messages"],
        context_max_chars=values["limits.context_max_chars"],
        log_level=values["log.level"],
        log_format=log_format,
        provider=provider,
        store=StoreConfig(
            backend=values["store.backend"],
            path=Path(values["store.path"]) if values["store.path"] else state_dir / "conversations.db",
            checkpoint_interval=values["store.checkpoint_interval"],
            retention=values["store.retention"],
        ),
        auth_tokens=_auth_tokens(values["auth.tokens_file"], env),
        unknown_env=tuple(sorted(k for k in env if k.startswith("GATEWAY_") and k not in _KNOWN_ENV)),
        source=str(path) if path else "defaults",
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


def _merge(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    by_section: dict[str, dict[str, Setting]] = {}
    for s in SETTINGS:
        by_section.setdefault(s.section, {})[s.key] = s
    for section, table in raw.items():
        if section not in by_section:
            raise ConfigError(section, "unknown section")
        if not isinstance(table, dict):
            raise ConfigError(section, "expected a table like [" + section + "]")
        for key in table:
            if key not in by_section[section]:
                raise ConfigError(f"{section}.{key}", "unknown key")
    values: dict[str, Any] = {}
    for s in SETTINGS:
        value, origin = raw.get(s.section, {}).get(s.key, s.default), s.name
        if s.env and s.env in env:
            value, origin = env[s.env], s.env
        try:
            values[s.name] = s.parse(value)
        except ValueError as exc:
            raise ConfigError(origin, str(exc)) from None
    return values


def _provider(values: Mapping[str, Any], env: Mapping[str, str]) -> ProviderConfig:
    name = values["provider.name"]
    url = (values["provider.upstream_url"] or DEFAULT_URLS[name]).strip()
    if name != "demo" and not url.startswith(("http://", "https://")):
        raise ConfigError("provider.upstream_url", f"expected an http(s) URL, got {url!r}")
    key = _api_key(values, env)
    if name == "dashscope" and not key:
        raise ConfigError("provider.api_key", "dashscope needs an API key (GATEWAY_API_KEY or a key file)")
    return ProviderConfig(
        name=name,
        upstream_url=url.rstrip("/"),
        model=values["provider.model"] or DEFAULT_MODELS[name],
        api_key=key,
        connect_timeout=values["provider.connect_timeout"],
        upstream_timeout=values["provider.upstream_timeout"],
        max_reply_seconds=values["provider.max_reply_seconds"],
        max_response_bytes=values["provider.max_response_bytes"],
        system_prompt=values["provider.system_prompt"],
        params=values["provider.params"],
        include_usage=values["provider.include_usage"],
        incremental_output=values["provider.incremental_output"],
        demo_delay_ms=values["provider.demo_delay_ms"],
    )


def _api_key(values: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """GATEWAY_API_KEY > key file > $CREDENTIALS_DIRECTORY/api_key > TOML api_key > the seed's API_KEY."""
    if env.get("GATEWAY_API_KEY", "").strip():
        return env["GATEWAY_API_KEY"].strip()
    key_file = values["provider.api_key_file"] or _credential(env, "api_key")
    if key_file:
        try:
            return Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("provider.api_key_file", f"cannot read {key_file}: {exc}") from None
    return str(values["provider.api_key"]).strip() or env.get("API_KEY", "").strip()


MIN_TOKEN_CHARS = 16


def _auth_tokens(path: str, env: Mapping[str, str]) -> frozenset[str]:
    """SHA-256 digests of the client tokens in ``path`` (one per line, # comments)."""
    path = path or _credential(env, "auth_tokens")
    if not path:
        return frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("auth.tokens_file", f"cannot read {path}: {exc}") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ConfigError("auth.tokens_file", f"{path} holds no token")
    if any(len(t) < MIN_TOKEN_CHARS for t in tokens):
        raise ConfigError("auth.tokens_file", f"tokens must be at least {MIN_TOKEN_CHARS} characters")
    return frozenset(token_digest(t) for t in tokens)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _credential(env: Mapping[str, str], name: str) -> str:
    """``$CREDENTIALS_DIRECTORY/name`` if systemd passed that credential, else ""."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return ""
    candidate = Path(directory) / name
    try:
        return str(candidate) if candidate.is_file() else ""
    except OSError as exc:
        raise ConfigError(f"credential {name}", f"cannot read {candidate}: {exc.strerror}") from None


def own_origins(host: str, port: int) -> tuple[str, ...]:
    """The origins of the gateway's own page, served on ``host:port``."""
    hosts = [host.lower()]
    if host in {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}:
        hosts = ["127.0.0.1", "localhost", "::1"]
    return tuple(HostPort(h, port).url("http") for h in hosts)


def _state_dir(value: str, env: Mapping[str, str]) -> Path:
    if value:
        return Path(value)
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    return Path("state")


def _static_dir(value: str) -> Path:
    if value:
        path = Path(value)
        if not (path / "index.html").is_file():
            raise ConfigError("server.static_dir", f"{path} has no index.html")
        return path
    here = Path(__file__).resolve().parent
    for candidate in (here / "static", here.parent / "static"):
        if (candidate / "index.html").is_file():
            return candidate
    return here.parent / "static"


def render(config: Config) -> str:
    """The effective configuration as TOML, with secrets masked (as comments)."""
    lines = [f"# effective configuration (from {config.source} and the environment)"]
    section = ""
    for s in SETTINGS:
        if s.section != section:
            section = s.section
            lines.append(f"\n[{section}]")
        value = _effective(config, s)
        if s.secret:
            lines.append(f"# {s.key} = {'(set, masked)' if value else '(not set)'}")
        elif s.name == "provider.api_key_file":
            continue
        elif s.name == "auth.tokens_file":
            count = len(config.auth_tokens)
            lines.append(f"# client auth: {f'on, {count} token(s)' if count else 'off'}")
        else:
            lines.append(f"{s.key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _effective(config: Config, setting: Setting) -> Any:
    source: Any = {"provider": config.provider, "store": config.store}.get(setting.section, config)
    attr = {"log.level": "log_level", "log.format": "log_format"}.get(setting.name, setting.key)
    value = getattr(source, attr, "")
    if setting.name == "store.retention":
        return f"{value:g}s" if value else ""
    if setting.name == "server.trusted_proxies":
        return [str(net) for net in value]
    return str(value) if isinstance(value, HostPort | Path) else value


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(text: str) -> str:
    out = (
        _TOML_ESCAPES.get(ch) or (f"\\u{ord(ch):04X}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch)
        for ch in text
    )
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_str(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_str(str(value))
