"""Several real gateway processes on one real Redis and one real PostgreSQL: a reply
produced by one instance is resumed, cancelled and watched through the others, and
survives its owner's drain and death. Text and ``seq`` are compared exactly."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from conftest import TIMEOUT, Chat, Process, openai_env
from fakeupstream import FakeUpstream, Pause, Script, Stall, openai_sse
from pgserver import PASSWORD, PgServer
from redisserver import REDIS_PASSWORD, RedisServer
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

Spawn = Callable[..., Awaitable[Process]]


def pieces(texts: list[str]) -> list[bytes]:
    """One SSE event per text, without the finish and [DONE]."""
    return [openai_sse([t], finish=None, usage=None, done=False).split(b"\n\n", 1)[1] for t in texts]


def ending() -> bytes:
    return openai_sse([], usage=None)


@pytest.fixture
def cluster_env(pg_server: PgServer, redis_env: dict[str, str], upstream: FakeUpstream) -> dict[str, str]:
    return {
        **openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"),
        **redis_env,
        "GATEWAY_STORE": "postgres",
        "GATEWAY_DATABASE_URL": pg_server.url(pg_server.create_database()),
        "GATEWAY_DRAIN_TIMEOUT": "10",
        "GATEWAY_LOG_LEVEL": "debug",
    }


LEASE_TIMEOUT = 2  # seconds: a dead owner's replies end within about this


@pytest.fixture
async def instances(
    spawn: Spawn, cluster_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[list[Process]]]]:
    """Start ``count`` gateway processes of one cluster (``toml``: more settings)."""

    started: list[Process] = []

    async def start(count: int = 2, toml: str = "", **extra: str) -> list[Process]:
        config = tmp_path / f"cluster-{next(_names)}.toml"
        config.write_text(f"[cluster]\nlease_timeout = {LEASE_TIMEOUT}\n{toml}")
        env = {**cluster_env, "GATEWAY_CONFIG": str(config), **extra}
        procs = list(await asyncio.gather(*(spawn(env) for _ in range(count))))
        started.extend(procs)
        return procs

    yield start
    for n, proc in enumerate(started):  # shown when the test fails: what went wrong inside
        for line in proc.lines:
            if "exception" in line or line.get("level") in ("error", "critical"):
                print(f"instance {n}:", line)
    logged = "\n".join(str(line) for proc in started for line in proc.lines)
    assert REDIS_PASSWORD not in logged and PASSWORD not in logged, "a password reached the logs"


_names = itertools.count()


@contextlib.asynccontextmanager
async def chat(proc: Process) -> AsyncIterator[Chat]:
    async with connect(proc.ws_url, subprotocols=["chat.v1"], open_timeout=TIMEOUT) as ws:
        yield Chat(ws)


async def deltas_until(client: Chat, text: str) -> tuple[str, int]:
    """Read deltas until their text ends with ``text``; the text and the last seq."""
    got, seq = "", 0
    while not got.endswith(text):
        event = await client.expect("reply.delta")
        assert event["seq"] > seq, event
        got, seq = got + event["text"], event["seq"]
    return got, seq


async def rest_of_reply(client: Chat, after_seq: int) -> tuple[str, list[dict[str, Any]]]:
    """What comes up to ``reply.done``: the text and the events; the seqs strictly grow from after_seq."""
    text, events = await client.until_done()
    seqs = [e["seq"] for e in events if e["type"] == "reply.delta"]
    assert seqs == sorted(set(seqs)) and (not seqs or seqs[0] > after_seq), seqs
    return text, events


async def stored(url: str, reply_id: str) -> tuple[str, str | None]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT content, finish_reason FROM messages WHERE id = %s", (reply_id,))
        row = await cur.fetchone()
    assert row is not None, reply_id
    return row[0], row[1]


async def test_resume_on_another_instance_after_a_tcp_abort(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, cluster_env: dict[str, str]
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*pieces(["one ", "two "]), Pause(gate), *pieces(["three ", "four"]), ending()]))
    first, second = await instances(2)
    async with chat(first) as a:
        ready = await a.hello()
        conv = ready["conversation_id"]
        await a.send(type="message", id="m1", content="count to four")
        start = await a.expect("reply.start")
        seen, seq = await deltas_until(a, "two ")
        a.ws.transport.abort()
    async with chat(second) as b:
        ready = await b.hello(conv)
        assert ready["streaming"]["reply_id"] == start["reply_id"]
        assert [m["content"] for m in ready["history"]] == ["count to four"]
        await b.send(type="resume", reply_id=start["reply_id"], after_seq=seq)
        gate.set()
        rest, events = await rest_of_reply(b, seq)
        assert seen + rest == "one two three four"
        assert events[-1]["finish_reason"] == "stop"
    assert await stored(cluster_env["GATEWAY_DATABASE_URL"], start["reply_id"]) == ("one two three four", "stop")


async def start_reply(client: Chat, content: str, msg_id: str = "m1") -> dict[str, Any]:
    await client.send(type="message", id=msg_id, content=content)
    return await client.expect("reply.start")


async def test_cancel_from_another_instance_aborts_the_upstream_request(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, cluster_env: dict[str, str]
) -> None:
    upstream.enqueue(Script([*pieces(["never ", "ending "]), Stall()]))
    first, second = await instances(2)
    async with chat(first) as a, chat(second) as b:
        conv = (await a.hello())["conversation_id"]
        start = await start_reply(a, "talk forever")
        request = await upstream.next_request()
        seen, seq = await deltas_until(a, "ending ")
        await b.hello(conv)
        await b.send(type="resume", reply_id=start["reply_id"], after_seq=0)
        assert await deltas_until(b, "ending ") == (seen, seq)  # the catch-up, whole
        await b.send(type="cancel", reply_id=start["reply_id"])
        await asyncio.wait_for(request.disconnected.wait(), TIMEOUT)
        for client in (a, b):
            text, events = await client.until_done()
            assert text == "" and events[-1]["finish_reason"] == "cancelled"
    assert await stored(cluster_env["GATEWAY_DATABASE_URL"], start["reply_id"]) == ("never ending ", "cancelled")


async def test_two_tabs_on_two_instances_see_each_other_and_busy_holds_across(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*pieces(["first ", "half "]), Pause(gate), *pieces(["second half"]), ending()]))
    first, second = await instances(2)
    async with chat(first) as a, chat(second) as b:
        conv = (await a.hello())["conversation_id"]  # new, not stored yet: open to the other tab
        assert (await b.hello(conv))["history"] == []
        start = await start_reply(a, "tell me a story")
        seen_b = await b.expect("reply.start")
        assert (seen_b["reply_id"], seen_b["content"]) == (start["reply_id"], "tell me a story")
        await deltas_until(a, "half ")
        await deltas_until(b, "half ")
        await b.send(type="message", id="m2", content="me too")
        busy = await b.expect("error")
        assert (busy["code"], busy["id"]) == ("busy", "m2")
        gate.set()
        text_a, done_a = await a.until_done()
        text_b, done_b = await b.until_done()
        assert text_a == text_b == "second half"
        assert done_a[-1]["finish_reason"] == done_b[-1]["finish_reason"] == "stop"
        assert [e["seq"] for e in done_a if e["type"] == "reply.delta"] == [
            e["seq"] for e in done_b if e["type"] == "reply.delta"
        ]
        upstream.enqueue(Script([openai_sse(["now you"])]))
        await b.send(type="message", id="m3", content="my turn")  # free again, everywhere
        await b.expect("reply.start")
        assert (await b.until_done())[0] == "now you"
        assert (await a.expect("reply.start"))["content"] == "my turn"
        assert (await a.until_done())[0] == "now you"


async def test_sigterm_of_the_owner_closes_with_1012_and_the_reply_finishes_elsewhere(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, cluster_env: dict[str, str]
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*pieces(["before ", "the restart "]), Pause(gate), *pieces(["and after"]), ending()]))
    first, second = await instances(2)
    async with chat(first) as a:
        conv = (await a.hello())["conversation_id"]
        start = await start_reply(a, "survive a restart")
        seen, seq = await deltas_until(a, "restart ")
        first.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            await a.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert await get_status(first.http_url + "readyz") == 503  # draining: the reply still streams
    async with chat(second) as b:
        assert (await b.hello(conv))["streaming"]["reply_id"] == start["reply_id"]
        await b.send(type="resume", reply_id=start["reply_id"], after_seq=seq)
        gate.set()
        rest, events = await rest_of_reply(b, seq)
        assert seen + rest == "before the restart and after"
        assert events[-1]["finish_reason"] == "stop"
    assert await first.finish() == 0
    assert await stored(cluster_env["GATEWAY_DATABASE_URL"], start["reply_id"]) == (
        "before the restart and after", "stop",
    )


async def get_status(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.json()


async def test_sigkill_of_the_owner_ends_the_reply_from_its_log(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, cluster_env: dict[str, str]
) -> None:
    upstream.enqueue(Script([*pieces(["all ", "that ", "reached ", "the log"]), Stall()]))
    first, second = await instances(2, toml="[store]\ncheckpoint_interval = 3600\n")
    async with chat(first) as a, chat(second) as b:
        conv = (await a.hello())["conversation_id"]
        await b.hello(conv)
        start = await start_reply(a, "die mid-reply")
        await b.expect("reply.start")
        seen, seq = await deltas_until(b, "the log")  # these reached Redis: b is on the other instance
        first.proc.kill()
        taken = await second.wait_for_event("reply_taken_over")
        assert (taken["reply_id"], taken["seq"]) == (start["reply_id"], seq)
        text, events = await b.until_done()
        assert text == "" and events[-1]["finish_reason"] == "error"
        assert events[-2]["type"] == "error" and events[-2]["code"] == "internal"
    assert await stored(cluster_env["GATEWAY_DATABASE_URL"], start["reply_id"]) == (seen, "error")
    async with chat(second) as c:
        ready = await c.hello(conv)
        assert "streaming" not in ready
        assert [m["content"] for m in ready["history"]] == ["die mid-reply", seen]


async def follow_from_second(
    first: Process, second: Process, a: Chat, b: Chat, content: str, until: str
) -> tuple[dict[str, Any], str, int]:
    """``a`` (on the owner) starts a reply, ``b`` (on the other instance) watches it: both
    read up to ``until``; the start, b's text and seq."""
    conv = (await a.hello())["conversation_id"]
    await b.hello(conv)
    start = await start_reply(a, content)
    await b.expect("reply.start")
    await deltas_until(a, until)
    seen, seq = await deltas_until(b, until)
    return start, seen, seq


async def test_a_killed_pubsub_connection_loses_no_delta(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    gate = asyncio.Event()
    tail = [f"{n} " for n in range(40)]
    upstream.enqueue(Script([*pieces(["head "]), Pause(gate), *pieces(tail), ending()]))
    first, second = await instances(2)
    async with chat(first) as a, chat(second) as b:
        start, seen, seq = await follow_from_second(first, second, a, b, "count", "head ")
        assert redis_server.kill_pubsub_clients() >= 2
        gate.set()
        rest, events = await rest_of_reply(b, seq)
        assert seen + rest == "head " + "".join(tail)
        assert events[-1]["finish_reason"] == "stop"
        assert (await a.until_done())[0] == "".join(tail)


async def test_a_redis_restart_mid_reply_loses_no_text(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, redis_server: RedisServer,
    cluster_env: dict[str, str],
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*pieces(["before "]), Pause(gate), *pieces(["after ", "the restart"]), ending()]))
    first, second = await instances(2)
    async with chat(first) as a, chat(second) as b:
        start, seen, seq = await follow_from_second(first, second, a, b, "restart redis", "before ")
        redis_server.restart()  # empty: no persistence
        gate.set()
        text_a, done_a = await a.until_done()
        assert text_a == "after the restart" and done_a[-1]["finish_reason"] == "stop"
        rest, events = await rest_of_reply(b, seq)
        assert seen + rest == "before after the restart"
        assert events[-1]["finish_reason"] == "stop"
        await first.wait_for_event("redis_data_lost")
    assert await stored(cluster_env["GATEWAY_DATABASE_URL"], start["reply_id"]) == ("before after the restart", "stop")


async def test_redis_down_then_back(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    first, second = await instances(2)
    redis_server.stop()
    async with chat(first) as a, chat(first) as a2, chat(second) as b:
        conv = (await a.hello())["conversation_id"]
        await a2.hello(conv)
        upstream.enqueue(Script([openai_sse(["alone ", "but fine"])]))
        start = await start_reply(a, "is redis there?")  # the first command finds Redis gone
        assert (await a2.expect("reply.start"))["content"] == "is redis there?"  # local fan-out
        assert (await a.until_done())[0] == (await a2.until_done())[0] == "alone but fine"
        await b.hello(conv)
        await b.send(type="resume", reply_id=start["reply_id"], after_seq=0)
        refused = await b.expect("error")
        assert refused["code"] == "resume_unavailable"
        assert (await get_json(first.http_url + "healthz")) == {
            "status": "ok", "redis": "down", "llm": "ok", "store": "ok", "stt": "off",
        }
        assert "gateway_redis_up 0.0" in await get_text(first.http_url + "metrics")
        redis_server.start()
        for proc in (first, second):
            await proc.wait_for_event("redis_up")
        assert (await get_json(first.http_url + "healthz"))["redis"] == "up"
        upstream.enqueue(Script([*pieces(["shared ", "again"]), ending()]))
        async with chat(second) as c, chat(second) as d:
            await c.hello(conv)  # watching it through Redis again
            start = await start_reply(a, "and now?", "m2")
            assert (await c.expect("reply.start"))["reply_id"] == start["reply_id"]
            text, events = await c.until_done()
            assert text == "shared again" and events[-1]["finish_reason"] == "stop"
            await d.hello(conv)
            await d.send(type="resume", reply_id=start["reply_id"], after_seq=0)
            caught_up, done = await d.until_done()
            assert (caught_up, done[0]["seq"]) == (text, events[-2]["seq"])


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.text()


async def test_a_pause_past_the_lease_takes_over_nothing(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, cluster_env: dict[str, str],
) -> None:
    """Every instance stops (a host paused, a long GC) past its lease: once they run
    again, each renews its own lease before any may sweep another; no reply is taken
    over, none is cut."""
    gate = asyncio.Event()
    upstream.enqueue(Script([*pieces(["paused "]), Pause(gate), *pieces(["then ", "resumed"]), ending()]))
    first, second = await instances(2)
    async with chat(first) as a, chat(second) as b:
        start, seen, seq = await follow_from_second(first, second, a, b, "pause everyone", "paused ")
        for proc in (first, second):
            proc.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(LEASE_TIMEOUT * 1.5)  # the fault itself: it lasts past every lease
            second.proc.send_signal(signal.SIGCONT)
            await second.wait_for_event("instance_lease_lapsed")  # it renewed; the owner's lease is still gone
        finally:
            for proc in (first, second):
                proc.proc.send_signal(signal.SIGCONT)
        await first.wait_for_event("instance_lease_lapsed")
        gate.set()
        assert (await a.until_done())[0] == "then resumed"
        rest, events = await rest_of_reply(b, seq)
        assert (seen + rest, events[-1]["finish_reason"]) == ("paused then resumed", "stop")
    assert await stored(cluster_env["GATEWAY_DATABASE_URL"], start["reply_id"]) == ("paused then resumed", "stop")
    for proc in (first, second):
        assert not [line for line in proc.lines if line.get("event") in ("reply_taken_over", "reply_fenced")]


async def test_redis_refusing_writes_leaves_each_instance_serving_alone(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    first, second = await instances(2)
    with redis_server.client() as client:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # every write is refused: OOM
        try:
            async with chat(first) as a, chat(first) as a2:
                conv = (await a.hello())["conversation_id"]  # no internal error: served alone
                await a2.hello(conv)
                upstream.enqueue(Script([openai_sse(["still ", "served"])]))
                await start_reply(a, "is redis full?")
                assert (await a2.expect("reply.start"))["content"] == "is redis full?"
                assert (await a.until_done())[0] == (await a2.until_done())[0] == "still served"
            await first.wait_for_event("redis_refused")
            assert "gateway_redis_up 1.0" in await get_text(first.http_url + "metrics")
        finally:
            client.config_set("maxmemory", 0)
    upstream.enqueue(Script([*pieces(["shared ", "again"]), ending()]))
    async with chat(first) as a, chat(second) as b:
        conv = (await a.hello())["conversation_id"]
        await b.hello(conv)
        await start_reply(a, "and now?")
        assert (await b.expect("reply.start"))["content"] == "and now?"
        assert (await b.until_done())[0] == "shared again"


async def test_ownership_holds_across_instances(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream
) -> None:
    first, second = await instances(2)
    mine, theirs = "browser-one-0123456789", "browser-two-0123456789"
    async with chat(first) as a, chat(second) as other_tab, chat(second) as stranger:
        await a.send(type="hello", token=mine)
        conv = (await a.expect("ready"))["conversation_id"]  # new, not stored: open through Redis
        await stranger.send(type="hello", token=theirs, conversation_id=conv)
        assert (await stranger.expect("error"))["code"] == "not_found"
        await other_tab.send(type="hello", token=mine, conversation_id=conv)
        assert (await other_tab.expect("ready"))["conversation_id"] == conv
        upstream.enqueue(Script([openai_sse(["stored now"])]))
        assert (await a.ask("hello"))[0] == "stored now"
        assert (await other_tab.until_done())[0] == "stored now"
        await stranger.send(type="hello", conversation_id=conv)
        assert (await stranger.expect("error"))["code"] == "not_found"
        await stranger.send(type="conversations")
        assert (await stranger.expect("conversations"))["items"] == []
        await other_tab.send(type="conversations")
        assert [c["id"] for c in (await other_tab.expect("conversations"))["items"]] == [conv]


async def test_a_budget_holds_across_instances(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream
) -> None:
    toml = "[provider]\nparams = { max_tokens = 10 }\n[limits]\ntokens_per_day = 30\nmessages_per_minute = 100\n"
    first, second = await instances(2, toml)
    key = "browser-one-0123456789"
    upstream.enqueue(Script([openai_sse(["spent"], usage={"prompt_tokens": 15, "completion_tokens": 10})]))
    async with chat(first) as a, chat(second) as b:
        await a.send(type="hello", token=key)
        assert (await a.expect("ready"))["budget"]["remaining"] == 30
        assert (await a.ask("spend it here"))[0] == "spent"
        await b.send(type="hello", token=key)
        assert (await b.expect("ready"))["budget"]["remaining"] == 5  # counted in Redis: seen everywhere
        await b.send(type="message", id="m2", content="and again there")
        refused = await b.expect("error")
        assert (refused["code"], refused["id"], refused["retryable"]) == ("budget_exceeded", "m2", False)
    assert len(upstream.requests) == 1  # the refused message never reached the provider


async def test_connections_and_replies_per_subject_hold_across_instances(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream
) -> None:
    first, second = await instances(2, "[limits]\nconnections_per_subject = 2\nreplies_per_subject = 1\n")
    key = "browser-one-0123456789"
    gate = asyncio.Event()
    upstream.enqueue(Script([*pieces(["slow "]), Pause(gate), ending()]))
    async with chat(first) as a, chat(second) as b, chat(second) as c, chat(first) as other:
        for client in (a, b):
            await client.send(type="hello", token=key)
            await client.expect("ready")
        await c.send(type="hello", token=key)  # a third, on either instance: too many
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(c.ws.recv(), TIMEOUT)
        assert c.ws.close_code == 1013
        await other.send(type="hello", token="browser-two-0123456789")  # someone else: fine
        await other.expect("ready")
        await start_reply(a, "a long one")
        await deltas_until(a, "slow ")
        await b.send(type="hello", token=key)  # a conversation of its own, on the other instance
        await b.expect("ready")
        await b.send(type="message", id="m2", content="me too")
        busy = await b.expect("error")
        assert (busy["code"], busy["id"]) == ("busy", "m2") and "of your replies" in busy["message"]
        gate.set()
        await a.until_done()
        upstream.enqueue(Script([openai_sse(["now"])]))
        await b.send(type="message", id="m3", content="now it may")
        await b.expect("reply.start")
        assert (await b.until_done())[0] == "now"


def thoughts(texts: list[str]) -> list[bytes]:
    """One SSE event of reasoning_content per text."""
    return [openai_sse([], reasoning=[t], finish=None, usage=None, done=False).split(b"\n\n", 1)[1] for t in texts]


async def test_reasoning_is_resumed_on_another_instance_in_exact_order(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, cluster_env: dict[str, str]
) -> None:
    """Thinking and text share one seq through Redis: a client that left mid-reasoning on
    one instance resumes on the other and gets the rest of the thinking, then the text."""
    gate = asyncio.Event()
    upstream.enqueue(Script([
        *thoughts(["first, ", "second, "]), Pause(gate), *thoughts(["third"]), *pieces(["The ", "end"]), ending(),
    ]))
    first, second = await instances(2)
    async with chat(first) as a:
        conv = (await a.hello())["conversation_id"]
        start = await start_reply(a, "think")
        one = await a.expect("reply.reasoning")
        seen = one["text"]
        while seen != "first, second, ":
            seen += (await a.expect("reply.reasoning"))["text"]
        a.ws.transport.abort()
    async with chat(second) as b:
        await b.hello(conv)
        await b.send(type="resume", reply_id=start["reply_id"], after_seq=one["seq"])
        gate.set()
        _, events = await b.until_done()
    numbered = [(e["type"], e["seq"], e["text"]) for e in events if "seq" in e]
    kinds = [k for k, _, _ in numbered]
    assert kinds == sorted(kinds, key=lambda k: k != "reply.reasoning"), numbered  # all thinking before any text
    assert one["text"] + "".join(t for k, _, t in numbered if k == "reply.reasoning") == "first, second, third"
    assert "".join(t for k, _, t in numbered if k == "reply.delta") == "The end"
    seqs = [s for _, s, _ in numbered]
    assert seqs == sorted(set(seqs)) and seqs[0] > one["seq"]  # the replay joins what was missed, by kind
    async with await psycopg.AsyncConnection.connect(cluster_env["GATEWAY_DATABASE_URL"]) as conn:
        cur = await conn.execute("SELECT content, reasoning FROM messages WHERE id = %s", (start["reply_id"],))
        assert await cur.fetchone() == ("The end", "first, second, third")


async def test_a_killed_owners_reasoning_is_kept_from_the_log(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, cluster_env: dict[str, str]
) -> None:
    upstream.enqueue(Script([*thoughts(["deep ", "thought"]), *pieces(["partial"]), Stall()]))
    first, second = await instances(2, toml="[store]\ncheckpoint_interval = 3600\n")
    async with chat(first) as a, chat(second) as b:
        conv = (await a.hello())["conversation_id"]
        await b.hello(conv)
        start = await start_reply(a, "die while answering")
        await b.expect("reply.start")
        await deltas_after_reasoning(b, "partial")
        first.proc.kill()
        await second.wait_for_event("reply_taken_over")
        await b.until_done()
    async with await psycopg.AsyncConnection.connect(cluster_env["GATEWAY_DATABASE_URL"]) as conn:
        cur = await conn.execute(
            "SELECT content, reasoning, finish_reason FROM messages WHERE id = %s", (start["reply_id"],)
        )
        assert await cur.fetchone() == ("partial", "deep thought", "error")


async def deltas_after_reasoning(client: Chat, text: str) -> None:
    """Read reasoning and deltas until the answer text is ``text``."""
    got = ""
    while got != text:
        event = await client.recv()
        assert event["type"] in ("reply.reasoning", "reply.delta"), event
        if event["type"] == "reply.delta":
            got += event["text"]


async def test_a_killed_owners_continuation_keeps_the_whole_reply_in_its_branch(
    instances: Callable[..., Awaitable[list[Process]]], upstream: FakeUpstream, cluster_env: dict[str, str]
) -> None:
    """A reply continued on one instance, whose owner dies mid-way: the other instance
    stores all that reached the log as the same message, in the same place of the tree;
    an edit there then makes a second version of the question."""
    upstream.enqueue(
        Script([openai_sse(["Once upon"], finish="length")]),
        Script([*pieces([" a time", " there"]), Stall()]),
        Script([openai_sse(["Another story."])]),
    )
    first, second = await instances(2, toml="[store]\ncheckpoint_interval = 3600\n")
    async with chat(first) as a, chat(second) as b:
        conv = (await a.hello())["conversation_id"]
        await b.hello(conv)
        cut = await start_reply(a, "a story")
        await a.until_done()
        await b.until_done()
        await a.send(type="continue", id="c1", reply_id=cut["reply_id"])
        start = await a.expect("reply.start")
        watched = await b.expect("reply.start")
        assert watched["continues"] == start["continues"] == cut["reply_id"] and watched["parent_id"] == "m1"
        seen, _ = await deltas_until(b, " there")
        assert seen == "Once upon a time there"
        first.proc.kill()
        await second.wait_for_event("reply_taken_over")
        await b.until_done()
        url = cluster_env["GATEWAY_DATABASE_URL"]
        assert await stored(url, cut["reply_id"]) == ("Once upon a time there", "error")
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT id, parent_id FROM messages ORDER BY pos")
            assert await cur.fetchall() == [("m1", ""), (cut["reply_id"], "m1")]  # no row of its own
        await b.send(type="edit", id="m1b", message_id="m1", content="another story")
        await b.expect("reply.start")
        text, _ = await b.until_done()
        assert text == "Another story."
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT id, parent_id, content, finish_reason FROM messages ORDER BY pos")
            rows = await cur.fetchall()
            active = await (await conn.execute("SELECT active FROM conversations")).fetchone()
        assert rows[:3] == [("m1", "", "a story", None), (cut["reply_id"], "m1", "Once upon a time there", "error"),
                            ("m1b", "", "another story", None)]  # two versions of the first message
        assert rows[3][1:] == ("m1b", "Another story.", "stop") and active == (rows[3][0],)
