"""The conversation store contract: what every backend implements and raises.

Backends: :mod:`.memory` (bounded, in this process), :mod:`.sqlite` (one file),
:mod:`.postgres` (a PostgreSQL database); :func:`gateway.stores.make_store` picks one
from the configuration.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

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
    "descendants",
    "export_document",
    "leaf_under",
    "new_id",
    "newest_within",
    "title_of",
    "total_usage",
    "with_siblings",
]

Role = Literal["user", "assistant"]
_TITLE_CHARS = 80


def new_id() -> str:
    """A 128-bit random, unguessable id (32 hex digits)."""
    return secrets.token_hex(16)


class ConversationNotFound(LookupError):
    """The conversation does not exist (never did, or was deleted): nothing was written."""


class MessageNotFound(LookupError):
    """The message named is not in the conversation (never was, or its branch was deleted)."""


class StoreUnusable(Exception):
    """The store cannot be opened by this code: a database newer than it, a damaged file."""


class StoreUnavailable(Exception):
    """The store cannot be reached now (a database down or restarting, a timeout): the
    operation wrote nothing, or was one atomic write whose outcome is unknown. Try again."""


class StoreFull(Exception):
    """The store holds as many conversations as it may: a new one is refused, none is dropped."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    role: Role
    content: str
    created_at: float = field(default_factory=time.time)
    finish_reason: str | None = None
    usage: Mapping[str, int] | None = None
    model: str | None = None  # a user message: the model it asked for; a reply: the model that wrote it
    reasoning: str | None = None  # a reply: the model's thinking, kept apart from its text (never sent upstream)
    # Its place in the tree, compared apart (equal messages are equal wherever they are):
    # the message it follows ("": a first one), and, read with a branch (history), the
    # ids of the messages that share its parent, oldest first, itself among them, when
    # there are others (() when it is the only one, or was not read with a branch).
    parent_id: str = field(default="", compare=False)
    siblings: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class OpenReport:
    """What opening a store found: ``recovered`` replies a crash had left streaming,
    now marked ended with ``error``."""

    recovered: int = 0


CONTINUABLE = ("length", "error", "cancelled")  # how a reply that can be continued ended

UNOWNED = ""  # the owner of conversations stored before owners existed: nobody yet


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    title: str
    created_at: float
    updated_at: float
    owner: str = UNOWNED  # the subject whose conversation it is (docs/protocol.md)
    active: str = ""  # the last message of the branch shown ("": none yet)
    system_prompt: str = ""  # this conversation's instructions ("": the configured ones)


@dataclass(frozen=True, slots=True)
class Branch:
    """What a reply answers: the last messages of a branch, oldest first, and the
    conversation's own instructions ("" if it has none)."""

    messages: list[StoredMessage]
    system_prompt: str = ""


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One reply's line in the ledger: who, where, which model, how many tokens
    (``estimated``: the provider reported none, so they were counted from the text)."""

    subject: str
    conversation_id: str
    reply_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """The ledger summed per subject and model."""

    subject: str
    model: str
    replies: int
    prompt_tokens: int
    completion_tokens: int
    estimated: int  # replies among them whose tokens were estimated


Page = tuple[list[Conversation], str | None]  # a page of a subject's conversations, and the cursor of the next


class ConversationStore(Protocol):
    """Where conversations live. Every method is a coroutine so that implementations can
    do I/O (SQLite's thread, PostgreSQL's connections); any may raise StoreUnavailable."""

    async def open(self, *, recover: bool = True) -> OpenReport:
        """Prepare the store (create, migrate and, with ``recover``, end the replies a crash
        left streaming); called once. StoreUnusable if this code cannot use it. Tools that
        run beside a live gateway (export, prune) open with ``recover=False``."""

    async def create(self, conversation_id: str | None = None, *, owner: str = UNOWNED) -> Conversation:
        """A new, empty conversation of ``owner`` with a new id; or the one with
        ``conversation_id``, created if absent (an existing one keeps its owner).
        StoreFull if the store may hold no more."""

    async def get(self, conversation_id: str) -> Conversation | None: ...

    async def add(self, conversation_id: str, message: StoredMessage) -> bool:
        """Insert a new message; False (and nothing written) if its id is taken.
        ConversationNotFound if the conversation does not exist."""

    async def append(
        self, conversation_id: str, message: StoredMessage, *, create: bool, history: int, owner: str = UNOWNED,
        after: str | None = None,
    ) -> Branch | None:
        """A user's message, in one step: add it (after creating the conversation with this
        id for ``owner``, if ``create``) under the active branch's last message, or with
        ``after`` under that message ("": as a new first message, an edit of the first);
        make it the active branch's last; return the last ``history`` messages of its
        branch (all if negative), ``message`` included. None (and nothing written) if its
        id is taken. ConversationNotFound if the conversation does not exist,
        MessageNotFound if ``after`` is not one of its messages."""

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        """Insert ``message``, or replace the one with the same id (checkpoints, final text).
        A reply's writes are ordered: a final one (with a ``finish_reason``) is never
        replaced (a continuation :meth:`reopen` s it first), and a checkpoint never
        replaces a longer text (such a write is dropped), so a late write cannot undo a
        newer one. A new message goes under its ``parent_id`` (it is dropped if that message
        is gone: its branch was deleted); when that is the active branch's last message, the new one becomes it (a reply
        extends the branch it answers). ConversationNotFound if the conversation does not
        exist."""

    async def delete(self, conversation_id: str, message_id: str) -> bool:
        """Remove one message; False if there was none."""

    async def history(
        self, conversation_id: str, limit: int, before: str | None = None, *, max_bytes: int | None = None
    ) -> list[StoredMessage]:
        """Up to ``limit`` messages (all if negative) of the active branch, oldest first,
        each with its ``siblings``; or of the branch ending just before message ``before``.

        With ``max_bytes``, messages are read newest first and reading stops one message
        after the text read (UTF-8) passes ``max_bytes``: a caller paging by bytes then
        knows whether older messages exist without reading them all.
        """

    async def branch(self, conversation_id: str, message_id: str, limit: int) -> Branch | None:
        """The last ``limit`` messages (all if negative) of the branch ending with
        ``message_id``, oldest first, and the conversation's instructions; None if there
        is no such message."""

    async def messages(self, conversation_id: str) -> list[StoredMessage]:
        """Every message of the conversation, all branches, in the order they were added."""

    async def select(self, conversation_id: str, message_id: str, *, descend: bool = True) -> str | None:
        """Make the branch through ``message_id`` the active one, ending at its newest
        descendant (the newest child's, down to a leaf) or, without ``descend``, at the
        message itself; return that last message's id, or None (nothing changed) if there
        is no such message. The conversation's update time is unchanged."""

    async def delete_branch(self, conversation_id: str, message_id: str) -> bool:
        """Delete the message and every message under it; False if there is no such message.
        If the active branch went with them, the newest remaining sibling's branch (or else
        the parent's) becomes active."""

    async def set_system_prompt(self, conversation_id: str, system_prompt: str, *, owner: str) -> bool:
        """Set ``owner``'s conversation's instructions ("": the configured ones again); False
        if ``owner`` has none with this id."""

    async def conversations(self, owner: str, *, limit: int, after: str | None = None, query: str = "") -> Page:
        """Up to ``limit`` of ``owner``'s conversations, most recently updated first, from
        just after the cursor ``after`` (one this store returned); with ``query``, only
        those whose title or any message contains it (case-insensitive for ASCII, at
        least). Also the cursor of the next page, None if there is none. ValueError if
        ``after`` is not a cursor of this store."""

    async def rename(self, conversation_id: str, title: str, *, owner: str) -> bool:
        """Set the title (not the update time) of ``owner``'s conversation; False if
        ``owner`` has none with this id."""

    async def remove(self, conversation_id: str, *, owner: str | None = None) -> bool:
        """Delete the conversation (``owner``'s only, if given) and its messages; False if
        there was none."""

    async def claim(self, conversation_id: str, owner: str, *, previous: str) -> bool:
        """Give the conversation of ``previous`` (:data:`UNOWNED`, say) to ``owner``; False
        (nothing changed) if there is none, or its owner is not ``previous`` (any more)."""

    async def record_usage(self, entry: UsageEntry) -> None:
        """Add ``entry`` to the ledger (it outlives the conversation)."""

    async def usage(self, subject: str | None, since: float) -> list[UsageTotal]:
        """The ledger since ``since`` (epoch seconds), summed per subject (all, or just
        ``subject``) and model, by subject then model."""

    async def prune(self, older_than: float) -> int:
        """Delete conversations idle for ``older_than`` seconds; return how many."""

    async def reopen(self, conversation_id: str, message_id: str, content: str) -> bool:
        """Make the reply ``message_id`` unfinished again, for its continuation: only if it
        was cut short (``finish_reason`` length, error or cancelled), its text is still
        ``content`` and no message follows it. False, and nothing changed, otherwise."""

    async def end_stale(self, older_than: float) -> int:
        """End the replies still unfinished that were last written more than ``older_than`` seconds
        ago (``finish_reason`` error, their text kept); return how many. Safe beside live
        gateways when ``older_than`` is longer than any reply may last (cluster mode, where
        a starting instance must not end the others' live replies as ``open`` does)."""

    async def export(self, conversation_id: str) -> dict[str, Any] | None:
        """A conversation with all its messages (every branch) as plain data, or None."""

    async def ids(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` conversation ids greater than ``after``, in order (for copies)."""

    async def restore(self, conversation: Conversation, messages: Sequence[StoredMessage]) -> bool:
        """Write ``conversation`` (its times, title, active branch and instructions as given)
        and its ``messages`` (with their parents), in order, as one atomic step; False, and nothing written, if a conversation with its
        id exists already (so a copy can be run again)."""

    async def close(self) -> None: ...


def newest_within(newest_first: Iterable[StoredMessage], max_bytes: int | None) -> list[StoredMessage]:
    """Messages taken newest first until one past the point where their text passes ``max_bytes``."""
    taken: list[StoredMessage] = []
    size, past = 0, False
    for message in newest_first:
        taken.append(message)
        if past:
            break
        size += len(message.content.encode()) + (len(message.reasoning.encode()) if message.reasoning else 0)
        past = max_bytes is not None and size > max_bytes
    return taken


def leaf_under(messages: Sequence[StoredMessage], message_id: str) -> str:
    """The newest descendant of ``message_id`` following the newest child at each step,
    among ``messages`` in the order they were added (the message itself if it has none)."""
    newest_child: dict[str, str] = {}
    for m in messages:
        newest_child[m.parent_id] = m.id
    leaf, seen = message_id, {message_id}
    while (child := newest_child.get(leaf)) is not None and child not in seen:
        leaf = child
        seen.add(child)
    return leaf


def descendants(tree: Iterable[StoredMessage], message_id: str) -> set[str]:
    """``message_id`` and the ids of every message under it in ``tree``."""
    children: dict[str, list[str]] = {}
    for m in tree:
        children.setdefault(m.parent_id, []).append(m.id)
    found: set[str] = set()
    todo = [message_id]
    while todo:
        mid = todo.pop()
        if mid not in found:
            found.add(mid)
            todo += children.get(mid, ())
    return found


def with_siblings(branch: list[StoredMessage], children: Iterable[tuple[str, str]]) -> list[StoredMessage]:
    """``branch`` with the ``siblings`` of each message that has some, from ``children``:
    (parent id, id) pairs, oldest first, covering the branch's parents."""
    by_parent: dict[str, list[str]] = {}
    for parent, child in children:
        by_parent.setdefault(parent, []).append(child)
    return [m if len(ids := by_parent.get(m.parent_id, ())) < 2 else replace(m, siblings=tuple(ids)) for m in branch]


def total_usage(entries: Iterable[UsageEntry]) -> list[UsageTotal]:
    """``entries`` summed per subject and model, in that order (the stores' SQL does the same)."""
    sums: dict[tuple[str, str], list[int]] = {}
    for e in entries:
        row = sums.setdefault((e.subject, e.model), [0, 0, 0, 0])
        row[0] += 1
        row[1] += e.prompt_tokens
        row[2] += e.completion_tokens
        row[3] += e.estimated
    return [UsageTotal(s, m, *row) for (s, m), row in sorted(sums.items())]


def title_of(content: str) -> str:
    """A conversation's title: its first user message, on one line, cut short."""
    text = " ".join(content.split())
    return text if len(text) <= _TITLE_CHARS else text[: _TITLE_CHARS - 1] + "…"


def export_document(conv: Conversation, messages: list[StoredMessage]) -> dict[str, Any]:
    return {
        "id": conv.id,
        "owner": conv.owner,
        "title": conv.title,
        "created_at": conv.created_at,
        "updated_at": conv.updated_at,
        "active": conv.active,
        "system_prompt": conv.system_prompt,
        "messages": [_exported(m) for m in messages],
    }


def _exported(m: StoredMessage) -> dict[str, Any]:
    item = {
        "id": m.id, "role": m.role, "content": m.content, "created_at": m.created_at,
        "finish_reason": m.finish_reason, "usage": dict(m.usage) if m.usage else None,
        "parent_id": m.parent_id,
    }
    if m.model:  # an assistant message stored since the model was recorded
        item["model"] = m.model
    if m.reasoning:  # a reply of a model that thinks, stored since reasoning was recorded
        item["reasoning"] = m.reasoning
    return item
