"""Capacity limits and internal failures: overloaded and internal, nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import StartGateway, openai_env
from fakeupstream import FakeUpstream, Pause, Script, openai_sse

from gateway.stores import Branch, Conversation, StoredMessage, StoreUnavailable
from gateway.stores.memory import MemoryStore


async def test_max_replies_gives_overloaded(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([openai_sse(["a"], finish=None, usage=None, done=False), Pause(gate), openai_sse(["b"])]))
    gw = await start_gateway(openai_env(upstream), toml="[limits]\nmax_replies = 1\n")
    async with gw.chat() as first, gw.chat() as second:
        await first.hello()
        await first.send(type="message", id="m1", content="one")
        await first.expect("reply.start")
        conversation_id = (await second.hello())["conversation_id"]
        await second.send(type="message", id="m2", content="two")
        error = await second.expect("error")
        assert error["code"] == "overloaded" and error["retryable"] is True and error["id"] == "m2"
        assert error["retry_after"] > 0
        gate.set()
        await first.until_done()
        assert (await second.hello(conversation_id))["history"] == [], "the refused message was not stored"


class BrokenStore(MemoryStore):
    """A store whose writes fail, as a full disk would."""

    async def append(self, *args: Any, **kwargs: Any) -> Branch | None:
        raise OSError("disk full")


async def test_store_failure_is_internal_and_connection_stays(start_gateway: StartGateway) -> None:
    store = BrokenStore(max_conversations=10, max_messages=10)
    gw = await start_gateway(toml="[provider]\ndemo_delay_ms = 0\n", store=store)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="message", id="m1", content="hi")
        error = await chat.expect("error")
        assert error["code"] == "internal" and error["retryable"] is True and error["id"] == "m1"
        assert "disk" not in error["message"], "internal details stay in the log"
        await chat.send(type="ping")
        await chat.expect("pong")
        await chat.send(type="message", id="m2", content="again")
        assert (await chat.expect("error"))["code"] == "internal", "no reply slot leaked: not busy"


class AwayStore(MemoryStore):
    """A store that cannot be reached (a database restarting), for reads as for writes."""

    async def get(self, conversation_id: str) -> Conversation | None:
        raise StoreUnavailable("PostgreSQL: connection refused")

    async def history(self, *args: Any, **kwargs: Any) -> list[StoredMessage]:
        raise StoreUnavailable("PostgreSQL: connection refused")


async def test_hello_and_history_while_the_store_is_away_are_overloaded(start_gateway: StartGateway) -> None:
    """Reads fail like writes: `overloaded` with retry_after, the connection stays, no traceback."""
    gw = await start_gateway(toml="[provider]\ndemo_delay_ms = 0\n", store=AwayStore(max_conversations=10, max_messages=10))
    async with gw.chat() as chat:
        await chat.send(type="hello", conversation_id="a" * 32)
        error = await chat.expect("error")
        assert (error["code"], error["retry_after"], error["retryable"]) == ("overloaded", 5, True)
        await chat.send(type="message", id="m1", content="hi", conversation_id="b" * 32)
        error = await chat.expect("error")
        assert (error["code"], error["id"], error["retry_after"]) == ("overloaded", "m1", 5)
        await chat.send(type="ping")
        await chat.expect("pong")
