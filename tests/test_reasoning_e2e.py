"""Reasoning through a real gateway: each provider's format byte for byte, inline
``<think>``, one ``seq`` for thinking and text, resume mid-reasoning in exact order,
stored with the reply and never sent upstream, usage with reasoning and cached tokens."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from conftest import Chat, StartGateway, dashscope_env, openai_env
from fakeupstream import FakeUpstream, Pause, Script, openai_sse, rechunk


def events_of(chunks: list[dict[str, Any]], *, done: bool = True) -> bytes:
    """An OpenAI-compatible SSE body of ``chat.completion.chunk`` objects with these deltas."""
    out = []
    for i, delta in enumerate(chunks):
        finish = "stop" if done and i == len(chunks) - 1 else None
        body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        out.append(f"data: {json.dumps(body, ensure_ascii=False)}\n\n")
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


async def reply_events(chat: Chat, content: str, msg_id: str = "m1") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send a message; its reply.start and every reply.reasoning / reply.delta / reply.done after."""
    await chat.send(type="message", id=msg_id, content=content)
    start = await chat.expect("reply.start")
    events = []
    while True:
        event = await chat.recv()
        events.append(event)
        if event["type"] == "reply.done":
            return start, events


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(e["type"].removeprefix("reply."), e["seq"], e["text"]) for e in events if "seq" in e]


async def test_deepseek_reasoning_content_streams_before_the_answer_in_one_sequence(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Script(rechunk(openai_sse(["The answer", " is 4."], reasoning=["2+2: ", "add them"]), seed=5)))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        ready = await chat.hello()
        _, events = await reply_events(chat, "2+2?")
        seen = kinds(events)
        assert "".join(t for k, _, t in seen if k == "reasoning") == "2+2: add them"
        assert "".join(t for k, _, t in seen if k == "delta") == "The answer is 4."
        seqs = [s for _, s, _ in seen]
        assert seqs == sorted(set(seqs)) and seqs[0] == 1  # one sequence, strictly increasing
        assert max(s for k, s, _ in seen if k == "reasoning") < min(s for k, s, _ in seen if k == "delta")
        history = (await chat.hello(ready["conversation_id"]))["history"]
        assert (history[-1]["content"], history[-1]["reasoning"]) == ("The answer is 4.", "2+2: add them")
        upstream.enqueue(Script([openai_sse(["ok"])]))
        await reply_events(chat, "and 3+3?", "m2")
    sent = upstream.requests[1].json["messages"]
    assert sent[-2] == {"role": "assistant", "content": "The answer is 4."}  # reasoning never goes back upstream
    assert "add them" not in json.dumps(sent)


async def test_openrouter_reasoning_field_interleaved_with_text_keeps_its_order(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    body = events_of([
        {"role": "assistant", "content": ""}, {"reasoning": "first "}, {"reasoning": "thought"},
        {"content": "Answer"}, {"reasoning": " (an aside)"}, {"content": " done"},
    ])
    upstream.enqueue(Script(rechunk(body, seed=1)))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        _, events = await reply_events(chat, "go")
    text_runs: list[tuple[str, str]] = []
    for k, _, t in kinds(events):
        if text_runs and text_runs[-1][0] == k:
            text_runs[-1] = (k, text_runs[-1][1] + t)
        else:
            text_runs.append((k, t))
    assert text_runs == [("reasoning", "first thought"), ("delta", "Answer"), ("reasoning", " (an aside)"), ("delta", " done")]


async def test_dashscope_thinking_is_reasoning(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    frames = []
    for i, (reasoning, content, finish) in enumerate(
        [("让我想想", "", "null"), ("。", "", "null"), ("", "答案是", "null"), ("", "四。", "stop")], start=1
    ):
        data = {"output": {"choices": [{"message": {"role": "assistant", "content": content,
                                                    "reasoning_content": reasoning}, "finish_reason": finish}]},
                "usage": {"input_tokens": 9, "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 12}},
                "request_id": "r"}
        frames.append(f"id:{i}\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(data, ensure_ascii=False)}\n\n")
    upstream.enqueue(Script(rechunk("".join(frames).encode(), seed=2)))
    gw = await start_gateway(dashscope_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        _, events = await reply_events(chat, "2+2?")
    seen = kinds(events)
    assert "".join(t for k, _, t in seen if k == "reasoning") == "让我想想。"
    assert "".join(t for k, _, t in seen if k == "delta") == "答案是四。"
    assert events[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29, "reasoning_tokens": 12}


async def test_inline_think_tags_split_anywhere_are_reasoning(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["\n<th", "ink>Pon", "dering</th", "ink>\n\nThe", " answer. Not <think>this</think>"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        ready = await chat.hello()
        _, events = await reply_events(chat, "go")
        history = (await chat.hello(ready["conversation_id"]))["history"]
    seen = kinds(events)
    assert "".join(t for k, _, t in seen if k == "reasoning") == "Pondering"
    assert "".join(t for k, _, t in seen if k == "delta") == "The answer. Not <think>this</think>"
    assert (history[-1]["reasoning"], history[-1]["content"]) == ("Pondering", "The answer. Not <think>this</think>")


async def test_resume_mid_reasoning_replays_thinking_then_text_in_exact_order(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    first = events_of([{"reasoning_content": "step one, "}, {"reasoning_content": "step two, "}], done=False)
    rest = events_of([{"reasoning_content": "step three"}, {"content": "Result"}, {"content": "!"}])
    upstream.enqueue(Script([first, Pause(gate), rest]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        ready = await chat.hello()
        await chat.send(type="message", id="m1", content="think")
        start = await chat.expect("reply.start")
        got: list[tuple[str, int, str]] = []
        while "".join(t for _, _, t in got) != "step one, step two, ":
            event = await chat.expect("reply.reasoning")
            got.append(("reasoning", event["seq"], event["text"]))
    after = got[0][1]  # the client saw only the first piece before it left
    gate.set()
    async with gw.chat() as chat:
        await chat.hello(ready["conversation_id"])
        await chat.send(type="resume", reply_id=start["reply_id"], after_seq=after)
        _, events = await chat.until_done()
    seen = kinds(events)
    reasoning_then_text = [k for k, _, _ in seen]
    assert reasoning_then_text == sorted(reasoning_then_text, key=lambda k: k != "reasoning")  # no text before thinking
    assert got[0][2] + "".join(t for k, _, t in seen if k == "reasoning") == "step one, step two, step three"
    assert "".join(t for k, _, t in seen if k == "delta") == "Result!"
    seqs = [s for _, s, _ in seen]
    assert seqs == sorted(set(seqs)) and seqs[0] > after
    assert events[-1]["type"] == "reply.done" and events[-1]["finish_reason"] == "stop"


async def test_plain_mode_gets_only_the_answer(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Script([openai_sse(["only", " this"], reasoning=["not ", "that"])]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.raw() as ws:
        await ws.send("hi")
        text = ""
        while text != "only this":
            text += await asyncio.wait_for(ws.recv(), 5)
            assert "that" not in text and "not" not in text


async def test_usage_reports_reasoning_and_cached_tokens(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
             "prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details": {"reasoning_tokens": 30}}
    upstream.enqueue(Script([openai_sse(["x"], reasoning=["y"], usage=usage)]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        _, events = await reply_events(chat, "go")
    assert events[-1]["usage"] == {
        "prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140, "reasoning_tokens": 30, "cached_tokens": 64,
    }


async def test_a_reply_cut_before_the_providers_usage_says_its_usage_is_estimated(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([events_of([{"reasoning_content": "hmm " * 40}, {"content": "partial"}], done=False), Pause(gate)]))
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="message", id="m1", content="go")
        start = await chat.expect("reply.start")
        while (await chat.recv())["type"] != "reply.delta":
            pass
        await chat.send(type="cancel", reply_id=start["reply_id"])
        while (done := await chat.recv())["type"] != "reply.done":
            pass
    gate.set()
    assert done["finish_reason"] == "cancelled"
    assert done["usage"]["estimated"] is True and done["usage"]["completion_tokens"] > 0
