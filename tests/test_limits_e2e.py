"""Per-subject limits and budgets on a real gateway, under bounded loopback floods: exact
counts of what gets through, what each refusal says, that nothing refused is stored,
the ledger, and `gateway usage`. Budgets across two instances are in
test_cluster_e2e.py.

The gateway's clock for budgets and minutes is pinned (``accounting.clock``) so that no
run straddles a minute or a day."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import Chat, Running, StartGateway
from websockets.exceptions import ConnectionClosed

from gateway.cli import main as gateway_cli
from gateway.quota import DAY

ALICE, BOB = "tok-alice-0123456789abcdef", "tok-bob-0123456789abcdef0"
NOON = 20_833 * DAY + 12 * 3600.0
FAST = "[provider]\ndemo_delay_ms = 0\n"
SLOW = "[provider]\ndemo_delay_ms = 40\n"


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tokens").write_text(f"alice {ALICE}\nbob {BOB}\n")
    return {"GATEWAY_AUTH_TOKENS_FILE": str(tmp_path / "tokens")}


async def limited(start_gateway: StartGateway, env: dict[str, str], toml: str) -> Running:
    gw = await start_gateway(env, toml)
    assert gw.gateway.hub is not None
    gw.gateway.hub.registry.accounting.clock = lambda: NOON
    return gw


async def signed_in(chat: Chat, token: str) -> dict[str, Any]:
    await chat.send(type="hello", token=token)
    return await chat.expect("ready")


async def stored_user_messages(gw: Running) -> list[str]:
    store = gw.gateway.store
    assert store is not None
    found = []
    for cid in await store.ids(None, 100):
        found += [m.content for m in await store.history(cid, -1) if m.role == "user"]
    return sorted(found)


async def test_messages_per_minute(start_gateway: StartGateway, tokens: dict[str, str]) -> None:
    gw = await limited(start_gateway, tokens, FAST + "[limits]\nmessages_per_minute = 3\n")
    async with gw.chat() as alice, gw.chat() as bob:
        ready = await signed_in(alice, ALICE)
        assert ready["limits"]["messages_per_minute"] == 3
        answers = []
        for i in range(6):  # a flood, one at a time
            await alice.send(type="message", id=f"m{i}", content=f"question {i}")
            event = await alice.recv()
            if event["type"] == "reply.start":
                await alice.until_done()
            answers.append(event)
        assert [e["type"] for e in answers] == ["reply.start"] * 3 + ["error"] * 3
        refused = answers[3]
        assert (refused["code"], refused["id"], refused["retryable"]) == ("rate_limited", "m3", True)
        assert refused["retry_after"] == 60 and "3 messages a minute" in refused["message"]
        await alice.send(type="ping", id=1)  # the socket stays open
        assert (await alice.expect("pong"))["id"] == 1
        await signed_in(bob, BOB)  # another subject has a minute of its own
        await bob.send(type="message", id="b", content="bob's question")
        assert (await bob.expect("reply.start"))["id"] == "b"
        await bob.until_done()
    assert await stored_user_messages(gw) == ["bob's question", "question 0", "question 1", "question 2"]


async def test_replies_per_subject(start_gateway: StartGateway, tokens: dict[str, str]) -> None:
    gw = await limited(start_gateway, tokens, SLOW + "[limits]\nreplies_per_subject = 1\n")
    async with gw.chat() as first, gw.chat() as second, gw.chat() as bob:
        for chat, token in ((first, ALICE), (second, ALICE), (bob, BOB)):
            await signed_in(chat, token)
        await first.send(type="message", id="a1", content="a long one")
        await first.expect("reply.start")
        await second.send(type="message", id="a2", content="another conversation, same person")
        busy = await second.expect("error")
        assert (busy["code"], busy["id"]) == ("busy", "a2") and "1 of your replies" in busy["message"]
        await bob.send(type="message", id="b1", content="someone else")
        assert (await bob.expect("reply.start"))["id"] == "b1"
        await first.send(type="cancel", reply_id=(await first.expect("reply.delta"))["reply_id"])
        await first.until_done()
        await second.send(type="message", id="a3", content="now it may")  # the first one ended
        assert (await second.expect("reply.start"))["id"] == "a3"
        await second.send(type="cancel", reply_id=(await second.expect("reply.delta"))["reply_id"])
        await second.until_done()
        await bob.until_done()
    assert "another conversation, same person" not in await stored_user_messages(gw)


async def test_connections_per_subject(start_gateway: StartGateway, tokens: dict[str, str]) -> None:
    gw = await limited(start_gateway, tokens, FAST + "[limits]\nconnections_per_subject = 2\n")
    async with gw.chat() as one, gw.chat() as two, gw.chat() as three, gw.chat() as bob:
        for chat in (one, two):
            await signed_in(chat, ALICE)
        await three.send(type="hello", token=ALICE)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(three.ws.recv(), 5)
        assert three.ws.close_code == 1013
        await signed_in(bob, BOB)  # another subject counts apart
        await two.send(type="ping", id=2)  # the two within the limit are served
        assert (await two.expect("pong"))["id"] == 2


async def test_budgets_refuse_before_anything_is_stored_and_tell_when_they_reset(
    start_gateway: StartGateway, tokens: dict[str, str]
) -> None:
    toml = "[provider]\ndemo_delay_ms = 0\nparams = { max_tokens = 50 }\n[limits]\ntokens_per_day = 400\n"
    gw = await limited(start_gateway, tokens, toml)
    async with gw.chat() as alice:
        ready = await signed_in(alice, ALICE)
        assert ready["budget"] == {"remaining": 400, "resets_at": (NOON // DAY + 1) * DAY}
        spent, sent, refused = 0, 0, None
        for i in range(20):
            content = f"q{i}"
            await alice.send(type="message", id=f"m{i}", content=content)
            event = await alice.recv()
            if event["type"] == "error":
                refused = event
                break
            sent += 1
            _, events = await alice.until_done()
            spent += events[-1]["usage"]["total_tokens"]
        assert refused is not None and sent >= 1
        assert spent + 1 + 50 > 400  # the next reservation (its text, 50 tokens of reply) would pass the budget
        assert (refused["code"], refused["retryable"], refused["resets_at"]) == (
            "budget_exceeded", False, (NOON // DAY + 1) * DAY,
        )
        ready = await signed_in(alice, ALICE)
        assert ready["budget"]["remaining"] == max(0, 400 - spent)  # a reply may end past the budget: never below 0
    assert len(await stored_user_messages(gw)) == sent


async def test_the_gateways_cap_holds_across_subjects(start_gateway: StartGateway, tokens: dict[str, str]) -> None:
    toml = "[provider]\ndemo_delay_ms = 0\nparams = { max_tokens = 50 }\n[limits]\nglobal_tokens_per_day = 300\n"
    gw = await limited(start_gateway, tokens, toml)
    async with gw.chat() as alice, gw.chat() as bob:
        await signed_in(alice, ALICE)
        await signed_in(bob, BOB)
        for i in range(20):
            await alice.send(type="message", id=f"a{i}", content="alice spends")
            event = await alice.recv()
            if event["type"] == "error":
                assert event["code"] == "budget_exceeded" and "this gateway's" in event["message"], event
                break
            await alice.until_done()
        await bob.send(type="message", id="b", content="bob has spent nothing")
        refused = await bob.expect("error")
        assert refused["code"] == "budget_exceeded" and "this gateway's" in refused["message"]


async def test_a_cancelled_reply_is_charged_an_estimate_and_the_ledger_reports_it(
    start_gateway: StartGateway, tokens: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await limited(start_gateway, tokens, SLOW + "[limits]\ntokens_per_day = 100000\n")
    async with gw.chat() as alice:
        await signed_in(alice, ALICE)
        await alice.send(type="message", id="m1", content="stop me")
        delta = (await alice.expect("reply.start"), await alice.expect("reply.delta"))[1]
        await alice.send(type="cancel", reply_id=delta["reply_id"])
        _, events = await alice.until_done()
        assert events[-1]["finish_reason"] == "cancelled" and events[-1]["usage"]["estimated"] is True
        cancelled = events[-1]["usage"]["total_tokens"]
        await alice.send(type="message", id="m2", content="a whole one")
        await alice.expect("reply.start")
        _, events = await alice.until_done()
        whole = events[-1]["usage"]
        ready = await signed_in(alice, ALICE)
    store = gw.gateway.store
    assert store is not None
    [total] = await store.usage("token:alice", 0)
    assert (total.replies, total.estimated) == (2, 1)
    assert total.prompt_tokens + total.completion_tokens > whole["total_tokens"]  # the cancelled one: more than zero
    assert total.prompt_tokens + total.completion_tokens == whole["total_tokens"] + cancelled  # what reply.done said
    assert ready["budget"]["remaining"] == 100000 - total.prompt_tokens - total.completion_tokens
    await gw.gateway.close()  # the CLI reads the store file as a sysadmin would
    capsys.readouterr()  # (the gateway's own log lines)
    config = tmp_path / "usage.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    usage = lambda *args: asyncio.to_thread(gateway_cli, ["usage", "--config", str(config), *args])  # noqa: E731
    assert await usage("--since", "1d") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["subject", "model", "replies"]
    assert out[1].split()[:4] == ["token:alice", "demo", "2", f"{total.prompt_tokens:,}"]
    assert await usage("--subject", "nobody") == 0
    assert capsys.readouterr().out.strip() == "no usage by nobody in the last 7d"
    assert await usage("--since", "soon") == 2
