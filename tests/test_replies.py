"""The reply registry's guarantees, with an in-memory store and a scripted provider (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from gateway.errors import ErrorCode, GatewayError, ProtocolError
from gateway.events import ReplyDelta, ReplyEnded, ReplyEvent
from gateway.providers import ChatMessage, Chunk, Usage
from gateway.replies import RegistryLimits, Reply, ReplyRegistry
from gateway.reply import ReplyState
from gateway.stores import StoredMessage
from gateway.stores.memory import MemoryStore

LIMITS = RegistryLimits(
    max_replies=10, max_reply_chars=10_000, max_reply_seconds=10, resume_grace=0, checkpoint_interval=1,
    system_prompt="", context_max_messages=10, context_max_chars=10_000,
)


class Scripted:
    name, model = "scripted", "m"

    def __init__(self, *chunks: Chunk) -> None:
        self.chunks = chunks

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[list[Chunk], None]:
        for chunk in self.chunks:
            yield [chunk]


class Watcher:
    def __init__(self, fail_at_end: bool = False) -> None:
        self.text, self.ended, self.fail_at_end = "", 0, fail_at_end

    def reply_event(self, event: ReplyEvent) -> None:
        if isinstance(event, ReplyDelta):
            self.text += event.text
        elif isinstance(event, ReplyEnded):
            self.ended += 1
            if self.fail_at_end:
                raise RuntimeError("a watcher that breaks")


def _reply(registry: ReplyRegistry, reply_id: str) -> Reply:
    reply = registry.get(reply_id)
    assert reply is not None
    return reply


async def _expired(registry: ReplyRegistry, reply_id: str) -> None:
    async def wait() -> None:
        while registry.get(reply_id) is not None:
            await asyncio.sleep(0)

    await asyncio.wait_for(wait(), 5)


@pytest.mark.parametrize("usage", [Usage(2**63, 2**63), Usage(-5, -1)])
async def test_a_reply_ends_whatever_fails_at_its_end(usage: Usage) -> None:
    store = MemoryStore(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop", usage=usage)), store, LIMITS)
    broken, other = Watcher(fail_at_end=True), Watcher()
    registry.watch("c1", other)  # another tab
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "hello"), broken, new=True))
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert broken.ended == other.ended == 1 and other.text == "hi"
    assert registry.in_flight == 0 and registry.streaming("c1") is None
    await _expired(registry, reply.id)
    assert [m.content for m in await store.history("c1", 10)] == ["hello", "hi"]
    await registry.close()


async def test_an_ended_reply_keeps_no_watchers() -> None:
    store = MemoryStore(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop")), store, LIMITS)
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "hello"), Watcher(), new=True))
    await asyncio.wait_for(reply.ended.wait(), 5)
    late = Watcher()
    reply.subscribe(late, after_seq=0)
    assert late.text == "hi" and late.ended == 1 and not reply.subscribers
    await registry.close()


async def test_hurry_ends_the_drain_at_once_and_stores_what_streamed() -> None:
    gate = asyncio.Event()

    class Waits(Scripted):
        async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[list[Chunk], None]:
            yield [Chunk(text="partial")]
            await gate.wait()
            yield [Chunk(text=" never")]

    store = MemoryStore(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(Waits(), store, LIMITS)
    watcher = Watcher()
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "hello"), watcher, new=True))
    while watcher.text != "partial":
        await asyncio.sleep(0)
    hurry = asyncio.Event()
    hurry.set()
    await asyncio.wait_for(registry.drain(3600, hurry), 5)
    assert reply.finish_reason == "error" and reply.ended.is_set()
    stored = (await store.history("c1", 10))[-1]
    assert stored.content == "partial" and stored.finish_reason == "error"
    await registry.close()


async def test_following_and_cancelling_by_id() -> None:
    gate = asyncio.Event()

    class Waits(Scripted):
        async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[list[Chunk], None]:
            yield [Chunk(text="one ")]
            await gate.wait()
            yield [Chunk(text="two")]

    store = MemoryStore(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(Waits(), store, LIMITS)
    first = Watcher()
    reply_id = await registry.start("c1", StoredMessage("u1", "user", "hello"), first, new=True)
    while first.text != "one ":
        await asyncio.sleep(0)
    assert registry.streaming("c1") == (reply_id, 1, 4)
    for conversation_id, after_seq, code in (("c2", 0, ErrorCode.RESUME_UNAVAILABLE), ("c1", 2, ErrorCode.BAD_REQUEST)):
        with pytest.raises(GatewayError) as info:
            registry.follow(reply_id, conversation_id, Watcher(), after_seq)
        assert info.value.code is code
    with pytest.raises(GatewayError) as info:
        registry.follow("0" * 32, "c1", Watcher(), 0)
    assert info.value.code is ErrorCode.RESUME_UNAVAILABLE
    late = Watcher()
    registry.follow(reply_id, "c1", late, 0)
    assert late.text == "one "
    with pytest.raises(ProtocolError) as not_found:
        registry.cancel(reply_id, "c2")
    assert not_found.value.code is ErrorCode.NOT_FOUND
    reply = _reply(registry, reply_id)
    registry.cancel(reply_id, "c1")
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert first.ended == late.ended == 1 and reply.finish_reason == "cancelled"
    await registry.close()


async def test_followers_hear_the_end_only_after_the_final_save() -> None:
    order: list[str] = []

    class Recording(MemoryStore):
        async def save(self, conversation_id: str, message: StoredMessage) -> None:
            await super().save(conversation_id, message)
            order.append(f"save {message.finish_reason}")

    class Listener(Watcher):
        def reply_event(self, event: ReplyEvent) -> None:
            if isinstance(event, ReplyEnded):
                order.append(f"ended {event.finish_reason}")

    store = Recording(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(Scripted(Chunk(text="hi"), Chunk(finish_reason="length")), store, LIMITS)
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "hello"), Listener(), new=True))
    assert reply.state is ReplyState.STREAMING
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert reply.state is ReplyState.ENDED and order[-2:] == ["save length", "ended length"]
    await registry.close()


async def test_watchers_get_replies_started_in_their_conversation_only() -> None:
    store = MemoryStore(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop")), store, LIMITS)
    tab, elsewhere, gone = Watcher(), Watcher(), Watcher()
    registry.watch("c1", tab)
    registry.watch("c2", elsewhere)
    registry.watch("c1", gone)
    registry.unwatch("c1", gone)
    assert registry.watched("c1") and registry.watched("c2") and not registry.watched("c3")
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "hello"), Watcher(), new=True))
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert (tab.text, tab.ended) == ("hi", 1)
    assert (elsewhere.text, elsewhere.ended, gone.text, gone.ended) == ("", 0, "", 0)
    registry.unwatch("c2", elsewhere)
    assert not registry.watched("c2")
    await registry.close()
