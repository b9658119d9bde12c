"""Before a reply starts: the user's message stored, the history read, the context
built, and store failures turned into what the client is told.

Every reply bus prepares its replies this way; it only decides where they run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import structlog

from .catalog import Model
from .context import build_context
from .errors import ErrorCode, GatewayError, ProtocolError
from .providers import ChatMessage
from .runtime import RegistryLimits
from .stores import (
    CONTINUABLE,
    Branch,
    ConversationNotFound,
    ConversationStore,
    MessageNotFound,
    StoredMessage,
    StoreFull,
    StoreUnavailable,
)

__all__ = [
    "add_message", "answer_again", "answered_again", "context_of", "continued", "edited_parent",
    "reopened", "store_errors",
]

_log: Any = structlog.get_logger("gateway.replies")


@contextlib.contextmanager
def store_errors(conversation_id: str) -> Iterator[None]:
    """Map what a store raises to the error the client gets; log what is unexpected."""
    try:
        yield
    except GatewayError:
        raise
    except ConversationNotFound:
        raise ProtocolError(ErrorCode.NOT_FOUND, "this conversation no longer exists") from None
    except StoreUnavailable as exc:
        _log.warning("store_unavailable", conversation_id=conversation_id, error=str(exc))
        raise GatewayError(
            ErrorCode.OVERLOADED, "conversations cannot be stored right now; try again shortly", retry_after=5,
        ) from None
    except StoreFull:
        raise GatewayError(
            ErrorCode.OVERLOADED, "the gateway holds as many conversations as it may; try again later",
            retry_after=60,
        ) from None
    except Exception:
        _log.exception("store_failed", conversation_id=conversation_id)
        raise GatewayError(ErrorCode.INTERNAL, "the message could not be stored; try again") from None


async def add_message(
    store: ConversationStore, conversation_id: str, message: StoredMessage, *, new: bool, owner: str,
    context_messages: int, after: str | None = None,
) -> Branch:
    """Store the user's ``message`` (creating the conversation for ``owner`` first if
    ``new``) under the active branch's last message, or ``after`` that one (an edit);
    return the branch the reply answers."""
    try:
        branch = await store.append(
            conversation_id, message, create=new, history=context_messages, owner=owner, after=after
        )
    except MessageNotFound:
        raise ProtocolError(ErrorCode.NOT_FOUND, "no such message in this conversation") from None
    if branch is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a message with this id is already in the conversation")
    return branch


async def edited_parent(store: ConversationStore, conversation_id: str, message_id: str) -> str:
    """The parent of the user's message ``message_id``, which an edit of it goes under."""
    found = await store.branch(conversation_id, message_id, 1)
    if found is None or not found.messages:
        raise ProtocolError(ErrorCode.NOT_FOUND, "no such message in this conversation")
    if found.messages[-1].role != "user":
        raise ProtocolError(ErrorCode.BAD_REQUEST, "only a user's message can be edited")
    return found.messages[-1].parent_id


async def answered_again(
    store: ConversationStore, conversation_id: str, context_messages: int, reply_id: str | None
) -> tuple[Branch, str | None]:
    """For a regenerate: the branch ending with the user's message that ``reply_id`` (by
    default the active branch's last reply) answers, and that reply's id (None if the
    branch ends with the user's message). Nothing is written."""
    if reply_id is None:
        last = await store.history(conversation_id, 1)
        if not last:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "there is no reply to regenerate")
        reply_id = last[0].id
    found = await store.branch(conversation_id, reply_id, context_messages + 1)
    if found is None or not found.messages:
        raise ProtocolError(ErrorCode.NOT_FOUND, "no such message in this conversation")
    messages = list(found.messages)
    replaced = messages.pop().id if messages[-1].role == "assistant" else None
    if not messages or messages[-1].role != "user":
        raise ProtocolError(ErrorCode.BAD_REQUEST, "there is no user's message to answer again")
    return Branch(messages, found.system_prompt), replaced


async def answer_again(
    store: ConversationStore, conversation_id: str, branch: Branch, model: str | None
) -> None:
    """Show the branch ending with its user's message (the new reply goes under it, beside
    the old one); with ``model``, that message asks for it from now on (stored: the
    conversation's model is its latest message's)."""
    question = branch.messages[-1]
    if await store.select(conversation_id, question.id, descend=False) is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, "no such message in this conversation")
    if model is not None and question.model != model:
        branch.messages[-1] = dataclasses.replace(question, model=model)
        await store.save(conversation_id, branch.messages[-1])


async def continued(
    store: ConversationStore, conversation_id: str, context_messages: int, reply_id: str, max_chars: int
) -> Branch:
    """For a continue: the branch ending with the reply ``reply_id``, which must have been
    cut short (``length``, ``error``, ``cancelled``) and have room to grow."""
    found = await store.branch(conversation_id, reply_id, context_messages + 1)
    if found is None or not found.messages:
        raise ProtocolError(ErrorCode.NOT_FOUND, "no such reply in this conversation")
    partial = found.messages[-1]
    if partial.role != "assistant" or partial.finish_reason not in CONTINUABLE:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "only a reply that ended with length, error or cancelled can be continued"
        )
    if len(partial.content) + len(partial.reasoning or "") >= max_chars:
        raise ProtocolError(ErrorCode.TOO_LARGE, "this reply is as long as a reply may be")
    return found


async def reopened(store: ConversationStore, conversation_id: str, partial: StoredMessage) -> None:
    """Make the reply ``partial`` unfinished again for its continuation, unless a message
    follows it or it changed since it was read (another continuation won)."""
    if not await store.reopen(conversation_id, partial.id, partial.content):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            "only the last reply of a branch can be continued, as it is stored: reload the conversation",
        )


def context_of(branch: Branch, limits: RegistryLimits, model: Model) -> Sequence[ChatMessage]:
    """The messages sent upstream for ``branch``: the conversation's instructions, else the
    model's, else the configured ones, first; bounded."""
    system_prompt = branch.system_prompt or (limits.system_prompt if model.system_prompt is None else model.system_prompt)
    return build_context(
        branch.messages,
        system_prompt=system_prompt,
        max_messages=limits.context_max_messages,
        max_chars=limits.context_max_chars,
    )
