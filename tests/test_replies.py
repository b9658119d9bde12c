"""The reply registry's guarantees, with an in-memory store and a scripted provider (no sockets)."""

from __future__ import annotations

import asyncio
import random
import time
import dataclasses
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

import pytest

from gateway.catalog import Catalog
from gateway.errors import ErrorCode, GatewayError, ProtocolError
from gateway.events import ReplyDelta, ReplyEnded, ReplyEvent
from gateway.producer import Producer
from gateway.providers import ChatMessage, Chunk, Provider, Usage
from gateway.replies import RegistryLimits, Reply, ReplyRegistry
from gateway.routing import Health
from gateway.slots import Slots
from gateway.reply import ReplyState, StopReason
from gateway.stores import Branch, StoredMessage, StoreUnavailable
from gateway.stores.memory import MemoryStore

LIMITS = RegistryLimits(
    max_replies=10, max_reply_chars=10_000, max_reply_seconds=10, resume_grace=0, checkpoint_interval=1,
    system_prompt="", context_max_messages=10, context_max_chars=10_000,
)


@dataclass(frozen=True)
class Terms:
    provider: Provider
    limits: RegistryLimits = LIMITS

    @property
    def catalog(self) -> Catalog:
        return Catalog.single(self.provider)


def alone(conversation_id: str, message_id: str, max_chars: int, provider: Provider) -> Reply:
    """A reply that ``provider`` alone answers."""
    catalog = Catalog.single(provider)
    route = catalog.route(catalog.default, Health(), now=0.0, budget=60.0, rng=random.Random(0))
    return Reply(conversation_id, message_id, max_chars, catalog, route)


def terms(provider: Provider) -> Callable[[], Terms]:
    fixed = Terms(provider)
    return lambda: fixed


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
    registry = ReplyRegistry(terms(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop", usage=usage))), store)
    broken, other = Watcher(fail_at_end=True), Watcher()
    await registry.watch("c1", other, "anonymous")  # another tab
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "hello"), broken, new=True))
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert broken.ended == other.ended == 1 and other.text == "hi"
    assert registry.in_flight == 0 and await registry.streaming("c1") is None
    await _expired(registry, reply.id)
    assert [m.content for m in await store.history("c1", 10)] == ["hello", "hi"]
    await registry.close()


async def test_an_ended_reply_keeps_no_watchers() -> None:
    store = MemoryStore(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(terms(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop"))), store)
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
    registry = ReplyRegistry(terms(Waits()), store)
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
    registry = ReplyRegistry(terms(Waits()), store)
    first = Watcher()
    reply_id = await registry.start("c1", StoredMessage("u1", "user", "hello"), first, new=True)
    while first.text != "one ":
        await asyncio.sleep(0)
    assert await registry.streaming("c1") == (reply_id, 1, 4, "u1", reply_id)
    for conversation_id, after_seq, code in (("c2", 0, ErrorCode.RESUME_UNAVAILABLE), ("c1", 2, ErrorCode.BAD_REQUEST)):
        with pytest.raises(GatewayError) as info:
            await registry.follow(reply_id, conversation_id, Watcher(), after_seq)
        assert info.value.code is code
    with pytest.raises(GatewayError) as info:
        await registry.follow("0" * 32, "c1", Watcher(), 0)
    assert info.value.code is ErrorCode.RESUME_UNAVAILABLE
    late = Watcher()
    await registry.follow(reply_id, "c1", late, 0)
    assert late.text == "one "
    with pytest.raises(ProtocolError) as not_found:
        await registry.cancel(reply_id, "c2")
    assert not_found.value.code is ErrorCode.NOT_FOUND
    reply = _reply(registry, reply_id)
    await registry.cancel(reply_id, "c1")
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
    registry = ReplyRegistry(terms(Scripted(Chunk(text="hi"), Chunk(finish_reason="length"))), store)
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "hello"), Listener(), new=True))
    assert reply.state is ReplyState.STREAMING
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert reply.state is ReplyState.ENDED and order[-2:] == ["save length", "ended length"]
    await registry.close()


async def test_watchers_get_replies_started_in_their_conversation_only() -> None:
    store = MemoryStore(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(terms(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop"))), store)
    tab, elsewhere, gone = Watcher(), Watcher(), Watcher()
    await registry.watch("c1", tab, "token:alice")
    await registry.watch("c2", elsewhere, "token:bob")
    await registry.watch("c1", gone, "token:alice")
    registry.unwatch("c1", gone)
    assert (await registry.watched("c1"), await registry.watched("c2")) == ("token:alice", "token:bob")
    assert await registry.watched("c3") is None
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "hello"), Watcher(), new=True))
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert (tab.text, tab.ended) == ("hi", 1)
    assert (elsewhere.text, elsewhere.ended, gone.text, gone.ended) == ("", 0, "", 0)
    registry.unwatch("c2", elsewhere)
    assert await registry.watched("c2") is None
    await registry.close()


async def test_a_reply_keeps_the_terms_it_was_admitted_with() -> None:
    """A reload swaps the terms: a streaming reply keeps its provider (and model), the
    next one gets the new provider and the new limits."""
    class Endless(Scripted):
        async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[list[Chunk], None]:
            yield [Chunk(text="old")]
            await asyncio.Event().wait()

    store = MemoryStore(max_conversations=10, max_messages=100)
    old, new = Endless(), Scripted(Chunk(text="new"), Chunk(finish_reason="stop"))
    new.model = "m-new"
    current = Terms(old)
    registry = ReplyRegistry(lambda: current, store)
    first = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "a"), Watcher(), new=True))
    current = Terms(new, dataclasses.replace(LIMITS, max_replies=1))
    with pytest.raises(GatewayError) as info:  # the new limit counts the reply in flight
        await registry.start("c2", StoredMessage("u2", "user", "b"), Watcher(), new=True)
    assert info.value.code is ErrorCode.OVERLOADED
    assert first.provider is old
    await registry.cancel(first.id, "c1")
    await asyncio.wait_for(first.ended.wait(), 5)
    second = _reply(registry, await registry.start("c2", StoredMessage("u2", "user", "b"), Watcher(), new=True))
    await asyncio.wait_for(second.ended.wait(), 5)
    assert second.provider is new
    assert [(m.content, m.model) for m in await store.history("c2", 10)] == [("b", None), ("new", "m-new")]
    await registry.close()


class Stalls(MemoryStore):
    """A store whose ``append`` waits until released: a message being stored."""

    def __init__(self) -> None:
        super().__init__(max_conversations=10, max_messages=100)
        self.adding, self.release = asyncio.Event(), asyncio.Event()

    async def append(
        self, conversation_id: str, message: StoredMessage, *, create: bool, history: int, owner: str = "",
        after: str | None = None,
    ) -> Branch | None:
        self.adding.set()
        await self.release.wait()
        return await super().append(conversation_id, message, create=create, history=history, owner=owner, after=after)


async def test_a_message_cancelled_while_stored_frees_its_slot() -> None:
    store = Stalls()
    registry = ReplyRegistry(terms(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop"))), store)
    storing = asyncio.create_task(registry.start("c1", StoredMessage("u1", "user", "a"), Watcher(), new=True))
    await asyncio.wait_for(store.adding.wait(), 5)
    assert registry.in_flight == 1
    storing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await storing
    assert registry.in_flight == 0 and await registry.streaming("c1") is None
    store.release.set()
    reply = _reply(registry, await registry.start("c1", StoredMessage("u2", "user", "b"), Watcher(), new=True))
    await asyncio.wait_for(reply.ended.wait(), 5)
    await registry.close()


@pytest.mark.parametrize("stop", ["cancel", "drain"])
async def test_a_reply_stopped_before_its_producer_ran_still_ends(stop: str) -> None:
    """A plain-mode client that sends and hangs up at once, or a drain right after a
    message: the stop comes before the producer's first step. The reply must still end,
    be stored and free its slot (a task cancelled before it runs never runs at all)."""
    store = MemoryStore(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(terms(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop"))), store)
    watcher = Watcher()
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "a"), watcher, new=True))
    if stop == "cancel":
        await registry.cancel(reply.id, "c1")
    else:
        reply.stop(StopReason.SHUTDOWN)  # what the drain does to each reply in flight
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert (reply.finish_reason, watcher.ended, registry.in_flight) == (
        ("cancelled" if stop == "cancel" else "error"), 1, 0,
    )
    assert [m.finish_reason for m in await store.history("c1", 10)] == [None, reply.finish_reason]
    await registry.close()


def test_a_slot_is_freed_only_by_the_reply_that_holds_it() -> None:
    """A late end of an old reply must not free the slot a newer reply of the same
    conversation holds (that would let two replies stream in one conversation)."""
    gauge = Gauge()
    slots = Slots(gauge)
    old, new = (alone("c1", f"u{i}", 100, Scripted()) for i in (1, 2))
    slots.take(old, max_replies=2)
    with pytest.raises(ProtocolError) as busy:
        slots.take(new, max_replies=2)
    assert busy.value.code is ErrorCode.BUSY
    slots.free(old)
    slots.take(new, max_replies=2)
    slots.free(old)  # again, late
    assert slots.of("c1") is new and len(slots) == 1 and gauge.value == 1


class Gauge:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class Away(MemoryStore):
    """A store that cannot be reached for its next ``failures`` saves (a database restarting)."""

    def __init__(self, failures: int) -> None:
        super().__init__(max_conversations=10, max_messages=100)
        self.failures = failures

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("PostgreSQL: connection refused")
        await super().save(conversation_id, message)


@pytest.mark.parametrize(("failures", "stored"), [(2, True), (5, False)])
async def test_a_final_save_is_retried_while_the_store_is_away(failures: int, stored: bool) -> None:
    """Bounded: three tries here. Stored on the third, the reply ends as usual; never
    stored, its followers are told (and the history keeps the truth: no final text)."""
    store = Away(0)
    limits = dataclasses.replace(LIMITS, save_retry_delays=(0, 0))
    registry = ReplyRegistry(lambda: Terms(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop")), limits), store)
    watcher = Watcher()
    reply_id = await registry.start("c1", StoredMessage("u1", "user", "hello"), watcher, new=True)
    store.failures = failures
    reply = _reply(registry, reply_id)
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert (reply.finish_reason, watcher.ended, registry.in_flight) == ("stop", 1, 0)
    history = await store.history("c1", 10)
    if stored:
        assert reply.error is None and [(m.content, m.finish_reason) for m in history] == [
            ("hello", None), ("hi", "stop"),
        ]
    else:
        assert reply.error is not None and reply.error.code is ErrorCode.INTERNAL
        assert [m.content for m in history] == ["hello"]
    await registry.close()


class Hangs(MemoryStore):
    """A store whose writes never answer (a frozen database) once ``frozen`` is set."""

    frozen = False

    async def save(self, conversation_id: str, message: StoredMessage) -> None:
        if self.frozen:
            await asyncio.Event().wait()
        await super().save(conversation_id, message)


async def test_a_final_save_that_never_answers_gives_up_at_its_deadline() -> None:
    store = Hangs(max_conversations=10, max_messages=100)
    limits = dataclasses.replace(LIMITS, save_deadline=0.05)
    registry = ReplyRegistry(lambda: Terms(Scripted(Chunk(text="hi"), Chunk(finish_reason="stop")), limits), store)
    watcher = Watcher()
    reply_id = await registry.start("c1", StoredMessage("u1", "user", "hello"), watcher, new=True)
    store.frozen = True
    reply = _reply(registry, reply_id)
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert reply.error is not None and "could not be stored" in reply.error.message
    assert (watcher.ended, registry.in_flight) == (1, 0), "the chat is told, the slot freed"
    await registry.close()


async def test_nul_from_the_upstream_is_stored_and_shown_as_a_replacement_character() -> None:
    store = MemoryStore(max_conversations=10, max_messages=100)
    registry = ReplyRegistry(terms(Scripted(Chunk(text="a\x00b"), Chunk(finish_reason="stop"))), store)
    watcher = Watcher()
    reply = _reply(registry, await registry.start("c1", StoredMessage("u1", "user", "hello"), watcher, new=True))
    await asyncio.wait_for(reply.ended.wait(), 5)
    assert watcher.text == "a\ufffdb"
    assert (await store.history("c1", 1))[0].content == "a\ufffdb"
    await registry.close()


@pytest.mark.parametrize("shared_ticks", [True, False])
async def test_a_reply_checkpoints_once_per_interval_at_most(shared_ticks: bool) -> None:
    """Scheduling again at once (a save that returned within the same millisecond, as
    uvloop's clock allows) never reuses a tick: the next checkpoint is an interval later."""
    reply = alone("c1", "u1", 1000, Scripted())
    producer = Producer(
        reply, MemoryStore(max_conversations=1, max_messages=10), [], max_seconds=10,
        checkpoint_interval=0.5, on_end=lambda r: None, shared_ticks=shared_ticks,
    )
    loop = asyncio.get_running_loop()
    whens = []
    for _ in range(3):
        producer._schedule_checkpoint()
        timer = producer._timer
        assert timer is not None
        whens.append(timer.when())
        timer.cancel()
        producer._timer = None
        producer._checkpointed_at = time.monotonic()  # as after a save
    if shared_ticks:
        assert [round(w / 0.5, 6) % 1 for w in whens] == [0, 0, 0], "on the shared ticks"
        assert whens[1] - whens[0] == pytest.approx(0.5) and whens[2] - whens[1] == pytest.approx(0.5)
    else:
        assert all(w >= loop.time() + 0.4 for w in whens), "an interval after the last save"
