"""The chat page in a real browser (Chromium via Playwright) against real gateways.

Every page is watched: a dialog, an uncaught error or a CSP violation fails the test.
Screenshots of the main states go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, StartGateway, openai_env
from fakeupstream import FakeUpstream, Pause, Script, openai_error_body, openai_sse
from page_helpers import another_tab as _tab
from ports import free_port
from page_helpers import (  # noqa: F401  (browser is a fixture)
    Watched,
    browser,
    missing_browser_reason,
    new_page,
    open_page,
    shot,
    sse_end,
    sse_pieces,
)

_reason = missing_browser_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

from playwright.async_api import Browser, Page, Route, expect  # noqa: E402

expect.set_options(timeout=int(TIMEOUT * 1000))

DEMO_TOML = "[provider]\ndemo_delay_ms = 5\n"
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
Spawn = Callable[..., Any]


async def _open(browser: Browser, url: str, **options: Any) -> Watched:
    return await open_page(browser, url, **{**DESKTOP, **options})


async def _send(page: Page, text: str) -> None:
    await page.get_by_test_id("composer").fill(text)
    await page.get_by_test_id("composer").press("Enter")


def _assistant(page: Page, index: int = -1) -> Any:
    replies = page.locator('[data-testid="messages"] [data-role="assistant"]')
    return replies.last if index == -1 else replies.nth(index)


def _body(reply: Any) -> Any:
    return reply.locator(".msg-body")


async def test_streamed_markdown_reply_with_highlighted_code_and_table(
    browser: Browser, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    w = await new_page(browser, **DESKTOP)
    await w.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = w.page
    response = await page.goto(gw.http_url + "/")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    ms = await page.evaluate("performance.getEntriesByName('chat:interactive')[0].startTime")
    print(f"\nload to first interactive send (navigation start -> Send enabled after ready): {ms:.0f} ms")
    await shot(page, "01-empty")

    await _send(page, "Show me the providers, please")
    user = page.locator('[data-role="user"]')
    await expect(user).to_have_text("Show me the providers, please")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(reply).to_have_attribute("data-reply-id", re.compile(r"^[0-9a-f]{32}$"))
    block = reply.locator(".code-block")
    await expect(block.locator(".code-lang")).to_have_text("bash")
    await expect(block.locator("code.hljs")).to_contain_text("export GATEWAY_PROVIDER=openai")
    assert await block.locator("code .hljs-built_in, code .hljs-keyword").count() > 0, "highlight.js tokens"
    assert await block.locator("code .hljs-comment").count() > 0
    await expect(reply.locator("table th").first).to_have_text("provider")
    await expect(reply.locator("table tbody tr")).to_have_count(2)
    await expect(reply.locator("blockquote")).to_contain_text("Show me the providers, please")
    await expect(page.get_by_test_id("announcer")).to_contain_text("Reply finished")
    await expect(page.locator('[data-testid="sidebar"] [data-testid="conversation"]')).to_have_count(1)

    await block.get_by_role("button", name="Copy bash code").click()
    await expect(block.locator(".copy")).to_have_text("Copied")
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("export GATEWAY_PROVIDER=openai")
    await shot(page, "03-done-code-block")
    await w.assert_clean()


async def test_stop_mid_reply_keeps_the_partial_text(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    first, gate = asyncio.Event(), asyncio.Event()
    upstream.enqueue(
        Script([
            *sse_pieces("Here is the plan:\n\n", "1. Parse the input\n2. Render it\n\n"),
            Pause(first),
            *sse_pieces("```python\ndef render(text):\n", "    return text.upper()\n"),
            Pause(gate),
            *sse_pieces("```\n\nDone."),
            sse_end(),
        ])
    )
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Plan it")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "streaming")
    await expect(reply.locator("ol li")).to_have_count(2)
    # Blocks already rendered are not rebuilt as more text streams in.
    await reply.locator(".msg-body > p").first.evaluate("p => { p.dataset.mark = 'kept'; }")
    first.set()
    await expect(reply.locator("code.hljs")).to_contain_text("return text.upper()")
    await expect(reply.locator('.msg-body > p[data-mark="kept"]')).to_have_text("Here is the plan:")
    assert await reply.locator("code .hljs-keyword").count() > 0, "highlighted while streaming"
    await expect(reply.locator("ol li")).to_have_count(2)
    await expect(page.get_by_test_id("stop")).to_be_visible()
    await expect(page.get_by_test_id("send")).to_be_hidden()
    await shot(page, "02-streaming")

    await page.get_by_test_id("stop").click()
    await expect(reply).to_have_attribute("data-state", "cancelled")
    await expect(reply.locator(".msg-note")).to_have_text("Stopped.")
    await expect(_body(reply)).to_contain_text("Parse the input")
    await expect(_body(reply)).to_contain_text("return text.upper()")
    await expect(_body(reply)).not_to_contain_text("Done.")
    await expect(page.get_by_test_id("send")).to_be_visible()
    rec = upstream.requests[0]
    await asyncio.wait_for(rec.finished.wait(), TIMEOUT)  # the upstream request was aborted
    gate.set()
    await w.assert_clean()


async def test_regenerate_replaces_the_last_reply(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Script([openai_sse(["First ", "answer."])]), Script([openai_sse(["Second ", "answer."])]))
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Question")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(_body(reply)).to_have_text("First answer.")
    old_id = await reply.get_attribute("data-reply-id")

    await page.get_by_test_id("regenerate").click()
    await expect(page.locator(f'[data-reply-id="{old_id}"]')).to_have_count(0)
    replies = page.locator('[data-role="assistant"]')
    await expect(replies).to_have_count(1)
    await expect(replies.first).to_have_attribute("data-state", "done")
    await expect(_body(replies.first)).to_have_text("Second answer.")
    assert await replies.first.get_attribute("data-reply-id") != old_id
    await expect(page.locator('[data-role="user"]')).to_have_count(1)

    await page.reload()  # the gateway's history agrees
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await expect(replies).to_have_count(1)
    await expect(_body(replies.first)).to_have_text("Second answer.")
    await w.assert_clean()


async def test_rate_limited_reply_offers_retry_after_a_countdown(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        Script([openai_error_body("Rate limit reached for requests", "requests", "rate_limit_exceeded")],
               status=429, headers={"Retry-After": "1"}),
        Script([openai_sse(["Back ", "again."])]),
    )
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Hello?")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "error")
    await expect(reply.locator(".msg-note")).to_contain_text("rate limit")
    retry = page.get_by_test_id("retry")
    await expect(retry).to_contain_text(re.compile(r"Retry in \d+ seconds?"))
    await expect(retry).to_be_disabled()
    await shot(page, "04-error-retry")
    await expect(retry).to_have_text("Retry")
    await expect(retry).to_be_enabled()
    await retry.click()
    await expect(page.get_by_test_id("retry")).to_have_count(0)
    await expect(page.locator('[data-role="assistant"]')).to_have_count(1)
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await expect(_body(_assistant(page))).to_have_text("Back again.")
    await w.assert_clean()


async def test_reload_mid_reply_resumes_without_duplicates(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*sse_pieces("one ", "two "), Pause(gate), *sse_pieces("three ", "four."), sse_end()]))
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "Count to four")
    await expect(_body(_assistant(page))).to_have_text("one two")

    await page.reload()
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "streaming")
    await expect(_body(reply)).to_have_text("one two")
    await expect(page.get_by_test_id("stop")).to_be_visible()
    gate.set()
    await expect(reply).to_have_attribute("data-state", "done")
    assert await _body(reply).inner_text() == "one two three four."
    await expect(page.locator('[data-role="assistant"]')).to_have_count(1)
    await expect(page.locator('[data-role="user"]')).to_have_text("Count to four")
    await w.assert_clean()


def _stored(db: Path, reply_id: str) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT content FROM messages WHERE id = ?", (reply_id,)).fetchone()
    return row[0] if row else None


async def test_gateway_killed_and_restarted_mid_reply(
    browser: Browser, spawn: Spawn, upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*sse_pieces("partial ", "answer"), Pause(gate)]))
    toml = tmp_path / "gateway.toml"
    toml.write_text("[store]\ncheckpoint_interval = 0.05\n")
    env = {
        **openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"),
        "GATEWAY_WS_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_HTTP_ADDR": f"127.0.0.1:{free_port()}",
    }
    first = await spawn(env, "--config", str(toml))
    w = await _open(browser, first.http_url)
    page = w.page
    await _send(page, "Question one")
    reply = _assistant(page)
    await expect(_body(reply)).to_have_text("partial answer")
    reply_id = await reply.get_attribute("data-reply-id")
    assert reply_id
    db = tmp_path / "state" / "conversations.db"
    for _ in range(int(TIMEOUT / 0.02)):  # bounded: until the checkpoint holds the text
        if await asyncio.to_thread(_stored, db, reply_id) == "partial answer":
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the reply was never checkpointed")

    first.proc.kill()
    await first.proc.wait()
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", re.compile("reconnecting|offline"))
    await expect(page.get_by_test_id("send")).to_be_disabled()
    await expect(reply).to_have_attribute("data-state", "streaming")  # not given up: it may resume
    await shot(page, "07-reconnecting")
    second = await spawn(env, "--config", str(toml))
    assert second.http_url == first.http_url
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live", timeout=20_000)
    reply = page.locator(f'[data-reply-id="{reply_id}"]')
    await expect(reply).to_have_attribute("data-state", "error")
    await expect(_body(reply)).to_have_text("partial answer")
    await expect(page.locator('[data-role="user"]')).to_have_text(["Question one"])
    await expect(page.get_by_test_id("banner")).to_be_hidden()

    await _send(page, "Question two")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await expect(_body(_assistant(page))).to_have_text("Hello world")
    gate.set()
    await w.assert_clean()


async def test_model_html_and_script_never_execute(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Script([openai_sse([
        "Look: <img src=x onerror=alert(1)> and <script>alert(2)</script>\n\n",
        "[click me](javascript:alert(3)) <a href=\"javascript:alert(4)\">raw</a> <javascript:alert(5)>\n\n",
        "![pic](javascript:alert(6)) ![remote](https://example.com/a.png) [ok](https://example.com/page)\n\n",
        "<iframe src=\"javascript:alert(7)\"></iframe><svg onload=alert(8)><style>body{display:none}</style>\n\n",
        "| a | b |\n|---|--:|\n| <b onclick=alert(9)>x</b> | 2 |\n",
    ])]))
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "<img src=x onerror=alert(10)><script>alert(11)</script>")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(page.locator('[data-role="user"]')).to_have_text("<img src=x onerror=alert(10)><script>alert(11)</script>")
    await expect(_body(reply)).to_contain_text("<script>alert(2)</script>")  # shown as text
    messages = page.get_by_test_id("messages")
    for selector in ("img", "script", "iframe", "style", "svg:not(.icon)", "[onerror]", "[onload]", "[onclick]",
                     "[style]", 'a[href^="javascript"]', 'a[href^="data"]'):
        assert await messages.locator(selector).count() == 0, selector
    links = reply.locator(".msg-body a")
    hrefs = await links.evaluate_all("links => links.map(a => [a.getAttribute('href'), a.target, a.rel])")
    assert ["https://example.com/a.png", "_blank", "noopener noreferrer"] in hrefs
    assert ["https://example.com/page", "_blank", "noopener noreferrer"] in hrefs
    assert all(h and re.match(r"^(https?:|mailto:)", h) and t == "_blank" and r == "noopener noreferrer"
               for h, t, r in hrefs), hrefs
    await expect(reply.locator("td.align-right")).to_have_text("2")
    await page.reload()  # and again from the history
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await expect(_body(_assistant(page))).to_contain_text("<script>alert(2)</script>")
    assert await page.get_by_test_id("messages").locator("img, script, iframe, [onerror]").count() == 0
    await w.assert_clean()


async def test_conversation_list_survives_reload_rename_and_delete(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    items = page.locator('[data-testid="sidebar"] [data-testid="conversation"]')
    await _send(page, "First topic")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await page.get_by_test_id("new-chat").click()
    await expect(page.locator('[data-testid="messages"] .msg')).to_have_count(0)
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await _send(page, "Second topic")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await expect(items).to_have_text(["Second topic", "First topic"])
    first_id = await items.nth(1).get_attribute("data-conversation-id")
    assert first_id

    await page.reload()
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await expect(items).to_have_text(["Second topic", "First topic"])
    await expect(page.locator('[data-role="user"]')).to_have_text(["Second topic"])  # the last one reopened

    await items.nth(1).locator("a").click()
    await expect(page.locator('[data-role="user"]')).to_have_text(["First topic"])
    assert page.url.endswith(f"#/c/{first_id}")
    await items.nth(1).get_by_role("button", name=re.compile("^Rename")).click()
    await page.get_by_role("textbox", name="Conversation name").fill("Renamed topic")
    await page.keyboard.press("Enter")
    await expect(items).to_have_text(["Second topic", "Renamed topic"])
    await items.nth(0).get_by_role("button", name=re.compile("^Delete")).click()
    await expect(items).to_have_text(["Renamed topic"])

    await page.reload()
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await expect(items).to_have_text(["Renamed topic"])
    await expect(page.get_by_test_id("messages").locator('[data-role="user"]')).to_have_text(["First topic"])
    await w.assert_clean()


async def test_deep_link_and_history_paging(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gw = await start_gateway(env=openai_env(upstream))
    async with gw.chat() as chat:
        conversation_id = (await chat.hello())["conversation_id"]
        await chat.ask("Linked question", "u1")
    w = await _open(browser, f"{gw.http_url}/#/c/{conversation_id}")
    page = w.page
    await expect(page.locator('[data-role="user"]')).to_have_text(["Linked question"])
    await expect(_body(_assistant(page))).to_have_text("Hello world")
    item = page.locator(f'[data-testid="conversation"][data-conversation-id="{conversation_id}"]')
    await expect(item).to_have_text("Linked question")
    await expect(page.locator("#title")).to_have_text("Linked question")

    async with gw.chat() as chat:  # a long conversation: ready carries the newest 50 messages
        long_id = (await chat.hello())["conversation_id"]
        for i in range(26):
            await chat.ask(f"question {i}", f"u{i}")
    await page.goto(f"{gw.http_url}/#/c/{long_id}")
    messages = page.locator('[data-testid="messages"] .msg')
    await expect(messages).to_have_count(50)
    await expect(messages.first).to_have_text("question 1")
    await page.get_by_test_id("load-earlier").click()
    await expect(messages).to_have_count(52)
    await expect(messages.first).to_have_text("question 0")
    await expect(page.get_by_test_id("load-earlier")).to_be_hidden()

    await page.goto(f"{gw.http_url}/#/c/{'0' * 32}")  # unknown: dropped, a new chat instead
    await expect(page.get_by_test_id("banner")).to_contain_text("no longer on the gateway")
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await expect(page.locator(f'[data-conversation-id="{"0" * 32}"]')).to_have_count(0)
    await expect(item).to_have_count(1)
    await w.assert_clean()


async def test_mobile_viewport_and_dark_theme(browser: Browser, start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    w = await _open(browser, gw.http_url + "/", viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = w.page
    await expect(page.get_by_test_id("sidebar")).to_be_hidden()
    await _send(page, "Hi from a phone")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360, "no sideways scrolling"
    await shot(page, "05-mobile")
    await page.get_by_test_id("sidebar-toggle").tap()
    await expect(page.get_by_test_id("sidebar")).to_be_visible()
    await expect(page.get_by_test_id("conversation")).to_have_text("Hi from a phone")
    await expect(page.get_by_test_id("new-chat")).to_be_focused()
    await shot(page, "05-mobile-sidebar")
    await page.keyboard.press("Escape")
    await expect(page.get_by_test_id("sidebar")).to_be_hidden()
    await w.assert_clean()

    dark = await _open(browser, gw.http_url + "/", color_scheme="dark")
    page = dark.page
    assert await page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(33, 33, 33)"
    await shot(page, "06-dark-empty")
    await _send(page, "Dark mode, please")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await shot(page, "06-dark-done")
    await dark.assert_clean()


async def test_keyboard_only_send(browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream) -> None:
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    composer = page.get_by_test_id("composer")
    await expect(composer).to_be_focused()  # desktop: the message box has focus on load
    await _send(page, "Earlier message")  # so the sidebar has an entry to tab through
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    # Walk back through the whole tab order to the skip link; every stop shows focus.
    visited = []
    for _ in range(30):
        await page.keyboard.press("Shift+Tab")
        name, outline = await page.evaluate(
            "[document.activeElement.dataset.testid || document.activeElement.getAttribute('aria-label')"
            " || document.activeElement.textContent.trim(), getComputedStyle(document.activeElement).outlineStyle]"
        )
        assert outline != "none", f"no visible focus on {name}"
        visited.append(name)
        if name == "skip-link":
            break
    assert {"skip-link", "new-chat", "sidebar-toggle", "Copy reply", "regenerate"} <= set(visited), visited
    await page.keyboard.press("Enter")  # the skip link
    await expect(composer).to_be_focused()
    await page.keyboard.type("Typed with keys")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("second line")
    await page.keyboard.press("Enter")
    await expect(page.locator('[data-role="user"]').last).to_have_text("Typed with keys\nsecond line")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await expect(composer).to_have_value("")
    await page.keyboard.press("Tab")  # composer -> send
    await expect(page.get_by_test_id("send")).to_be_focused()
    assert upstream.requests[1].json["messages"][-1]["content"] == "Typed with keys\nsecond line"
    await w.assert_clean()


async def test_server_restart_close_1001_reconnects_quietly(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    ports = {"GATEWAY_WS_ADDR": f"127.0.0.1:{free_port()}", "GATEWAY_HTTP_ADDR": f"127.0.0.1:{free_port()}"}
    first = await start_gateway(env={**openai_env(upstream), **ports})
    w = await _open(browser, first.http_url + "/")
    page = w.page
    await _send(page, "Before the restart")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await first.gateway.close()  # drain: close 1001 "server restarting"
    await expect(page.get_by_test_id("send")).to_be_disabled()
    await start_gateway(env={**openai_env(upstream), **ports})
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    await expect(page.get_by_test_id("banner")).to_be_hidden()
    await expect(page.locator('[data-role="user"]')).to_have_text(["Before the restart"])
    await _send(page, "After the restart")
    await expect(page.locator('[data-role="assistant"]')).to_have_count(2)
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await w.assert_clean()


async def test_second_tab_shows_the_message_and_reply_started_elsewhere(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*sse_pieces("Shared ", "reply"), Pause(gate), *sse_pieces(" text."), sse_end()]))
    gw = await start_gateway(env=openai_env(upstream))
    a = await _open(browser, gw.http_url + "/")
    await expect(a.page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    conversation_id = a.page.url.rsplit("/", 1)[1]
    b = await _tab(a, f"{gw.http_url}/#/c/{conversation_id}")  # the same browser: the same key
    await _send(a.page, "Asked in tab A")
    await expect(_body(_assistant(a.page))).to_have_text("Shared reply")
    await expect(b.page.locator('[data-role="user"]')).to_have_text(["Asked in tab A"])
    await expect(_body(_assistant(b.page))).to_have_text("Shared reply")
    await expect(b.page.get_by_test_id("stop")).to_be_visible()
    gate.set()
    for w in (a, b):
        await expect(_assistant(w.page)).to_have_attribute("data-state", "done")
        assert await _body(_assistant(w.page)).inner_text() == "Shared reply text."
        await w.assert_clean()


async def test_reloaded_unused_new_chat_opens_a_fresh_one_quietly(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    unused = page.url.rsplit("/", 1)[1]
    assert page.url.endswith(f"/#/c/{unused}")

    async def after_the_old_socket_closed(route: Route) -> None:
        # The reloaded page connects once this is answered: by then no connection holds the id.
        for _ in range(int(TIMEOUT / 0.02)):
            if gw.gateway.hub is not None and not gw.gateway.hub.connections:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the reloaded page's old socket never closed")
        await route.continue_()

    await page.route("**/config.json", after_the_old_socket_closed)
    await page.reload()  # nothing was sent: the gateway never stored the conversation
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    await expect(page).not_to_have_url(re.compile(f"{unused}$"))  # a fresh conversation instead
    await expect(page.get_by_test_id("banner")).to_be_hidden()
    await expect(page.get_by_text("no longer on the gateway")).to_have_count(0)
    await expect(page.locator(f'[data-conversation-id="{unused}"]')).to_have_count(0)
    await _send(page, "Still here?")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await expect(_body(_assistant(page))).to_have_text("Hello world")
    await expect(page.get_by_test_id("conversation")).to_have_text(["Still here?"])
    await w.assert_clean()


async def test_first_message_refused_by_a_restarting_gateway_stays_unsent_in_a_fresh_chat(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*sse_pieces("Held "), Pause(gate), *sse_pieces("open."), sse_end()]))
    ports = {"GATEWAY_WS_ADDR": f"127.0.0.1:{free_port()}", "GATEWAY_HTTP_ADDR": f"127.0.0.1:{free_port()}"}
    first = await start_gateway(env={**openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"), **ports})
    w = await _open(browser, first.http_url + "/")
    page = w.page
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    unsaved = page.url.rsplit("/", 1)[1]
    async with first.chat() as other:  # another client's reply keeps the drain waiting
        await other.hello()
        await other.send(type="message", id="o1", content="Keep the gateway busy")
        await other.expect("reply.start")
        await other.expect("reply.delta")
        closing = asyncio.create_task(first.gateway.close())  # a restart: drain, then close 1001
        registry = first.gateway.hub.registry
        for _ in range(int(TIMEOUT / 0.02)):
            if not registry.accepting:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the gateway never started draining")

        # The new chat's first message is refused (not stored): the conversation does not exist.
        await _send(page, "My very first question")
        user = page.locator('[data-role="user"]')
        await expect(user).to_have_text(["My very first question"])
        await expect(user).to_have_class(re.compile(r"\bunsent\b"))
        await expect(_assistant(page)).to_have_attribute("data-state", "error")
        await expect(_assistant(page).locator(".msg-note")).to_contain_text("restarting")
        gate.set()
        await asyncio.wait_for(closing, TIMEOUT)
    await expect(page.get_by_test_id("send")).to_be_disabled()

    await start_gateway(env={**openai_env(upstream), **ports})  # the page's hello for `unsaved`: not_found
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    await expect(page).not_to_have_url(re.compile(f"{unsaved}$"))  # a fresh conversation
    await expect(user).to_have_text(["My very first question"])  # still shown, still not sent
    await expect(user).to_have_class(re.compile(r"\bunsent\b"))
    await expect(_assistant(page)).to_have_attribute("data-state", "error")
    await expect(_assistant(page).locator(".msg-note")).to_contain_text("restarting")
    await expect(page.get_by_test_id("banner")).to_be_hidden()
    await expect(page.get_by_text("no longer on the gateway")).to_have_count(0)
    await expect(page.locator(f'[data-conversation-id="{unsaved}"]')).to_have_count(0)
    await shot(page, "08-unsent-first-message-after-restart")

    retry = page.get_by_test_id("retry")
    await expect(retry).to_have_text("Retry")
    await retry.click()
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await expect(_body(_assistant(page))).to_have_text("Hello world")
    await expect(user).to_have_text(["My very first question"])
    await expect(user).not_to_have_class(re.compile(r"\bunsent\b"))
    await expect(page.locator('[data-role="assistant"]')).to_have_count(1)
    conversation_id = page.url.rsplit("/", 1)[1]
    await expect(page.get_by_test_id("conversation")).to_have_text(["My very first question"])
    await expect(page.get_by_test_id("conversation")).to_have_attribute("data-conversation-id", conversation_id)
    assert upstream.requests[-1].json["messages"][-1]["content"] == "My very first question"
    await w.assert_clean()
