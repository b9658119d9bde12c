"""The configuration in force and what is built from it, as one value.

A reload builds a new :class:`Runtime` and the gateway swaps it in with one
assignment. Connections, replies and HTTP handlers read the current one through a
getter when they need it: a reply keeps the provider it started with, the next
one gets the new provider, and nothing holds a copy that a reload must patch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .auth import Authenticator
from .config import Config, ProviderConfig
from .providers import Provider
from .quota import QuotaLimits, reply_reserve

__all__ = ["RegistryLimits", "Runtime"]


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


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    provider: Provider
    authenticator: Authenticator
    limits: RegistryLimits

    @classmethod
    def of(cls, config: Config, provider: Provider, authenticator: Authenticator) -> Runtime:
        """The runtime of ``config``, whose upstream is ``provider``."""
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
            reply_reserve=reply_reserve(config.provider.params),
        )
        return cls(config, provider, authenticator, limits)

    def reloaded(
        self,
        config: Config,
        make_provider: Callable[[ProviderConfig], Provider],
        make_authenticator: Callable[[Config], Authenticator],
    ) -> Runtime:
        """The runtime of ``config`` after a reload: the provider and the authenticator are
        rebuilt only if their settings changed (replies in flight keep the provider they
        started with anyway; a JWKS cache survives)."""
        provider = self.provider if config.provider == self.config.provider else make_provider(config.provider)
        same_auth = config.auth == self.config.auth and config.server.trusted_proxies == self.config.server.trusted_proxies
        return Runtime.of(config, provider, self.authenticator if same_auth else make_authenticator(config))
