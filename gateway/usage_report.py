"""``gateway usage``: the ledger, summed per subject and model, as a table."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence

from . import config
from .errors import EXIT_CONFIG, EXIT_STARTUP
from .stores import StoreUnavailable, StoreUnusable, UsageTotal, make_store

__all__ = ["format_table", "run"]

_HEADER = ("subject", "model", "replies", "prompt", "completion", "total", "estimated")


def format_table(totals: Sequence[UsageTotal]) -> str:
    """The totals as aligned columns (numbers right-aligned), with a sum line when there
    are several rows; ``estimated`` counts the replies whose tokens were estimated."""
    rows = [
        (t.subject, t.model, t.replies, t.prompt_tokens, t.completion_tokens, t.prompt_tokens + t.completion_tokens,
         t.estimated)
        for t in totals
    ]
    if len(rows) > 1:
        rows.append(("all", "", *(sum(int(r[i]) for r in rows) for i in range(2, 7))))  # type: ignore[arg-type]
    cells = [_HEADER, *[tuple(f"{c:,}" if isinstance(c, int) else str(c) for c in r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADER))]
    lines = [
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def run(cfg: config.Config, subject: str | None, since: str) -> int:
    """Print the ledger since ``since`` (a duration: ``7d``, ``12h``) for one subject or all."""
    try:
        age = config.parse_duration(since)
    except ValueError as exc:
        print(f"gateway: --since: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if cfg.store.backend == "memory":
        print("gateway: the store backend is memory: the ledger is not kept", file=sys.stderr)
        return EXIT_CONFIG
    if cfg.store.backend == "sqlite" and not cfg.store.path.exists():
        print(f"gateway: no conversation store at {cfg.store.path}", file=sys.stderr)
        return EXIT_CONFIG

    async def read() -> list[UsageTotal]:
        store = make_store(cfg)
        await store.open(recover=False)
        try:
            return await store.usage(subject, time.time() - age)
        finally:
            await store.close()

    try:
        totals = asyncio.run(read())
    except (StoreUnavailable, StoreUnusable) as exc:
        print(f"gateway: the conversation store: {exc}", file=sys.stderr)
        return EXIT_STARTUP if isinstance(exc, StoreUnavailable) else EXIT_CONFIG
    if not totals:
        print(f"no usage{f' by {subject}' if subject else ''} in the last {since}")
        return 0
    sys.stdout.write(format_table(totals))
    return 0
