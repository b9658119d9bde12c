"""What the instances of a cluster keep in Redis, and what they tell each other (pure).

Keys (all under ``gateway:``):

- ``cluster``: a random token set once; another one (or none) means Redis lost its data;
- ``instances``: the ids of the instances; ``instance:<id>``: an instance's lease (it
  expires unless renewed); ``owned:<id>``: the replies an instance produces;
- ``reply:<id>``: a reply's state (a hash: conversation, owner, fencing epoch, last
  ``seq``, state, its end); ``log:<id>``: its deltas (a stream, entry ``<seq>-0``);
- ``slot:<conversation>``: the reply streaming in a conversation (one at a time);
- ``open:<conversation>``: a new conversation some connection holds, not stored yet.

Channels: ``gateway:r:<reply>`` (deltas and the end), ``gateway:c:<conversation>``
(replies starting), ``gateway:i:<instance>`` (stop requests for the owner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ErrorCode, GatewayError
from ..events import ReplyEnded, ReplyStarted
from ..providers import Usage

__all__ = [
    "CLUSTER",
    "INSTANCES",
    "RemoteEnd",
    "conversation_channel",
    "decode_end",
    "decode_start",
    "encode_end",
    "encode_start",
    "instance_channel",
    "lease",
    "log",
    "open_key",
    "owned",
    "reply",
    "reply_channel",
    "slot",
]

PREFIX = "gateway:"
CLUSTER = PREFIX + "cluster"
INSTANCES = PREFIX + "instances"


def lease(instance: str) -> str:
    return f"{PREFIX}instance:{instance}"


def owned(instance: str) -> str:
    return f"{PREFIX}owned:{instance}"


def reply(reply_id: str) -> str:
    return f"{PREFIX}reply:{reply_id}"


def log(reply_id: str) -> str:
    return f"{PREFIX}log:{reply_id}"


def slot(conversation_id: str) -> str:
    return f"{PREFIX}slot:{conversation_id}"


def open_key(conversation_id: str) -> str:
    return f"{PREFIX}open:{conversation_id}"


def reply_channel(reply_id: str) -> str:
    return f"{PREFIX}r:{reply_id}"


def conversation_channel(conversation_id: str) -> str:
    return f"{PREFIX}c:{conversation_id}"


def instance_channel(instance: str) -> str:
    return f"{PREFIX}i:{instance}"


@dataclass(frozen=True, slots=True)
class RemoteEnd:
    """A reply's end as Redis keeps it: the ``seq`` of its last delta, and the event."""

    seq: int
    event: ReplyEnded


def encode_end(seq: int, event: ReplyEnded) -> bytes:
    error = event.error
    return orjson.dumps({
        "seq": seq,
        "message_id": event.message_id,
        "finish_reason": event.finish_reason,
        "usage": event.usage.as_dict() if event.usage else None,
        "estimated": event.usage.estimated if event.usage else None,
        "model": event.model,
        "fallback_from": event.fallback_from,
        "cost": event.cost,
        "error": None if error is None else {
            "code": str(error.code), "message": error.message, "retryable": error.retryable,
            "retry_after": error.retry_after,
        },
    })


def decode_end(reply_id: str, data: bytes) -> RemoteEnd:
    doc: dict[str, Any] = orjson.loads(data)
    error = doc.get("error")
    usage = doc.get("usage")
    event = ReplyEnded(
        reply_id,
        str(doc["message_id"]),
        str(doc["finish_reason"]),
        Usage.of(usage, bool(doc.get("estimated"))) if usage else None,
        GatewayError(
            ErrorCode(error["code"]), error["message"], retryable=error["retryable"], retry_after=error["retry_after"]
        ) if error else None,
        doc.get("model"),
        doc.get("fallback_from"),
        doc.get("cost"),
    )
    return RemoteEnd(int(doc["seq"]), event)


def encode_start(event: ReplyStarted, owner: str) -> bytes:
    return orjson.dumps({**event._asdict(), "owner": owner})


def decode_start(data: bytes) -> tuple[ReplyStarted, str]:
    """A start record; fields a newer instance added are ignored (a rolling upgrade)."""
    doc: dict[str, Any] = orjson.loads(data)
    owner = str(doc.pop("owner"))
    return ReplyStarted(**{k: v for k, v in doc.items() if k in ReplyStarted._fields}), owner
