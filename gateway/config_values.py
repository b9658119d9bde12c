"""Parsers of configuration values, and TOML rendering of them (pure).

Each parser takes a value as found in TOML or in an environment variable (always a
string there) and returns it checked and converted, or raises ``ValueError`` with a
message that says what was expected; :mod:`gateway.settings` adds the key's name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .clientip import Networks, parse_networks

__all__ = [
    "HostPort",
    "addr",
    "header_name",
    "boolean",
    "choice",
    "database_url",
    "duration",
    "integer",
    "masked_url",
    "networks",
    "number",
    "origins",
    "params",
    "parse_duration",
    "path",
    "redis_url",
    "string",
    "toml_value",
]


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, scheme: str, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port if port is None else port}"


def integer(lo: int, hi: int) -> Callable[[Any], int]:
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


def number(lo: float, hi: float) -> Callable[[Any], float]:
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


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


_TCHAR = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


def header_name(value: Any) -> str:
    """An HTTP header name (RFC 9110 token)."""
    name = string(value).strip()
    if not _TCHAR.fullmatch(name):
        raise ValueError(f"not an HTTP header name: {name!r}")
    return name


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        value = string(value).strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return parse


def addr(value: Any) -> HostPort:
    text = string(value).strip()
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


def origins(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of origins, got {value!r}")
    found = []
    for item in items:
        origin = string(item).strip().rstrip("/")
        if origin:
            found.append(origin if origin == "*" else _origin(origin))
    return tuple(found)


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
    amount, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(amount)
    except ValueError:
        raise ValueError(f"expected a duration like 30d, 12h or 90m, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return value * _UNITS[unit]


def duration(value: Any) -> float | None:
    text = string(value).strip()
    return parse_duration(text) if text else None


def networks(value: Any) -> Networks:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of addresses or networks, got {value!r}")
    return parse_networks([string(i) for i in items if string(i).strip()])


def params(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected a table of request parameters")
    reserved = {"model", "messages", "stream", "input"} & value.keys()
    if reserved:
        raise ValueError(f"{', '.join(sorted(reserved))} is set by the gateway")
    return dict(value)


def path(value: Any) -> str:
    return string(value).strip()


def database_url(value: Any) -> str:
    """A libpq URL (``postgresql://user@host:port/db?...``), or "" for none."""
    text = string(value).strip()
    if text and not text.startswith(("postgresql://", "postgres://")):
        raise ValueError("expected a URL like postgresql://gateway@127.0.0.1:5432/gateway")
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):  # libpq refuses it, quoting the URL: never shown
        raise ValueError("the URL has a '%' not followed by two hex digits (percent-encode '%' as %25)")
    return text


def redis_url(value: Any) -> str:
    """A Redis URL (``redis://host:port/db``, ``rediss://`` for TLS, ``unix://path``), or ""."""
    text = string(value).strip()
    if text and not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a URL like redis://127.0.0.1:6379/0")
    return text


def masked_url(url: str) -> str:
    """``url`` with its password, if any (``user:password@`` or ``?password=``), replaced
    by ``***``: fit to print or log."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    route, question, query = tail.partition("?")
    if question:
        query = "&".join(
            f"{name}=***" if name.lower() == "password" else f"{name}{eq}{value}"
            for name, eq, value in (item.partition("=") for item in query.split("&"))
        )
    return f"{scheme}://{netloc}{slash}{route}{question}{query}"


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(text: str) -> str:
    out = (
        _TOML_ESCAPES.get(ch) or (f"\\u{ord(ch):04X}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch)
        for ch in text
    )
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_str(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return _toml_str(str(value))
