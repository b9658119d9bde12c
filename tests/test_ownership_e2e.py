"""Whose conversations are whose, on a real gateway: another subject gets exactly the
answer an unknown id gets, for everything of A's (a stored conversation, a new one still
unsaved, a running reply, a guessed resume); a subject's own tabs share everything; the
subject's list, search, rename and delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Chat, Running, StartGateway

ALICE, BOB = "tok-alice-0123456789abcdef", "tok-bob-0123456789abcdef0"
UNKNOWN = "f" * 32
SLOW_DEMO = "[provider]\ndemo_delay_ms = 40\n"
FAST_DEMO = "[provider]\ndemo_delay_ms = 0\n"


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tokens").write_text(f"alice {ALICE}\nbob {BOB}\n")
    return {"GATEWAY_AUTH_TOKENS_FILE": str(tmp_path / "tokens")}


async def signed_in(chat: Chat, token: str, conversation_id: str | None = None) -> dict[str, Any]:
    await chat.send(type="hello", token=token, conversation_id=conversation_id)
    return await chat.expect("ready")


async def answer(chat: Chat, **frame: Any) -> dict[str, Any]:
    await chat.send(**frame)
    return await chat.recv()


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two error events alike but for the ids they echo."""
    keep = ("type", "code", "message", "retryable")
    return {k: a.get(k) for k in keep} == {k: b.get(k) for k in keep}


async def test_another_subject_gets_what_an_unknown_id_gets(start_gateway: StartGateway, tokens: dict[str, str]) -> None:
    gw = await start_gateway(tokens, SLOW_DEMO)
    async with gw.chat() as alice, gw.chat() as bob:
        ready = await signed_in(alice, ALICE)
        conv = ready["conversation_id"]
        await alice.send(type="message", id="m1", content="a long answer please")
        start = await alice.expect("reply.start")
        reply_id = start["reply_id"]
        await alice.expect("reply.delta")  # it streams
        await signed_in(bob, BOB)
        for probe in (
            {"type": "hello", "conversation_id": "{}"},
            {"type": "message", "id": "b1", "content": "hi", "conversation_id": "{}"},
            {"type": "rename", "conversation_id": "{}", "title": "mine now"},
            {"type": "delete", "conversation_id": "{}"},
        ):
            theirs = await answer(bob, **{k: v.format(conv) if isinstance(v, str) else v for k, v in probe.items()})
            unknown = await answer(bob, **{k: v.format(UNKNOWN) if isinstance(v, str) else v for k, v in probe.items()})
            assert theirs["type"] == "error" and theirs["code"] == "not_found" and same(theirs, unknown), probe
        for probe in ({"type": "resume", "reply_id": reply_id, "after_seq": 0}, {"type": "cancel", "reply_id": reply_id}):
            theirs = await answer(bob, **probe)
            unknown = await answer(bob, **{**probe, "reply_id": UNKNOWN})
            assert theirs["type"] == "error" and same(theirs, unknown), probe
        listed = await answer(bob, type="conversations")
        assert listed["items"] == []
        # Alice's reply went on untouched by all of it, and Bob stored nothing of his own.
        text, events = await alice.until_done()
        assert events[-1]["finish_reason"] == "stop" and text
        assert [c["id"] for c in (await answer(alice, type="conversations"))["items"]] == [conv]


async def test_a_new_unsaved_conversation_is_open_to_its_subjects_tabs_only(
    start_gateway: StartGateway, tokens: dict[str, str]
) -> None:
    gw = await start_gateway(tokens, FAST_DEMO)
    async with gw.chat() as alice, gw.chat() as alice_tab, gw.chat() as bob:
        conv = (await signed_in(alice, ALICE))["conversation_id"]  # not stored yet
        assert (await signed_in(alice_tab, ALICE, conv))["conversation_id"] == conv
        await bob.send(type="hello", token=BOB, conversation_id=conv)
        error = await bob.expect("error")
        assert error["code"] == "not_found"
        text, _ = await alice_tab.ask("first words")  # the other tab stores it: it is Alice's
        assert "first words" in text
        assert (await alice.until_done())[0] == text  # the first tab watches it too
        assert [c["id"] for c in (await answer(alice, type="conversations"))["items"]] == [conv]


async def test_keys_in_none_mode_keep_browsers_apart(start_gateway: StartGateway) -> None:
    gw = await start_gateway(None, FAST_DEMO)
    async with gw.chat() as one, gw.chat() as two, gw.chat() as keyless:
        conv = (await signed_in(one, "browser-one-0123456789"))["conversation_id"]
        await one.ask("only mine")
        await two.send(type="hello", token="browser-two-0123456789", conversation_id=conv)
        assert (await two.expect("error"))["code"] == "not_found"
        await keyless.send(type="hello", conversation_id=conv)  # anonymous is a subject like any other
        assert (await keyless.expect("error"))["code"] == "not_found"
        assert (await answer(two, type="conversations"))["items"] == []


async def make(gw: Running, token: str, *texts: str) -> list[str]:
    ids = []
    for text in texts:
        async with gw.chat() as chat:
            await signed_in(chat, token)
            await chat.ask(text)
            ready = await signed_in(chat, token)  # a new one for the next text
            ids.append(ready["conversation_id"])
    return ids


async def test_list_search_rename_and_delete(start_gateway: StartGateway, tokens: dict[str, str]) -> None:
    gw = await start_gateway(tokens, FAST_DEMO)
    async with gw.chat() as alice:
        await signed_in(alice, ALICE)
        made = []
        for i, text in enumerate(["weekend plans", "tax forms", "more weekend ideas", "groceries 100%"]):
            await alice.ask(text, msg_id=f"m{i}")
            made.append(alice_conv := (await answer(alice, type="history"))["conversation_id"])
            await alice.send(type="hello", token=ALICE)  # the next one is new
            await alice.expect("ready")
        assert len(set(made)) == 4 and alice_conv == made[-1]
        first = await answer(alice, type="conversations", limit=3)
        assert [c["id"] for c in first["items"]] == made[::-1][:3] and first["next"]
        assert [c["title"] for c in first["items"]] == ["groceries 100%", "more weekend ideas", "tax forms"]
        second = await answer(alice, type="conversations", limit=3, before=first["next"])
        assert [c["id"] for c in second["items"]] == [made[0]] and "next" not in second
        found = await answer(alice, type="conversations", query="  WEEKEND  ")
        assert [c["id"] for c in found["items"]] == [made[2], made[0]] and found["query"] == "WEEKEND"
        assert [c["id"] for c in (await answer(alice, type="conversations", query="100%"))["items"]] == [made[3]]
        renamed = await answer(alice, type="rename", conversation_id=made[1], title="  Taxes\n2026 👩‍💻")
        assert renamed == {"type": "renamed", "conversation_id": made[1], "title": "Taxes 2026 👩‍💻"}
        gone = await answer(alice, type="delete", id="d1", conversation_id=UNKNOWN)
        assert (gone["code"], gone["id"]) == ("not_found", "d1")  # errors name the request
        assert (await answer(alice, type="delete", conversation_id=made[0])) == {"type": "deleted", "conversation_id": made[0]}
        listed = await answer(alice, type="conversations")
        assert [(c["id"], c["title"]) for c in listed["items"]][-1] == (made[1], "Taxes 2026 👩‍💻")
        assert made[0] not in [c["id"] for c in listed["items"]]
        await alice.send(type="hello", conversation_id=made[0])
        assert (await alice.expect("error"))["code"] == "not_found"


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        ({"type": "conversations", "limit": 0}, "limit"),
        ({"type": "conversations", "limit": 101}, "limit"),
        ({"type": "conversations", "before": "not-a-cursor"}, "cursor"),
        ({"type": "conversations", "query": "x" * 201}, "longer than 200"),
        ({"type": "rename", "conversation_id": UNKNOWN, "title": "   "}, "title"),
        ({"type": "rename", "conversation_id": UNKNOWN, "title": "bell \x07"}, "control characters"),
        ({"type": "rename", "conversation_id": UNKNOWN, "title": "x" * 201}, "longer than 200"),
        ({"type": "rename", "conversation_id": UNKNOWN}, "title"),
        ({"type": "delete"}, "conversation_id"),
    ],
)
async def test_bad_listing_frames_are_refused_and_change_nothing(
    start_gateway: StartGateway, frame: dict[str, Any], says: str
) -> None:
    gw = await start_gateway(None, FAST_DEMO)
    async with gw.chat() as chat:
        await signed_in(chat, "browser-one-0123456789")
        await chat.ask("keep me")
        error = await answer(chat, **frame)
        assert error["code"] == "bad_request" and says in error["message"]
        listed = await answer(chat, type="conversations")
        assert len(listed["items"]) == 1 and listed["items"][0]["title"] == "keep me"


async def test_in_none_mode_a_key_takes_over_a_conversation_stored_without_owner(start_gateway: StartGateway) -> None:
    gw = await start_gateway(None, FAST_DEMO)
    async with gw.chat() as keyless, gw.chat() as browser, gw.chat() as other:
        conv = (await keyless.hello())["conversation_id"]  # anonymous, as before owners existed
        await keyless.ask("from before")
        await browser.send(type="hello", token="browser-one-0123456789", conversation_id=conv)
        ready = await browser.expect("ready")
        assert [m["content"] for m in ready["history"]][0] == "from before"
        await other.send(type="hello", token="browser-two-0123456789", conversation_id=conv)
        assert (await other.expect("error"))["code"] == "not_found"  # taken: once
        assert [c["id"] for c in (await answer(browser, type="conversations"))["items"]] == [conv]


async def test_a_conversation_from_before_owners_goes_to_the_first_subject_that_opens_it(
    start_gateway: StartGateway, tokens: dict[str, str]
) -> None:
    gw = await start_gateway(tokens, FAST_DEMO)
    store = gw.gateway.store
    assert store is not None
    old = await store.create()  # nobody's: as stored before owners existed
    keyless = await store.create(owner="anonymous")  # a keyless client's (none mode, earlier)
    async with gw.chat() as alice, gw.chat() as bob:
        assert (await signed_in(alice, ALICE, old.id))["conversation_id"] == old.id  # its id is all it takes
        await bob.send(type="hello", token=BOB, conversation_id=old.id)
        assert (await bob.expect("error"))["code"] == "not_found"  # but once
        await alice.send(type="hello", conversation_id=keyless.id)
        assert (await alice.expect("error"))["code"] == "not_found"  # a keyless one only in none mode
    assert (await store.get(old.id)).owner == "token:alice"  # type: ignore[union-attr]
    assert (await store.get(keyless.id)).owner == "anonymous"  # type: ignore[union-attr]


async def test_keyless_clients_have_no_list_and_lose_what_a_key_takes_over(start_gateway: StartGateway) -> None:
    gw = await start_gateway(None, FAST_DEMO)
    async with gw.chat() as keyless, gw.chat() as browser:
        conv = (await keyless.hello())["conversation_id"]
        await keyless.ask("a script's question")
        assert (await answer(keyless, type="conversations"))["items"] == []  # shared subject: no list
        await browser.send(type="hello", token="browser-one-0123456789", conversation_id=conv)
        await browser.expect("ready")
        error = await answer(keyless, type="history")  # the keyless socket has it no more
        assert (error["code"], error["message"]) == ("bad_request", "send hello first")
        await keyless.send(type="message", id="m2", content="still mine?")
        ready = await keyless.expect("ready")  # a new conversation: not the one taken over
        assert ready["conversation_id"] != conv
        await keyless.until_done()
        history = await answer(browser, type="history")
        assert [m["content"] for m in history["messages"] if m["role"] == "user"] == ["a script's question"]
