"""Tests for gateway.config: defaults, TOML + environment, validation, render()."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway import config
from gateway.config import Config, HostPort, load, render
from gateway.errors import ConfigError
from gateway.settings import REQUIRED

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "gateway.example.toml"
SECRET = "sk-proj-Zq8vT3xLm2Nw9Rk4Yb7Hc1Jd6Fg5"

DOCUMENTED_ENV = {
    "GATEWAY_WS_ADDR",
    "GATEWAY_HTTP_ADDR",
    "GATEWAY_PROVIDER",
    "GATEWAY_UPSTREAM_URL",
    "GATEWAY_MODEL",
    "GATEWAY_API_KEY",
    "GATEWAY_API_KEY_FILE",
    "GATEWAY_ALLOWED_ORIGINS",
    "GATEWAY_STATE_DIR",
    "GATEWAY_MAX_MESSAGE_BYTES",
    "GATEWAY_UPSTREAM_TIMEOUT",
    "GATEWAY_DRAIN_TIMEOUT",
    "GATEWAY_LOG_LEVEL",
    "GATEWAY_LOG_FORMAT",
}


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_toml(tmp_path: Path, text: str, env: Mapping[str, str] | None = None, **kw: Any) -> Config:
    return load(write(tmp_path, text), dict(env or {}), **kw)


def config_error(fn: Callable[[], object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn()
    return info.value


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = load(None, {})
    assert cfg.server.ws_addr == HostPort("127.0.0.1", 8765)
    assert cfg.server.http_addr == HostPort("127.0.0.1", 8080)
    assert cfg.server.allowed_origins == (), "empty: the server allows its own page origins once bound"
    assert cfg.server.public_ws_url == ""
    assert cfg.server.state_dir == Path("state")
    assert (cfg.server.static_dir / "index.html").is_file()
    assert cfg.server.drain_timeout == 20.0
    assert cfg.limits.max_message_bytes == 65_536
    assert cfg.limits.max_pending_bytes == 1 << 20
    assert cfg.server.compression is False
    assert cfg.log.level == "info"
    assert cfg.log.format == "json"
    assert cfg.unknown_env == ()
    assert cfg.source == "defaults"
    p = cfg.provider
    assert (p.name, p.upstream_url, p.model, p.api_key) == ("demo", "", "demo", "")
    assert p.upstream_timeout == 60.0
    assert p.params == {}
    assert p.include_usage is True and p.incremental_output is True


def test_every_documented_env_var_is_a_setting() -> None:
    assert DOCUMENTED_ENV <= {s.env for s in config.SETTINGS if s.env}


def test_every_setting_has_a_doc_and_a_valid_default() -> None:
    for s in config.SETTINGS:
        assert s.doc, s.name
        if s.default is not REQUIRED:
            s.parse(s.default)  # a default must pass its own validation


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    cfg = load(path, {})
    assert dataclasses.replace(cfg, source="defaults") == load(None, {})
    assert cfg.source == str(path)


def test_gateway_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_connections = 7\n")
    cfg = load(None, {"GATEWAY_CONFIG": str(path)})
    assert cfg.limits.max_connections == 7
    assert cfg.source == str(path)
    assert cfg.unknown_env == ()


def test_explicit_path_beats_gateway_config_env(tmp_path: Path) -> None:
    a = write(tmp_path, "[limits]\nmax_connections = 7\n", "a.toml")
    b = write(tmp_path, "[limits]\nmax_connections = 9\n", "b.toml")
    assert load(a, {"GATEWAY_CONFIG": str(b)}).limits.max_connections == 7


def test_toml_values_are_read(tmp_path: Path) -> None:
    cfg = load_toml(
        tmp_path,
        """
[server]
ws_addr = "0.0.0.0:9001"
http_addr = "[::1]:9002"
allowed_origins = ["https://chat.example.com/", "https://b.example.com"]
compression = true
drain_timeout = 5
[limits]
max_connections = 12
context_max_chars = 1000
[provider]
name = "openai"
upstream_url = "https://openrouter.ai/api/v1/"
model = "deepseek/deepseek-r1"
system_prompt = "你是一个有帮助的助手。"
params = { temperature = 0.7, max_tokens = 1024 }
include_usage = false
[log]
level = "WARNING"
format = "console"
""",
    )
    assert cfg.server.ws_addr == HostPort("0.0.0.0", 9001)
    assert cfg.server.http_addr == HostPort("::1", 9002)
    assert cfg.server.allowed_origins == ("https://chat.example.com", "https://b.example.com")
    assert cfg.server.compression is True
    assert cfg.server.drain_timeout == 5.0 and isinstance(cfg.server.drain_timeout, float)
    assert cfg.limits.max_connections == 12
    assert cfg.limits.context_max_chars == 1000
    assert cfg.provider.name == "openai"
    assert cfg.provider.upstream_url == "https://openrouter.ai/api/v1"
    assert cfg.provider.model == "deepseek/deepseek-r1"
    assert cfg.provider.system_prompt == "你是一个有帮助的助手。"
    assert cfg.provider.params == {"temperature": 0.7, "max_tokens": 1024}
    assert cfg.provider.include_usage is False
    assert cfg.log.level == "warning"
    assert cfg.log.format == "console"


# --------------------------------------------------------------------------- env overrides the file

OPENAI = {"GATEWAY_PROVIDER": "openai"}

ENV_OVERRIDES: list[Any] = [
    pytest.param("GATEWAY_WS_ADDR", '[server]\nws_addr = "127.0.0.1:1111"', "0.0.0.0:2222",
                 lambda c: c.server.ws_addr, HostPort("0.0.0.0", 2222), {}, id="ws_addr"),
    pytest.param("GATEWAY_HTTP_ADDR", '[server]\nhttp_addr = "127.0.0.1:1111"', "[::1]:3333",
                 lambda c: c.server.http_addr, HostPort("::1", 3333), {}, id="http_addr"),
    pytest.param("GATEWAY_PROVIDER", '[provider]\nname = "demo"', "OpenAI",
                 lambda c: c.provider.name, "openai", {}, id="provider"),
    pytest.param("GATEWAY_UPSTREAM_URL", '[provider]\nupstream_url = "http://a.example/v1"',
                 "http://b.example/v1/", lambda c: c.provider.upstream_url, "http://b.example/v1",
                 OPENAI, id="upstream_url"),
    pytest.param("GATEWAY_MODEL", '[provider]\nmodel = "from-file"', "qwen-max",
                 lambda c: c.provider.model, "qwen-max", {}, id="model"),
    pytest.param("GATEWAY_API_KEY", '[provider]\napi_key = "from-file"', " from-env \n",
                 lambda c: c.provider.api_key, "from-env", {}, id="api_key"),
    pytest.param("GATEWAY_ALLOWED_ORIGINS", '[server]\nallowed_origins = ["https://file.example"]',
                 " https://a.example/ ,https://b.example:8443,, ", lambda c: c.server.allowed_origins,
                 ("https://a.example", "https://b.example:8443"), {}, id="allowed_origins"),
    pytest.param("GATEWAY_STATE_DIR", '[server]\nstate_dir = "/from/file"', "/from/env",
                 lambda c: c.server.state_dir, Path("/from/env"), {"STATE_DIRECTORY": "/systemd"}, id="state_dir"),
    pytest.param("GATEWAY_MAX_MESSAGE_BYTES", "[limits]\nmax_message_bytes = 4096", " 1024 ",
                 lambda c: c.limits.max_message_bytes, 1024, {}, id="max_message_bytes"),
    pytest.param("GATEWAY_UPSTREAM_TIMEOUT", "[provider]\nupstream_timeout = 30", "2.5",
                 lambda c: c.provider.upstream_timeout, 2.5, {}, id="upstream_timeout"),
    pytest.param("GATEWAY_DRAIN_TIMEOUT", "[server]\ndrain_timeout = 30", "0",
                 lambda c: c.server.drain_timeout, 0.0, {}, id="drain_timeout"),
    pytest.param("GATEWAY_LOG_LEVEL", '[log]\nlevel = "error"', "DEBUG",
                 lambda c: c.log.level, "debug", {}, id="log_level"),
    pytest.param("GATEWAY_LOG_FORMAT", '[log]\nformat = "json"', "console",
                 lambda c: c.log.format, "console", {}, id="log_format"),
    pytest.param("GATEWAY_PUBLIC_WS_URL", '[server]\npublic_ws_url = "wss://a.example/chat"',
                 "wss://b.example/chat", lambda c: c.server.public_ws_url, "wss://b.example/chat", {},
                 id="public_ws_url"),
]


@pytest.mark.parametrize(("var", "toml", "value", "get", "expected", "extra"), ENV_OVERRIDES)
def test_env_overrides_file(
    tmp_path: Path,
    var: str,
    toml: str,
    value: str,
    get: Callable[[Config], Any],
    expected: Any,
    extra: dict[str, str],
) -> None:
    from_file = load_toml(tmp_path, toml, extra)
    assert get(from_file) != expected  # the file alone says something else
    assert get(load_toml(tmp_path, toml, {**extra, var: value})) == expected


def test_api_key_file_env_overrides_file_setting(tmp_path: Path) -> None:
    (tmp_path / "a.key").write_text("key-a\n")
    (tmp_path / "b.key").write_text("  key-b  \n")
    toml = f'[provider]\napi_key_file = "{tmp_path / "a.key"}"\n'
    assert load_toml(tmp_path, toml).provider.api_key == "key-a"
    env = {"GATEWAY_API_KEY_FILE": str(tmp_path / "b.key")}
    assert load_toml(tmp_path, toml, env).provider.api_key == "key-b"


def test_static_dir_env_needs_index_html(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    exc = config_error(lambda: load(None, {"GATEWAY_STATIC_DIR": str(site)}))
    assert exc.key == "server.static_dir"
    (site / "index.html").write_text("<!doctype html>")
    assert load(None, {"GATEWAY_STATIC_DIR": str(site)}).server.static_dir == site


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Path("state")),
        ({"STATE_DIRECTORY": "/var/lib/gateway"}, Path("/var/lib/gateway")),
        ({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, Path("/var/lib/a")),
        ({"STATE_DIRECTORY": "/var/lib/a", "GATEWAY_STATE_DIR": "/srv/x"}, Path("/srv/x")),
    ],
)
def test_state_dir_sources(env: dict[str, str], expected: Path) -> None:
    assert load(None, env).server.state_dir == expected


# --------------------------------------------------------------------------- the API key's sources

KEY_SOURCES = ["GATEWAY_API_KEY", "GATEWAY_API_KEY_FILE", "CREDENTIALS_DIRECTORY", "toml", "API_KEY"]


@pytest.mark.parametrize("first", range(len(KEY_SOURCES)), ids=KEY_SOURCES)
def test_api_key_precedence(tmp_path: Path, first: int) -> None:
    """GATEWAY_API_KEY > key file > $CREDENTIALS_DIRECTORY/api_key > TOML api_key > the seed's API_KEY."""
    (tmp_path / "file.key").write_text("from-key-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_key").write_text("from-credentials\n")
    available = {
        "GATEWAY_API_KEY": ({"GATEWAY_API_KEY": "from-gateway-env"}, ""),
        "API_KEY": ({"API_KEY": "from-api-key-env"}, ""),
        "GATEWAY_API_KEY_FILE": ({"GATEWAY_API_KEY_FILE": str(tmp_path / "file.key")}, ""),
        "CREDENTIALS_DIRECTORY": ({"CREDENTIALS_DIRECTORY": str(creds)}, ""),
        "toml": ({}, '[provider]\napi_key = "from-toml"\n'),
    }
    expected = ["from-gateway-env", "from-key-file", "from-credentials", "from-toml", "from-api-key-env"]
    env: dict[str, str] = {}
    toml = ""
    for name in KEY_SOURCES[first:]:
        more_env, more_toml = available[name]
        env |= more_env
        toml += more_toml
    assert load_toml(tmp_path, toml, env).provider.api_key == expected[first]


def test_credentials_directory_without_api_key_falls_through(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    cfg = load_toml(tmp_path, '[provider]\napi_key = "from-toml"\n', {"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.provider.api_key == "from-toml"


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", None], ids=["not_utf8", "missing"])
def test_unreadable_key_file_is_refused(tmp_path: Path, content: bytes | None) -> None:
    key_file = tmp_path / "api.key"
    if content is not None:
        key_file.write_bytes(content)
    exc = config_error(lambda: load(None, {"GATEWAY_API_KEY_FILE": str(key_file)}))
    assert exc.key == "provider.api_key_file"
    assert str(key_file) in exc.message


# --------------------------------------------------------------------------- providers


@pytest.mark.parametrize(
    ("provider", "url", "model"),
    [
        ("demo", "", "demo"),
        ("openai", "https://api.openai.com/v1", "gpt-4o-mini"),
        ("dashscope", "https://dashscope.aliyuncs.com/api/v1/services/aigc/text-generation/generation", "qwen-plus"),
    ],
)
def test_provider_defaults(provider: str, url: str, model: str) -> None:
    cfg = load(None, {"GATEWAY_PROVIDER": provider, "GATEWAY_API_KEY": "k"})
    assert (cfg.provider.name, cfg.provider.upstream_url, cfg.provider.model) == (provider, url, model)


def test_dashscope_without_key_is_refused() -> None:
    exc = config_error(lambda: load(None, {"GATEWAY_PROVIDER": "dashscope"}))
    assert exc.key == "provider.api_key"
    assert exc.exit_code == 2 and exc.retry is False


def test_dashscope_with_blank_key_is_refused() -> None:
    exc = config_error(lambda: load(None, {"GATEWAY_PROVIDER": "dashscope", "GATEWAY_API_KEY": "   "}))
    assert exc.key == "provider.api_key"


def test_openai_without_key_is_allowed() -> None:
    """Local OpenAI-compatible servers (Ollama, vLLM) need no key."""
    cfg = load(None, {"GATEWAY_PROVIDER": "openai", "GATEWAY_UPSTREAM_URL": "http://127.0.0.1:11434/v1"})
    assert cfg.provider.api_key == ""
    assert cfg.provider.upstream_url == "http://127.0.0.1:11434/v1"


@pytest.mark.parametrize("url", ["ftp://example.com/v1", "api.openai.com/v1", "  "])
def test_non_http_upstream_url_is_refused(url: str) -> None:
    exc = config_error(lambda: load(None, {"GATEWAY_PROVIDER": "openai", "GATEWAY_UPSTREAM_URL": url}))
    assert exc.key == "provider.upstream_url"


# --------------------------------------------------------------------------- allowed origins


@pytest.mark.parametrize(
    ("http_addr", "origins"),
    [
        ("127.0.0.1:9000", ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000")),
        ("0.0.0.0:9000", ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000")),
        ("[::]:9000", ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000")),
        ("localhost:80", ("http://127.0.0.1:80", "http://localhost:80", "http://[::1]:80")),
        ("10.0.0.5:8080", ("http://10.0.0.5:8080",)),
        ("[fd00::5]:8080", ("http://[fd00::5]:8080",)),
        ("chat.example.com:8080", ("http://chat.example.com:8080",)),
    ],
)
def test_default_origins_follow_http_addr(http_addr: str, origins: tuple[str, ...]) -> None:
    addr = load(None, {"GATEWAY_HTTP_ADDR": http_addr}).server.http_addr
    assert config.own_origins(addr.host, addr.port) == origins


def test_explicit_origins_replace_the_default() -> None:
    cfg = load(None, {"GATEWAY_ALLOWED_ORIGINS": "https://chat.example.com,*"})
    assert cfg.server.allowed_origins == ("https://chat.example.com", "*")


def test_origin_scheme_and_host_are_lowercased() -> None:
    cfg = load(None, {"GATEWAY_ALLOWED_ORIGINS": "HTTPS://Chat.Example.com"})
    assert cfg.server.allowed_origins == ("https://chat.example.com",)


def test_origin_with_a_path_is_refused() -> None:
    exc = config_error(lambda: load(None, {"GATEWAY_ALLOWED_ORIGINS": "https://chat.example.com/app"}))
    assert exc.key == "GATEWAY_ALLOWED_ORIGINS"


# --------------------------------------------------------------------------- refusals

BAD_ENV: list[Any] = [
    ("GATEWAY_WS_ADDR", "8765"),
    ("GATEWAY_WS_ADDR", ":8765"),
    ("GATEWAY_WS_ADDR", "localhost:"),
    ("GATEWAY_WS_ADDR", "localhost:http"),
    ("GATEWAY_WS_ADDR", "localhost:65536"),
    ("GATEWAY_WS_ADDR", "localhost:-1"),
    ("GATEWAY_WS_ADDR", "::1:8765"),
    ("GATEWAY_HTTP_ADDR", "fe80::1:8080"),
    ("GATEWAY_HTTP_ADDR", "[not-an-ip]:8080"),
    ("GATEWAY_HTTP_ADDR", "[::1:8080"),
    ("GATEWAY_MAX_MESSAGE_BYTES", "abc"),
    ("GATEWAY_MAX_MESSAGE_BYTES", ""),
    ("GATEWAY_MAX_MESSAGE_BYTES", "1.5"),
    ("GATEWAY_MAX_MESSAGE_BYTES", "-5"),
    ("GATEWAY_MAX_MESSAGE_BYTES", "100"),
    ("GATEWAY_MAX_MESSAGE_BYTES", str((16 << 20) + 1)),
    ("GATEWAY_UPSTREAM_TIMEOUT", "soon"),
    ("GATEWAY_UPSTREAM_TIMEOUT", "-1"),
    ("GATEWAY_UPSTREAM_TIMEOUT", "0"),
    ("GATEWAY_UPSTREAM_TIMEOUT", "nan"),
    ("GATEWAY_UPSTREAM_TIMEOUT", "inf"),
    ("GATEWAY_DRAIN_TIMEOUT", "-0.5"),
    ("GATEWAY_DRAIN_TIMEOUT", "3601"),
    ("GATEWAY_PROVIDER", "anthropic"),
    ("GATEWAY_PROVIDER", ""),
    ("GATEWAY_LOG_LEVEL", "verbose"),
    ("GATEWAY_LOG_FORMAT", "xml"),
    ("GATEWAY_ALLOWED_ORIGINS", "chat.example.com"),
    ("GATEWAY_ALLOWED_ORIGINS", "https://ok.example,localhost:8080"),
]


@pytest.mark.parametrize(("var", "value"), BAD_ENV)
def test_bad_env_value_is_refused_naming_the_variable(var: str, value: str) -> None:
    exc = config_error(lambda: load(None, {var: value}))
    assert exc.key == var
    assert var in str(exc)


BAD_TOML: list[Any] = [
    ("[server]\nws_addr = 8765", "server.ws_addr"),
    ('[server]\nws_addr = "::1:8765"', "server.ws_addr"),
    ('[server]\nhttp_addr = "127.0.0.1:70000"', "server.http_addr"),
    ('[server]\ncompression = "maybe"', "server.compression"),
    ("[server]\ncompression = 1", "server.compression"),
    ("[server]\ndrain_timeout = -1", "server.drain_timeout"),
    ('[server]\ndrain_timeout = "soon"', "server.drain_timeout"),
    ("[server]\ndrain_timeout = true", "server.drain_timeout"),
    ("[server]\nping_interval = -0.1", "server.ping_interval"),
    ("[server]\nallowed_origins = 5", "server.allowed_origins"),
    ("[server]\nallowed_origins = [1]", "server.allowed_origins"),
    ('[server]\nallowed_origins = ["chat.example.com"]', "server.allowed_origins"),
    ("[server]\nstate_dir = 3", "server.state_dir"),
    ("[limits]\nmax_connections = true", "limits.max_connections"),
    ("[limits]\nmax_connections = 0", "limits.max_connections"),
    ("[limits]\nmax_connections = -3", "limits.max_connections"),
    ("[limits]\nmax_connections = 1.5", "limits.max_connections"),
    ('[limits]\nmax_connections = "many"', "limits.max_connections"),
    ("[limits]\nmax_conversation_messages = 1", "limits.max_conversation_messages"),
    ('[provider]\nname = "claude"', "provider.name"),
    ("[provider]\nsystem_prompt = 5", "provider.system_prompt"),
    ('[provider]\nparams = { model = "gpt-4o" }', "provider.params"),
    ("[provider]\nparams = { messages = [] }", "provider.params"),
    ("[provider]\nparams = { stream = false }", "provider.params"),
    ('[provider]\nparams = { input = "x" }', "provider.params"),
    ('[provider]\nparams = "temperature=1"', "provider.params"),
    ("[provider]\nconnect_timeout = 0", "provider.connect_timeout"),
    ('[provider]\ninclude_usage = "sometimes"', "provider.include_usage"),
    ("[log]\nlevel = 3", "log.level"),
    ('[log]\nformat = "yaml"', "log.format"),
]


@pytest.mark.parametrize(("toml", "key"), BAD_TOML)
def test_bad_toml_value_is_refused_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    exc = config_error(lambda: load_toml(tmp_path, toml))
    assert exc.key == key
    assert str(exc).startswith(f"{key}: ")


def test_reserved_param_is_named_in_the_message(tmp_path: Path) -> None:
    exc = config_error(lambda: load_toml(tmp_path, '[provider]\nparams = { model = "x", temperature = 1 }'))
    assert "model" in exc.message and "temperature" not in exc.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ('"1"', True), ('"yes"', True), ('" ON "', True),
     ('"0"', False), ('"False"', False), ('"no"', False), ('"off"', False)],
)
def test_bool_spellings(tmp_path: Path, value: str, expected: bool) -> None:
    assert load_toml(tmp_path, f"[server]\ncompression = {value}").server.compression is expected


@pytest.mark.parametrize("value", ['""', '"2"', '"y"', '"enabled"', "1", "0", "[]"])
def test_bad_bool_spellings(tmp_path: Path, value: str) -> None:
    exc = config_error(lambda: load_toml(tmp_path, f"[server]\ncompression = {value}"))
    assert exc.key == "server.compression"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[bogus]\nx = 1", "bogus"),
        ("[server]\nbogus = 1", "server.bogus"),
        ("[server]\nws_address = \"127.0.0.1:1\"", "server.ws_address"),
        ("[provider.params]\ntemperature = 1\n[provider.bogus]\nx = 1", "provider.bogus"),
        ("server = 1", "server"),
        ('top_level_key = "x"', "top_level_key"),
    ],
)
def test_unknown_section_or_key_is_refused(tmp_path: Path, toml: str, key: str) -> None:
    exc = config_error(lambda: load_toml(tmp_path, toml))
    assert exc.key == key


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nws_addr = ")
    exc = config_error(lambda: load(path, {}))
    assert exc.key == "config"
    assert str(path) in exc.message and "TOML" in exc.message


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.toml"
    if kind == "directory":
        path.mkdir()
    exc = config_error(lambda: load(path, {}))
    assert exc.key == "config"
    assert str(path) in exc.message


# --------------------------------------------------------------------------- environment bookkeeping


def test_unknown_gateway_env_is_collected() -> None:
    env = {
        "GATEWAY_SITE": "prod",
        "GATEWAY_PORT": "8765",
        "GATEWAY_APIKEY": "x",
        "API_KEY_FILE": "unrelated",
        "HOME": "/root",
        "GATEWAY_LOG_LEVEL": "info",
    }
    assert load(None, env).unknown_env == ("GATEWAY_APIKEY", "GATEWAY_PORT")


@pytest.mark.parametrize(
    ("fmt", "isatty", "expected"),
    [
        ("auto", True, "console"),
        ("auto", False, "json"),
        ("json", True, "json"),
        ("console", False, "console"),
    ],
)
def test_log_format_auto_follows_isatty(fmt: str, isatty: bool, expected: str) -> None:
    assert load(None, {"GATEWAY_LOG_FORMAT": fmt}, isatty=isatty).log.format == expected


# --------------------------------------------------------------------------- render()


def test_repr_hides_the_key() -> None:
    cfg = load(None, {"GATEWAY_PROVIDER": "openai", "GATEWAY_API_KEY": SECRET})
    assert SECRET not in repr(cfg)


@pytest.mark.parametrize("where", ["env", "toml", "key_file"])
def test_render_masks_the_key(tmp_path: Path, where: str) -> None:
    (tmp_path / "k").write_text(SECRET)
    toml, env = "[provider]\nname = \"dashscope\"\n", {}
    if where == "env":
        env = {"GATEWAY_API_KEY": SECRET}
    elif where == "toml":
        toml += f'api_key = "{SECRET}"\n'
    else:
        toml += f'api_key_file = "{tmp_path / "k"}"\n'
    cfg = load_toml(tmp_path, toml, env)
    assert cfg.provider.api_key == SECRET
    text = render(cfg)
    for fragment in (SECRET, SECRET[:12], SECRET[-12:]):
        assert fragment not in text
    assert "# api_key = (set, masked)" in text
    assert "api_key" not in tomllib.loads(text)["provider"], "a masked key never loads back as a value"


def test_render_without_key_says_not_set() -> None:
    text = render(load(None, {}))
    assert "# api_key = (not set)" in text


def test_render_lists_every_setting() -> None:
    doc = tomllib.loads(render(load(None, {})))
    # Without [[models]], the one model [provider] describes is shown as comments.
    hidden = {"provider.api_key", "provider.api_key_file", "stt.api_key"} | {  # secrets: comments
        s.name for s in config.SETTINGS if s.section in ("models", "deployments")
    }
    assert {f"{section}.{key}" for section, table in doc.items() for key in table} == {
        s.name for s in config.SETTINGS
    } - hidden


ROUND_TRIP_TOML = """
[server]
ws_addr = "[::1]:9001"
http_addr = "0.0.0.0:9002"
allowed_origins = ["https://chat.example.com"]
public_ws_url = "wss://chat.example.com/chat"
state_dir = "/var/lib/gateway"
compression = true
drain_timeout = 7.5
[limits]
max_connections = 12
context_max_chars = 1000
[provider]
name = "openai"
upstream_url = "https://openrouter.ai/api/v1"
model = "qwen/qwen3-235b"
system_prompt = 'Quote " and backslash \\ and 中文 🙂'
params = { temperature = 0.7, max_tokens = 1024, stop = ["END"], top_p = 1 }
include_usage = false
[log]
level = "debug"
format = "console"
"""


def test_render_round_trips(tmp_path: Path) -> None:
    env = {"GATEWAY_API_KEY": SECRET, "GATEWAY_SITE": "x"}
    cfg = load_toml(tmp_path, ROUND_TRIP_TOML, env)
    assert cfg.provider.system_prompt == 'Quote " and backslash \\ and 中文 🙂'
    rendered = write(tmp_path, render(cfg), "rendered.toml")
    again = load(rendered, env)
    assert dataclasses.replace(again, source=cfg.source) == cfg


def test_render_round_trip_of_defaults_with_derived_values(tmp_path: Path) -> None:
    """Derived values (origins, URL, model, log format) are rendered resolved and load back equal."""
    cfg = load(None, {"GATEWAY_PROVIDER": "dashscope", "GATEWAY_API_KEY": SECRET}, isatty=True)
    again = load(write(tmp_path, render(cfg)), {"GATEWAY_API_KEY": SECRET})
    assert dataclasses.replace(again, source="defaults") == cfg


def test_masked_key_is_not_the_key_when_loaded_back(tmp_path: Path) -> None:
    """Loading the rendered text without a key source never resurrects the real key."""
    cfg = load(None, {"GATEWAY_PROVIDER": "openai", "GATEWAY_API_KEY": SECRET})
    again = load(write(tmp_path, render(cfg)), {})
    assert again.provider.api_key != SECRET
    assert dataclasses.replace(again, source=cfg.source, provider=cfg.provider, deployments=cfg.deployments) == cfg
    assert again.deployments[0].api_key != SECRET


@pytest.mark.parametrize(
    "toml",
    [
        '[provider]\nsystem_prompt = "line one\\nline two"',
        '[provider]\nsystem_prompt = "tab\\tbell\\u0007del\\u007f"',
        '[provider]\nparams = { stop = ["\\n\\n"] }',
    ],
    ids=["newline", "controls", "param_newline"],
)
def test_render_escapes_control_characters(tmp_path: Path, toml: str) -> None:
    cfg = load_toml(tmp_path, toml)
    again = load(write(tmp_path, render(cfg), "rendered.toml"), {})
    assert dataclasses.replace(again, source=cfg.source) == cfg


def test_render_quotes_param_keys(tmp_path: Path) -> None:
    cfg = load_toml(tmp_path, '[provider]\nparams = { "reasoning.effort" = "low", "x y" = 1 }')
    again = load(write(tmp_path, render(cfg), "rendered.toml"), {})
    assert again.provider.params == {"reasoning.effort": "low", "x y": 1}


def test_render_params_with_host_and_port_keys(tmp_path: Path) -> None:
    cfg = load_toml(tmp_path, '[provider]\nparams = { host = "h", port = 1 }')
    again = load(write(tmp_path, render(cfg), "rendered.toml"), {})
    assert again.provider.params == {"host": "h", "port": 1}


# --------------------------------------------------------------------------- the example file


@pytest.mark.skipif(not EXAMPLE.exists(), reason="gateway.example.toml is not written yet")
def test_example_config_loads() -> None:
    cfg = load(EXAMPLE, {"GATEWAY_API_KEY": "sk-example-test-key"})
    assert cfg.source == str(EXAMPLE)
    assert tomllib.loads(render(cfg))



# --------------------------------------------------------------------------- postgres


def test_postgres_needs_a_url() -> None:
    exc = config_error(lambda: load(None, {"GATEWAY_STORE": "postgres"}))
    assert exc.key == "store.url" and "GATEWAY_DATABASE_URL" in exc.message


@pytest.mark.parametrize("url", ["mysql://x@h/db", "gateway@127.0.0.1/db", "host=127.0.0.1 dbname=x"])
def test_a_database_url_must_be_a_postgresql_url(url: str) -> None:
    exc = config_error(lambda: load(None, {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url}))
    assert exc.key == "GATEWAY_DATABASE_URL" and "postgresql://" in exc.message


def test_the_database_password_comes_from_a_file_or_a_credential(tmp_path: Path) -> None:
    url = "postgresql://gateway@127.0.0.1:5432/gateway"
    (tmp_path / "pw").write_text("file-password\n")
    cfg = load(None, {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url,
                      "GATEWAY_DATABASE_PASSWORD_FILE": str(tmp_path / "pw")})
    assert cfg.store.password == "file-password" and "file-password" not in repr(cfg)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "database_password").write_text("credential-password")
    cfg = load(None, {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url, "CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.store.password == "credential-password"
    assert load(None, {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url}).store.password == ""
    exc = config_error(lambda: load(None, {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url,
                                           "GATEWAY_DATABASE_PASSWORD_FILE": str(tmp_path / "missing")}))
    assert exc.key == "store.password_file"


def test_check_config_masks_a_password_in_the_database_url(tmp_path: Path) -> None:
    url = "postgresql://gateway:url-secret@db.internal:5432/gateway?sslmode=require&password=query-secret"
    cfg = load_toml(tmp_path, f'[store]\nbackend = "postgres"\nurl = "{url}"\npool_max_size = 20\n')
    text = render(cfg)
    assert "url-secret" not in text and "query-secret" not in text
    assert 'url = "postgresql://gateway:***@db.internal:5432/gateway?sslmode=require&password=***"' in text
    assert "pool_max_size = 20" in text


def test_the_pool_may_not_be_smaller_than_its_minimum(tmp_path: Path) -> None:
    exc = config_error(lambda: load_toml(
        tmp_path, '[store]\nbackend = "postgres"\nurl = "postgresql://g@h/db"\npool_min_size = 5\npool_max_size = 2\n'
    ))
    assert exc.key == "store.pool_min_size"


def test_a_database_url_libpq_would_quote_is_refused_without_quoting_it() -> None:
    url = "postgresql://gateway:s3cr%zzet@127.0.0.1/gateway"
    exc = config_error(lambda: load(None, {"GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": url}))
    assert exc.key == "GATEWAY_DATABASE_URL" and "%25" in exc.message and "s3cr" not in exc.message


# [auth]

JWT_SECRET = "j" * 40


def test_auth_is_none_by_default_and_tokens_when_a_token_file_is_found(tmp_path: Path) -> None:
    assert load(None, {}).auth.mode == "none"
    tokens = tmp_path / "tokens"
    tokens.write_text("alice tok-0123456789abcdef\n")
    assert load(None, {"GATEWAY_AUTH_TOKENS_FILE": str(tokens)}).auth.mode == "tokens"
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "auth_tokens").write_text("tok-0123456789abcdef\n")
    found = load(None, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}).auth
    assert found.mode == "tokens" and len(found.tokens) == 1
    rendered = render(load(None, {"GATEWAY_AUTH_TOKENS_FILE": str(tokens)}))
    assert "1 token(s)" in rendered and "tok-0123456789abcdef" not in rendered


def test_jwt_mode_reads_its_secret_and_never_shows_it(tmp_path: Path) -> None:
    secret = tmp_path / "jwt"
    secret.write_text(JWT_SECRET + "\n")
    cfg = load(None, {"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_SECRET_FILE": str(secret), "GATEWAY_JWT_AUDIENCE": "chat"})
    assert cfg.auth.jwt_secret == JWT_SECRET and cfg.auth.jwt_audience == "chat"
    assert JWT_SECRET not in render(cfg) + repr(cfg)
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "jwt_secret").write_text(JWT_SECRET)
    assert load(None, {"GATEWAY_AUTH_MODE": "jwt", "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}).auth.jwt_secret
    jwks = load(None, {"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_JWKS_URL": "https://idp.example/jwks"}).auth
    assert jwks.jwks_url and not jwks.jwt_secret


@pytest.mark.parametrize(
    ("env", "key", "message"),
    [
        ({"GATEWAY_AUTH_MODE": "tokens"}, "auth.tokens_file", "needs a token file"),
        ({"GATEWAY_AUTH_MODE": "none", "GATEWAY_AUTH_TOKENS_FILE": "{tokens}"}, "auth.tokens_file", "auth.mode is none"),
        ({"GATEWAY_AUTH_MODE": "jwt"}, "auth.jwt_secret_file", "exactly one"),
        ({"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_SECRET_FILE": "{short}"}, "auth.jwt_secret_file", "at least 32 bytes"),
        ({"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_SECRET_FILE": "{secret}", "GATEWAY_JWT_JWKS_URL": "https://x/jwks"},
         "auth.jwt_secret_file", "exactly one"),
        ({"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_JWKS_URL": "file:///etc/jwks"}, "auth.jwks_url", "https://"),
        ({"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_JWKS_URL": "http://idp.example/jwks"}, "auth.jwks_url", "https://"),
        ({"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_SECRET_FILE": "{missing}"}, "auth.jwt_secret_file", "cannot read"),
        ({"GATEWAY_JWT_JWKS_URL": "https://x/jwks"}, "auth.jwks_url", "auth.mode is none"),
        ({"GATEWAY_AUTH_MODE": "proxy", "GATEWAY_TRUSTED_PROXIES": ""}, "server.trusted_proxies", "set them"),
        ({"GATEWAY_AUTH_MODE": "proxy", "GATEWAY_AUTH_USER_HEADER": "Remote User"}, "GATEWAY_AUTH_USER_HEADER", "header name"),
        ({"GATEWAY_AUTH_MODE": "ldap"}, "GATEWAY_AUTH_MODE", "must be one of"),
    ],
)
def test_auth_settings_that_cannot_work_are_refused(
    tmp_path: Path, env: dict[str, str], key: str, message: str
) -> None:
    files = {"tokens": "tok-0123456789abcdef", "short": "x" * 31, "secret": JWT_SECRET}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    paths = {name: str(tmp_path / name) for name in (*files, "missing")}
    with pytest.raises(ConfigError) as info:
        load(None, {k: v.format(**paths) for k, v in env.items()})
    assert info.value.key == key and message in str(info.value)


# --------------------------------------------------------------------------- [stt]


def test_voice_is_off_by_default_and_the_old_vosk_variables_still_work(tmp_path: Path) -> None:
    assert load(None, {}).stt.provider == "none" and not load(None, {}).stt.enabled
    old = load(None, {"USE_REAL_VOSK": "1", "VOSK_MODEL_PATH": "/srv/vosk", "VOSK_SAMPLE_RATE": "8000"}).stt
    assert (old.provider, old.model_path, old.sample_rate) == ("vosk", "/srv/vosk", 8000)
    # The gateway's own names, and the file, win over the old variables.
    new = load_toml(tmp_path, '[stt]\nprovider = "none"\nsample_rate = 22050\n',
                    {"USE_REAL_VOSK": "1", "VOSK_SAMPLE_RATE": "8000", "GATEWAY_STT_MODEL_PATH": "/a",
                     "VOSK_MODEL_PATH": "/b"}).stt
    assert (new.provider, new.sample_rate, new.model_path) == ("none", 22050, "/a")
    assert config_error(lambda: load(None, {"VOSK_SAMPLE_RATE": "fast"})).key == "VOSK_SAMPLE_RATE"


def test_vosk_needs_a_model_and_openai_a_url(tmp_path: Path) -> None:
    assert config_error(lambda: load(None, {"GATEWAY_STT_PROVIDER": "vosk"})).key == "stt.model_path"
    assert config_error(lambda: load(None, {"GATEWAY_STT_PROVIDER": "openai"})).key == "stt.url"
    bad = config_error(lambda: load(None, {"GATEWAY_STT_PROVIDER": "openai", "GATEWAY_STT_URL": "ftp://x"}))
    assert bad.key == "stt.url"


def test_the_transcription_key_comes_from_its_file_and_is_never_shown(tmp_path: Path) -> None:
    key_file = write(tmp_path, f"{SECRET}\n", "stt_key")
    cfg = load(None, {"GATEWAY_STT_PROVIDER": "openai", "GATEWAY_STT_URL": "https://api.groq.com/openai/v1/",
                      "GATEWAY_STT_API_KEY_FILE": str(key_file)})
    assert (cfg.stt.api_key, cfg.stt.url) == (SECRET, "https://api.groq.com/openai/v1")
    assert SECRET not in render(cfg) and SECRET not in repr(cfg)
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds, "from-systemd", "stt_api_key")
    cfg = load(None, {"GATEWAY_STT_PROVIDER": "openai", "GATEWAY_STT_URL": "http://127.0.0.1:9000/v1",
                      "CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.stt.api_key == "from-systemd"
    missing = config_error(lambda: load(None, {"GATEWAY_STT_PROVIDER": "openai", "GATEWAY_STT_URL": "http://x",
                                               "GATEWAY_STT_API_KEY_FILE": str(tmp_path / "nope")}))
    assert missing.key == "stt.api_key_file"


def test_an_empty_gateway_variable_does_not_hide_the_old_vosk_ones() -> None:
    stt = load(None, {"GATEWAY_STT_MODEL_PATH": "", "GATEWAY_STT_PROVIDER": "none", "USE_REAL_VOSK": "1",
                      "VOSK_MODEL_PATH": "/srv/vosk"}).stt
    assert (stt.provider, stt.model_path) == ("none", "/srv/vosk")
    stt = load(None, {"GATEWAY_STT_MODEL_PATH": " ", "USE_REAL_VOSK": "yes", "VOSK_MODEL_PATH": "/srv/vosk"}).stt
    assert (stt.provider, stt.model_path) == ("vosk", "/srv/vosk")
