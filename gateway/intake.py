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
from .stores import ConversationNotFound, ConversationStore, StoredMessage, StoreFull, StoreUnavailable

__all__ = ["add_message", "context_of", "store_errors", "take_back_reply"]

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
    context_messages: int,
) -> list[StoredMessage]:
    """Store the user's ``message`` (creating the conversation for ``owner`` first if
    ``new``) and return the history the reply answers, newest last."""
    history = await store.append(conversation_id, message, create=new, history=context_messages, owner=owner)
    if history is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a message with this id is already in the conversation")
    return history


async def take_back_reply(
    store: ConversationStore, conversation_id: str, context_messages: int, model: str | None = None
) -> tuple[list[StoredMessage], str | None]:
    """Delete the conversation's last reply (if the last message is one) for a
    regenerate; return the history to answer again and the id of the deleted reply.
    With ``model``, the user's message asks for that model from now on (stored: the
    conversation's model is its latest message's)."""
    history = list(await store.history(conversation_id, context_messages + 1))
    if not history:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "there is no reply to regenerate")
    replaced = history.pop().id if history[-1].role == "assistant" else None
    if model is not None and history and history[-1].role == "user" and history[-1].model != model:
        history[-1] = dataclasses.replace(history[-1], model=model)
        await store.save(conversation_id, history[-1])  # before the delete: a failure changes nothing
    if replaced is not None:
        await store.delete(conversation_id, replaced)
    return history, replaced


def context_of(history: list[StoredMessage], limits: RegistryLimits, model: Model) -> Sequence[ChatMessage]:
    """The messages sent upstream for ``history``: the model's system prompt (or the
    default) first, bounded."""
    return build_context(
        history,
        system_prompt=limits.system_prompt if model.system_prompt is None else model.system_prompt,
        max_messages=limits.context_max_messages,
        max_chars=limits.context_max_chars,
    )
