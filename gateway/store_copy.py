"""``gateway store copy``: every conversation from one store into another, then verified.

Conversations are copied one at a time, each in one atomic write, with their ids,
titles, times and messages as they are. One already in the target is left alone, so
running the copy again (after an interruption, say) changes nothing. Then every
conversation of the source is read back from the target and compared.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EXIT_CONFIG, EXIT_STARTUP
from .stores import ConversationStore, StoredMessage, StoreUnavailable, StoreUnusable
from .stores.sqlite import SQLiteStore

__all__ = ["CopyReport", "copy", "open_location", "run"]

PAGE = 200  # conversation ids read at a time
_TIME_TOLERANCE = 1e-5  # seconds: PostgreSQL keeps microseconds, SQLite a double


@dataclass
class CopyReport:
    conversations: int = 0  # copied now
    messages: int = 0  # copied now
    present: int = 0  # already in the target, left alone
    verified: int = 0  # conversations of the source found equal in the target
    mismatched: list[str] = field(default_factory=list)  # conversations that differ in the target

    def lines(self) -> list[str]:
        lines = [
            f"copied {self.conversations} conversation(s), {self.messages} message(s)",
            f"{self.present} conversation(s) already there, left alone",
            f"verified {self.verified} conversation(s)",
        ]
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} conversation(s) differ in the target: {', '.join(self.mismatched[:10])}")
        return lines


def open_location(location: str, *, password: str = "") -> ConversationStore:
    """The store at ``location``: ``sqlite:///path/conversations.db`` or a PostgreSQL URL.
    ValueError for anything else."""
    if location.startswith("sqlite://"):
        path = location.removeprefix("sqlite://")
        if not path:
            raise ValueError("a SQLite location looks like sqlite:///var/lib/gateway/conversations.db")
        return SQLiteStore(Path(path))
    if location.startswith(("postgresql://", "postgres://")):
        from .stores.postgres import PostgresStore

        return PostgresStore(location, password=password, min_size=0, max_size=2)
    raise ValueError(f"expected sqlite:///path or postgresql://..., got {location.split('://')[0]}://...")


def run(source: str, target: str, *, password: str = "") -> int:
    """The ``gateway store copy`` command: 0 when every conversation is verified in the target."""
    try:
        stores = open_location(source, password=password), open_location(target, password=password)
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if source == target:
        print("gateway: --from and --to are the same store", file=sys.stderr)
        return EXIT_CONFIG
    try:
        report = asyncio.run(_copy_between(*stores))
    except (StoreUnavailable, StoreUnusable) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_STARTUP if isinstance(exc, StoreUnavailable) else EXIT_CONFIG
    for line in report.lines():
        print(line)
    return 1 if report.mismatched else 0


async def _copy_between(source: ConversationStore, target: ConversationStore) -> CopyReport:
    if isinstance(source, SQLiteStore) and not source.path.exists():
        raise StoreUnusable(f"no conversation store at {source.path}")
    await source.open(recover=False)
    try:
        await target.open(recover=False)
        try:
            return await copy(source, target, lambda line: print(line, file=sys.stderr))
        finally:
            await target.close()
    finally:
        await source.close()


async def copy(source: ConversationStore, target: ConversationStore, progress: Callable[[str], None]) -> CopyReport:
    """Copy every conversation of ``source`` missing from ``target``, then verify them all."""
    report = CopyReport()
    async for conversation_id in _all_ids(source):
        conv = await source.get(conversation_id)
        if conv is None:  # deleted meanwhile (a gateway still running on the source)
            continue
        messages = await source.messages(conversation_id)
        if await target.restore(conv, messages):
            report.conversations += 1
            report.messages += len(messages)
            if report.conversations % 100 == 0:
                progress(f"copied {report.conversations} conversation(s)...")
        else:
            report.present += 1
    async for conversation_id in _all_ids(source):
        if await _same(source, target, conversation_id):
            report.verified += 1
        else:
            report.mismatched.append(conversation_id)
    return report


async def _all_ids(store: ConversationStore) -> AsyncIterator[str]:
    after: str | None = None
    while True:
        page = await store.ids(after, PAGE)
        for conversation_id in page:
            yield conversation_id
        if len(page) < PAGE:
            return
        after = page[-1]


async def _same(source: ConversationStore, target: ConversationStore, conversation_id: str) -> bool:
    a, b = await source.get(conversation_id), await target.get(conversation_id)
    if a is None or b is None:
        return a is None and b is None
    if (a.title, a.owner, a.active, a.system_prompt, _close(a.created_at, b.created_at),
            _close(a.updated_at, b.updated_at)) != (b.title, b.owner, b.active, b.system_prompt, True, True):
        return False
    ours, theirs = await source.messages(conversation_id), await target.messages(conversation_id)
    return len(ours) == len(theirs) and all(_same_message(m, n) for m, n in zip(ours, theirs))


def _same_message(m: StoredMessage, n: StoredMessage) -> bool:
    return (m.id, m.parent_id, m.role, m.content, m.finish_reason, dict(m.usage or {}), m.model, m.reasoning) == (
        n.id, n.parent_id, n.role, n.content, n.finish_reason, dict(n.usage or {}), n.model, n.reasoning,
    ) and _close(m.created_at, n.created_at)


def _close(x: float, y: float) -> bool:
    return abs(x - y) <= _TIME_TOLERANCE
