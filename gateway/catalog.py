"""The models users may pick, the deployments that serve each, and how a reply is routed
among them (pure: the providers are built at the edge, :mod:`gateway.upstream`)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, ProtocolError
from .models_config import DeploymentConfig, ModelConfig, RoutingConfig, made
from .providers import Provider, Usage
from .routing import Candidate, Health, Route

__all__ = ["Catalog", "Model"]


@dataclass(frozen=True, slots=True)
class Model:
    """What users pick: an id, a label, the deployments (id → provider, weight) serving it."""

    id: str
    label: str
    deployments: tuple[tuple[str, Provider, float], ...]
    fallbacks: tuple[str, ...] = ()
    reasoning: bool = False
    system_prompt: str | None = None  # None: the configured default
    price_input: float = 0.0  # per million tokens
    price_output: float = 0.0

    @property
    def provider(self) -> str:
        """The provider of its first deployment (``ready.provider``)."""
        return self.deployments[0][1].name

    def cost(self, usage: Usage | None) -> float | None:
        """What ``usage`` cost at this model's prices; None if it has none."""
        if usage is None or not (self.price_input or self.price_output):
            return None
        total = usage.prompt_tokens * self.price_input + usage.completion_tokens * self.price_output
        return round(total / 1_000_000, 8)

    def public(self, default: bool) -> dict[str, Any]:
        """The model as ``ready.models`` lists it."""
        item: dict[str, Any] = {"id": self.id, "label": self.label}
        if default:
            item["default"] = True
        if self.reasoning:
            item["reasoning"] = True
        return item


class Catalog:
    """The models in force (the first is the default) and the routing settings."""

    def __init__(self, models: Sequence[Model], routing: RoutingConfig | None = None) -> None:
        if not models:
            raise ValueError("a catalog needs a model")
        self.models = {m.id: m for m in models}
        self.default = models[0]
        self.routing: RoutingConfig = routing or made(RoutingConfig)

    @classmethod
    def of(
        cls, models: Sequence[ModelConfig], deployments: Sequence[DeploymentConfig],
        providers: Mapping[str, Provider], routing: RoutingConfig,
    ) -> Catalog:
        weights = {d.id: d.weight for d in deployments}
        return cls([
            Model(
                m.id, m.label or m.id, tuple((d, providers[d], weights[d]) for d in m.deployments), m.fallbacks,
                m.reasoning, m.system_prompt or None, m.price_input, m.price_output,
            )
            for m in models
        ], routing)

    @classmethod
    def single(cls, provider: Provider) -> Catalog:
        """One model served by ``provider`` alone (named after its upstream model)."""
        return cls([Model(provider.model, provider.model, ((provider.name, provider, 1.0),))])

    def get(self, model_id: str | None) -> Model | None:
        """The model ``model_id`` names; the default for None."""
        return self.default if model_id is None else self.models.get(model_id)

    def choose(self, model_id: str | None) -> Model:
        """The model a client asks for (the default for None); ``bad_request`` if none has that id."""
        model = self.get(model_id)
        if model is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"no model {model_id!r} here; ready.models lists them")
        return model

    def public(self) -> list[dict[str, Any]]:
        return [m.public(m is self.default) for m in self.models.values()]

    def provider(self, model: str, deployment: str) -> Provider:
        return next(p for d, p, _ in self.models[model].deployments if d == deployment)

    def route(self, model: Model, health: Health, *, now: float, budget: float, rng: random.Random) -> Route:
        """The way a reply asking ``model`` goes: its deployments, then its fallbacks'."""
        chain = [model] + [self.models[f] for f in model.fallbacks if f in self.models]
        r = self.routing
        return Route(
            [[Candidate(m.id, d, w) for d, _, w in m.deployments] for m in chain], health,
            now=now, budget=budget, retries=r.retries, retry_on=r.retry_on,
            retry_after_max=r.retry_after_max, cooldown=r.cooldown, rng=rng,
        )
