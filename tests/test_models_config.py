"""``[[models]]``, ``[[deployments]]`` and ``[routing]``: parsed, checked, shown masked."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway import config
from gateway.catalog import Catalog
from gateway.config import load, render
from gateway.errors import ConfigError
from gateway.runtime import Runtime
from gateway.providers.demo import DemoProvider

SECRET = "sk-deployment-secret-0123456789abcdef"

TWO_MODELS = """
[routing]
retries = 3
retry_on = ["connect", "rate_limited"]
retry_after_max = 5
cooldown = 10
first_token_timeout = 12

[[models]]
id = "qwen-plus"
label = "Qwen Plus"
deployments = ["ds-a", "ds-b"]
fallbacks = ["r1"]
price_input = 0.8
price_output = 2

[[models]]
id = "r1"
deployments = ["or"]
reasoning = true
system_prompt = "Think first."

[[deployments]]
id = "ds-a"
provider = "dashscope"
api_key_file = "{key}"
weight = 3

[[deployments]]
id = "ds-b"
provider = "dashscope"
credential = "dashscope_b"
params = {{ temperature = 0.2 }}

[[deployments]]
id = "or"
upstream_url = "https://openrouter.ai/api/v1/"
model = "deepseek/deepseek-r1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


@pytest.fixture
def creds(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "dashscope_b").write_text(SECRET + "-b\n")
    (tmp_path / "key").write_text(SECRET + "\n")
    return {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}


def two_models(tmp_path: Path, creds: dict[str, str]) -> config.Config:
    return load(write(tmp_path, TWO_MODELS.format(key=tmp_path / "key")), creds)


def test_models_and_deployments_are_read_with_their_keys(tmp_path: Path, creds: dict[str, str]) -> None:
    cfg = two_models(tmp_path, creds)
    assert [m.id for m in cfg.models] == ["qwen-plus", "r1"]
    assert cfg.models[0].fallbacks == ("r1",) and cfg.models[1].reasoning
    a, b, openrouter = cfg.deployments
    assert (a.api_key, b.api_key) == (SECRET, SECRET + "-b")
    assert a.upstream_url.endswith("/text-generation/generation") and a.model == "qwen-plus" and a.weight == 3
    assert (openrouter.upstream_url, openrouter.api_key) == ("https://openrouter.ai/api/v1", "")
    assert b.params == {"temperature": 0.2}
    r = cfg.routing
    assert (r.retries, r.retry_on, r.retry_after_max, r.cooldown, r.first_token_timeout) == (
        3, ("connect", "rate_limited"), 5.0, 10.0, 12.0,
    )
    assert not cfg.single_model


def test_the_catalog_lists_the_models_the_first_as_default(tmp_path: Path, creds: dict[str, str]) -> None:
    cfg = two_models(tmp_path, creds)
    made: list[config.ProviderConfig] = []

    def make(upstream: config.ProviderConfig) -> DemoProvider:
        made.append(upstream)
        return DemoProvider(upstream.model, 0)

    runtime = Runtime.of(cfg, make, authenticator=None)  # type: ignore[arg-type]
    assert runtime.catalog.public() == [
        {"id": "qwen-plus", "label": "Qwen Plus", "default": True}, {"id": "r1", "label": "r1", "reasoning": True},
    ]
    assert runtime.catalog.models["r1"].system_prompt == "Think first."
    assert [u.params for u in made] == [{}, {"temperature": 0.2}, {}]
    assert [u.api_key for u in made] == [SECRET, SECRET + "-b", ""]
    again = runtime.reloaded(cfg, make, lambda c: None)  # type: ignore[arg-type,return-value]
    assert len(made) == 3 and again.upstreams == runtime.upstreams  # unchanged deployments are kept


def test_without_models_the_provider_table_is_one_model(tmp_path: Path) -> None:
    cfg = load(None, {"GATEWAY_PROVIDER": "openai", "GATEWAY_MODEL": "gpt-4o", "GATEWAY_API_KEY": SECRET})
    assert cfg.single_model
    assert [(m.id, m.deployments) for m in cfg.models] == [("gpt-4o", ("openai",))]
    (d,) = cfg.deployments
    assert (d.provider, d.model, d.api_key, d.upstream_url) == ("openai", "gpt-4o", SECRET, "https://api.openai.com/v1")


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (("deployments = [\"ds-a\", \"ds-b\"]", "deployments = [\"ds-a\", \"nope\"]"), "models[0].deployments",
         "no [[deployments]] has the id 'nope'"),
        (("deployments = [\"ds-a\", \"ds-b\"]", "deployments = []"), "models[0].deployments", "at least one"),
        (("fallbacks = [\"r1\"]", "fallbacks = [\"qwen-plus\"]"), "models[0].fallbacks", "not another model"),
        (("fallbacks = [\"r1\"]", "fallbacks = [\"gpt\"]"), "models[0].fallbacks", "not another model"),
        (('id = "r1"', 'id = "qwen-plus"'), "models", "used twice"),
        (('id = "ds-b"', 'id = "ds-a"'), "deployments", "used twice"),
        (('id = "r1"', 'id = "has space"'), "models[1].id", "an id is"),
        (('id = "r1"\n', ""), "models[1].id", "required"),
        (("weight = 3", "weight = -1"), "deployments[0].weight", "between"),
        (('provider = "dashscope"\napi_key_file', 'provider = "claude"\napi_key_file'), "deployments[0].provider",
         "must be one of"),
        (('credential = "dashscope_b"', 'credential = "missing"'), "deployments[1].credential", "cannot read"),
        (('credential = "dashscope_b"', 'credential = "../key"'), "deployments[1].credential", "not a path"),
        (('credential = "dashscope_b"', ""), "deployments[1].api_key_file", "needs an API key"),
        (('upstream_url = "https://openrouter.ai/api/v1/"', 'upstream_url = "ftp://x"'), "deployments[2].upstream_url",
         "http(s)"),
        (("retries = 3", "retries = 99"), "routing.retries", "between"),
        (('retry_on = ["connect", "rate_limited"]', 'retry_on = ["connect", "auth"]'), "routing.retry_on",
         "is not one of"),
        (("[[models]]\nid = \"qwen-plus\"", "[[models]]\nid = \"qwen-plus\"\nbudget = 3"), "models[0].budget",
         "unknown key"),
        (("[routing]", "[provider]\nmodel = \"gpt-4o\"\n\n[routing]"), "provider.model", "[[models]] are configured"),
    ],
)
def test_bad_models_are_refused_naming_the_key(
    tmp_path: Path, creds: dict[str, str], change: tuple[str, str], key: str, message: str,
) -> None:
    text = TWO_MODELS.format(key=tmp_path / "key")
    assert change[0] in text
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text.replace(change[0], change[1], 1)), creds)
    assert info.value.key == key and message in str(info.value)


def test_legacy_variables_with_models_are_refused(tmp_path: Path, creds: dict[str, str]) -> None:
    path = write(tmp_path, TWO_MODELS.format(key=tmp_path / "key"))
    with pytest.raises(ConfigError) as info:
        load(path, {**creds, "GATEWAY_PROVIDER": "openai"})
    assert info.value.key == "provider.name"
    assert load(path, {**creds, "GATEWAY_UPSTREAM_TIMEOUT": "9"}).provider.upstream_timeout == 9


def test_deployments_without_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, '[[deployments]]\nid = "x"\n'), {})
    assert info.value.key == "deployments"


def test_check_config_shows_the_models_with_keys_masked(tmp_path: Path, creds: dict[str, str]) -> None:
    cfg = two_models(tmp_path, creds)
    text = render(cfg)
    assert SECRET not in text
    doc = tomllib.loads(text)
    assert [m["id"] for m in doc["models"]] == ["qwen-plus", "r1"]
    assert [d["id"] for d in doc["deployments"]] == ["ds-a", "ds-b", "or"]
    assert text.count("# api key: (set, masked)") == 2 and "# api key: (none)" in text
    again = load(write(tmp_path, text), creds)  # the rendered file is a working configuration
    assert (again.models, again.routing) == (cfg.models, cfg.routing)
    assert [d.api_key for d in again.deployments] == [d.api_key for d in cfg.deployments]


def test_the_cli_check_config_masks_deployment_keys(tmp_path: Path, creds: dict[str, str]) -> None:
    path = write(tmp_path, TWO_MODELS.format(key=tmp_path / "key"))
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
        capture_output=True, text=True, env={**creds, "PATH": "/usr/bin:/bin"}, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert '[[models]]\nid = "qwen-plus"' in out.stdout


def test_a_catalog_of_one_provider() -> None:
    catalog = Catalog.single(DemoProvider("demo", 0))
    assert catalog.public() == [{"id": "demo", "label": "demo", "default": True}]
    assert catalog.get(None) is catalog.default and catalog.get("other") is None
