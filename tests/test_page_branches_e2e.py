"""The chat page's branches in Chromium against real gateways: editing a message and
switching between its versions, a reply regenerated into three versions, continuing a
reply cut short in place, the conversation's own instructions, exporting (Markdown,
JSON, all branches), deleting a version, another tab following an edit, and a reply
that keeps streaming in a branch not shown.

Screenshots for the docs go to test-artifacts/screenshots/ (branches-*.png), and to
docs/images/ with GATEWAY_DOC_SHOTS=1.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, StartGateway, openai_env
from fakeupstream import FakeUpstream, Pause, Recorded, Script, openai_sse
from page_helpers import another_tab as _tab
from page_helpers import (  # noqa: F401  (browser is a fixture)
    Watched,
    browser,
    doc_shot,
    missing_browser_reason,
    open_page,
    shot,
    sse_end,
    sse_pieces,
)

_reason = missing_browser_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

from playwright.async_api import Browser, Locator, Page, WebSocketRoute, expect  # noqa: E402

expect.set_options(timeout=int(TIMEOUT * 1000))
DESKTOP = {"viewport": {"width": 1100, "height": 760}}


def numbered(upstream: FakeUpstream) -> None:
    """Every request is answered "Reply N to <its last user message>"."""
    count = 0

    def answer(rec: Recorded) -> Script:
        nonlocal count
        count += 1
        last = [m["content"] for m in rec.json["messages"] if m["role"] == "user"][-1]
        return Script([openai_sse([f"Reply {count} ", f"to {last}"])])

    upstream.set_default(answer)


def sent(upstream: FakeUpstream, n: int) -> list[tuple[str, str]]:
    """The messages of the gateway's ``n``-th upstream request."""
    return [(m["role"], m["content"]) for m in upstream.requests[n].json["messages"]]


async def _open(browser: Browser, url: str, **options: Any) -> Watched:
    return await open_page(browser, url, **{**DESKTOP, **options})


async def _send(page: Page, text: str) -> None:
    await page.get_by_test_id("composer").fill(text)
    await page.get_by_test_id("composer").press("Enter")
    await expect(_assistants(page).last).to_have_attribute("data-state", "done")


def _users(page: Page) -> Locator:
    return page.locator('[data-testid="messages"] [data-role="user"]')


def _assistants(page: Page) -> Locator:
    return page.locator('[data-testid="messages"] [data-role="assistant"]')


async def _shown(page: Page, users: list[str], replies: list[str]) -> None:
    await expect(_users(page).locator(".bubble")).to_have_text(users)
    await expect(_assistants(page).locator(".msg-body")).to_have_text(replies)


def _sent_frames(page: Page) -> list[dict[str, Any]]:
    """Every JSON frame the page sends from now on (its sockets opened from now on)."""
    frames: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(json.loads(payload))))
    return frames


async def _live(page: Page) -> None:
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")


async def _no_sideways_scroll(page: Page) -> None:
    root = "document.documentElement"
    assert await page.evaluate(f"{root}.scrollWidth <= {root}.clientWidth"), "sideways scrolling"
    assert await page.evaluate("document.getElementById('log').scrollWidth <= document.getElementById('log').clientWidth")


async def test_editing_a_message_answers_the_new_version_and_keeps_the_old_branch(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    numbered(upstream)
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "What is a tree?")
    await _send(page, "And a forest?")
    await _shown(page, ["What is a tree?", "And a forest?"], ["Reply 1 to What is a tree?", "Reply 2 to And a forest?"])

    first = _users(page).first
    edit = first.get_by_role("button", name="Edit message")
    await edit.click()
    editor = first.get_by_role("textbox", name="Edited message")
    await expect(editor).to_be_focused()
    await expect(editor).to_have_value("What is a tree?")
    await expect(first.get_by_role("button", name="Save and send")).to_be_visible()
    await page.keyboard.press("Escape")  # cancel: the editor goes, focus goes back to Edit
    await expect(editor).to_have_count(0)
    await expect(edit).to_be_focused()
    await expect(first.locator(".bubble")).to_have_text("What is a tree?")

    await page.keyboard.press("Enter")  # Edit, by keyboard
    await expect(editor).to_be_focused()
    await editor.fill("What is an oak?")
    await page.keyboard.press("Enter")  # a new line, not a send
    await page.keyboard.type("Briefly.")
    await expect(editor).to_have_value("What is an oak?\nBriefly.")
    await shot(page, "branches-editor")
    assert len(upstream.requests) == 2
    await page.keyboard.press("Control+Enter")
    await expect(_users(page)).to_have_count(1)
    await expect(_assistants(page).last).to_have_attribute("data-state", "done")
    await _shown(page, ["What is an oak?\nBriefly."], ["Reply 3 to What is an oak?\nBriefly."])
    assert sent(upstream, 2) == [("user", "What is an oak?\nBriefly.")]  # its own branch only
    first = _users(page).first
    await expect(first.get_by_test_id("version-count")).to_have_text("2/2")
    await expect(first.get_by_role("group", name="Version 2 of 2")).to_be_visible()
    await expect(first.get_by_role("button", name="Next version")).to_be_disabled()
    await first.hover()
    await doc_shot(page, "branches-edit")

    await first.get_by_role("button", name="Previous version").click()
    await _shown(page, ["What is a tree?", "And a forest?"], ["Reply 1 to What is a tree?", "Reply 2 to And a forest?"])
    first = _users(page).first
    await expect(first.get_by_test_id("version-count")).to_have_text("1/2")
    await expect(first.get_by_role("button", name="Next version")).to_be_focused()  # focus follows the switch
    await page.reload()  # the gateway keeps the branch shown
    await _live(page)
    await _shown(page, ["What is a tree?", "And a forest?"], ["Reply 1 to What is a tree?", "Reply 2 to And a forest?"])
    await _users(page).first.get_by_role("button", name="Next version").click()
    await _shown(page, ["What is an oak?\nBriefly."], ["Reply 3 to What is an oak?\nBriefly."])
    await expect(_users(page).first.get_by_test_id("version-count")).to_have_text("2/2")
    await w.assert_clean()


async def test_a_reply_regenerated_twice_has_three_versions(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    numbered(upstream)
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Pick a number")
    reply = _assistants(page).last
    await expect(reply.get_by_test_id("versions")).to_be_hidden()  # one version: no switcher
    for n in (2, 3):
        await page.get_by_role("button", name="Regenerate reply").click()
        await expect(reply.locator(".msg-body")).to_have_text(f"Reply {n} to Pick a number")
        await expect(reply).to_have_attribute("data-state", "done")
        await expect(reply.get_by_test_id("version-count")).to_have_text(f"{n}/{n}")
    await expect(_assistants(page)).to_have_count(1)
    await expect(_users(page)).to_have_count(1)
    assert sent(upstream, 1) == sent(upstream, 2) == [("user", "Pick a number")]
    await doc_shot(page, "branches-versions")

    prev = reply.get_by_role("button", name="Previous version")
    await prev.click()
    await expect(reply.get_by_test_id("version-count")).to_have_text("2/3")
    await expect(reply.locator(".msg-body")).to_have_text("Reply 2 to Pick a number")
    await reply.get_by_role("button", name="Previous version").click()
    await expect(reply.get_by_test_id("version-count")).to_have_text("1/3")
    await expect(reply.locator(".msg-body")).to_have_text("Reply 1 to Pick a number")
    await expect(reply.get_by_role("button", name="Previous version")).to_be_disabled()
    await expect(reply.get_by_role("button", name="Next version")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(reply.get_by_test_id("version-count")).to_have_text("2/3")
    await page.keyboard.press("Enter")
    await expect(reply.get_by_test_id("version-count")).to_have_text("3/3")
    await expect(reply.locator(".msg-body")).to_have_text("Reply 3 to Pick a number")
    await expect(_assistants(page)).to_have_count(1)
    await w.assert_clean()


async def test_continue_extends_a_reply_cut_short_in_its_own_bubble(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["Once upon ", "a time"], finish="length")]),
        Script([*sse_pieces(", there was", " a king"), Pause(gate), *sse_pieces(" who told stories."), sse_end()]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Tell me a story")
    reply = _assistants(page).last
    await expect(reply.locator(".msg-body")).to_have_text("Once upon a time")
    await expect(reply.locator(".msg-note")).to_have_text("Cut off at the length limit.")
    message_id = await reply.get_attribute("data-message-id")
    more = page.get_by_role("button", name="Continue")
    await expect(more).to_have_count(1)
    await shot(page, "branches-continue")
    await more.click()
    await expect(reply.locator(".msg-body")).to_have_text("Once upon a time, there was a king")
    await expect(reply).to_have_attribute("data-state", "streaming")
    await expect(page.get_by_test_id("stop")).to_be_visible()
    await expect(page.get_by_role("button", name="Continue")).to_have_count(0)
    await expect(_assistants(page)).to_have_count(1)
    gate.set()
    await expect(reply).to_have_attribute("data-state", "done")
    assert await reply.locator(".msg-body").inner_text() == "Once upon a time, there was a king who told stories."
    assert await reply.get_attribute("data-message-id") == message_id  # the same stored message
    await expect(page.get_by_role("button", name="Continue")).to_have_count(0)
    await expect(reply.locator(".msg-note")).to_be_hidden()
    assert sent(upstream, 1)[:2] == [("user", "Tell me a story"), ("assistant", "Once upon a time")]

    await page.reload()
    await _live(page)
    await _shown(page, ["Tell me a story"], ["Once upon a time, there was a king who told stories."])
    assert await _assistants(page).last.get_attribute("data-message-id") == message_id
    await expect(page.get_by_role("button", name="Continue")).to_have_count(0)
    await w.assert_clean()


async def test_continue_is_offered_on_the_last_reply_only(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["First, cut"], finish="length")]),
        Script([*sse_pieces("Second"), Pause(gate), *sse_pieces(", cut"), sse_end("length")]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "one")
    first, more = _assistants(page).first, page.get_by_role("button", name="Continue")
    await expect(first.get_by_role("button", name="Continue")).to_be_visible()
    await page.get_by_test_id("composer").fill("two")
    await page.get_by_test_id("composer").press("Enter")
    await expect(_assistants(page).last.locator(".msg-body")).to_have_text("Second")
    await expect(more).to_have_count(0)  # a reply streams
    gate.set()
    await expect(_assistants(page).last).to_have_attribute("data-state", "done")
    await _shown(page, ["one", "two"], ["First, cut", "Second, cut"])
    await expect(_assistants(page).locator(".msg-note")).to_have_text(["Cut off at the length limit."] * 2)
    await expect(more).to_have_count(1)  # the gateway continues the last reply of a branch only
    await expect(_assistants(page).last.get_by_role("button", name="Continue")).to_be_visible()
    await page.reload()
    await _live(page)
    await _shown(page, ["one", "two"], ["First, cut", "Second, cut"])
    await expect(more).to_have_count(1)
    await expect(_assistants(page).last.get_by_role("button", name="Continue")).to_be_visible()
    await w.assert_clean()


async def test_a_continuation_is_not_drawn_beside_another_version(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["Reply 1"], finish="length")]),
        Script([openai_sse(["Reply 2"])]),
        Script([openai_sse(["Reply 3"])]),
        Script([*sse_pieces(" and more"), Pause(gate), *sse_pieces(" at last."), sse_end()]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    a = await _open(browser, gw.http_url + "/")
    await _send(a.page, "Pick")
    reply = _assistants(a.page).last
    for n in (2, 3):
        await a.page.get_by_role("button", name="Regenerate reply").click()
        await expect(reply.get_by_test_id("version-count")).to_have_text(f"{n}/{n}")
        await expect(reply).to_have_attribute("data-state", "done")
    conversation_id = a.page.url.rsplit("/", 1)[1]
    b = await _tab(a, f"{gw.http_url}/#/c/{conversation_id}")
    await _shown(b.page, ["Pick"], ["Reply 3"])
    for n in (2, 1):  # tab A goes back to the first version, cut short, and continues it
        await reply.get_by_role("button", name="Previous version").click()
        await expect(reply.get_by_test_id("version-count")).to_have_text(f"{n}/3")
    await reply.get_by_role("button", name="Continue").click()
    await expect(reply.locator(".msg-body")).to_have_text("Reply 1 and more")
    await expect(b.page.get_by_test_id("stop")).to_be_visible()  # tab B follows it, in a branch it does not show
    await _assistants(b.page).last.get_by_role("button", name="Previous version").click()
    await expect(_assistants(b.page).last.get_by_test_id("version-count")).to_have_text("2/3")
    await _shown(b.page, ["Pick"], ["Reply 2"])  # the branch of version 2: the continuation is not in it
    await expect(b.page.get_by_test_id("stop")).to_be_visible()
    gate.set()
    await expect(reply).to_have_attribute("data-state", "done")
    await _shown(a.page, ["Pick"], ["Reply 1 and more at last."])
    await expect(b.page.get_by_test_id("send")).to_be_visible()
    await _shown(b.page, ["Pick"], ["Reply 2"])
    await _assistants(b.page).last.get_by_role("button", name="Previous version").click()
    await _shown(b.page, ["Pick"], ["Reply 1 and more at last."])
    await expect(_assistants(b.page).last.get_by_test_id("version-count")).to_have_text("1/3")
    for w in (a, b):
        await w.assert_clean()


async def test_a_continuation_followed_after_a_reload_shows_its_whole_text_once(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["Part one."], finish="length")]),
        Script([*sse_pieces(" Part two."), Pause(gate), *sse_pieces(" Part three."), sse_end()]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Go on and on")
    await page.get_by_role("button", name="Continue").click()
    await expect(_assistants(page).last.locator(".msg-body")).to_have_text("Part one. Part two.")
    await page.reload()  # ready.streaming names the continuation; the history leaves the old text out
    await _live(page)
    reply = _assistants(page).last
    await expect(reply).to_have_attribute("data-state", "streaming")
    await expect(reply.locator(".msg-body")).to_have_text("Part one. Part two.")
    await expect(_assistants(page)).to_have_count(1)
    gate.set()
    await expect(reply).to_have_attribute("data-state", "done")
    assert await reply.locator(".msg-body").inner_text() == "Part one. Part two. Part three."
    await _shown(page, ["Go on and on"], ["Part one. Part two. Part three."])
    await w.assert_clean()


async def test_a_continuation_cut_off_before_its_first_frame_shows_its_text_once(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["Part one."], finish="length")]),
        Script([*sse_pieces(" Part two."), Pause(gate), *sse_pieces(" Part three."), sse_end()]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    dropped = False

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        closed = False

        async def from_server(message: str | bytes) -> None:
            nonlocal dropped, closed
            if closed:
                return
            ws.send(message)
            if not dropped and json.loads(message).get("continues"):  # its reply.start, then the link drops
                dropped = closed = True
                await ws.close(code=1001)

        server.on_message(from_server)

    await page.route_web_socket("**/chat", route)
    await page.reload()
    await _live(page)
    await _send(page, "Go on")
    await page.get_by_role("button", name="Continue").click()
    reply = _assistants(page).last
    # Resumed from 0 on the next socket: its first frame is the stored text again.
    await expect(reply.locator(".msg-body")).to_have_text("Part one. Part two.")
    await expect(reply).to_have_attribute("data-state", "streaming")
    assert dropped
    gate.set()
    await expect(reply).to_have_attribute("data-state", "done")
    await _shown(page, ["Go on"], ["Part one. Part two. Part three."])
    await w.assert_clean()


async def test_a_regenerate_picked_up_after_a_reload_gets_its_versions(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["First."])]),
        Script([*sse_pieces("Second"), Pause(gate), *sse_pieces(" one."), sse_end()]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "q")
    await page.get_by_role("button", name="Regenerate reply").click()
    await expect(_assistants(page).last.locator(".msg-body")).to_have_text("Second")
    await page.reload()  # ready.streaming names the new version; nothing says it has siblings
    await _live(page)
    reply = _assistants(page).last
    await expect(reply).to_have_attribute("data-state", "streaming")
    await expect(reply.locator(".msg-body")).to_have_text("Second")
    gate.set()
    await expect(reply).to_have_attribute("data-state", "done")
    await _shown(page, ["q"], ["Second one."])
    await expect(reply.get_by_test_id("version-count")).to_have_text("2/2")
    await expect(reply.get_by_role("button", name="Delete this version")).to_be_visible()
    await reply.get_by_role("button", name="Previous version").click()
    await _shown(page, ["q"], ["First."])
    await w.assert_clean()


async def test_a_message_left_without_reply_is_offered_an_answer(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    numbered(upstream)
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Hello")
    await _send(page, "Still there?")
    conversation_id = page.url.rsplit("/", 1)[1]
    reply_id = await _assistants(page).last.get_attribute("data-message-id")
    key = await page.evaluate("localStorage.getItem('gateway.anonKey')")
    async with gw.chat() as chat:  # as after a crash before the reply's first checkpoint: no reply stored
        await chat.send(type="hello", token=key, conversation_id=conversation_id)
        await chat.expect("ready")
        await chat.send(type="delete_branch", message_id=reply_id, id="d1")
        assert (await chat.expect("branch"))["messages"][-1]["content"] == "Still there?"
    await page.reload()
    await _live(page)
    await _shown(page, ["Hello", "Still there?"], ["Reply 1 to Hello"])
    answer = _users(page).last.get_by_role("button", name="Answer this message")
    await expect(answer).to_have_text("Answer")
    await expect(page.get_by_role("button", name="Regenerate reply")).to_have_count(0)  # it would fork Reply 1
    await shot(page, "branches-answer")
    await answer.click()
    await expect(_assistants(page).last).to_have_attribute("data-state", "done")
    await _shown(page, ["Hello", "Still there?"], ["Reply 1 to Hello", "Reply 3 to Still there?"])
    assert sent(upstream, 2) == [("user", "Hello"), ("assistant", "Reply 1 to Hello"), ("user", "Still there?")]
    await expect(answer).to_have_count(0)
    await expect(_assistants(page).last.get_by_role("button", name="Regenerate reply")).to_be_visible()
    await expect(_assistants(page).first.get_by_role("button", name="Regenerate reply")).to_have_count(0)
    await w.assert_clean()


async def test_instructions_for_a_conversation_are_kept_and_sent_first(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    numbered(upstream)
    gw = await start_gateway(env=openai_env(upstream), toml="[limits]\nmax_content_chars = 60\n")
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "hello")
    assert sent(upstream, 0)[0] == ("user", "hello")  # no instructions yet
    menu = page.get_by_role("button", name="Conversation menu")
    await menu.click()
    await page.get_by_role("menuitem", name="Conversation settings").click()
    dialog = page.get_by_test_id("settings")
    prompt = dialog.get_by_role("textbox", name="Instructions for this conversation")
    await expect(prompt).to_be_focused()
    await expect(prompt).to_have_value("")
    # Too long (the limit is 60 here): the gateway says so, in the dialog.
    await prompt.evaluate("t => t.removeAttribute('maxlength')")
    await prompt.fill("x" * 61)
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog.get_by_role("alert")).to_have_text("The instructions are too long: at most 60 characters.")
    await expect(dialog).to_be_visible()
    await prompt.fill("Answer like a pirate.")
    await shot(page, "branches-settings")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await expect(menu).to_be_focused()

    await page.reload()
    await _live(page)
    await page.get_by_role("button", name="Conversation menu").click()
    await page.get_by_role("menuitem", name="Conversation settings").click()
    await expect(prompt).to_have_value("Answer like a pirate.")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="Conversation menu")).to_be_focused()
    await _send(page, "who are you?")
    assert sent(upstream, 1) == [
        ("system", "Answer like a pirate."), ("user", "hello"), ("assistant", "Reply 1 to hello"), ("user", "who are you?"),
    ]
    await w.assert_clean()


async def test_instructions_lost_to_a_dropped_connection_can_be_saved_again(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    numbered(upstream)
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    dropping = True

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        async def from_page(message: str | bytes) -> None:
            if dropping and json.loads(message).get("type") == "settings":
                await ws.close(code=1001)  # the save never reaches the gateway
            else:
                server.send(message)

        ws.on_message(from_page)

    await page.route_web_socket("**/chat", route)
    await page.reload()
    await _live(page)
    await _send(page, "hello")
    await page.get_by_role("button", name="Conversation menu").click()
    await page.get_by_role("menuitem", name="Conversation settings").click()
    dialog = page.get_by_test_id("settings")
    prompt = dialog.get_by_role("textbox", name="Instructions for this conversation")
    await prompt.fill("Be brief.")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog.get_by_role("alert")).to_have_text("Not saved: the connection dropped. Try again.")
    await _live(page)
    await expect(dialog).to_be_visible()
    await expect(prompt).to_have_value("Be brief.")
    save = dialog.get_by_role("button", name="Save")
    await expect(save).to_be_enabled()
    dropping = False
    await save.click()
    await expect(dialog).to_be_hidden()
    await _send(page, "and again")
    assert sent(upstream, 1)[0] == ("system", "Be brief.")
    await w.assert_clean()


async def test_export_downloads_markdown_json_and_every_branch(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    numbered(upstream)
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Name a colour")
    await _send(page, "Another one")
    last = _users(page).last
    await last.get_by_role("button", name="Edit message").click()
    await last.get_by_role("textbox", name="Edited message").fill("A warm one")
    await last.get_by_role("button", name="Save and send").click()
    await expect(_assistants(page).last).to_have_attribute("data-state", "done")
    await _shown(page, ["Name a colour", "A warm one"], ["Reply 1 to Name a colour", "Reply 3 to A warm one"])
    await expect(_users(page).last.get_by_test_id("version-count")).to_have_text("2/2")

    menu = page.get_by_role("button", name="Conversation menu")
    await menu.click()
    await expect(page.get_by_role("menu")).to_be_visible()
    await expect(page.get_by_role("menuitem", name="Conversation settings")).to_be_focused()
    await page.keyboard.press("ArrowDown")
    await expect(page.get_by_role("menuitem", name="Export as Markdown")).to_be_focused()
    await doc_shot(page, "branches-export")
    async with page.expect_download() as info:
        await page.keyboard.press("Enter")
    download = await info.value
    assert download.suggested_filename == "Name-a-colour.md"
    markdown = Path(await download.path()).read_text()
    assert markdown.startswith("# Name a colour\n"), markdown
    for text in ("Name a colour", "Reply 1 to Name a colour", "A warm one", "Reply 3 to A warm one"):
        assert text in markdown
    assert "Another one" not in markdown and "Reply 2" not in markdown  # the branch shown only
    await expect(page.get_by_role("menu")).to_be_hidden()
    await expect(menu).to_be_focused()

    await menu.click()
    async with page.expect_download() as info:
        await page.get_by_role("menuitem", name="Export as JSON").click()
    download = await info.value
    assert download.suggested_filename == "Name-a-colour.json"
    doc = json.loads(Path(await download.path()).read_text())
    assert doc["title"] == "Name a colour" and doc["scope"] == "branch"
    messages = [(m["role"], m["content"]) for m in doc["messages"]]
    assert messages == [
        ("user", "Name a colour"), ("assistant", "Reply 1 to Name a colour"),
        ("user", "A warm one"), ("assistant", "Reply 3 to A warm one"),
    ]
    assert all("parent_id" in m for m in doc["messages"])
    assert [m["parent_id"] for m in doc["messages"][1:]] == [m["id"] for m in doc["messages"][:-1]]

    await menu.click()
    async with page.expect_download() as info:
        await page.get_by_role("menuitem", name="Export all branches (JSON)").click()
    download = await info.value
    assert download.suggested_filename == "Name-a-colour.json"
    tree = json.loads(Path(await download.path()).read_text())
    assert tree["scope"] == "tree"
    contents = {m["content"]: m for m in tree["messages"]}
    assert set(contents) == {
        "Name a colour", "Reply 1 to Name a colour", "Another one", "Reply 2 to Another one",
        "A warm one", "Reply 3 to A warm one",
    }
    reply1 = contents["Reply 1 to Name a colour"]["id"]
    assert contents["Another one"]["parent_id"] == contents["A warm one"]["parent_id"] == reply1
    await w.assert_clean()


async def test_deleting_a_version_asks_first_then_shows_the_one_left(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    numbered(upstream)
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Say something")
    reply = _assistants(page).last
    await expect(reply.get_by_role("button", name="Delete this version")).to_be_hidden()  # the only version
    await page.get_by_role("button", name="Regenerate reply").click()
    await expect(reply.get_by_test_id("version-count")).to_have_text("2/2")
    delete = reply.get_by_role("button", name="Delete this version")
    await delete.click()
    confirm = reply.get_by_role("group", name="Confirm deletion")
    await expect(confirm.locator(".confirm-text")).to_have_text("Delete this version of the reply and what followed it?")
    await expect(confirm).to_have_accessible_description("Delete this version of the reply and what followed it?")
    await expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()  # the safe choice first
    await shot(page, "branches-delete-confirm")
    await page.keyboard.press("Escape")
    await expect(confirm).to_have_count(0)
    await expect(delete).to_be_focused()
    await expect(reply.locator(".msg-body")).to_have_text("Reply 2 to Say something")

    await delete.click()
    await confirm.get_by_role("button", name="Delete", exact=True).click()
    await expect(reply.get_by_test_id("versions")).to_be_hidden()
    await _shown(page, ["Say something"], ["Reply 1 to Say something"])
    await expect(page.get_by_test_id("announcer")).to_have_text("Version deleted.")
    await expect(page.get_by_test_id("composer")).to_be_focused()
    await page.reload()
    await _live(page)
    await _shown(page, ["Say something"], ["Reply 1 to Say something"])
    await expect(_assistants(page).last.get_by_test_id("versions")).to_be_hidden()
    await w.assert_clean()


async def test_another_tab_follows_an_edit_made_in_the_first(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["First answer."])]),
        Script([openai_sse(["Second answer."])]),
        Script([*sse_pieces("Edited ", "answer"), Pause(gate), *sse_pieces(" here."), sse_end()]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    a = await _open(browser, gw.http_url + "/")
    await _send(a.page, "one")
    await _send(a.page, "two")
    conversation_id = a.page.url.rsplit("/", 1)[1]
    b = await _tab(a, f"{gw.http_url}/#/c/{conversation_id}")
    await _shown(b.page, ["one", "two"], ["First answer.", "Second answer."])

    first = _users(a.page).first
    await first.get_by_role("button", name="Edit message").click()
    await first.get_by_role("textbox", name="Edited message").fill("uno")
    await first.get_by_role("button", name="Save and send").click()
    for w in (a, b):  # tab B: the branch changed elsewhere; it shows the new one, streaming
        await expect(_users(w.page).locator(".bubble")).to_have_text(["uno"])
        await expect(_assistants(w.page).locator(".msg-body")).to_have_text(["Edited answer"])
        await expect(w.page.get_by_test_id("stop")).to_be_visible()
    gate.set()
    for w in (a, b):
        await expect(_assistants(w.page).last).to_have_attribute("data-state", "done")
        assert await _assistants(w.page).last.locator(".msg-body").inner_text() == "Edited answer here."
        await expect(_users(w.page).first.get_by_test_id("version-count")).to_have_text("2/2")
        await w.assert_clean()


async def test_a_message_lands_in_the_branch_its_tab_shows_and_the_other_tab_follows(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    numbered(upstream)
    gw = await start_gateway(env=openai_env(upstream))
    a = await _open(browser, gw.http_url + "/")
    await _send(a.page, "q")
    await a.page.get_by_role("button", name="Regenerate reply").click()
    await expect(_assistants(a.page).last.get_by_test_id("version-count")).to_have_text("2/2")
    conversation_id = a.page.url.rsplit("/", 1)[1]
    b = await _tab(a, f"{gw.http_url}/#/c/{conversation_id}")
    await _assistants(b.page).last.get_by_role("button", name="Previous version").click()  # tab B looks at the first
    await _shown(b.page, ["q"], ["Reply 1 to q"])
    await _send(a.page, "and then?")  # sent with the message tab A shows last (Reply 2): its branch
    for w in (a, b):
        await _shown(w.page, ["q", "and then?"], ["Reply 2 to q", "Reply 3 to and then?"])
        await expect(_assistants(w.page).first.get_by_test_id("version-count")).to_have_text("2/2")
        await w.assert_clean()
    assert sent(upstream, 2) == [("user", "q"), ("assistant", "Reply 2 to q"), ("user", "and then?")]


async def test_a_version_switch_waits_for_its_branch(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    numbered(upstream)
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Pick a number")
    reply = _assistants(page).last
    for n in (2, 3):
        await page.get_by_role("button", name="Regenerate reply").click()
        await expect(reply.get_by_test_id("version-count")).to_have_text(f"{n}/{n}")
        await expect(reply).to_have_attribute("data-state", "done")
    for n in (2, 1):
        await reply.get_by_role("button", name="Previous version").click()
        await expect(reply.get_by_test_id("version-count")).to_have_text(f"{n}/3")
    frames = _sent_frames(page)
    await page.reload()
    await _live(page)
    await expect(reply.get_by_test_id("version-count")).to_have_text("1/3")

    await reply.get_by_role("button", name="Next version").dblclick()  # one switch, not two
    await expect(reply.get_by_test_id("version-count")).to_have_text("2/3")
    await _shown(page, ["Pick a number"], ["Reply 2 to Pick a number"])
    await expect(reply.get_by_role("button", name="Next version")).to_be_focused()

    # While the switch is on its way: no other switch, no send; the composer keeps its text.
    await page.get_by_test_id("composer").fill("draft")
    during = await reply.get_by_role("button", name="Next version").evaluate(
        """b => {
          b.click();
          const send = document.getElementById("send");
          const prev = b.parentNode.querySelector('[data-action="prev-version"]');
          return [b.disabled, prev.disabled, send.disabled];
        }"""
    )
    assert during == [True, True, True]
    await expect(reply.get_by_test_id("version-count")).to_have_text("3/3")
    await _shown(page, ["Pick a number"], ["Reply 3 to Pick a number"])
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await expect(page.get_by_test_id("composer")).to_have_value("draft")
    await expect(reply.get_by_role("button", name="Previous version")).to_be_enabled()
    ids = [f.get("id") for f in frames if f["type"] == "history"]
    assert ids and all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids)  # answers matched by id
    selects = [f["message_id"] for f in frames if f["type"] == "select"]
    assert len(selects) == 2, selects  # the double click sent one
    await w.assert_clean()


async def test_a_reply_streaming_in_a_branch_not_shown_is_resumed_when_shown_again(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(
        Script([openai_sse(["Old answer."])]),
        Script([*sse_pieces("New ", "answer"), Pause(gate), *sse_pieces(", finished."), sse_end()]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "question")
    user = _users(page).first
    await user.get_by_role("button", name="Edit message").click()
    await user.get_by_role("textbox", name="Edited message").fill("better question")
    await user.get_by_role("button", name="Save and send").click()
    await expect(_assistants(page).last.locator(".msg-body")).to_have_text("New answer")
    await _users(page).first.get_by_role("button", name="Previous version").click()  # look back meanwhile
    await _shown(page, ["question"], ["Old answer."])
    await expect(page.get_by_test_id("stop")).to_be_visible()  # the other branch's reply still streams
    await page.reload()  # ready.streaming names a reply of a branch not shown: not drawn here
    await _live(page)
    await _shown(page, ["question"], ["Old answer."])
    await _users(page).first.get_by_role("button", name="Next version").click()
    await _shown(page, ["better question"], ["New answer"])
    await expect(_assistants(page).last).to_have_attribute("data-state", "streaming")
    gate.set()
    await expect(_assistants(page).last).to_have_attribute("data-state", "done")
    await _shown(page, ["better question"], ["New answer, finished."])
    await _users(page).first.get_by_role("button", name="Previous version").click()
    await _shown(page, ["question"], ["Old answer."])
    await w.assert_clean()


async def test_branch_controls_fit_a_small_screen(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        Script([openai_sse(["A first answer."])]),
        Script([openai_sse(["A second answer that stops before its end"], finish="length")]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/", viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = w.page
    await _send(page, "A question typed on a phone, long enough to wrap over a few lines of the bubble")
    await page.get_by_role("button", name="Regenerate reply").tap()
    reply = _assistants(page).last
    await expect(reply.get_by_test_id("version-count")).to_have_text("2/2")
    await expect(reply).to_have_attribute("data-state", "done")
    for name in ("Continue", "Previous version", "Next version", "Copy reply", "Regenerate reply", "Delete this version"):
        await expect(reply.get_by_role("button", name=name)).to_be_visible()
    for width in (360, 320):  # the row wraps rather than squeeze its buttons below a touch target
        await page.set_viewport_size({"width": width, "height": 740})
        await _no_sideways_scroll(page)
        widths = await reply.locator(".msg-actions button:visible").evaluate_all(
            "bs => bs.map(b => b.getBoundingClientRect().width)"
        )
        assert len(widths) == 6 and min(widths) >= 28, widths
        actions = await reply.locator(".msg-actions").bounding_box()
        assert actions is not None and actions["x"] >= 0 and actions["x"] + actions["width"] <= width
    await shot(page, "branches-mobile-actions")
    await page.set_viewport_size({"width": 360, "height": 740})
    await _users(page).first.get_by_role("button", name="Edit message").tap()
    await expect(page.get_by_role("button", name="Save and send")).to_be_visible()
    await _no_sideways_scroll(page)
    await page.get_by_role("button", name="Cancel").tap()
    await page.get_by_role("button", name="Conversation menu").tap()
    await expect(page.get_by_role("menuitem", name="Export all branches (JSON)")).to_be_visible()
    box = await page.get_by_role("menu").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
    await _no_sideways_scroll(page)
    await shot(page, "branches-mobile-menu")
    await w.assert_clean()
