"""How keys are declared and read: tables, arrays of tables, the environment (pure)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

import pytest

from gateway import config_values as v
from gateway.errors import ConfigError
from gateway.settings import REQUIRED, key, read, section, settings, tables


@dataclass(frozen=True, slots=True)
class Limits:
    size: int = key(v.integer(1, 100), 10, "TEST_SIZE", "how big")
    label: str = key(v.string, "", None, "a name")


@dataclass(frozen=True, slots=True)
class Model:
    id: str = key(v.string, REQUIRED, "TEST_MODEL_ID", "what users pick")
    weight: int = key(v.integer(0, 10), 1, None, "share of requests")


@dataclass(frozen=True, slots=True)
class Root:
    limits: Limits = section(Limits)
    models: tuple[Model, ...] = tables(Model)


def parse(text: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return read(Root, tomllib.loads(text), env or {})


def test_every_key_is_listed_once_with_its_section() -> None:
    names = [s.name for s in settings(Root)]
    assert names == ["limits.size", "limits.label", "models.id", "models.weight"]


def test_a_missing_table_gets_its_defaults_and_no_array_is_empty() -> None:
    assert parse("") == {"limits": {"size": 10, "label": ""}, "models": ()}


def test_an_array_of_tables_reads_each_table_in_order() -> None:
    values = parse('[[models]]\nid = "fast"\n[[models]]\nid = "smart"\nweight = 3\n')
    assert values["models"] == ({"id": "fast", "weight": 1}, {"id": "smart", "weight": 3})


def test_the_environment_overrides_tables_but_not_arrays_of_tables() -> None:
    values = parse('[limits]\nsize = 5\n[[models]]\nid = "fast"\n', {"TEST_SIZE": "7", "TEST_MODEL_ID": "x"})
    assert values["limits"]["size"] == 7
    assert values["models"][0]["id"] == "fast"


@pytest.mark.parametrize(
    ("text", "env", "where", "message"),
    [
        ("[nonsense]\n", {}, "nonsense", "unknown section"),
        ("[limits]\nsiez = 3\n", {}, "limits.siez", "unknown key"),
        ("[limits]\nsize = 300\n", {}, "limits.size", "between 1 and 100"),
        ("", {"TEST_SIZE": "many"}, "TEST_SIZE", "expected an integer"),
        ("limits = 3\n", {}, "limits", "[limits]"),
        ("[[models]]\nweight = 2\n", {}, "models[0].id", "required"),
        ('[[models]]\nid = "a"\n[[models]]\nid = "b"\ncolour = 1\n', {}, "models[1].colour", "unknown key"),
        ('[models]\nid = "a"\n', {}, "models", "[[models]]"),
        ("models = [1, 2]\n", {}, "models", "[[models]]"),
    ],
)
def test_a_bad_document_names_the_key(text: str, env: dict[str, str], where: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    assert info.value.key == where
    assert message in str(info.value)
