"""The ``chat.v1`` wire format: client frames in, server events out.

Pure code: :func:`parse_client` turns one frame into a typed message or raises
:class:`~gateway.errors.ProtocolError`; the ``encode_*`` functions build the
server's frames as UTF-8 JSON bytes (send them as text frames).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ErrorCode, GatewayError, ProtocolError

__all__ = [
    "SUBPROTOCOL",
    "Cancel",
    "ClientMessage",
    "Conversations",
    "Continue",
    "Delete",
    "DeleteBranch",
    "Edit",
    "Export",
    "Hello",
    "History",
    "Message",
    "Ping",
    "Refresh",
    "Regenerate",
    "Rename",
    "Resume",
    "Select",
    "Settings",
    "VoiceStart",
    "VoiceStop",
    "encode",
    "encode_delta",
    "encode_error",
    "history_items",
    "parse_client",
    "streaming_item",
]

SUBPROTOCOL = "chat.v1"
MAX_ID_CHARS = 128
MAX_TOKEN_CHARS = 8192
MAX_QUERY_CHARS = 200
MAX_TITLE_CHARS = 200
MAX_CURSOR_CHARS = 256


@dataclass(frozen=True, slots=True)
class Hello:
    token: str | None = None
    conversation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    content: str
    conversation_id: str | None = None
    model: str | None = None  # a ready.models id; None: the conversation's model
    parent_id: str | None = None  # the message it follows ("": a first one); None: the branch shown's last


@dataclass(frozen=True, slots=True)
class Cancel:
    reply_id: str


@dataclass(frozen=True, slots=True)
class Resume:
    reply_id: str
    after_seq: int


@dataclass(frozen=True, slots=True)
class Ping:
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Regenerate:
    """A new reply beside the active branch's last one (or ``reply_id``); ``id`` is echoed
    in ``reply.start``."""

    id: str
    model: str | None = None
    reply_id: str | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    """A new version of the user's message ``message_id``: a sibling with ``content``,
    answered at once; ``id`` is the new message's id."""

    id: str
    message_id: str
    content: str
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Select:
    """Show the branch through ``message_id`` (down to its newest reply)."""

    message_id: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Continue:
    """More of the reply ``reply_id``, cut short; ``id`` is echoed in ``reply.start``."""

    id: str
    reply_id: str


@dataclass(frozen=True, slots=True)
class DeleteBranch:
    """Delete the message ``message_id`` and everything under it."""

    message_id: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The open conversation's own instructions ("": the configured ones)."""

    system_prompt: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Export:
    """The open conversation as a file: ``markdown`` or ``json``, of the ``branch`` shown or the whole ``tree``."""

    format: str
    scope: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    """Page older messages: up to ``limit`` messages before message ``before``."""

    before: str | None = None
    limit: int = 50
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Refresh:
    """A new credential (a fresh JWT) for the subject already signed in."""

    token: str


@dataclass(frozen=True, slots=True)
class Conversations:
    """A page of the subject's conversations, newest first, after the cursor ``before``
    (a ``next`` the gateway sent), those matching ``query`` if given."""

    query: str = ""
    before: str | None = None
    limit: int = 30
    id: str | None = None  # echoed in an error about this request


@dataclass(frozen=True, slots=True)
class Rename:
    conversation_id: str
    title: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    conversation_id: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class VoiceStart:
    """Open a dictation ``id``: binary frames of 16-bit mono PCM at ``sample_rate`` follow."""

    id: str
    sample_rate: int | None = None  # None: the rate the gateway offers
    language: str | None = None  # a hint for the recogniser


@dataclass(frozen=True, slots=True)
class VoiceStop:
    """The dictation ``id`` is over: its final text follows."""

    id: str


ClientMessage = (
    Hello | Message | Cancel | Resume | Ping | History | Regenerate | Refresh | Conversations | Rename | Delete
    | Edit | Select | Continue | DeleteBranch | Settings | Export | VoiceStart | VoiceStop
)


def parse_client(frame: str | bytes) -> ClientMessage:
    """Parse one client frame; raise ProtocolError(bad_request) if it is wrong."""
    if isinstance(frame, bytes | bytearray | memoryview) and not isinstance(frame, str):
        raise _bad("binary frames are not supported; send JSON text frames")
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise _bad("invalid JSON") from None
    if not isinstance(obj, dict):
        raise _bad("a frame must be a JSON object")
    kind = obj.get("type")
    ref = obj.get("id") if isinstance(obj.get("id"), str) else None
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise _bad(f"unknown type {kind!r}" if isinstance(kind, str) else "missing string field 'type'", ref)
    try:
        return parser(obj)
    except ProtocolError as exc:
        exc.ref = exc.ref or ref
        exc.frame_type = kind
        raise


def _bad(message: str, ref: str | None = None) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message, ref=ref)


def _field(obj: Mapping[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    value = obj.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = {str: "a string", int: "an integer"}.get(kind, kind.__name__)
        raise _bad(f"field {name!r} must be {expected}")
    limit = {"content": None, "system_prompt": None, "token": MAX_TOKEN_CHARS, "query": MAX_QUERY_CHARS, "title": MAX_TITLE_CHARS}.get(
        name, MAX_ID_CHARS
    )
    if isinstance(value, str) and limit is not None and len(value) > limit:
        raise _bad(f"field {name!r} is longer than {limit} characters")
    if isinstance(value, str) and "\x00" in value:  # no store keeps it (PostgreSQL text refuses it)
        raise _bad(f"field {name!r} contains a NUL character")
    return value


def _hello(obj: Mapping[str, Any]) -> Hello:
    return Hello(_field(obj, "token", str, required=False), _field(obj, "conversation_id", str, required=False))


def _message(obj: Mapping[str, Any]) -> Message:
    msg_id = _field(obj, "id", str)
    content = _field(obj, "content", str)
    if not content.strip():
        raise _bad("field 'content' is empty", msg_id)
    return Message(
        msg_id, content, _field(obj, "conversation_id", str, required=False), _field(obj, "model", str, required=False),
        _field(obj, "parent_id", str, required=False),
    )


def _cancel(obj: Mapping[str, Any]) -> Cancel:
    return Cancel(_field(obj, "reply_id", str))


def _resume(obj: Mapping[str, Any]) -> Resume:
    after = _field(obj, "after_seq", int)
    if after < 0:
        raise _bad("field 'after_seq' must be >= 0")
    return Resume(_field(obj, "reply_id", str), after)


def _ping(obj: Mapping[str, Any]) -> Ping:
    value = obj.get("id")
    if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
        raise _bad("field 'id' must be a string or an integer")
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        raise _bad(f"field 'id' is longer than {MAX_ID_CHARS} characters")
    return Ping(value)


def _history(obj: Mapping[str, Any]) -> History:
    limit = obj.get("limit", 50)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
        raise _bad("field 'limit' must be an integer from 1 to 200")
    return History(_field(obj, "before", str, required=False), limit, _field(obj, "id", str, required=False))


def _regenerate(obj: Mapping[str, Any]) -> Regenerate:
    return Regenerate(
        _field(obj, "id", str), _field(obj, "model", str, required=False), _field(obj, "reply_id", str, required=False)
    )


def _edit(obj: Mapping[str, Any]) -> Edit:
    msg_id = _field(obj, "id", str)
    content = _field(obj, "content", str)
    if not content.strip():
        raise _bad("field 'content' is empty", msg_id)
    return Edit(msg_id, _field(obj, "message_id", str), content, _field(obj, "model", str, required=False))


def _select(obj: Mapping[str, Any]) -> Select:
    return Select(_field(obj, "message_id", str), _field(obj, "id", str, required=False))


def _continue(obj: Mapping[str, Any]) -> Continue:
    return Continue(_field(obj, "id", str), _field(obj, "reply_id", str))


def _delete_branch(obj: Mapping[str, Any]) -> DeleteBranch:
    return DeleteBranch(_field(obj, "message_id", str), _field(obj, "id", str, required=False))


def _settings(obj: Mapping[str, Any]) -> Settings:
    return Settings(_field(obj, "system_prompt", str).strip(), _field(obj, "id", str, required=False))


EXPORT_FORMATS, EXPORT_SCOPES = ("markdown", "json"), ("branch", "tree")


def _export(obj: Mapping[str, Any]) -> Export:
    fmt = obj.get("format", "markdown")
    scope = obj.get("scope", "branch")
    if fmt not in EXPORT_FORMATS:
        raise _bad("field 'format' must be markdown or json")
    if scope not in EXPORT_SCOPES:
        raise _bad("field 'scope' must be branch or tree")
    return Export(fmt, scope, _field(obj, "id", str, required=False))


MAX_LANGUAGE_CHARS = 35  # a BCP 47 tag


def _voice_start(obj: Mapping[str, Any]) -> VoiceStart:
    language = _field(obj, "language", str, required=False)
    tag = (language or "").replace("-", "")
    if language is not None and (len(language) > MAX_LANGUAGE_CHARS or not (tag.isascii() and tag.isalnum())):
        raise _bad("field 'language' must be a language tag such as en or zh-CN")
    return VoiceStart(_field(obj, "id", str), _field(obj, "sample_rate", int, required=False), language or None)


def _voice_stop(obj: Mapping[str, Any]) -> VoiceStop:
    return VoiceStop(_field(obj, "id", str))


def _refresh(obj: Mapping[str, Any]) -> Refresh:
    token = _field(obj, "token", str)
    if not token:
        raise _bad("field 'token' is empty")
    return Refresh(token)


def _conversations(obj: Mapping[str, Any]) -> Conversations:
    limit = obj.get("limit", 30)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise _bad("field 'limit' must be an integer from 1 to 100")
    before = obj.get("before")
    if before is not None and (not isinstance(before, str) or not 0 < len(before) <= MAX_CURSOR_CHARS):
        raise _bad("field 'before' must be a cursor the gateway sent (next)")
    query = _field(obj, "query", str, required=False) or ""
    return Conversations(" ".join(query.split()), before, limit, _field(obj, "id", str, required=False))


def _rename(obj: Mapping[str, Any]) -> Rename:
    title = " ".join(_field(obj, "title", str).split())  # one line, as titles are shown
    if not title or any(unicodedata.category(c) in _NOT_IN_A_TITLE for c in title):
        raise _bad("field 'title' must be a non-empty line of text without control characters")
    return Rename(_field(obj, "conversation_id", str), title, _field(obj, "id", str, required=False))


_NOT_IN_A_TITLE = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})  # controls, surrogates, unassigned, breaks


def _delete(obj: Mapping[str, Any]) -> Delete:
    return Delete(_field(obj, "conversation_id", str), _field(obj, "id", str, required=False))


_PARSERS: dict[str, Callable[[Mapping[str, Any]], ClientMessage]] = {
    "hello": _hello,
    "message": _message,
    "cancel": _cancel,
    "resume": _resume,
    "ping": _ping,
    "history": _history,
    "regenerate": _regenerate,
    "refresh": _refresh,
    "conversations": _conversations,
    "rename": _rename,
    "delete": _delete,
    "edit": _edit,
    "select": _select,
    "continue": _continue,
    "delete_branch": _delete_branch,
    "settings": _settings,
    "export": _export,
    "voice.start": _voice_start,
    "voice.stop": _voice_stop,
}


def encode(event_type: str, **fields: Any) -> bytes:
    """Encode a server event; fields that are None are left out."""
    body = {"type": event_type}
    body.update((k, v) for k, v in fields.items() if v is not None)
    return orjson.dumps(body)


def encode_delta(reply_id: str, seq: int, text: str) -> bytes:
    """Encode ``reply.delta``: the hot path, so no dict filtering."""
    return orjson.dumps({"type": "reply.delta", "reply_id": reply_id, "seq": seq, "text": text})


def encode_reasoning(reply_id: str, seq: int, text: str) -> bytes:
    """Encode ``reply.reasoning``: the model's thinking, numbered like deltas."""
    return orjson.dumps({"type": "reply.reasoning", "reply_id": reply_id, "seq": seq, "text": text})


def encode_error(
    exc: GatewayError, *, ref: str | None = None, reply_id: str | None = None
) -> bytes:
    """Encode an ``error`` event for ``exc``."""
    return encode(
        "error",
        code=str(exc.code),
        message=exc.message,
        id=ref,
        reply_id=reply_id,
        retry_after=exc.retry_after,
        retryable=exc.retryable,
        resets_at=exc.resets_at,
    )


def streaming_item(active: Any) -> dict[str, Any]:
    """The reply streaming in a conversation, as ``ready`` and ``branch`` show it."""
    item = {"reply_id": active.reply_id, "seq": active.seq}
    if active.parent_id:
        item["parent_id"] = active.parent_id
    if active.message_id and active.message_id != active.reply_id:
        item["continues"] = active.message_id
    return item


def history_items(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Shape stored messages as the protocol's history entries."""
    items = []
    for m in messages:
        item = {"id": m.id, "role": m.role, "content": m.content}
        if m.parent_id:
            item["parent_id"] = m.parent_id
        if len(m.siblings) > 1:  # versions: an edit's, a regenerated reply's
            item["siblings"] = list(m.siblings)
            item["sibling_index"] = m.siblings.index(m.id)
        if m.finish_reason is not None:
            item["finish_reason"] = m.finish_reason
        if m.model:  # the model a user message asked for, or the one that wrote a reply
            item["model"] = m.model
        if m.reasoning:
            item["reasoning"] = m.reasoning
        items.append(item)
    return items
