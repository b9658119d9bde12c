"""What answers a ``hello``: a page of the conversation's history (without the reply
streaming now) and the ``ready`` frame."""

from __future__ import annotations

from typing import Any

from . import wire
from .auth import Principal
from .catalog import Catalog, Model
from .connection import Hub
from .events import Streaming
from .paging import page, read_bound, without
from .runtime import Runtime
from .stores import StoredMessage

__all__ = ["conversation_model", "read_page", "ready_frame"]

# The per-subject limits ``ready`` shows when they are on.
PER_SUBJECT = (
    "connections_per_subject", "messages_per_minute", "replies_per_subject", "tokens_per_day",
    "global_tokens_per_day",
)


async def read_page(
    hub: Hub, conversation_id: str, limit: int, before: str | None = None
) -> tuple[list[StoredMessage], bool, Streaming | None]:
    """A page of stored history (without the reply streaming now), whether older
    messages exist, and that streaming reply."""
    active = await hub.bus.streaming(conversation_id)
    max_bytes = hub.runtime.config.limits.max_history_bytes
    read = await hub.store.history(conversation_id, limit + 2, before, max_bytes=read_bound(max_bytes, active))
    messages, has_more = page(without(read, active), limit, max_bytes)
    return messages, has_more, active


def conversation_model(history: list[StoredMessage], catalog: Catalog) -> Model:
    """The model a conversation's latest user message asked for, if it is still offered;
    else the default (a regenerate with a model stores it on that message)."""
    latest = next((m for m in reversed(history) if m.role == "user"), None)
    chosen = catalog.models.get(latest.model) if latest is not None and latest.model else None
    return chosen or catalog.default


def ready_frame(
    session_id: str,
    conversation_id: str,
    title: str,
    history: list[StoredMessage],
    runtime: Runtime,
    active: Streaming | None,
    principal: Principal,
    budget: dict[str, Any] | None,
    model: Model,
    system_prompt: str = "",
    voice: dict[str, Any] | None = None,
) -> bytes:
    """``ready``: the conversation now open, who the client is, and what it may do."""
    limits = runtime.config.limits
    shown = {
        "max_message_bytes": limits.max_message_bytes, "max_content_chars": limits.max_content_chars,
        **{name: getattr(limits, name) for name in PER_SUBJECT if getattr(limits, name)},
    }
    return wire.encode(
        "ready",
        session_id=session_id,
        subject=principal.subject,
        name=principal.name or None,
        expires_at=principal.expires_at,
        conversation_id=conversation_id,
        title=title,
        history=wire.history_items(history),
        model=model.id,
        provider=model.provider,
        models=runtime.catalog.public(),
        limits=shown,
        budget=budget,
        streaming=wire.streaming_item(active) if active else None,
        system_prompt=system_prompt or None,
        voice=voice,
    )
