"""Models over deployments through a real gateway: failover before the first token, never
after, cooldowns, fallbacks, the model people pick, usage and cost.

Each deployment is its own fake upstream (a real aiohttp server speaking OpenAI's format);
the gateway runs in this loop, configured with ``[[models]]`` and ``[[deployments]]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Chat, Running, StartGateway
from fakeupstream import FakeUpstream, Pause, Script, Stall, openai_error_body, openai_error_event, openai_sse

KEY = "sk-models-test-key-0123456789"


@pytest.fixture
async def ups() -> AsyncIterator[dict[str, FakeUpstream]]:
    async with contextlib.AsyncExitStack() as stack:
        yield {name: await stack.enter_async_context(FakeUpstream()) for name in "abc"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml(
    ups: dict[str, FakeUpstream], tmp_path: Path, *, a_url: str = "", routing: str = "", extra: str = "",
    upstream_timeout: float = 8, retries: int = 2,
) -> str:
    key = tmp_path / "key"
    key.write_text(KEY)
    deployments = "".join(
        f"""
[[deployments]]
id = "{name}"
upstream_url = "{url}"
model = "model-{name}"
api_key_file = "{key}"
weight = {weight}
"""
        for name, url, weight in (
            ("a", a_url or ups["a"].openai_base, 1), ("b", ups["b"].openai_base, 0), ("c", ups["c"].openai_base, 1),
        )
    )
    return f"""
[provider]
upstream_timeout = {upstream_timeout}

[routing]
retries = {retries}
retry_after_max = 3
cooldown = 60
first_token_timeout = 2
{routing}

[[models]]
id = "chat"
label = "Chat"
deployments = ["a", "b"]
fallbacks = ["backup"]
price_input = 1.5
price_output = 4
{extra}

[[models]]
id = "backup"
label = "Backup"
deployments = ["c"]
reasoning = true
{deployments}"""


async def start(start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path, **kw: Any) -> Running:
    return await start_gateway(toml=toml(ups, tmp_path, **kw))


async def ask(chat: Chat, content: str, msg_id: str, **extra: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Send a message; the reply's start, its text and its done (errors are in the done's ``error``)."""
    await chat.send(type="message", id=msg_id, content=content, **extra)
    start = await chat.expect("reply.start")
    text, error = "", None
    while True:
        event = await chat.recv()
        if event["type"] == "reply.delta":
            text += event["text"]
        elif event["type"] == "error":
            error = event
        elif event["type"] == "reply.done":
            return start, text, {**event, "error": error}


def asked(up: FakeUpstream) -> list[str]:
    """The last user message of each request ``up`` received, in order."""
    return [r.json["messages"][-1]["content"] for r in up.requests]


def ok(*texts: str) -> Script:
    return Script([openai_sse(list(texts))])


def status(code: int, headers: dict[str, str] | None = None) -> Script:
    return Script([openai_error_body(f"HTTP {code} from the fake")], status=code, headers=headers or {})


@pytest.mark.parametrize(
    "failure",
    [
        status(429),
        status(429, {"Retry-After": "30"}),  # longer than the cap: not waited for, b answers at once
        status(503),
        Script([Stall()]),  # headers, then nothing: past first_token_timeout
        Script([openai_error_event("overloaded", "server_error")]),
    ],
    ids=["429", "429-retry-after", "503", "stall", "in-band-error"],
)
async def test_a_failure_before_the_first_token_moves_to_the_next_deployment(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path, failure: Script,
) -> None:
    gw = await start(start_gateway, ups, tmp_path)
    ups["a"].enqueue(failure)
    ups["b"].enqueue(ok("Saved", " by b"))
    async with gw.chat() as chat:
        await chat.hello()
        start_, text, done = await ask(chat, "hello", "m1")
        assert (text, done["finish_reason"], done["error"]) == ("Saved by b", "stop", None)
        assert start_["model"] == done["model"] == "chat" and "fallback_from" not in done
    assert (asked(ups["a"]), asked(ups["b"]), asked(ups["c"])) == (["hello"], ["hello"], [])
    assert ups["b"].requests[0].json["model"] == "model-b"
    assert ups["b"].requests[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_a_refused_connection_moves_to_the_next_deployment(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path, a_url=f"http://127.0.0.1:{closed_port()}/v1")
    ups["b"].enqueue(ok("from b"))
    async with gw.chat() as chat:
        await chat.hello()
        _, text, done = await ask(chat, "hello", "m1")
    assert (text, done["finish_reason"], asked(ups["b"])) == ("from b", "stop", ["hello"])


async def test_retry_after_within_the_cap_is_waited_for_on_the_only_deployment(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    """The model ``backup`` has one deployment: a 429 asking for 1 s is retried there."""
    gw = await start(start_gateway, ups, tmp_path)
    ups["c"].enqueue(status(429, {"Retry-After": "1"}), ok("after the wait"))
    async with gw.chat() as chat:
        await chat.hello()
        _, text, done = await ask(chat, "hello", "m1", model="backup")
    assert (text, done["finish_reason"], asked(ups["c"])) == ("after the wait", "stop", ["hello", "hello"])


async def test_no_failover_after_the_first_text(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path)
    partial = openai_sse(["Half", " an answer"], finish=None, usage=None, done=False)
    ups["a"].enqueue(Script([partial, openai_error_event("the model crashed", "server_error")]))
    async with gw.chat() as chat:
        ready = await chat.hello()
        _, text, done = await ask(chat, "hello", "m1")
        assert (text, done["finish_reason"], done["error"]["code"]) == ("Half an answer", "error", "upstream_error")
        history = (await chat.hello(ready["conversation_id"]))["history"]
    assert history[-1]["content"] == "Half an answer" and history[-1]["finish_reason"] == "error"
    assert (asked(ups["b"]), asked(ups["c"])) == ([], [])


async def test_a_refused_request_fails_at_once(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path)
    ups["a"].enqueue(status(400))
    async with gw.chat() as chat:
        await chat.hello()
        _, text, done = await ask(chat, "hello", "m1")
    assert (text, done["finish_reason"], done["error"]["code"]) == ("", "error", "upstream_error")
    assert "HTTP 400" in done["error"]["message"]
    assert (asked(ups["b"]), asked(ups["c"])) == ([], [])


async def test_a_refused_key_cools_its_deployment_down(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path)
    ups["a"].enqueue(status(401))
    ups["b"].enqueue(ok("b, first"), ok("b, again"))
    async with gw.chat() as chat:
        await chat.hello()
        assert (await ask(chat, "one", "m1"))[1] == "b, first"
        assert (await ask(chat, "two", "m2"))[1] == "b, again"  # a cools down: b first
    assert (asked(ups["a"]), asked(ups["b"])) == (["one"], ["one", "two"])
    metrics = await _metrics(gw)
    assert 'gateway_deployment_cooldowns_total{deployment="a",kind="auth"} 1.0' in metrics
    assert 'gateway_upstream_attempts_total{deployment="a",model="chat",outcome="auth"} 1.0' in metrics
    assert 'gateway_upstream_attempts_total{deployment="b",model="chat",outcome="ok"} 2.0' in metrics
    assert 'gateway_upstream_retries_total{deployment="b",model="chat"} 1.0' in metrics


async def test_when_every_deployment_fails_a_fallback_model_answers(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path)
    ups["a"].enqueue(status(503))
    ups["b"].enqueue(status(502))
    ups["c"].enqueue(ok("the backup", " speaks"))
    async with gw.chat() as chat:
        ready = await chat.hello()
        start_, text, done = await ask(chat, "hello", "m1")
        assert text == "the backup speaks"
        assert start_["model"] == "chat" and "fallback_from" not in start_  # decided after reply.start
        assert (done["model"], done["fallback_from"]) == ("backup", "chat")
        assert "cost" not in done["usage"]  # the backup has no prices
        again = await chat.hello(ready["conversation_id"])
        assert again["model"] == "chat"  # what the user picked sticks, not the fallback
        assert again["history"][-1]["model"] == "backup"
        # Both of chat's deployments cool down now: the fallback is known at reply.start.
        ups["c"].enqueue(ok("at once"))
        start_, text, done = await ask(chat, "again", "m2")
        assert (start_["model"], start_["fallback_from"], text) == ("backup", "chat", "at once")
    assert ups["c"].requests[0].json["model"] == "model-c"
    assert (asked(ups["a"]), asked(ups["b"])) == (["hello"], ["hello"])
    assert 'gateway_fallbacks_total{fallback="backup",model="chat"} 2.0' in await _metrics(gw)


async def test_cancel_during_a_retry_wait_ends_the_reply(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path)
    ups["c"].enqueue(status(429, {"Retry-After": "3"}))
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="message", id="m1", content="wait", model="backup")
        start_ = await chat.expect("reply.start")
        await ups["c"].next_request()
        await asyncio.wait_for(_counted(gw, 'outcome="rate_limited"} 1.0'), 10)  # the gateway got the 429: it waits
        await chat.send(type="cancel", reply_id=start_["reply_id"])
        done = await chat.expect("reply.done")
        assert done["finish_reason"] == "cancelled"
        ups["c"].enqueue(ok("next"))
        _, text, _ = await ask(chat, "next one", "m2")
    assert text == "next" and asked(ups["c"]) == ["wait", "next one"]  # the cancelled one was not retried


async def test_the_model_people_pick_answers_and_sticks_to_the_conversation(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path)
    ups["c"].set_default(lambda rec: ok("c answers"))
    ups["a"].set_default(lambda rec: ok("a answers"))
    async with gw.chat() as chat:
        ready = await chat.hello()
        assert ready["models"] == [
            {"id": "chat", "label": "Chat", "default": True}, {"id": "backup", "label": "Backup", "reasoning": True},
        ]
        assert ready["model"] == "chat"
        start_, text, _ = await ask(chat, "one", "m1", model="backup")
        assert (start_["model"], text) == ("backup", "c answers")
        assert (await ask(chat, "two", "m2"))[1] == "c answers"  # sticks
        conv = ready["conversation_id"]
    async with gw.chat() as other:  # another tab, later
        again = await other.hello(conv)
        assert again["model"] == "backup"
        assert [m.get("model") for m in again["history"]] == ["backup"] * 4
        assert (await ask(other, "three", "m3"))[1] == "c answers"
        await other.send(type="regenerate", id="r1", model="chat")
        await other.expect("reply.start")
        text, _ = await other.until_done()
        assert text == "a answers"
        assert (await other.hello(conv))["model"] == "chat"  # the regenerate's choice sticks too
    assert asked(ups["a"]) == ["three"]


async def test_an_unknown_model_is_refused_and_nothing_is_stored(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path)
    ups["a"].set_default(lambda rec: ok("fine"))
    async with gw.chat() as chat:
        ready = await chat.hello()
        await ask(chat, "kept", "m1")
        await chat.send(type="message", id="m2", content="lost?", model="gpt-99")
        error = await chat.expect("error")
        assert (error["code"], error["id"]) == ("bad_request", "m2")
        assert "gpt-99" in error["message"]
        await chat.send(type="regenerate", id="r1", model="nope")
        assert (await chat.expect("error"))["code"] == "bad_request"
        history = (await chat.hello(ready["conversation_id"]))["history"]
    assert [m["content"] for m in history] == ["kept", "fine"]
    assert asked(ups["a"]) == ["kept"]


async def test_usage_and_cost_at_the_models_prices(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path)
    usage = {"prompt_tokens": 1000, "completion_tokens": 250, "total_tokens": 1250}
    ups["a"].enqueue(Script([openai_sse(["priced"], usage=usage)]))
    async with gw.chat() as chat:
        await chat.hello()
        _, _, done = await ask(chat, "how much?", "m1")
    assert done["usage"] == {
        "prompt_tokens": 1000, "completion_tokens": 250, "total_tokens": 1250, "cost": (1000 * 1.5 + 250 * 4) / 1e6,
    }
    metrics = await _metrics(gw)
    assert 'gateway_model_tokens_total{kind="prompt",model="chat"} 1000.0' in metrics
    assert 'gateway_model_tokens_total{kind="completion",model="chat"} 250.0' in metrics


async def test_a_models_system_prompt_is_sent_to_its_deployments(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    gw = await start(start_gateway, ups, tmp_path, extra='system_prompt = "You are the chat model."')
    ups["a"].enqueue(ok("hi"))
    async with gw.chat() as chat:
        await chat.hello()
        await ask(chat, "hello", "m1")
    assert ups["a"].requests[0].json["messages"][0] == {"role": "system", "content": "You are the chat model."}


async def test_the_upstream_timeout_bounds_all_attempts(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    """Every deployment stalls, retries to spare: a gets its 2 s, b the 1 s left of the
    3 s budget, and the reply ends there with upstream_timeout, c never asked. The
    deployment cut by the budget is not cooled down."""
    gw = await start(start_gateway, ups, tmp_path, upstream_timeout=3, retries=10)
    gate = asyncio.Event()
    for name in "abc":
        ups[name].set_default(lambda rec: Script([Pause(gate)]))
    async with gw.chat() as chat:
        await chat.hello()
        _, text, done = await ask(chat, "anyone?", "m1")
    gate.set()
    assert (text, done["finish_reason"], done["error"]["code"]) == ("", "error", "upstream_timeout")
    assert (asked(ups["a"]), asked(ups["b"]), asked(ups["c"])) == (["anyone?"], ["anyone?"], [])
    metrics = await _metrics(gw)
    assert 'gateway_deployment_cooldowns_total{deployment="a",kind="timeout"} 1.0' in metrics
    assert 'deployment="b",kind="timeout"' not in metrics


async def test_a_refusal_in_the_stream_is_not_retried(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    """OpenRouter's moderation error arrives in-band with code 403: no other deployment is asked."""
    gw = await start(start_gateway, ups, tmp_path)
    ups["a"].enqueue(Script([openai_error_event("flagged by moderation", 403)]))
    async with gw.chat() as chat:
        await chat.hello()
        _, _, done = await ask(chat, "hello", "m1")
    assert (done["finish_reason"], done["error"]["code"], done["error"]["retryable"]) == ("error", "upstream_error", False)
    assert (asked(ups["b"]), asked(ups["c"])) == ([], [])


async def test_a_503_retry_after_is_honoured(
    start_gateway: StartGateway, ups: dict[str, FakeUpstream], tmp_path: Path,
) -> None:
    """backup's only deployment answers 503 asking for 5 s, more than the 3 s cap: not retried."""
    gw = await start(start_gateway, ups, tmp_path)
    ups["c"].enqueue(status(503, {"Retry-After": "5"}))
    async with gw.chat() as chat:
        await chat.hello()
        _, _, done = await ask(chat, "hello", "m1", model="backup")
    assert (done["finish_reason"], done["error"]["code"]) == ("error", "upstream_error")
    assert asked(ups["c"]) == ["hello"]


async def _counted(gw: Running, line: str) -> None:
    while line not in await _metrics(gw):
        pass


async def _metrics(gw: Running) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.http_url + "/metrics") as resp:
        return await resp.text()
