"""A conversation as a file people download: Markdown to read, JSON to keep (pure).

``branch`` is what the page shows (the active branch); ``tree`` is every message, each
with its parent, in the order they were written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from .stores import Conversation, StoredMessage, export_document

__all__ = ["EXPORT_MAX_BYTES", "EXPORT_MAX_FRAME", "Exported", "export_file"]

# A conversation larger than this (its text, or its file as sent) is exported by the
# operator's CLI: one frame of it must stay well within the output budget of all clients.
EXPORT_MAX_BYTES = 8 << 20
EXPORT_MAX_FRAME = 16 << 20
_UNSAFE = re.compile(r"[^\w\- ]+")


@dataclass(frozen=True, slots=True)
class Exported:
    filename: str
    media_type: str
    content: str


def export_file(conv: Conversation, messages: Sequence[StoredMessage], *, fmt: str, scope: str) -> Exported:
    """``messages`` (the branch, oldest first, or the whole tree) as a file named after the title."""
    stem = _UNSAFE.sub("", conv.title).strip().replace(" ", "-")[:60] or "conversation"
    if fmt == "json":
        doc = export_document(conv, list(messages))
        doc["scope"] = scope
        content = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
        return Exported(f"{stem}.json", "application/json", content)
    return Exported(f"{stem}.md", "text/markdown", _markdown(conv, messages, scope))


def _markdown(conv: Conversation, messages: Sequence[StoredMessage], scope: str) -> str:
    lines = [f"# {conv.title or 'Conversation'}", ""]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(conv.created_at))
    lines += [f"Started {when}.", ""]
    if conv.system_prompt:
        lines += ["**Instructions:**", "", _quoted(conv.system_prompt), ""]
    numbers = {m.id: n for n, m in enumerate(messages, 1)}
    for n, m in enumerate(messages, 1):
        lines += [_heading(m, n, numbers, scope), ""]
        if m.reasoning:
            lines += ["<details><summary>Thinking</summary>", "", m.reasoning, "", "</details>", ""]
        lines += [m.content or "*(no text)*", ""]
        if m.finish_reason not in (None, "stop") and m.role == "assistant":
            lines += [f"*(ended: {m.finish_reason})*", ""]
    return "\n".join(lines)


def _heading(m: StoredMessage, n: int, numbers: dict[str, int], scope: str) -> str:
    who = "User" if m.role == "user" else "Assistant" + (f" ({m.model})" if m.model else "")
    if scope == "tree":
        parent = numbers.get(m.parent_id)
        return f"## {n}. {who}" + (f" — reply to {parent}" if parent else "")
    return f"## {who}"


def _quoted(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines())
