"""Configuration: a TOML file plus ``GATEWAY_*`` environment variables.

Every key is declared once, as a field of its section below (:func:`~gateway.settings.key`:
parser, default, environment variable, help). :func:`load` reads the file and the
environment, validates everything, derives what follows from it (default URLs and
models, the state directory, the API key and client tokens from their files) and
returns an immutable :class:`Config`; any problem raises
:class:`~gateway.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import config_values as v
from .auth.tokens import parse_tokens
from .clientip import Networks
from .config_values import HostPort, parse_duration, toml_value
from .errors import ConfigError
from .models_config import (
    CONTINUATIONS, DEFAULT_MODELS, DEFAULT_URLS, LEGACY_KEYS, PROVIDERS, DeploymentConfig, ModelConfig, ProviderName,
    RoutingConfig, resolve,
)
from .settings import Setting, declared, key, read, section, sections, settings, tables

__all__ = [
    "AuthConfig",
    "ClusterConfig",
    "Config",
    "DeploymentConfig",
    "HostPort",
    "LimitsConfig",
    "LogConfig",
    "ModelConfig",
    "ProviderConfig",
    "RoutingConfig",
    "SETTINGS",
    "ServerConfig",
    "Setting",
    "StoreConfig",
    "SttConfig",
    "load",
    "own_origins",
    "parse_duration",
    "render",
]



@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: listeners, browser origins, shutdown."""

    ws_addr: HostPort = key(v.addr, "127.0.0.1:8765", "GATEWAY_WS_ADDR",
        "host:port of the WebSocket listener (path /chat)")
    http_addr: HostPort = key(v.addr, "127.0.0.1:8080", "GATEWAY_HTTP_ADDR",
        "host:port of the HTTP listener (page, /healthz, /readyz, /config.json)")
    allowed_origins: tuple[str, ...] = key(v.origins, (), "GATEWAY_ALLOWED_ORIGINS",
        "browser origins allowed to open /chat; empty: the gateway's own page origins")
    public_ws_url: str = key(v.string, "", "GATEWAY_PUBLIC_WS_URL",
        "WebSocket URL the page is told in /config.json; empty: derived, or same-origin")
    state_dir: Path = key(v.path, "", "GATEWAY_STATE_DIR",
        "directory for state; empty: $STATE_DIRECTORY or ./state")
    static_dir: Path = key(v.path, "", "GATEWAY_STATIC_DIR",
        "directory of the chat page; empty: the bundled page")
    drain_timeout: float = key(v.number(0, 3600), 20.0, "GATEWAY_DRAIN_TIMEOUT",
        "seconds in-flight replies get to finish on SIGTERM")
    ping_interval: float = key(v.number(0, 3600), 20.0, None,
        "seconds between WebSocket pings (0 disables)")
    compression: bool = key(v.boolean, False, None,
        "negotiate permessage-deflate (10 window bits, memLevel 4) when a client offers it")
    event_loop: str = key(v.choice("asyncio", "uvloop", "auto"), "auto", "GATEWAY_EVENT_LOOP",
        "auto (uvloop when installed: pip install 'llm-ws-gateway[uvloop]'; see docs/performance.md), "
        "uvloop, or asyncio")
    gc_threshold: int = key(v.integer(0, 10_000_000), 50_000, "GATEWAY_GC_THRESHOLD",
        "objects allocated between the garbage collector's young collections (0: Python's own, 700); "
        "fewer young collections mean far fewer full ones, which pause every stream (docs/performance.md)")
    metrics: bool = key(v.boolean, True, None,
        "serve Prometheus metrics at GET /metrics on the HTTP listener (keep it private)")
    trusted_proxies: Networks = key(v.networks, ["127.0.0.1/8", "::1/128"], "GATEWAY_TRUSTED_PROXIES",
        "peers whose X-Forwarded-For is believed (Caddy on the same host: loopback)")
    resume_grace: float = key(v.number(0, 86_400), 60.0, None,
        "seconds a finished reply stays resumable; a disconnected client's reply also runs on")
    http_idle_timeout: float = key(v.number(1, 3600), 15.0, None,
        "seconds an HTTP connection may stay idle, or take to send a request's headers, before it is closed")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: where conversations are kept (``path`` resolved against the state directory,
    the PostgreSQL password read from its file)."""

    backend: Literal["sqlite", "memory", "postgres"] = key(v.choice("sqlite", "memory", "postgres"), "sqlite",
        "GATEWAY_STORE", "sqlite (one file), postgres (a PostgreSQL database) or memory (lost on exit)")
    path: Path = key(v.path, "", None, "SQLite file; empty: conversations.db in the state directory")
    url: str = key(v.database_url, "", "GATEWAY_DATABASE_URL",
        "postgres: a libpq URL, e.g. postgresql://gateway@127.0.0.1:5432/gateway (no password in it: "
        "see password_file)", show=v.masked_url)
    password_file: str = key(v.path, "", "GATEWAY_DATABASE_PASSWORD_FILE",
        "postgres: file holding the password; default $CREDENTIALS_DIRECTORY/database_password if present "
        "(else libpq's PGPASSFILE, ~/.pgpass)")
    pool_min_size: int = key(v.integer(0, 1000), 1, None, "postgres: connections kept open")
    pool_max_size: int = key(v.integer(1, 1000), 10, None,
        "postgres: most connections at once (the database's max_connections bounds the sum over instances)")
    connect_timeout: float = key(v.number(2, 600), 5.0, None, "postgres: seconds to connect (libpq waits 2 at least)")
    statement_timeout: float = key(v.number(0, 3600), 10.0, None,
        "postgres: seconds one statement may run (0: no limit); with pgbouncer, set it on the role instead")
    pgbouncer: bool = key(v.boolean, False, None,
        "postgres: behind PgBouncer in transaction mode (no prepared statements, no session settings)")
    checkpoint_interval: float = key(v.number(0.05, 3600), 1.0, None,
        "seconds between saves of a streaming reply's text (what a crash can lose at most)")
    retention: float | None = key(v.duration, "", "GATEWAY_RETENTION",
        "delete conversations idle this long, e.g. 30d or 12h (checked hourly); empty: keep forever",
        show=lambda seconds: f"{seconds:g}s" if seconds else "")
    password: str = dataclasses.field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``[cluster]``: several instances sharing live replies through Redis (or Valkey); off
    while ``redis_url`` is empty. Needs the postgres store."""

    redis_url: str = key(v.redis_url, "", "GATEWAY_REDIS_URL",
        "Redis URL, e.g. redis://127.0.0.1:6379/0 (no password in it: see password_file); "
        "empty: one instance alone", show=v.masked_url)
    password_file: str = key(v.path, "", "GATEWAY_REDIS_PASSWORD_FILE",
        "file holding the Redis password; default $CREDENTIALS_DIRECTORY/redis_password if present")
    lease_timeout: float = key(v.number(1, 600), 15.0, None,
        "seconds after which another instance ends the replies of an instance that stopped renewing its lease")
    socket_timeout: float = key(v.number(0.1, 60), 2.0, None,
        "seconds to connect to Redis or wait for one answer; past it Redis counts as down")
    password: str = dataclasses.field(default="", repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: bounds on connections, frames, queues, history and context."""

    max_connections: int = key(v.integer(1, 1_000_000), 10_000, None,
        "open WebSocket connections; past it new ones are closed with 1013")
    max_replies: int = key(v.integer(1, 1_000_000), 1_000, None,
        "replies streaming at once; past it a message gets 'overloaded'")
    max_message_bytes: int = key(v.integer(256, 16 << 20), 65_536, "GATEWAY_MAX_MESSAGE_BYTES",
        "largest frame a client may send; larger ones close the connection with 1009")
    max_content_chars: int = key(v.integer(1, 16 << 20), 32_000, None,
        "longest user message in characters; longer ones get 'too_large'")
    max_pending_bytes: int = key(v.integer(1024, 256 << 20), 1 << 20, None,
        "output queued for one slow client (replies, catch-up, history) before it is disconnected (1013)")
    max_total_pending_bytes: int = key(v.integer(1 << 20, 64 << 30), 64 << 20, None,
        "output queued for all clients together; past it the clients holding the most are disconnected (1013)")
    socket_send_buffer: int = key(v.integer(0, 64 << 20), 131_072, None,
        "kernel send buffer per WebSocket (SO_SNDBUF); bounds memory per slow client; 0: kernel autotuning")
    write_limit: int = key(v.integer(1024, 64 << 20), 65_536, None,
        "bytes buffered in a socket's write buffer before sending waits")
    max_reply_chars: int = key(v.integer(1000, 16 << 20), 200_000, None,
        "longest reply kept; a longer one ends with finish_reason length")
    history_limit: int = key(v.integer(1, 10_000), 50, None,
        "messages of history sent in 'ready'")
    max_history_bytes: int = key(v.integer(4096, 64 << 20), 262_144, None,
        "bytes of message text in one history page or 'ready' (at least one message); the rest is paged")
    max_conversations: int = key(v.integer(1, 10_000_000), 10_000, None,
        "conversations kept by the in-memory store; when full, new ones are refused (overloaded)")
    max_conversation_messages: int = key(v.integer(2, 1_000_000), 1_000, None,
        "messages kept per conversation (oldest dropped)")
    context_max_messages: int = key(v.integer(1, 10_000), 40, None,
        "history messages sent upstream with each request (oldest dropped first)")
    context_max_chars: int = key(v.integer(100, 16 << 20), 48_000, None,
        "characters of history sent upstream (oldest dropped first)")
    connections_per_subject: int = key(v.integer(0, 1_000_000), 0, "GATEWAY_CONNECTIONS_PER_SUBJECT",
        "open connections of one subject (per instance); past it new ones are closed with 1013; 0: no limit")
    messages_per_minute: int = key(v.integer(0, 1_000_000), 0, "GATEWAY_MESSAGES_PER_MINUTE",
        "messages (and regenerates) of one subject per calendar minute; past it 'rate_limited'; 0: no limit")
    replies_per_subject: int = key(v.integer(0, 1_000_000), 0, "GATEWAY_REPLIES_PER_SUBJECT",
        "replies of one subject streaming at once (per instance); past it 'busy'; 0: no limit")
    tokens_per_day: int = key(v.integer(0, 1 << 40), 0, "GATEWAY_TOKENS_PER_DAY",
        "tokens (prompt and reply) one subject may use per UTC day; past it 'budget_exceeded'; 0: no budget")
    global_tokens_per_day: int = key(v.integer(0, 1 << 40), 0, "GATEWAY_GLOBAL_TOKENS_PER_DAY",
        "tokens all subjects together may use per UTC day: a cap that protects the API key; 0: no cap")


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """``[provider]``: the LLM upstream (URL and model defaulted per provider, the key read from where it is kept)."""

    name: ProviderName = key(v.choice(*PROVIDERS), "demo", "GATEWAY_PROVIDER",
        "demo, openai (any OpenAI-compatible API) or dashscope (native API)")
    upstream_url: str = key(v.string, "", "GATEWAY_UPSTREAM_URL",
        "openai: base URL (…/v1); dashscope: the full text-generation URL")
    model: str = key(v.string, "", "GATEWAY_MODEL", "model name sent upstream")
    api_key: str = key(v.string, "", "GATEWAY_API_KEY",
        "API key (prefer api_key_file or systemd credentials)", secret=True)
    api_key_file: str = key(v.path, "", "GATEWAY_API_KEY_FILE",
        "file holding the API key; default $CREDENTIALS_DIRECTORY/api_key if present")
    connect_timeout: float = key(v.number(0.1, 600), 10.0, None,
        "seconds to connect to the upstream")
    upstream_timeout: float = key(v.number(0.1, 3600), 60.0, "GATEWAY_UPSTREAM_TIMEOUT",
        "seconds without a byte from the upstream between tokens; also the most a reply's first token "
        "may take, over all its attempts (whatever else the provider sends meanwhile)")
    max_reply_seconds: float = key(v.number(1, 86_400), 600.0, None,
        "hard limit on one reply's duration")
    max_response_bytes: int = key(v.integer(65_536, 1 << 30), 64 << 20, None,
        "bytes a compressed upstream response may inflate to (it is inflated 64 KiB at a time)")
    system_prompt: str = key(v.string, "", None, "system message sent first, if set")
    params: Mapping[str, Any] = key(v.params, {}, None,
        "extra request body fields, e.g. { temperature = 0.7, max_tokens = 1024 }")
    include_usage: bool = key(v.boolean, True, None,
        "openai: ask for a final usage chunk (stream_options.include_usage)")
    continuation: str = key(v.choice("", *CONTINUATIONS), "", None,
        "how a cut-off reply is continued: prompt (ask to go on), prefix (DeepSeek, Mistral: the partial "
        "reply with prefix = true), partial (Qwen, Kimi: partial = true); empty: partial for dashscope, "
        "else prompt")
    incremental_output: bool = key(v.boolean, True, None,
        "dashscope: ask for incremental output (false: cumulative, deltas computed)")
    demo_delay_ms: float = key(v.number(0, 10_000), 30.0, None,
        "demo: milliseconds between tokens")


STT_PROVIDERS = ("none", "vosk", "openai")


@dataclass(frozen=True, slots=True)
class SttConfig:
    """``[stt]``: voice input (docs/voice.md): a recogniser turns a dictation's audio into text."""

    provider: Literal["none", "vosk", "openai"] = key(v.choice(*STT_PROVIDERS), "none", "GATEWAY_STT_PROVIDER",
        "none (no voice input), vosk (embedded, offline: pip install 'llm-ws-gateway[voice]') or openai "
        "(an OpenAI-compatible /audio/transcriptions endpoint)")
    model_path: str = key(v.path, "", "GATEWAY_STT_MODEL_PATH",
        "vosk: the model's directory (VOSK_MODEL_PATH is read too)")
    sample_rate: int = key(v.integer(8000, 48_000), 16_000, "GATEWAY_STT_SAMPLE_RATE",
        "audio samples per second clients send unless they ask for another (VOSK_SAMPLE_RATE is read too)")
    url: str = key(v.string, "", "GATEWAY_STT_URL",
        "openai: the API's base URL, ending in /v1 (…/audio/transcriptions is added), or the endpoint's own URL")
    model: str = key(v.string, "whisper-1", "GATEWAY_STT_MODEL", "openai: the transcription model")
    api_key: str = key(v.string, "", "GATEWAY_STT_API_KEY",
        "openai: API key (prefer api_key_file or systemd credentials)", secret=True)
    api_key_file: str = key(v.path, "", "GATEWAY_STT_API_KEY_FILE",
        "openai: file holding the API key; default $CREDENTIALS_DIRECTORY/stt_api_key if present; none: no key sent")
    language: str = key(v.string, "", None, "openai: the language hint sent when a dictation gives none (e.g. en)")
    timeout: float = key(v.number(1, 600), 60.0, None, "openai: seconds a transcription may take")
    max_seconds: float = key(v.number(1, 3600), 60.0, "GATEWAY_STT_MAX_SECONDS",
        "seconds of audio in one dictation; at the limit it ends by itself with its text so far")
    max_frame_bytes: int = key(v.integer(512, 1 << 20), 32_768, None,
        "largest binary audio frame (the page sends 3,200 bytes: 100 ms at 16 kHz)")
    max_dictations: int = key(v.integer(0, 10_000), 0, "GATEWAY_STT_MAX_DICTATIONS",
        "dictations at once in the process (one per connection); past it 'overloaded'; 0: what the recogniser "
        "keeps up with: vosk 4 per worker, openai 16")
    workers: int = key(v.integer(0, 256), 0, None,
        "vosk: threads recognising at once; 0: one fewer than the CPUs, at least one (chats keep a core)")

    @property
    def enabled(self) -> bool:
        return self.provider != "none"


AuthMode = Literal["none", "tokens", "proxy", "jwt"]


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: who may chat (docs/security.md). Secrets are read from files: the token
    file (SHA-256 digests kept) and the JWT secret."""

    mode: AuthMode = key(v.choice("auto", "none", "tokens", "proxy", "jwt"), "auto", "GATEWAY_AUTH_MODE",
        "none (anyone; each browser keeps its own conversations), tokens, proxy (a trusted "
        "reverse proxy's user header) or jwt; auto: tokens when a token file is found, else none")
    tokens_file: str = key(v.path, "", "GATEWAY_AUTH_TOKENS_FILE",
        "tokens mode: file of client tokens, one per line as NAME TOKEN or TOKEN "
        "(default $CREDENTIALS_DIRECTORY/auth_tokens if present)")
    user_header: str = key(v.header_name, "Remote-User", "GATEWAY_AUTH_USER_HEADER",
        "proxy mode: the header naming the signed-in user, believed from server.trusted_proxies only "
        "(the shipped Caddyfile sets and strips Remote-User: change both together)")
    jwt_secret_file: str = key(v.path, "", "GATEWAY_JWT_SECRET_FILE",
        "jwt mode: file holding the HS256 secret, at least 32 bytes "
        "(default $CREDENTIALS_DIRECTORY/jwt_secret if present)")
    jwks_url: str = key(v.string, "", "GATEWAY_JWT_JWKS_URL",
        "jwt mode: the issuer's JWKS URL (https://, or http:// to localhost; RS/PS/ES/EdDSA keys), instead of a secret")
    jwt_issuer: str = key(v.string, "", "GATEWAY_JWT_ISSUER", "jwt mode: the required iss claim, if set")
    jwt_audience: str = key(v.string, "", "GATEWAY_JWT_AUDIENCE", "jwt mode: the required aud claim, if set")
    jwt_leeway: float = key(v.number(0, 300), 10.0, None, "jwt mode: seconds of clock skew allowed on exp, nbf, iat")
    token_url: str = key(v.string, "", "GATEWAY_AUTH_TOKEN_URL",
        "jwt mode: where the page gets a token (GET, with its cookies; JSON {token} or the token as text)")
    timeout: float = key(v.number(1, 300), 10.0, None,
        "seconds a socket gets to authenticate (its first frame) before it is closed")
    expiry_warning: float = key(v.number(0, 3600), 60.0, None,
        "seconds before a credential expires that the client is told (auth.expiring)")
    tokens: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)  # digest -> name
    jwt_secret: str = dataclasses.field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: structured logs on stdout (``format`` auto resolved to json or console)."""

    level: str = key(v.choice("debug", "info", "warning", "error"), "info",
        "GATEWAY_LOG_LEVEL", "debug, info, warning or error")
    format: Literal["json", "console"] = key(v.choice("auto", "json", "console"), "auto", "GATEWAY_LOG_FORMAT",
        "json, console, or auto (console on a terminal, json otherwise)")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration, one field per TOML section."""

    server: ServerConfig = section(ServerConfig)
    store: StoreConfig = section(StoreConfig)
    cluster: ClusterConfig = section(ClusterConfig)
    limits: LimitsConfig = section(LimitsConfig)
    provider: ProviderConfig = section(ProviderConfig)
    routing: RoutingConfig = section(RoutingConfig)
    auth: AuthConfig = section(AuthConfig)
    stt: SttConfig = section(SttConfig)
    log: LogConfig = section(LogConfig)
    models: tuple[ModelConfig, ...] = tables(ModelConfig)
    deployments: tuple[DeploymentConfig, ...] = tables(DeploymentConfig)
    unknown_env: tuple[str, ...] = ()
    source: str = "defaults"
    single_model: bool = True  # no [[models]]: the one model [provider] describes


SETTINGS: tuple[Setting, ...] = settings(Config)
_KNOWN_ENV = {s.env for s in SETTINGS if s.env} | {"GATEWAY_CONFIG", "GATEWAY_SITE"}
# The variables of the system voice input came from, still read (docs/voice.md).
LEGACY_STT_ENV = {"VOSK_MODEL_PATH": "model_path", "VOSK_SAMPLE_RATE": "sample_rate"}


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
    values = read(Config, raw, env)
    server = values["server"]
    server["state_dir"] = _state_dir(server["state_dir"], env)
    server["static_dir"] = _static_dir(server["static_dir"])
    store = values["store"]
    store["path"] = Path(store["path"]) if store["path"] else server["state_dir"] / "conversations.db"
    _check_database(store, env)
    if values["log"]["format"] == "auto":
        values["log"]["format"] = "console" if isatty else "json"
    provider = _provider(values["provider"], env)
    models, deployments = resolve(
        values["models"], values["deployments"], _legacy(provider), env, _explicit(raw, env),
    )
    return Config(
        server=ServerConfig(**server),
        store=StoreConfig(**store),
        cluster=_cluster(values["cluster"], store["backend"], env),
        limits=LimitsConfig(**values["limits"]),
        provider=provider,
        models=models,
        deployments=deployments,
        routing=RoutingConfig(**values["routing"]),
        auth=_auth(values["auth"], env, values["server"]),
        stt=_stt(values["stt"], raw.get("stt", {}), env),
        log=LogConfig(**values["log"]),
        unknown_env=tuple(sorted(k for k in env if k.startswith("GATEWAY_") and k not in _KNOWN_ENV)),
        single_model=not values["models"],
        source=str(path) if path else "defaults",
    )


def _check_database(store: dict[str, Any], env: Mapping[str, str]) -> None:
    """PostgreSQL needs a URL; its password comes from a file (read whatever the backend:
    ``gateway store copy`` reaches PostgreSQL from a SQLite configuration too)."""
    if store["backend"] == "postgres" and not store["url"]:
        raise ConfigError("store.url", "the postgres backend needs a URL (GATEWAY_DATABASE_URL)")
    if store["pool_min_size"] > store["pool_max_size"]:
        raise ConfigError("store.pool_min_size", "must not be larger than pool_max_size")
    password_file = store["password_file"] or _credential(env, "database_password")
    if password_file:
        try:
            store["password"] = Path(password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("store.password_file", f"cannot read {password_file}: {exc}") from None


def _cluster(values: dict[str, Any], backend: str, env: Mapping[str, str]) -> ClusterConfig:
    """Cluster mode shares conversations too: only the postgres store is shared."""
    if values["redis_url"] and backend != "postgres":
        raise ConfigError("cluster.redis_url", f"several instances need the postgres store (store.backend is {backend})")
    password_file = values["password_file"] or _credential(env, "redis_password")
    if password_file and values["redis_url"]:
        try:
            values["password"] = Path(password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("cluster.password_file", f"cannot read {password_file}: {exc}") from None
    return ClusterConfig(**values)


def _stt(values: dict[str, Any], table: Mapping[str, Any], env: Mapping[str, str]) -> SttConfig:
    """The old ``VOSK_*`` variables fill what neither the file nor ``GATEWAY_STT_*`` sets
    (``USE_REAL_VOSK=1`` chooses vosk); the key is read from its file; what cannot work is refused."""
    spec = {s.key: s for s in declared(SttConfig, "stt")}
    for var, name in LEGACY_STT_ENV.items():
        if env.get(var, "").strip() and name not in table and not env.get(spec[name].env or "", "").strip():
            try:
                values[name] = spec[name].parse(env[var].strip())
            except ValueError as exc:
                raise ConfigError(var, str(exc)) from None
    if env.get("USE_REAL_VOSK", "").strip().lower() in ("1", "true", "yes") and "provider" not in table and (
        not env.get("GATEWAY_STT_PROVIDER", "").strip()
    ):
        values["provider"] = "vosk"
    provider = values["provider"]
    if provider == "vosk" and not values["model_path"]:
        raise ConfigError("stt.model_path", "vosk needs a model directory (GATEWAY_STT_MODEL_PATH; docs/voice.md)")
    if provider == "openai":
        url = values["url"].strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError("stt.url", f"openai needs the transcription API's http(s) URL, got {url!r}")
        values["url"] = url
        values["api_key"] = _key(values, env, "GATEWAY_STT_API_KEY", "stt_api_key", "stt")
    return SttConfig(**values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


def _provider(values: dict[str, Any], env: Mapping[str, str]) -> ProviderConfig:
    name = values["name"]
    url = (values["upstream_url"] or DEFAULT_URLS[name]).strip()
    if name != "demo" and not url.startswith(("http://", "https://")):
        raise ConfigError("provider.upstream_url", f"expected an http(s) URL, got {url!r}")
    api_key = _api_key(values, env)
    if name == "dashscope" and not api_key:
        raise ConfigError("provider.api_key", "dashscope needs an API key (GATEWAY_API_KEY or a key file)")
    return ProviderConfig(
        **{**values, "upstream_url": url.rstrip("/"), "model": values["model"] or DEFAULT_MODELS[name], "api_key": api_key}
    )


def _legacy(provider: ProviderConfig) -> dict[str, Any]:
    """What a configuration without ``[[models]]`` serves: ``[provider]``'s one model."""
    return {"name": provider.name, "upstream_url": provider.upstream_url, "model": provider.model,
            "api_key": provider.api_key}


def _explicit(raw: Mapping[str, Any], env: Mapping[str, str]) -> frozenset[str]:
    """The ``[provider]`` keys naming one upstream that the file or the environment sets."""
    table = raw.get("provider")
    found = set(table) if isinstance(table, dict) else set()
    found |= {s.key for s in declared(ProviderConfig, "provider") if s.env and env.get(s.env, "").strip()}
    return frozenset(found & set(LEGACY_KEYS))


def _api_key(values: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """GATEWAY_API_KEY > key file > $CREDENTIALS_DIRECTORY/api_key > TOML api_key > the seed's API_KEY."""
    return _key(values, env, "GATEWAY_API_KEY", "api_key", "provider") or env.get("API_KEY", "").strip()


def _key(values: Mapping[str, Any], env: Mapping[str, str], variable: str, credential: str, section: str) -> str:
    """A section's API key: ``variable`` > its ``api_key_file`` > the systemd credential
    ``credential`` > its TOML ``api_key``."""
    if env.get(variable, "").strip():
        return env[variable].strip()
    key_file = values["api_key_file"] or _credential(env, credential)
    if key_file:
        return _read_secret(key_file, f"{section}.api_key_file")
    return str(values["api_key"]).strip()


def _auth(values: dict[str, Any], env: Mapping[str, str], server: Mapping[str, Any]) -> AuthConfig:
    """Resolve ``auto``, read the mode's secrets, and refuse settings that cannot work."""
    tokens_path = values["tokens_file"] or _credential(env, "auth_tokens")
    if values["mode"] == "auto":
        values["mode"] = "tokens" if tokens_path else "none"
    mode = values["mode"]
    if values["tokens_file"] and mode != "tokens":
        raise ConfigError("auth.tokens_file", f"is set, but auth.mode is {mode}")
    if mode == "tokens":
        if not tokens_path:
            raise ConfigError("auth.tokens_file", "tokens mode needs a token file (GATEWAY_AUTH_TOKENS_FILE)")
        try:
            values["tokens"] = parse_tokens(_read_secret(tokens_path, "auth.tokens_file"))
        except ValueError as exc:
            raise ConfigError("auth.tokens_file", f"{tokens_path}: {exc}") from None
    if mode == "proxy" and not server["trusted_proxies"]:
        raise ConfigError("server.trusted_proxies", "proxy mode believes the user header only from these: set them")
    if mode == "jwt":
        values["jwt_secret"] = _jwt_secret(values, env)
    elif values["jwks_url"] or values["jwt_secret_file"]:
        raise ConfigError("auth.jwks_url" if values["jwks_url"] else "auth.jwt_secret_file", f"is set, but auth.mode is {mode}")
    return AuthConfig(**values)


def _jwt_secret(values: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """The HS256 secret, or "" with a JWKS URL: exactly one of them."""
    secret_file = values["jwt_secret_file"] or ("" if values["jwks_url"] else _credential(env, "jwt_secret"))
    if bool(secret_file) == bool(values["jwks_url"]):
        raise ConfigError("auth.jwt_secret_file", "jwt mode needs a secret file or a jwks_url (exactly one)")
    if values["jwks_url"]:
        _check_jwks_url(values["jwks_url"])
        return ""
    secret = _read_secret(secret_file, "auth.jwt_secret_file")
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigError("auth.jwt_secret_file", f"an HS256 secret is at least {MIN_JWT_SECRET_BYTES} bytes")
    return secret


MIN_JWT_SECRET_BYTES = 32


def _check_jwks_url(url: str) -> None:
    """HTTPS, or HTTP to this host only: whoever can change the keys can sign in as anyone."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname in ("localhost", "127.0.0.1", "::1"):
        return
    raise ConfigError("auth.jwks_url", "expected an https:// URL (http:// only to localhost)")


def _read_secret(path: str, name: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, f"cannot read {path}: {exc}") from None


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
    for name, (cls, array) in sections(Config).items():
        if not array:
            lines.append(f"\n[{name}]")
            lines += _rendered(config, name, getattr(config, name))
            continue
        for item in getattr(config, name):
            shown = [f"[[{name}]]", *_rendered(config, name, item)]
            if config.single_model:  # the one model [provider] describes, shown as a comment
                shown = [line if line.startswith("#") else f"# {line}" for line in shown]
            lines += ["", *shown]
    return "\n".join(lines) + "\n"


_ONE_MODEL_KEYS = frozenset(f"provider.{key}" for key in LEGACY_KEYS)  # with [[models]]: in [[deployments]]


def _rendered(config: Config, name: str, values: Any) -> list[str]:
    lines = []
    for s in (s for s in SETTINGS if s.section == name):
        value = getattr(values, s.key)
        if s.secret:
            lines.append(f"# {s.key} = {'(set, masked)' if value else '(not set)'}")
        elif s.name == "provider.api_key_file" or (not config.single_model and s.name in _ONE_MODEL_KEYS):
            continue
        elif s.name == "auth.tokens_file" and config.auth.tokens:
            lines.append(f"{s.key} = {toml_value(value)}  # {len(config.auth.tokens)} token(s)")
        elif s.name == "auth.jwt_secret_file" and config.auth.jwt_secret:
            lines.append(f"{s.key} = {toml_value(value)}  # secret read, masked")
        else:
            lines.append(f"{s.key} = {toml_value(s.show(value) if s.show else value)}")
    if isinstance(values, DeploymentConfig):
        lines.append(f"# api key: {'(set, masked)' if values.api_key else '(none)'}")
    return lines

