"""Branches through a real gateway: edit, regenerate beside the old reply, select,
continue, per-conversation instructions, export and delete_branch, with fake upstreams
that check the request each reply sends, two tabs, and a reply resumed on a branch not
shown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Chat, StartGateway, dashscope_env, openai_env
from fakeupstream import FakeUpstream, Pause, Script, dashscope_sse, openai_sse

from gateway.context import CONTINUE_PROMPT

ALICE, BOB = "tok-alice-0123456789abcdef", "tok-bob-0123456789abcdef0"


def answers(upstream: FakeUpstream, *texts: str) -> None:
    upstream.enqueue(*(Script([openai_sse([text])]) for text in texts))


def sent(upstream: FakeUpstream, n: int) -> list[dict[str, Any]]:
    """The messages the gateway sent upstream in its ``n``-th request."""
    messages: list[dict[str, Any]] = upstream.requests[n].json["messages"]
    return messages


def shown(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in items]


async def reply(chat: Chat, **frame: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Send ``frame``; its reply's start, text and end."""
    await chat.send(**frame)
    start = await chat.expect("reply.start")
    text, events = await chat.until_done()
    return start, text, events[-1]


async def answer(chat: Chat, **frame: Any) -> dict[str, Any]:
    await chat.send(**frame)
    return await chat.recv()


async def two_turns(chat: Chat) -> tuple[str, str, str]:
    """one → A1, two → A2; the conversation and the two replies' ids."""
    ready = await chat.hello()
    start1, _, _ = await reply(chat, type="message", id="m1", content="one")
    start2, _, _ = await reply(chat, type="message", id="m2", content="two")
    return ready["conversation_id"], start1["reply_id"], start2["reply_id"]


async def test_an_edit_answers_the_new_version_and_keeps_the_old_branch(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    answers(upstream, "A1", "A2", "A2 again")
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conv, a1, a2 = await two_turns(chat)
        start, text, done = await reply(chat, type="edit", id="m2b", message_id="m2", content="two, better")
        assert (start["id"], start["parent_id"], text, done["finish_reason"]) == ("m2b", "m2b", "A2 again", "stop")
        assert sent(upstream, 2) == [
            {"role": "user", "content": "one"}, {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "two, better"},
        ]
        history = (await chat.hello(conv))["history"]
        assert shown(history) == [("user", "one"), ("assistant", "A1"), ("user", "two, better"),
                                  ("assistant", "A2 again")]
        assert (history[2]["siblings"], history[2]["sibling_index"], history[2]["parent_id"]) == (
            ["m2", "m2b"], 1, a1,
        )
        assert "siblings" not in history[3] and history[3]["parent_id"] == "m2b"
        branch = await answer(chat, type="select", message_id="m2", id="s1")
        assert branch["type"] == "branch" and branch["id"] == "s1" and branch["has_more"] is False
        assert [m["id"] for m in branch["messages"]] == ["m1", a1, "m2", a2]
        assert branch["messages"][2]["sibling_index"] == 0
    async with gw.chat() as again:  # a reload shows the branch last selected
        assert [m["id"] for m in (await again.hello(conv))["history"]] == ["m1", a1, "m2", a2]


async def test_edits_are_checked_and_a_refused_one_stores_nothing(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    answers(upstream, "A1", "A2")
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conv, a1, a2 = await two_turns(chat)
        for frame, code in [
            ({"message_id": "nope"}, "not_found"),
            ({"message_id": a1}, "bad_request"),
            ({"message_id": "m2", "content": " "}, "bad_request"),
            ({"message_id": "m2", "content": "x" * 40_000}, "too_large"),
            ({"message_id": "m2", "id": "m1"}, "bad_request"),  # the new message's id is taken
            ({"message_id": "m2", "model": "no-such-model"}, "bad_request"),
        ]:
            error = await answer(chat, **{"type": "edit", "id": "e1", "content": "changed", **frame})
            assert (error["type"], error["code"]) == ("error", code), frame
        history = (await chat.hello(conv))["history"]
        assert [m["id"] for m in history] == ["m1", a1, "m2", a2] and all("siblings" not in m for m in history)
    assert len(upstream.requests) == 2


async def test_regenerate_adds_a_version_and_any_version_can_be_shown(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    answers(upstream, "first", "second", "third")
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conv = (await chat.hello())["conversation_id"]
        a1 = (await reply(chat, type="message", id="m1", content="one"))[0]["reply_id"]
        start, text, _ = await reply(chat, type="regenerate", id="r1")
        a2 = start["reply_id"]
        assert (start["replaces"], start["parent_id"], text) == (a1, "m1", "second")
        start, text, _ = await reply(chat, type="regenerate", id="r2", reply_id=a1)  # the old one, again
        a3 = start["reply_id"]
        assert (start["replaces"], text) == (a1, "third")
        assert sent(upstream, 1) == sent(upstream, 2) == [{"role": "user", "content": "one"}]
        history = (await chat.hello(conv))["history"]
        assert [m["id"] for m in history] == ["m1", a3]
        assert (history[1]["siblings"], history[1]["sibling_index"]) == ([a1, a2, a3], 2)
        branch = await answer(chat, type="select", message_id=a1)
        assert shown(branch["messages"]) == [("user", "one"), ("assistant", "first")]
        error = await answer(chat, type="regenerate", id="r3", reply_id="nope")
        assert (error["type"], error["code"], error["id"]) == ("error", "not_found", "r3")


@pytest.mark.parametrize("style", ["", "prefix", "partial"])
async def test_continue_extends_the_same_message(
    start_gateway: StartGateway, upstream: FakeUpstream, style: str
) -> None:
    upstream.enqueue(Script([openai_sse(["Once upon"], finish="length")]), Script([openai_sse([" a time."])]))
    toml = f'[provider]\ncontinuation = "{style}"\n' if style else ""
    gw = await start_gateway(openai_env(upstream), toml=toml)
    async with gw.chat() as chat:
        conv = (await chat.hello())["conversation_id"]
        first, _, done = await reply(chat, type="message", id="m1", content="a story")
        assert done["finish_reason"] == "length"
        await chat.send(type="continue", id="c1", reply_id=first["reply_id"])
        start = await chat.expect("reply.start")
        assert (start["id"], start["continues"], start["parent_id"]) == ("c1", first["reply_id"], "m1")
        assert start["reply_id"] != first["reply_id"]
        text, events = await chat.until_done()
        deltas = [e for e in events if e["type"] == "reply.delta"]
        assert (deltas[0]["seq"], deltas[0]["text"]) == (1, "Once upon")  # the stored text first
        assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
        assert text == "Once upon a time." and events[-1]["finish_reason"] == "stop"
        history = (await chat.hello(conv))["history"]
        assert [(m["id"], m["content"], m.get("finish_reason")) for m in history[1:]] == [
            (first["reply_id"], "Once upon a time.", "stop"),
        ]
    partial = {"role": "assistant", "content": "Once upon"}
    if style in ("prefix", "partial"):
        assert sent(upstream, 1) == [{"role": "user", "content": "a story"}, {**partial, style: True}]
    else:
        assert sent(upstream, 1) == [
            {"role": "user", "content": "a story"}, partial, {"role": "user", "content": CONTINUE_PROMPT},
        ]


async def test_dashscope_continues_with_a_partial_assistant_message(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Script([dashscope_sse(["从前"], finish="length")]), Script([dashscope_sse(["有座山。"])]))
    gw = await start_gateway(dashscope_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        first, _, _ = await reply(chat, type="message", id="m1", content="讲个故事")
        _, text, _ = await reply(chat, type="continue", id="c1", reply_id=first["reply_id"])
        assert text == "从前有座山。"
    assert upstream.requests[1].json["input"]["messages"] == [
        {"role": "user", "content": "讲个故事"}, {"role": "assistant", "content": "从前", "partial": True},
    ]


async def test_only_a_reply_cut_short_can_be_continued(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    answers(upstream, "done")
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        await chat.hello()
        first, _, _ = await reply(chat, type="message", id="m1", content="hi")
        for reply_id, code in [(first["reply_id"], "bad_request"), ("m1", "bad_request"), ("nope", "not_found")]:
            error = await answer(chat, type="continue", id="c1", reply_id=reply_id)
            assert (error["type"], error["code"], error["id"]) == ("error", code, "c1")
    assert len(upstream.requests) == 1


async def test_a_continued_demo_reply_ends_as_the_whole_answer(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml="[provider]\ndemo_delay_ms = 0\n")
    async with gw.chat() as chat:
        conv = (await chat.hello())["conversation_id"]
        _, whole, _ = await reply(chat, type="message", id="m1", content="hello")
        await chat.send(type="message", id="m2", content="hello")
        start = await chat.expect("reply.start")
        first = await chat.expect("reply.delta")
        await chat.send(type="cancel", reply_id=start["reply_id"])
        rest, events = await chat.until_done()
        cut = first["text"] + rest
        expected = whole.replace("has 1 message(s)", "has 3 message(s)")  # what m2's answer is
        assert events[-1]["finish_reason"] == "cancelled" and expected.startswith(cut) and cut != expected
        _, text, done = await reply(chat, type="continue", id="c1", reply_id=start["reply_id"])
        assert (text, done["finish_reason"]) == (expected, "stop")
        history = (await chat.hello(conv))["history"]
        assert (history[-1]["id"], history[-1]["content"]) == (start["reply_id"], expected)


async def test_instructions_of_one_conversation_go_first_upstream(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    answers(upstream, "Bonjour", "Hello")
    gw = await start_gateway(openai_env(upstream), toml='[provider]\nsystem_prompt = "Be brief."\n')
    async with gw.chat() as chat:
        conv = (await chat.hello())["conversation_id"]
        settings = await answer(chat, type="settings", system_prompt="  Answer in French.  ", id="s1")
        assert settings == {"type": "settings", "id": "s1", "conversation_id": conv,
                            "system_prompt": "Answer in French."}
        await reply(chat, type="message", id="m1", content="hi")
        assert sent(upstream, 0)[0] == {"role": "system", "content": "Answer in French."}
        assert (await chat.hello(conv))["system_prompt"] == "Answer in French."
        error = await answer(chat, type="settings", system_prompt="x" * 40_000, id="s2")
        assert (error["type"], error["code"], error["id"]) == ("error", "too_large", "s2")
        await answer(chat, type="settings", system_prompt="")
        await reply(chat, type="message", id="m2", content="again")
        assert sent(upstream, 1)[0] == {"role": "system", "content": "Be brief."}
        assert "system_prompt" not in await chat.hello(conv)


async def test_export_downloads_the_branch_or_the_whole_tree(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    answers(upstream, "A1", "A2", "A2b")
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conv, a1, a2 = await two_turns(chat)
        start, _, _ = await reply(chat, type="edit", id="m2b", message_id="m2", content="two, better")
        md = await answer(chat, type="export", format="markdown", id="x1")
        assert (md["type"], md["id"], md["media_type"], md["filename"]) == ("export", "x1", "text/markdown", "one.md")
        assert md["content"].startswith("# one\n") and "## User\n\ntwo, better" in md["content"]
        assert "A2b" in md["content"] and "A2\n" not in md["content"]  # the branch shown only
        tree = await answer(chat, type="export", format="json", scope="tree")
        doc = orjson.loads(tree["content"])
        assert (tree["media_type"], doc["id"], doc["scope"], doc["active"]) == (
            "application/json", conv, "tree", start["reply_id"],
        )
        assert [(m["id"], m["parent_id"]) for m in doc["messages"]] == [
            ("m1", ""), (a1, "m1"), ("m2", a1), (a2, "m2"), ("m2b", a1), (start["reply_id"], "m2b"),
        ]
        error = await answer(chat, type="export", format="pdf")
        assert (error["type"], error["code"]) == ("error", "bad_request")


async def test_another_subject_can_neither_open_nor_export_a_conversation(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    (tmp_path / "tokens").write_text(f"alice {ALICE}\nbob {BOB}\n")
    gw = await start_gateway({"GATEWAY_AUTH_TOKENS_FILE": str(tmp_path / "tokens")}, "[provider]\ndemo_delay_ms = 0\n")
    async with gw.chat() as alice, gw.chat() as bob:
        await alice.send(type="hello", token=ALICE)
        conv = (await alice.expect("ready"))["conversation_id"]
        await reply(alice, type="message", id="m1", content="mine")
        await bob.send(type="hello", token=BOB)
        await bob.expect("ready")
        refused = await answer(bob, type="hello", conversation_id=conv)
        assert (refused["type"], refused["code"]) == ("error", "not_found")
        for frame in ({"type": "export"}, {"type": "select", "message_id": "m1"},
                      {"type": "edit", "id": "e", "message_id": "m1", "content": "x"},
                      {"type": "continue", "id": "c", "reply_id": "m1"},
                      {"type": "delete_branch", "message_id": "m1"}):
            error = await answer(bob, **frame)
            assert (error["type"], error["code"]) == ("error", "not_found"), frame


async def test_delete_branch_removes_a_version_and_what_followed_it(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    answers(upstream, "A1", "A2", "A2b")
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conv, a1, a2 = await two_turns(chat)
        await reply(chat, type="edit", id="m2b", message_id="m2", content="two, better")
        branch = await answer(chat, type="delete_branch", message_id="m2b", id="d1")
        assert (branch["type"], branch["id"]) == ("branch", "d1")
        assert [m["id"] for m in branch["messages"]] == ["m1", a1, "m2", a2]
        assert all("siblings" not in m for m in branch["messages"])
        error = await answer(chat, type="delete_branch", message_id="m2b")
        assert (error["type"], error["code"]) == ("error", "not_found")
        tree = orjson.loads((await answer(chat, type="export", format="json", scope="tree"))["content"])
        assert [m["id"] for m in tree["messages"]] == ["m1", a1, "m2", a2]


async def test_a_second_tab_follows_an_edit(start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    answers(upstream, "A1", "A2", "the new answer")
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as tab1, gw.chat() as tab2:
        conv, a1, _ = await two_turns(tab1)
        await tab2.hello(conv)
        await tab1.send(type="edit", id="m2b", message_id="m2", content="two, better")
        start = await tab2.expect("reply.start")
        assert (start["content"], start["parent_id"], start["id"]) == ("two, better", "m2b", "m2b")
        assert start["message_parent_id"] == a1  # not the last message tab 2 shows: the branch changed
        text, events = await tab2.until_done()
        assert text == "the new answer" and events[-1]["finish_reason"] == "stop"
        await tab1.until_done()
        await tab2.send(type="history")
        page = await tab2.expect("history")
        assert [m["id"] for m in page["messages"]] == ["m1", a1, "m2b", start["reply_id"]]


async def test_a_reply_on_a_branch_not_shown_is_resumed_whole(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["A1"])]), Script([openai_sse(["A2"])]),
        Script([openai_sse(["Still ", "going ", "on"])[:40], Pause(gate), openai_sse(["Still ", "going ", "on"])[40:]]),
    )
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as tab1:
        conv, a1, a2 = await two_turns(tab1)
        await tab1.send(type="edit", id="m2b", message_id="m2", content="two, again")
        start = await tab1.expect("reply.start")
        branch = await answer(tab1, type="select", message_id="m2")  # look at the old version meanwhile
        while branch["type"] != "branch":
            branch = await tab1.recv()
        assert [m["id"] for m in branch["messages"]] == ["m1", a1, "m2", a2]
        assert branch["streaming"]["reply_id"] == start["reply_id"] and branch["streaming"]["parent_id"] == "m2b"
        async with gw.chat() as tab2:
            ready = await tab2.hello(conv)
            assert [m["id"] for m in ready["history"]] == ["m1", a1, "m2", a2]
            assert ready["streaming"]["parent_id"] == "m2b"
            await tab2.send(type="resume", reply_id=start["reply_id"], after_seq=0)
            gate.set()
            text, events = await tab2.until_done()
            seqs = [e["seq"] for e in events if e["type"] == "reply.delta"]
            assert text == "Still going on" and seqs == sorted(seqs) and events[-1]["finish_reason"] == "stop"
            assert [m["id"] for m in (await tab2.hello(conv))["history"]] == ["m1", a1, "m2", a2]
            shown_now = await answer(tab2, type="select", message_id="m2b")
            assert shown(shown_now["messages"])[-2:] == [("user", "two, again"), ("assistant", "Still going on")]


async def test_a_new_conversation_has_no_message_to_name(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml="[provider]\ndemo_delay_ms = 0\n")
    async with gw.chat() as chat:
        await chat.hello()
        for frame in ({"type": "edit", "id": "e", "message_id": "m1", "content": "x"},
                      {"type": "continue", "id": "c", "reply_id": "r1"},
                      {"type": "select", "message_id": "m1"}, {"type": "delete_branch", "message_id": "m1"},
                      {"type": "export"}, {"type": "regenerate", "id": "g"}):
            error = await answer(chat, **frame)
            assert (error["type"], error["code"]) == ("error", "not_found" if frame["type"] != "regenerate"
                                                      else "bad_request"), frame
        assert (await chat.hello())["history"] == []


async def test_a_message_lands_in_the_branch_its_sender_shows(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    answers(upstream, "A1", "A2", "A2b", "A3")
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as tab1, gw.chat() as tab2:
        conv, a1, a2 = await two_turns(tab1)
        edited, _, _ = await reply(tab1, type="edit", id="m2b", message_id="m2", content="two, better")
        await tab2.hello(conv)
        await answer(tab2, type="select", message_id="m2")  # tab 2 looks at the old version
        start, _, _ = await reply(tab1, type="message", id="m3", content="three", parent_id=edited["reply_id"])
        assert start["parent_id"] == "m3"
        assert sent(upstream, 3)[-2:] == [{"role": "assistant", "content": "A2b"}, {"role": "user", "content": "three"}]
        other = await tab2.expect("reply.start")
        assert other["message_parent_id"] != a2  # tab 2 shows a2: it knows the branch moved
        await tab2.until_done()
        error = await answer(tab1, type="message", id="m4", content="x", parent_id="nope")
        assert (error["type"], error["code"], error["id"]) == ("error", "not_found", "m4")


async def test_refusals_change_nothing_and_continue_only_the_last_reply(
    start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["Cut"], finish="length")]), Script([openai_sse(["A2"])]),
        Script([openai_sse(["long"], finish=None, usage=None, done=False), Pause(gate), openai_sse(["er"])]),
    )
    gw = await start_gateway(openai_env(upstream))
    async with gw.chat() as chat:
        conv = (await chat.hello())["conversation_id"]
        cut, _, _ = await reply(chat, type="message", id="m1", content="one")
        await reply(chat, type="message", id="m2", content="two")
        error = await answer(chat, type="continue", id="c1", reply_id=cut["reply_id"])
        assert (error["code"], error["id"]) == ("bad_request", "c1")  # a message follows it
        await chat.send(type="message", id="m3", content="three")
        await chat.expect("reply.start")
        async with gw.chat() as viewer:
            before = (await viewer.hello(conv))["history"]
        for frame in ({"type": "regenerate", "id": "g", "reply_id": cut["reply_id"], "model": "gpt-test"},
                      {"type": "delete_branch", "message_id": "m2"},
                      {"type": "edit", "id": "e", "message_id": "m1", "content": "again"}):
            refused = await answer(chat, **frame)
            while refused["type"] != "error":
                refused = await chat.recv()
            assert refused["code"] == "busy", frame
        async with gw.chat() as viewer:
            assert (await viewer.hello(conv))["history"] == before
        gate.set()
        text, _ = await chat.until_done()
        assert text.endswith("er")
