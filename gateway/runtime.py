"""The configuration in force and what is built from it, as one value.

A reload builds a new :class:`Runtime` and the gateway swaps it in with one
assignment. Connections, replies and HTTP handlers read the current one through a
getter when they need it: a reply keeps the catalog (models, deployments, providers)
it started with, the next one gets the new one, and nothing holds a copy that a
reload must patch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .auth import Authenticator
from .catalog import Catalog
from .config import Config, DeploymentConfig, ProviderConfig
from .providers import Provider
from .quota import QuotaLimits, reply_reserve

__all__ = ["RegistryLimits", "Runtime", "upstream_config"]


@dataclass(frozen=True, slots=True)
class RegistryLimits:
    """What bounds replies, from the configuration."""

    max_replies: int
    max_reply_chars: int
    max_reply_seconds: float
    resume_grace: float
    checkpoint_interval: float
    system_prompt: str
    context_max_messages: int
    context_max_chars: int
    # All replies checkpoint on the same ticks, so that their writes arrive together: for a
    # store that commits what arrives together at once (SQLite); others spread them out.
    checkpoint_ticks: bool = False
    quota: QuotaLimits = QuotaLimits()  # per-subject messages per minute, token budgets
    replies_per_subject: int = 0  # 0: no limit
    reply_reserve: int = 1024  # tokens reserved for a reply before it starts (budgets on)
    save_retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # a reply's final save, store away
    save_deadline: float = 10.0  # ... all of its tries: a drain plus this fits systemd's stop timeout
    upstream_timeout: float = 60.0  # seconds all attempts of a reply get to its first token
    first_token_timeout: float = 0.0  # ... and one attempt (0: no limit of its own)


Upstreams = Mapping[str, tuple[ProviderConfig, Provider]]  # per deployment id


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    catalog: Catalog
    authenticator: Authenticator
    limits: RegistryLimits
    upstreams: Upstreams

    @classmethod
    def of(
        cls,
        config: Config,
        make_provider: Callable[[ProviderConfig], Provider],
        authenticator: Authenticator,
        previous: Upstreams | None = None,
    ) -> Runtime:
        """The runtime of ``config``; each deployment's provider made by ``make_provider``
        unless ``previous`` has one of the same settings (a reload)."""
        upstreams = {}
        for d in config.deployments:
            settings = upstream_config(config, d)
            old = (previous or {}).get(d.id)
            upstreams[d.id] = old if old is not None and old[0] == settings else (settings, make_provider(settings))
        providers = {name: provider for name, (_, provider) in upstreams.items()}
        catalog = Catalog.of(config.models, config.deployments, providers, config.routing)
        limits = RegistryLimits(
            max_replies=config.limits.max_replies,
            max_reply_chars=config.limits.max_reply_chars,
            max_reply_seconds=config.provider.max_reply_seconds,
            resume_grace=config.server.resume_grace,
            checkpoint_interval=config.store.checkpoint_interval,
            checkpoint_ticks=config.store.backend == "sqlite",
            system_prompt=config.provider.system_prompt,
            context_max_messages=config.limits.context_max_messages,
            context_max_chars=config.limits.context_max_chars,
            quota=QuotaLimits(
                messages_per_minute=config.limits.messages_per_minute,
                tokens_per_day=config.limits.tokens_per_day,
                global_tokens_per_day=config.limits.global_tokens_per_day,
            ),
            replies_per_subject=config.limits.replies_per_subject,
            reply_reserve=max(reply_reserve(settings.params) for settings, _ in upstreams.values()),
            upstream_timeout=config.provider.upstream_timeout,
            first_token_timeout=config.routing.first_token_timeout,
        )
        return cls(config, catalog, authenticator, limits, upstreams)

    def reloaded(
        self,
        config: Config,
        make_provider: Callable[[ProviderConfig], Provider],
        make_authenticator: Callable[[Config], Authenticator],
    ) -> Runtime:
        """The runtime of ``config`` after a reload: a deployment's provider and the
        authenticator are rebuilt only if their settings changed (replies in flight keep
        the catalog they started with anyway; a JWKS cache survives)."""
        same_auth = config.auth == self.config.auth and config.server.trusted_proxies == self.config.server.trusted_proxies
        authenticator = self.authenticator if same_auth else make_authenticator(config)
        return Runtime.of(config, make_provider, authenticator, self.upstreams)


def upstream_config(config: Config, deployment: DeploymentConfig) -> ProviderConfig:
    """A deployment's upstream settings: its own over what ``[provider]`` gives all."""
    return dataclasses.replace(
        config.provider, name=deployment.provider, upstream_url=deployment.upstream_url, model=deployment.model,
        api_key=deployment.api_key, params={**config.provider.params, **deployment.params},
        continuation=deployment.continuation or config.provider.continuation,
    )
