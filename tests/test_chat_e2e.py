"""Chatting through a real gateway on loopback, with each provider."""

from __future__ import annotations

import asyncio

import pytest
from conftest import StartGateway, dashscope_env, openai_env
from fakeupstream import (
    FakeUpstream,
    Pause,
    Script,
    Stall,
    dashscope_sse,
    openai_sse,
    rechunk,
)

CHINESE = ["你好，", "世界！", "这是一个", "流式回复 🚀", "。"]
DEMO_FAST = "[provider]\ndemo_delay_ms = 0\n"


async def test_demo_reply_streams_markdown_with_code_block(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        ready = await chat.hello()
        assert ready["model"] == "demo" and ready["history"] == []
        assert len(ready["conversation_id"]) == 32
        text, events = await chat.ask("How do I stream?")
    assert events[0]["type"] == "reply.start" and events[0]["id"] == "m1"
    deltas = [e for e in events if e["type"] == "reply.delta"]
    assert len(deltas) > 10, "the demo streams in many deltas"
    seqs = [d["seq"] for d in deltas]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1
    assert "> How do I stream?" in text and "```bash" in text
    assert events[-1] == {**events[-1], "type": "reply.done", "finish_reason": "stop"}


async def test_first_message_without_hello_gets_ready(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.send(type="message", id="a", content="hi")
        ready = await chat.expect("ready")
        start = await chat.expect("reply.start")
        assert start["conversation_id"] == ready["conversation_id"]
        await chat.until_done()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("crlf", [False, True])
async def test_openai_stream_split_at_awkward_offsets(
    start_gateway: StartGateway, upstream: FakeUpstream, seed: int, crlf: bool
) -> None:
    body = openai_sse(CHINESE, reasoning=["让我想想", "……"], crlf=crlf, comments=True)
    upstream.enqueue(Script(rechunk(body, seed=seed)))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        text, events = await chat.ask("说点什么")
    assert text == "".join(CHINESE), "reasoning is never mixed into the answer"
    done = events[-1]
    assert done["finish_reason"] == "stop"
    usage = done["usage"]
    assert usage["prompt_tokens"] == 5 and usage["total_tokens"] == 5 + usage["completion_tokens"] > 5
    request = upstream.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-test-secret-key-0123456789"
    assert request.json["stream"] is True and request.json["model"] == "gpt-test"
    assert request.json["stream_options"] == {"include_usage": True}
    assert request.json["messages"] == [{"role": "user", "content": "说点什么"}]


async def test_openai_history_is_sent_upstream(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["First answer"])]), Script([openai_sse(["Second"])]))
    gw = await start_gateway(openai_env(upstream), toml='[provider]\nsystem_prompt = "Be brief."\n')
    async with gw.chat() as chat:
        await chat.hello()
        await chat.ask("one", "m1")
        await chat.ask("two", "m2")
    assert upstream.requests[1].json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "two"},
    ]


@pytest.mark.parametrize("cumulative", [False, True])
@pytest.mark.parametrize("result_format", ["message", "text"])
async def test_dashscope_native_stream(
    start_gateway: StartGateway, upstream: FakeUpstream, cumulative: bool, result_format: str
) -> None:
    body = dashscope_sse(CHINESE, cumulative=cumulative, result_format=result_format)
    upstream.enqueue(Script(rechunk(body, seed=7)))
    toml = f"[provider]\nincremental_output = {str(not cumulative).lower()}\n"
    gw = await start_gateway(dashscope_env(upstream), toml=toml)
    async with gw.chat() as chat:
        await chat.hello()
        text, events = await chat.ask("你好")
    assert text == "".join(CHINESE), "cumulative output becomes deltas without repeats"
    assert events[-1]["finish_reason"] == "stop"
    request = upstream.requests[0]
    assert request.headers["X-DashScope-SSE"] == "enable"
    assert request.json["input"]["messages"] == [{"role": "user", "content": "你好"}]
    assert request.json["parameters"]["incremental_output"] is (not cumulative)


async def test_length_finish_reason_passes_through(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["cut"], finish="length")]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        _, events = await chat.ask("x")
    assert events[-1]["finish_reason"] == "length"


async def test_cancel_aborts_the_upstream_request(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    head = openai_sse(["partial ", "text"], finish=None, usage=None, done=False)
    upstream.enqueue(Script([head, Stall()]))
    gw = await start_gateway(openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"))
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="message", id="m1", content="go")
        start = await chat.expect("reply.start")
        text = ""
        while text != "partial text":
            text += (await chat.expect("reply.delta"))["text"]
        await chat.send(type="cancel", reply_id=start["reply_id"])
        done = await chat.expect("reply.done")
        assert done["finish_reason"] == "cancelled"
        await asyncio.wait_for(upstream.requests[0].disconnected.wait(), 5)
        ready = await chat.hello(start["conversation_id"])
    assert ready["history"][-1] == {
        "id": start["reply_id"], "role": "assistant", "content": "partial text", "finish_reason": "cancelled",
        "model": "gpt-test", "parent_id": "m1",
    }


async def test_busy_while_a_reply_streams(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([openai_sse(["a"], finish=None, usage=None, done=False), Pause(gate), openai_sse(["b"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.send(type="message", id="m1", content="first")
        await chat.expect("reply.start")
        await chat.expect("reply.delta")
        await chat.send(type="message", id="m2", content="second")
        error = await chat.expect("error")
        assert error["code"] == "busy" and error["id"] == "m2" and error["retryable"] is True
        gate.set()
        text, _ = await chat.until_done()
        assert text.endswith("b")
        ready = await chat.hello(conversation_id)
    assert [m["content"] for m in ready["history"] if m["role"] == "user"] == ["first"], "the refused message is not stored"


async def test_disconnect_does_not_stop_the_reply_and_resume_continues(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([openai_sse(["one ", "two "], finish=None, usage=None, done=False), Pause(gate), openai_sse(["three"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        ready = await chat.hello()
        await chat.send(type="message", id="m1", content="go")
        start = await chat.expect("reply.start")
        got, last_seq = "", 0
        while got != "one two ":
            delta = await chat.expect("reply.delta")
            got, last_seq = got + delta["text"], delta["seq"]
    gate.set()
    async with gw.chat() as chat:
        again = await chat.hello(ready["conversation_id"])
        await chat.send(type="resume", reply_id=start["reply_id"], after_seq=last_seq)
        rest, events = await chat.until_done()
    assert got + rest == "one two three"
    seqs = [e["seq"] for e in events if e["type"] == "reply.delta"]
    assert all(s > last_seq for s in seqs) and seqs == sorted(set(seqs))
    assert again.get("streaming") is None or again["streaming"]["reply_id"] == start["reply_id"]


async def test_resume_unknown_reply(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="resume", reply_id="nope", after_seq=0)
        error = await chat.expect("error")
    assert error["code"] == "resume_unavailable" and error["retryable"] is False


async def test_unknown_conversation_is_not_found(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.send(type="hello", conversation_id="0" * 32)
        error = await chat.expect("error")
        assert error["code"] == "not_found"
        ready = await chat.hello()
    assert ready["conversation_id"] != "0" * 32, "the connection stays usable"


async def test_history_paging(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST + "[limits]\nhistory_limit = 2\n")
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        for i in range(3):
            await chat.ask(f"q{i}", f"m{i}")
    async with gw.chat() as chat:
        ready = await chat.hello(conversation_id)
        assert [m["id"] for m in ready["history"]][0] == "m2" and len(ready["history"]) == 2
        await chat.send(type="history", before="m2", limit=3)
        page = await chat.expect("history")
        assert [m["role"] for m in page["messages"]] == ["assistant", "user", "assistant"]
        assert page["messages"][1]["content"] == "q1" and page["has_more"] is True
        await chat.send(type="history", before=page["messages"][0]["id"], limit=3)
        last = await chat.expect("history")
    assert [m["content"] for m in last["messages"]] == ["q0"] and last["has_more"] is False


async def test_plain_text_mode_keeps_history_per_connection(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Script(rechunk(openai_sse(CHINESE), seed=3)), Script([openai_sse(["again"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.raw() as ws:
        assert ws.subprotocol is None
        await ws.send("你好")
        text = ""
        while text != "".join(CHINESE):
            text += await asyncio.wait_for(ws.recv(), 5)
        await ws.send("more")
        assert await asyncio.wait_for(ws.recv(), 5) == "again"
    assert upstream.requests[1].json["messages"][-3:] == [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "".join(CHINESE)},
        {"role": "user", "content": "more"},
    ]


async def test_plain_mode_disconnect_cancels_the_reply(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["streaming"], finish=None, usage=None, done=False), Stall()]))
    gw = await start_gateway(openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"))
    async with gw.raw() as ws:
        await ws.send("go")
        assert await asyncio.wait_for(ws.recv(), 5) == "streaming"
    await asyncio.wait_for(upstream.requests[0].disconnected.wait(), 5)


async def test_json_mode_disconnect_lets_the_reply_finish_and_store(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([openai_sse(["a"], finish=None, usage=None, done=False), Pause(gate), openai_sse(["b"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.send(type="message", id="m1", content="go")
        start = await chat.expect("reply.start")
        await chat.expect("reply.delta")
    gate.set()
    reply = gw.gateway.hub.registry.get(start["reply_id"])  # type: ignore[union-attr]
    assert reply is not None
    await asyncio.wait_for(reply.ended.wait(), 5)
    async with gw.chat() as chat:
        ready = await chat.hello(conversation_id)
    assert ready["history"][-1]["content"] == "ab" and ready["history"][-1]["finish_reason"] == "stop"
    assert not upstream.requests[0].disconnected.is_set()


async def test_regenerate_replaces_the_last_reply(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["first try"])]), Script([openai_sse(["second try"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        _, events = await chat.ask("question", "u1")
        old_reply = events[0]["reply_id"]
        await chat.send(type="regenerate", id="r1")
        start = await chat.expect("reply.start")
        assert start["id"] == "r1" and start["replaces"] == old_reply and start["reply_id"] != old_reply
        text, _ = await chat.until_done()
        ready = await chat.hello(conversation_id)
    assert text == "second try"
    assert [(m["role"], m["content"]) for m in ready["history"]] == [("user", "question"), ("assistant", "second try")]
    assert upstream.requests[1].json["messages"] == [{"role": "user", "content": "question"}], "same context again"


async def test_regenerate_refusals(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([openai_sse(["a"], finish=None, usage=None, done=False), Pause(gate), openai_sse(["b"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="regenerate", id="r0")
        error = await chat.expect("error")
        assert error["code"] == "bad_request" and error["id"] == "r0", "nothing to regenerate yet"
        await chat.send(type="message", id="u1", content="go")
        await chat.expect("reply.start")
        await chat.send(type="regenerate", id="r1")
        while (event := await chat.recv())["type"] != "error":
            pass
        assert event["code"] == "busy" and event["id"] == "r1"
        gate.set()
        await chat.until_done()


async def test_a_history_request_s_id_is_echoed_in_its_answer_and_its_error(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.send(type="history", id="h0")
        error = await chat.expect("error")
        assert (error["code"], error["id"]) == ("bad_request", "h0")
        await chat.hello()
        await chat.ask("one")
        await chat.send(type="history", id="h1", limit=1)
        page = await chat.expect("history")
        assert (page["id"], [m["role"] for m in page["messages"]], page["has_more"]) == ("h1", ["assistant"], True)
        await chat.send(type="history")
        assert "id" not in await chat.expect("history")


async def test_the_demo_answers_a_chinese_question_in_chinese(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        text, events = await chat.ask("你好，请介绍一下你自己")
        assert text.startswith("这是网关内置的**演示模型**") and "> 你好，请介绍一下你自己" in text
        assert "**11 个字符**" in text and "demo model" not in text
        assert len([e for e in events if e["type"] == "reply.delta"]) > 100, "Chinese streams character by character"
        english, _ = await chat.ask("And in English?", "m2")
        assert english.startswith("This is the **demo model**")
