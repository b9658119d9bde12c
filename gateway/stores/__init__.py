"""Where conversations live: the contract every store implements, and the factory.

``base`` is the contract (:class:`ConversationStore`, the records, the errors),
``memory``, ``sqlite`` and ``postgres`` are the backends. :func:`make_store` is the one place
that picks a backend from the configuration: the server and the CLI both use it.
"""

from __future__ import annotations

from ..config import Config
from .base import (
    CONTINUABLE,
    UNOWNED,
    Branch,
    Conversation,
    ConversationNotFound,
    ConversationStore,
    MessageNotFound,
    OpenReport,
    Page,
    StoredMessage,
    StoreFull,
    StoreUnavailable,
    StoreUnusable,
    UsageEntry,
    UsageTotal,
    export_document,
    new_id,
    newest_within,
    title_of,
)

__all__ = [
    "CONTINUABLE",
    "UNOWNED",
    "Branch",
    "Conversation",
    "ConversationNotFound",
    "ConversationStore",
    "MessageNotFound",
    "OpenReport",
    "Page",
    "StoreFull",
    "StoreUnavailable",
    "StoreUnusable",
    "StoredMessage",
    "UsageEntry",
    "UsageTotal",
    "export_document",
    "make_store",
    "new_id",
    "newest_within",
    "title_of",
]


def make_store(config: Config) -> ConversationStore:
    """The store ``[store] backend`` names, not yet opened."""
    if config.store.backend == "memory":
        from .memory import MemoryStore

        return MemoryStore(max_conversations=config.limits.max_conversations, max_messages=config.limits.max_conversation_messages)
    if config.store.backend == "postgres":
        from .postgres import PostgresStore

        store = config.store
        return PostgresStore(
            store.url, password=store.password, min_size=store.pool_min_size, max_size=store.pool_max_size,
            connect_timeout=store.connect_timeout, statement_timeout=store.statement_timeout,
            pgbouncer=store.pgbouncer,
        )
    from .sqlite import SQLiteStore

    return SQLiteStore(config.store.path)
