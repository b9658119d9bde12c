"""``[[models]]``, ``[[deployments]]`` and ``[routing]``: what users pick, what serves it,
and how failures move a reply elsewhere (pure; docs/models.md).

Without ``[[models]]`` the legacy ``[provider]`` table (and ``GATEWAY_PROVIDER``,
``GATEWAY_MODEL``...) is one deployment serving one model, named after its upstream
model: :func:`resolve` makes it so, and everything after sees models only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import config_values as v
from .errors import ConfigError
from .settings import REQUIRED, declared, key

__all__ = [
    "CONTINUATIONS",
    "DEFAULT_MODELS",
    "DEFAULT_URLS",
    "FAILURE_KINDS",
    "LEGACY_KEYS",
    "PROVIDERS",
    "DeploymentConfig",
    "ModelConfig",
    "RoutingConfig",
    "made",
    "resolve",
]

ProviderName = Literal["demo", "openai", "dashscope"]
PROVIDERS: tuple[ProviderName, ...] = ("demo", "openai", "dashscope")
DEFAULT_URLS: dict[str, str] = {
    "demo": "",
    "openai": "https://api.openai.com/v1",
    "dashscope": "https://dashscope.aliyuncs.com/api/v1/services/aigc/text-generation/generation",
}
DEFAULT_MODELS: dict[str, str] = {"demo": "demo", "openai": "gpt-4o-mini", "dashscope": "qwen-plus"}
# How a reply cut short is continued (context.continuation).
CONTINUATIONS = ("prompt", "prefix", "partial")
# What may move a reply to another deployment (routing.py classifies each failure).
FAILURE_KINDS = ("connect", "timeout", "rate_limited", "server_error", "stream_error")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,63}")


def ident(value: Any) -> str:
    """A model or deployment id: 1 to 64 letters, digits and ``._:/@+-``."""
    text = v.string(value).strip()
    if not _ID.fullmatch(text):
        raise ValueError(f"an id is 1 to 64 letters, digits and ._:/@+- (starting with a letter or digit), got {text!r}")
    return text


def idents(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of ids, got {value!r}")
    found = tuple(ident(item) for item in items if v.string(item).strip())
    if len(set(found)) != len(found):
        raise ValueError(f"an id is listed twice in {list(found)}")
    return found


def failure_kinds(value: Any) -> tuple[str, ...]:
    kinds = idents(value)
    for kind in kinds:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"{kind!r} is not one of {', '.join(FAILURE_KINDS)}")
    return kinds


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """``[[deployments]]``: one upstream that can serve a model (its key read from a file)."""

    id: str = key(ident, REQUIRED, None, "the deployment's name, used by [[models]] deployments")
    provider: ProviderName = key(v.choice(*PROVIDERS), "openai", None,
        "demo, openai (any OpenAI-compatible API) or dashscope (native API)")
    upstream_url: str = key(v.string, "", None,
        "openai: base URL (…/v1); dashscope: the full text-generation URL; empty: the provider's own")
    model: str = key(v.string, "", None, "the model name sent upstream; empty: the provider's usual one")
    api_key_file: str = key(v.path, "", None, "file holding this deployment's API key")
    credential: str = key(v.string, "", None,
        "or: the name of a systemd credential holding it ($CREDENTIALS_DIRECTORY/<name>)")
    weight: float = key(v.number(0, 1_000_000), 1.0, None,
        "share of requests among the model's healthy deployments; 0: only when the others fail")
    params: Mapping[str, Any] = key(v.params, {}, None,
        "extra request body fields for this deployment, over [provider] params")
    continuation: str = key(v.choice("", *CONTINUATIONS), "", None,
        "how a cut-off reply is continued here (see [provider] continuation); empty: as [provider] says")
    api_key: str = dataclasses.field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """``[[models]]``: what users pick (the first is the default)."""

    id: str = key(ident, REQUIRED, None, "the model's id, as clients send it in message.model")
    label: str = key(v.string, "", None, "the name people see; empty: the id")
    deployments: tuple[str, ...] = key(idents, REQUIRED, None,
        "the [[deployments]] ids that serve it, tried by weight")
    fallbacks: tuple[str, ...] = key(idents, (), None,
        "other models' ids, tried in order when every deployment of this one failed")
    reasoning: bool = key(v.boolean, False, None, "the model thinks before answering (ready.models says so; the page shows its thinking either way)")
    system_prompt: str = key(v.string, "", None, "system message for this model; empty: [provider] system_prompt")
    price_input: float = key(v.number(0, 1_000_000), 0.0, None, "price per million input tokens (0: not priced)")
    price_output: float = key(v.number(0, 1_000_000), 0.0, None, "price per million output tokens (0: not priced)")


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """``[routing]``: retries and fallbacks before a reply's first text (docs/models.md)."""

    retries: int = key(v.integer(0, 20), 2, "GATEWAY_ROUTING_RETRIES",
        "attempts after the first, over the model's deployments then its fallbacks")
    retry_on: tuple[str, ...] = key(failure_kinds, list(FAILURE_KINDS), None,
        "failures that move to the next attempt: connect, timeout, rate_limited (429), "
        "server_error (408, 409, 5xx), stream_error (an in-band error or a broken stream)")
    retry_after_max: float = key(v.number(0, 3600), 10.0, None,
        "longest Retry-After waited for; a deployment asking for longer is not retried for this reply")
    cooldown: float = key(v.number(0, 86_400), 30.0, None,
        "seconds a failing deployment is left out while others are healthy (0: never)")
    first_token_timeout: float = key(v.number(0, 3600), 30.0, None,
        "seconds one attempt may take to its first token before another deployment is tried (0: no limit; "
        "not applied when no other deployment could answer); provider.upstream_timeout bounds all attempts")


def resolve(
    models: tuple[dict[str, Any], ...],
    deployments: tuple[dict[str, Any], ...],
    provider: dict[str, Any],
    env: Mapping[str, str],
    explicit: frozenset[str] = frozenset(),
) -> tuple[tuple[ModelConfig, ...], tuple[DeploymentConfig, ...]]:
    """The models and deployments in force: those configured, checked, with their keys
    read; or, without ``[[models]]``, the one ``[provider]`` describes. ``explicit``: the
    ``[provider]`` keys set in the file or the environment."""
    if not models:
        if deployments:
            raise ConfigError("deployments", "no [[models]] uses them: add a [[models]] table")
        return _legacy(provider)
    _no_legacy(explicit)
    found = tuple(_deployment(d, f"deployments[{i}]", env) for i, d in enumerate(deployments))
    configured = tuple(ModelConfig(**m) for m in models)
    _check_ids(configured, found)
    return configured, found


def _legacy(provider: dict[str, Any]) -> tuple[tuple[ModelConfig, ...], tuple[DeploymentConfig, ...]]:
    name, model = provider["name"], provider["model"]
    deployment = made(
        DeploymentConfig, id=name, provider=name, upstream_url=provider["upstream_url"], model=model,
        api_key=provider["api_key"],
    )
    return (made(ModelConfig, id=model, label=model, deployments=(name,)),), (deployment,)


def made(cls: type[Any], **values: Any) -> Any:
    """A ``cls`` of ``values``, its other keys at their defaults."""
    defaults = {s.key: s.parse(s.default) for s in declared(cls) if s.default is not REQUIRED}
    return cls(**{**defaults, **values})


LEGACY_KEYS = ("name", "upstream_url", "model", "api_key", "api_key_file")


def _no_legacy(explicit: frozenset[str]) -> None:
    """With ``[[models]]``, ``[provider]`` keeps only what all deployments share."""
    for name in LEGACY_KEYS:
        if name in explicit:
            raise ConfigError(f"provider.{name}", "is set, but [[models]] are configured: set it in [[deployments]]")


def _deployment(values: dict[str, Any], where: str, env: Mapping[str, str]) -> DeploymentConfig:
    provider = values["provider"]
    url = (values["upstream_url"] or DEFAULT_URLS[provider]).strip().rstrip("/")
    if provider != "demo" and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.upstream_url", f"expected an http(s) URL, got {url!r}")
    api_key = _key(values, where, env)
    if provider == "dashscope" and not api_key:
        raise ConfigError(f"{where}.api_key_file", "dashscope needs an API key (api_key_file or credential)")
    return DeploymentConfig(
        **{**values, "upstream_url": url, "model": values["model"] or DEFAULT_MODELS[provider], "api_key": api_key}
    )


def _key(values: Mapping[str, Any], where: str, env: Mapping[str, str]) -> str:
    if values["api_key_file"] and values["credential"]:
        raise ConfigError(f"{where}.credential", "set api_key_file or credential, not both")
    path, name = values["api_key_file"], f"{where}.api_key_file"
    if values["credential"]:
        directory, name = env.get("CREDENTIALS_DIRECTORY", ""), f"{where}.credential"
        if "/" in values["credential"] or values["credential"] in (".", ".."):
            raise ConfigError(name, "a credential's name, not a path (use api_key_file for a path)")
        if not directory:
            raise ConfigError(name, f"no systemd credential {values['credential']!r} ($CREDENTIALS_DIRECTORY unset)")
        path = str(Path(directory) / values["credential"])
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, f"cannot read {path}: {exc}") from None


def _check_ids(models: tuple[ModelConfig, ...], deployments: tuple[DeploymentConfig, ...]) -> None:
    deployment_ids = [d.id for d in deployments]
    model_ids = [m.id for m in models]
    for kind, ids in (("deployments", deployment_ids), ("models", model_ids)):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ConfigError(kind, f"the id {twice[0]!r} is used twice")
    for i, m in enumerate(models):
        if not m.deployments:
            raise ConfigError(f"models[{i}].deployments", "a model needs at least one deployment")
        for d in m.deployments:
            if d not in deployment_ids:
                raise ConfigError(f"models[{i}].deployments", f"no [[deployments]] has the id {d!r}")
        for f in m.fallbacks:
            if f not in model_ids or f == m.id:
                raise ConfigError(f"models[{i}].fallbacks", f"{f!r} is not another model's id")
