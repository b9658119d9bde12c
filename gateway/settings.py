"""How configuration keys are declared, read and shown (pure).

A section is a frozen dataclass whose fields are declared with :func:`key`: the
parser, the default as written in TOML, the environment variable and the help
text, once. A root dataclass (:class:`gateway.config.Config`) lists its sections
with :func:`section` (a TOML table, ``[server]``) or :func:`tables` (an array of
tables, ``[[models]]``). :func:`read` turns a TOML document and the environment
into the parsed values of every section, refusing unknown sections and keys and
naming the key (or variable) of any bad value; :func:`settings` lists every key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "REQUIRED",
    "Setting",
    "Values",
    "declared",
    "key",
    "read",
    "section",
    "sections",
    "settings",
    "tables",
]

_KEY = "gateway.key"
_SECTION = "gateway.section"
REQUIRED: Any = object()  # the default of a key that must be given (in an array of tables)

Values = dict[str, Any]  # one section's parsed values, by key


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
    show: Callable[[Any], Any] | None = None  # the value as `check-config` prints it

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def key(
    parse: Callable[[Any], Any],
    default: Any,
    env: str | None = None,
    doc: str = "",
    *,
    secret: bool = False,
    show: Callable[[Any], Any] | None = None,
) -> Any:
    """Declare a section field as a configuration key (its name is the field's)."""
    spec = Setting("", "", parse, default, env, doc, secret, show)
    return dataclasses.field(metadata={_KEY: spec}, repr=not secret)


def section(cls: type[Any]) -> Any:
    """Declare a root field as a TOML table of ``cls`` keys."""
    return dataclasses.field(metadata={_SECTION: (cls, False)})


def tables(cls: type[Any]) -> Any:
    """Declare a root field as an array of TOML tables of ``cls`` keys (a tuple)."""
    return dataclasses.field(default=(), metadata={_SECTION: (cls, True)})


def sections(root: type[Any]) -> dict[str, tuple[type[Any], bool]]:
    """The sections of ``root``: name → (section class, whether it is an array of tables)."""
    return {f.name: f.metadata[_SECTION] for f in dataclasses.fields(root) if _SECTION in f.metadata}


def declared(cls: type[Any], name: str = "") -> Iterator[Setting]:
    """The keys of section class ``cls`` (named as in section ``name``), in order."""
    for f in dataclasses.fields(cls):
        if _KEY in f.metadata:
            yield dataclasses.replace(f.metadata[_KEY], section=name, key=f.name)


def settings(root: type[Any]) -> tuple[Setting, ...]:
    """Every key of ``root``, section by section."""
    return tuple(s for name, (cls, _) in sections(root).items() for s in declared(cls, name))


def read(root: type[Any], raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The parsed values of every section of ``root``: a table's are :data:`Values`, an
    array of tables' a tuple of them. Environment variables apply to tables only."""
    known = sections(root)
    for name in raw:
        if name not in known:
            raise ConfigError(name, "unknown section")
    parsed: dict[str, Any] = {}
    for name, (cls, array) in known.items():
        if not array:
            parsed[name] = _read_table(cls, name, _table(name, raw.get(name, {})), env)
            continue
        items = raw.get(name, [])
        if not isinstance(items, list):
            raise ConfigError(name, f"expected an array of tables like [[{name}]]")
        parsed[name] = tuple(
            _read_table(cls, f"{name}[{i}]", _table(name, item, array=True), {}) for i, item in enumerate(items)
        )
    return parsed


def _table(name: str, value: Any, *, array: bool = False) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(name, f"expected a table like {'[[' + name + ']]' if array else '[' + name + ']'}")
    return value


def _read_table(cls: type[Any], where: str, table: Mapping[str, Any], env: Mapping[str, str]) -> Values:
    specs = {s.key: s for s in declared(cls, where)}
    for name in table:
        if name not in specs:
            raise ConfigError(f"{where}.{name}", "unknown key")
    values: Values = {}
    for name, spec in specs.items():
        value, origin = table.get(name, spec.default), spec.name
        if spec.env and spec.env in env:
            value, origin = env[spec.env], spec.env
        if value is REQUIRED:
            raise ConfigError(origin, "required")
        try:
            values[name] = spec.parse(value)
        except ValueError as exc:
            raise ConfigError(origin, str(exc)) from None
    return values
