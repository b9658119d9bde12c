"""The chat page in Chinese and English, in Chromium against real gateways.

The browser's language (the context's ``locale``, so ``navigator.languages``) picks the
page's language; the switch in the sidebar overrides it and is remembered. The page's
chrome is checked to be entirely in one language; errors are said in the page's words;
typing with an input method never sends on the Enter that picks a candidate; Chinese
text wraps at 360 px. Screenshots for the docs (zh-CN-*.png) go to docs/images/ with
GATEWAY_DOC_SHOTS=1.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from conftest import TIMEOUT, Running, StartGateway, openai_env
from fakeupstream import FakeUpstream, Pause, Script, openai_error_body, openai_sse
from page_helpers import another_tab
from ports import free_port
from page_helpers import (  # noqa: F401  (browser is a fixture)
    Watched,
    browser,
    doc_shot,
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

from playwright.async_api import Browser, Locator, Page, WebSocketRoute, expect  # noqa: E402

expect.set_options(timeout=int(TIMEOUT * 1000))

DEMO_TOML = "[provider]\ndemo_delay_ms = 2\n"
DESKTOP = {"viewport": {"width": 1100, "height": 760}}
CHINESE = {"locale": "zh-CN"}
QUESTION = "你好，请介绍一下你自己"
CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
# Names that stay as they are in a Chinese UI: the product, formats, keys, code languages,
# the demo model and its provider.
NAMES = {"LLM", "Gateway", "Markdown", "JSON", "Enter", "Shift", "Esc", "Ctrl", "demo", "bash"}

# Everything the page itself says: visible text and the names, titles and placeholders of
# every element, outside what people and models wrote (message bodies, bubbles, thoughts,
# conversation titles, model names), except the code-block headers' buttons. Texts of
# keyed elements count even while hidden (dialogs, the empty state).
_CHROME_TEXTS = """
() => {
  const own = "#announcer, .msg-body, .bubble, .thinking-body, .conv-open, #title, #model-info, #empty-model, option";
  const foreign = (el) => !!el.closest(own) && !el.closest(".code-head .copy");
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    const text = n.textContent.trim();
    if (!text || foreign(el) || el.closest("select, .code-lang")) continue;
    if (el.checkVisibility() || el.closest("[data-i18n]")) out.push(text);
  }
  for (const sel of document.querySelectorAll("select")) {
    if (sel.selectedOptions.length && !foreign(sel)) out.push(sel.selectedOptions[0].textContent);
  }
  for (const el of document.querySelectorAll("[aria-label], [title], [placeholder]")) {
    if (foreign(el)) continue;
    for (const a of ["aria-label", "title", "placeholder"]) if (el.getAttribute(a)) out.push(el.getAttribute(a));
  }
  out.push(document.title);
  return out;
}
"""


async def _open(browser: Browser, url: str, **options: Any) -> Watched:
    return await open_page(browser, url, **{**DESKTOP, **options})


async def _send(page: Page, text: str) -> None:
    await page.get_by_test_id("composer").fill(text)
    await page.get_by_test_id("composer").press("Enter")


def _assistant(page: Page) -> Locator:
    return page.locator('[data-testid="messages"] [data-role="assistant"]').last


async def _chrome(page: Page) -> list[str]:
    texts: list[str] = await page.evaluate(_CHROME_TEXTS)
    return texts


def _english_words(texts: list[str], *theirs: str) -> list[str]:
    """The words in ``texts`` in Latin letters, but names and words of ``theirs`` (what people wrote, model ids)."""
    allowed = NAMES | {w for text in theirs for w in re.findall(r"[A-Za-z]+", text)}
    return sorted({w for text in texts for w in re.findall(r"[A-Za-z]+", text) if w not in allowed})


# The first second of a minute on the gateway's clock (the day test_limits_e2e.py pins).
MINUTE = 20_833 * 86_400 + 12 * 3600.0


def _pin_minute(gw: Running, second: float) -> None:
    """Stop the gateway's clock for limits at ``second`` of a minute: a test's messages all
    count in that minute, and a refusal's ``retry_after`` is 60 - ``second``, whenever it runs."""
    assert gw.gateway.hub is not None
    gw.gateway.hub.registry.accounting.clock = lambda: MINUTE + second


async def _stop_page_clock(page: Page) -> int:
    """Stop the page's ``Date`` (its timers still run) at the present second, returned:
    a countdown then moves only when the test moves the clock (``set_fixed_time``)."""
    now = int(await page.evaluate("Date.now()") / 1000)
    await page.clock.set_fixed_time(now)
    return now


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
async def test_the_page_speaks_the_browser_s_language(browser: Browser, start_gateway: StartGateway, locale: str) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    w = await _open(browser, gw.http_url + "/", locale=locale)
    page = w.page
    chinese = locale == "zh-CN"
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN" if chinese else "en")
    await expect(page.get_by_role("combobox", name="语言" if chinese else "Language")).to_have_value(
        "zh-CN" if chinese else "en"
    )
    await expect(page.get_by_test_id("status")).to_have_text("已连接" if chinese else "Live")
    empty = await _chrome(page)

    await _send(page, QUESTION if chinese else "Introduce yourself, please")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await page.get_by_role("button", name="对话菜单" if chinese else "Conversation menu").click()
    await expect(page.get_by_role("menu")).to_be_visible()
    texts = empty + await _chrome(page)
    assert len(texts) > 40, texts
    if chinese:
        assert _english_words(texts) == [], [t for t in texts if _english_words([t])]
        assert "发送" in texts and "新对话" in texts and "导出为 Markdown" in texts
    else:
        assert [t for t in texts if CJK.search(t)] == []
        assert "Send" in texts and "New chat" in texts and "Export as Markdown" in texts
    await w.assert_clean()


async def test_the_switch_changes_the_language_keeps_the_conversation_and_is_remembered(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*sse_pieces("Half of ", "the answer"), Pause(gate), *sse_pieces(", and the rest."), sse_end()]))
    gw = await start_gateway(env=openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="30"))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await _send(page, "Tell me a story")
    reply = _assistant(page)
    await expect(reply.locator(".msg-body")).to_have_text("Half of the answer")
    await expect(reply).to_have_attribute("data-state", "streaming")
    composer = page.get_by_test_id("composer")
    await composer.fill("半句话，还没发")
    other = await another_tab(w, gw.http_url + "/")
    # Mark the conversation's nodes: a language change must not rebuild them.
    await page.evaluate("document.querySelectorAll('article.msg').forEach((n) => { n.__kept = true; })")

    await page.get_by_role("combobox", name="Language").select_option("zh-CN")
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("button", name="停止")).to_be_visible()
    await expect(page.get_by_test_id("status")).to_have_text("已连接")
    await expect(page.get_by_test_id("new-chat")).to_have_text("新对话")
    await expect(page.get_by_role("combobox", name="语言")).to_have_value("zh-CN")
    await expect(composer).to_have_attribute("placeholder", "给模型发消息")
    await expect(composer).to_have_value("半句话，还没发")
    await expect(reply.locator(".msg-body")).to_have_text("Half of the answer")
    await expect(reply).to_have_attribute("data-state", "streaming")
    await expect(page.locator('[data-role="user"] .bubble')).to_have_text(["Tell me a story"])
    assert await page.evaluate("[...document.querySelectorAll('article.msg')].every((n) => n.__kept)")
    await expect(other.page.locator("html")).to_have_attribute("lang", "zh-CN")  # the other tab follows
    await expect(other.page.get_by_test_id("new-chat")).to_have_text("新对话")
    await other.page.close()

    gate.set()  # the reply goes on streaming into the same bubble
    await expect(reply.locator(".msg-body")).to_have_text("Half of the answer, and the rest.")
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(reply.get_by_role("button", name="复制回复")).to_be_visible()
    await expect(page.get_by_role("button", name="重新生成回复")).to_be_visible()
    await expect(composer).to_have_value("半句话，还没发")

    await page.reload()  # remembered, over the browser's English
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("combobox", name="语言")).to_have_value("zh-CN")
    await expect(page.get_by_role("button", name="重新生成回复")).to_be_visible()
    assert _english_words(await _chrome(page), "Tell me a story", "gpt-test") == []  # its title names the conversation

    await page.get_by_role("combobox", name="语言").select_option("en")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.get_by_role("button", name="Regenerate reply")).to_be_visible()
    assert [t for t in await _chrome(page) if CJK.search(t)] == []
    await w.assert_clean()


class _Relay:
    """The page's sockets through Playwright: the gateway's frames pass to the page, but
    its errors are kept while ``holding``, until :meth:`release`."""

    def __init__(self) -> None:
        self.holding = False
        self.held: list[tuple[WebSocketRoute, str | bytes]] = []
        self.got = asyncio.Event()

    async def attach(self, page: Page) -> None:
        def route(ws: WebSocketRoute) -> None:
            server = ws.connect_to_server()

            def down(message: str | bytes) -> None:
                if self.holding and isinstance(message, str) and json.loads(message).get("type") == "error":
                    self.held.append((ws, message))
                    self.got.set()
                else:
                    ws.send(message)

            server.on_message(down)

        await page.route_web_socket(re.compile(r"/chat$"), route)

    def release(self) -> None:
        self.holding = False
        for ws, message in self.held:
            ws.send(message)
        self.held.clear()


async def test_a_language_switch_relabels_what_is_open_and_what_comes_back(
    browser: Browser, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(toml=DEMO_TOML + "[limits]\nmessages_per_minute = 2\n")
    _pin_minute(gw, 1)  # a message, a regenerate, then refusals with retry_after = 59
    relay = _Relay()
    w = await new_page(browser, **DESKTOP)
    page = w.page
    await relay.attach(page)
    await page.goto(gw.http_url + "/")
    await expect(page.get_by_test_id("send")).to_be_enabled()
    asked = ["Introduce yourself, please", "And once more", "Introduce yourself again"]
    await _send(page, asked[0])
    reply = page.locator('[data-role="assistant"]').first
    await expect(reply).to_have_attribute("data-state", "done")
    await page.get_by_role("button", name="Regenerate reply").click()
    await expect(reply.get_by_role("group", name="Version 2 of 2")).to_be_visible()  # the version switcher
    await expect(reply).to_have_attribute("data-state", "done")
    now = await _stop_page_clock(page)
    await _send(page, asked[1])  # refused: an error note with a Retry counting down
    failed = _assistant(page)
    await expect(failed).to_have_attribute("data-state", "error")
    await expect(failed.get_by_role("button", name="Retry in 59 seconds")).to_be_disabled()
    user = page.locator('[data-role="user"]').first
    await user.get_by_role("button", name="Edit message").click()  # the inline editor
    await expect(user.get_by_role("textbox", name="Edited message")).to_be_focused()
    await reply.get_by_role("button", name="Delete this version").click()  # the delete confirmation
    await expect(reply.get_by_role("group", name="Confirm deletion")).to_be_visible()
    await page.get_by_role("button", name="Conversation menu").click()
    await page.get_by_role("menuitem", name="Conversation settings").click()  # the settings dialog
    await expect(page.get_by_role("dialog", name="Conversation settings")).to_be_visible()

    # Switched in another tab (the dialog is modal here): this page follows, without a reload.
    other = await another_tab(w, gw.http_url + "/")
    await other.page.get_by_role("combobox", name="Language").select_option("zh-CN")
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    dialog = page.get_by_role("dialog", name="对话设置")
    await expect(dialog.get_by_role("textbox", name="此对话的指令")).to_be_visible()
    texts = await _chrome(page)
    assert _english_words(texts, *asked) == [], [t for t in texts if _english_words([t], *asked)]
    await dialog.get_by_role("button", name="取消").click()
    confirm = reply.get_by_role("group", name="确认删除")
    await expect(confirm.get_by_role("button", name="删除")).to_be_visible()
    await expect(user.get_by_role("textbox", name="编辑后的消息")).to_be_visible()
    await expect(user.get_by_role("button", name="保存并发送")).to_be_visible()
    await expect(failed.get_by_role("button", name="59秒钟后重试")).to_be_disabled()
    await expect(page.get_by_role("article", name="你的消息")).to_have_count(2)
    await expect(page.get_by_role("button", name="Retry in 59 seconds")).to_have_count(0)
    await confirm.get_by_role("button", name="取消").click()
    await expect(reply.get_by_role("group", name="第 2 个版本，共 2 个")).to_be_visible()

    # An edit refused while the language changes: the branch put back, out of the document
    # meanwhile, speaks the new language too.
    relay.holding = True
    await user.get_by_role("textbox", name="编辑后的消息").fill(asked[2])
    await user.get_by_role("button", name="保存并发送").click()
    await asyncio.wait_for(relay.got.wait(), TIMEOUT)
    await expect(page.locator('[data-role="user"] .bubble')).to_have_text([asked[2]])  # the old branch is out
    await other.page.get_by_role("combobox", name="语言").select_option("en")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    relay.release()
    await expect(page.locator('[data-role="user"] .bubble')).to_have_text(asked[:2])
    banner = page.get_by_test_id("banner")
    sentence = "Too many requests: the rate limit was reached. Try again in {} seconds."
    await expect(banner.locator(".banner-text")).to_have_text(sentence.format(59))
    await expect(page.get_by_role("article", name="You said")).to_have_count(2)
    await expect(page.get_by_role("article", name="Assistant")).to_have_count(2)
    await expect(reply.get_by_role("button", name="Copy reply")).to_be_visible()
    await expect(reply.get_by_role("button", name="Previous version")).to_be_enabled()
    await expect(user.get_by_role("textbox", name="Edited message")).to_have_value(asked[2])  # the editor is back
    assert [t for t in await _chrome(page) if CJK.search(t)] == []

    # The banner is an alert: its sentence is said once; the seconds tick in a copy kept from
    # screen readers, and the end of the countdown is said again.
    said = banner.locator("#banner-said")
    await expect(said).to_have_text(sentence.format(59))
    await expect(banner.locator(".banner-text")).to_have_attribute("aria-hidden", "true")
    await page.clock.set_fixed_time(now + 1)
    await expect(banner.locator(".banner-text")).to_have_text(sentence.format(58))
    await expect(said).to_have_text(sentence.format(59))
    await expect(failed.get_by_role("button", name="Retry in 58 seconds")).to_be_disabled()
    await page.clock.set_fixed_time(now + 60)
    await expect(banner.locator(".banner-text")).to_have_text("Too many requests: the rate limit was reached. Try again in a moment.")
    await expect(banner.locator(".banner-text")).not_to_have_attribute("aria-hidden", "true")
    await expect(said).to_have_text("")
    await expect(failed.get_by_role("button", name="Retry", exact=True)).to_be_enabled()
    await other.page.close()
    await w.assert_clean()


async def test_a_rate_limit_is_said_in_chinese_with_its_time_counting_down(
    browser: Browser, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(toml=DEMO_TOML + "[limits]\nmessages_per_minute = 1\n")
    _pin_minute(gw, 0)  # the second message is refused with retry_after = 60
    w = await _open(browser, gw.http_url + "/", **CHINESE)
    page = w.page
    await _send(page, "第一条消息")
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    now = await _stop_page_clock(page)
    await _send(page, "第二条消息")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "error")
    await expect(reply.locator(".note-text")).to_have_text("请求过于频繁，已达到速率限制。请稍后再试。")
    retry = reply.get_by_test_id("retry")
    await expect(retry).to_have_text("1分钟后重试")  # a minute and more: in minutes
    await expect(retry).to_be_disabled()
    await page.clock.set_fixed_time(now + 1)
    await expect(retry).to_have_text("59秒钟后重试")  # the banner's words (Intl), the same spacing
    await page.clock.set_fixed_time(now + 2)
    await expect(retry).to_have_text("58秒钟后重试")
    await expect(retry).to_be_disabled()
    await shot(page, "i18n-rate-limited")
    await page.clock.set_fixed_time(now + 60)
    await expect(retry).to_have_text("重试")
    await expect(retry).to_be_enabled()
    await w.assert_clean()


async def test_a_spent_budget_says_when_it_resets_as_a_chinese_date(browser: Browser, start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_TOML + "[limits]\ntokens_per_day = 10\n")
    w = await _open(browser, gw.http_url + "/", **CHINESE)
    page = w.page
    await _send(page, "写一首诗")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "error")
    resets = await page.evaluate("""() => {
      const next = new Date(); next.setUTCHours(24, 0, 0, 0);  // the next 00:00 UTC
      return new Intl.DateTimeFormat("zh-CN", {dateStyle: "medium", timeStyle: "short"}).format(next);
    }""")
    assert re.fullmatch(r"\d{4}年\d{1,2}月\d{1,2}日 \d{2}:\d{2}", resets), resets
    await expect(reply.locator(".note-text")).to_have_text(f"今日的词元额度已用完，将于 {resets} 重置。")
    await expect(reply.get_by_test_id("retry")).to_have_count(0)  # not retryable
    await w.assert_clean()


async def test_a_connection_refused_for_too_many_tabs_is_said_in_chinese(
    browser: Browser, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(toml=DEMO_TOML + "[limits]\nconnections_per_subject = 1\n")
    first = await _open(browser, gw.http_url + "/", **CHINESE)
    second = await first.context.new_page()  # the same browser: the same anonymous subject
    await second.goto(gw.http_url + "/")
    banner = second.get_by_test_id("banner")
    # Closed with 1013 and a reason in English; the page says its own words, counting down.
    countdown = re.compile(r"^此账号的连接过多，请关闭其他标签页。\d+秒钟后重新连接…$")
    await expect(banner.locator(".banner-text")).to_have_text(countdown)
    await expect(second.get_by_test_id("status")).to_have_text(re.compile("^(正在重新连接…|正在连接…|离线)$"))
    await first.page.close()
    await expect(second.get_by_test_id("status")).to_have_text("已连接", timeout=30_000)
    await expect(banner).to_be_hidden()


async def test_upstream_failures_are_said_in_chinese(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Script([openai_error_body("Service Unavailable", "server_error")], status=503))
    gw = await start_gateway(env=openai_env(upstream))
    w = await _open(browser, gw.http_url + "/", **CHINESE)
    page = w.page
    await _send(page, "在吗？")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "error")
    await expect(reply.locator(".note-text")).to_have_text("模型服务返回了错误。")
    await expect(reply.get_by_test_id("retry")).to_have_text("重试")
    await expect(page.get_by_test_id("announcer")).to_have_text("回复失败：模型服务返回了错误。")
    await w.assert_clean()

    refused = await start_gateway(env={
        **openai_env(upstream), "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{free_port()}/v1",
    })
    w = await _open(browser, refused.http_url + "/", **CHINESE)
    page = w.page
    await _send(page, "在吗？")
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "error")
    await expect(reply.locator(".note-text")).to_have_text("暂时无法连接到模型服务。")
    await expect(reply.get_by_test_id("retry")).to_have_text("重试")
    assert "connect" not in (await reply.inner_text()), "the gateway's English stays out of the page"
    await shot(page, "i18n-upstream-unavailable")
    await w.assert_clean()


async def test_a_chinese_reply_streams_and_its_actions_are_named_in_chinese(
    browser: Browser, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    w = await _open(browser, gw.http_url + "/", **CHINESE)
    await w.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = w.page
    await _send(page, QUESTION)
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "streaming")
    await expect(page.get_by_role("button", name="停止")).to_be_visible()
    await expect(reply).to_have_attribute("data-state", "done")
    body = reply.locator(".msg-body")
    await expect(body).to_contain_text("这是网关内置的演示模型")
    await expect(body.locator("blockquote")).to_have_text(QUESTION)
    await expect(body.locator("table th").first).to_have_text("服务商")
    await expect(page.get_by_test_id("announcer")).to_contain_text("回复完成：这是网关内置的演示模型")
    await expect(reply.get_by_role("article", name="助手")).to_have_count(0)  # it is that article
    await expect(page.get_by_role("article", name="助手")).to_have_count(1)
    await expect(page.get_by_role("article", name="你的消息")).to_have_count(1)
    await expect(reply.get_by_test_id("reply-meta")).to_have_text(re.compile(r"^\d[\d,]* 个词元$"))

    code = reply.get_by_role("button", name="复制 bash 代码")
    await expect(code).to_have_text("复制")
    await code.click()
    await expect(code).to_have_text("已复制")
    await expect(code).to_have_text("复制", timeout=3000)
    await reply.get_by_role("button", name="复制回复").click()
    assert (await page.evaluate("navigator.clipboard.readText()")).startswith("这是网关内置的**演示模型**")

    await page.get_by_role("button", name="重新生成回复").click()
    await expect(reply.get_by_test_id("version-count")).to_have_text("2/2")
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(reply.get_by_role("group", name="第 2 个版本，共 2 个")).to_be_visible()
    await expect(reply.get_by_role("button", name="下一个版本")).to_be_disabled()
    await expect(reply.get_by_role("button", name="删除此版本")).to_be_visible()
    await reply.get_by_role("button", name="上一个版本").click()
    await expect(reply.get_by_test_id("version-count")).to_have_text("1/2")
    await expect(page.get_by_test_id("announcer")).to_have_text("正在显示第 1 个版本，共 2 个。")

    user = page.locator('[data-role="user"]')
    await user.get_by_role("button", name="编辑消息").click()
    editor = user.get_by_role("textbox", name="编辑后的消息")
    await expect(editor).to_have_value(QUESTION)
    await expect(user.get_by_test_id("editor")).to_contain_text("Ctrl+Enter 发送，Esc 取消")
    await expect(user.get_by_role("button", name="保存并发送")).to_be_visible()
    await user.get_by_role("button", name="取消").click()
    await expect(editor).to_have_count(0)

    await reply.get_by_role("button", name="删除此版本").click()
    confirm = reply.get_by_role("group", name="确认删除")
    await expect(confirm).to_contain_text("删除此版本的回复及其后的所有内容？")
    await confirm.get_by_role("button", name="取消").click()
    assert _english_words(await _chrome(page)) == []
    await w.assert_clean()


async def test_enter_that_picks_an_input_method_candidate_does_not_send(
    browser: Browser, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    w = await _open(browser, gw.http_url + "/", **CHINESE)
    page = w.page
    composer = page.get_by_test_id("composer")
    await composer.focus()
    await page.evaluate("""() => {
      window.__keys = [];
      window.__ime = [];
      const box = document.getElementById("composer");
      box.addEventListener("keydown", (e) => {
        window.__keys.push({key: e.key, keyCode: e.keyCode, isComposing: e.isComposing});
      }, true);
      for (const type of ["compositionstart", "compositionend"]) {
        box.addEventListener(type, (e) => window.__ime.push(`${type} ${e.data}`));
      }
    }""")
    cdp = await page.context.new_cdp_session(page)
    # Pinyin typed into the input method: the text is a composition, not yet committed.
    await cdp.send("Input.imeSetComposition", {"text": "nihao", "selectionStart": 5, "selectionEnd": 5})
    await expect(composer).to_have_value("nihao")
    # Enter picks the candidate: Chrome reports that keydown as composing (isComposing).
    await _raw_enter(cdp, 13)
    await cdp.send("Input.insertText", {"text": "你好"})  # the candidate is committed
    await expect(composer).to_have_value("你好")
    assert await page.evaluate("window.__ime") == ["compositionstart ", "compositionend 你好"]
    # Some browsers (Safari) send the Enter that ended a composition after compositionend,
    # not composing any more but with keyCode 229: not a send either.
    await _raw_enter(cdp, 229)
    keys = await page.evaluate("window.__keys")
    assert [k for k in keys if k["key"] == "Enter"] == [
        {"key": "Enter", "keyCode": 13, "isComposing": True},
        {"key": "Enter", "keyCode": 229, "isComposing": False},
    ], keys
    # A send would have drawn the message in that keydown's own handler, which ran already.
    assert await page.locator('[data-testid="messages"] article.msg').count() == 0
    await expect(composer).to_have_value("你好")

    await composer.press("Enter")  # composition over: this Enter sends
    await expect(page.locator('[data-role="user"] .bubble')).to_have_text(["你好"])
    await expect(_assistant(page)).to_have_attribute("data-state", "done")
    await expect(composer).to_have_value("")
    keys = await page.evaluate("window.__keys")
    assert keys[-1] == {"key": "Enter", "keyCode": 13, "isComposing": False}, keys

    # In the editor, Escape and Ctrl+Enter that belong to a composition neither cancel nor send.
    user = page.locator('[data-role="user"]')
    await user.get_by_role("button", name="编辑消息").click()
    editor = user.get_by_role("textbox", name="编辑后的消息")
    await expect(editor).to_be_focused()
    await cdp.send("Input.imeSetComposition", {"text": "zaijian", "selectionStart": 7, "selectionEnd": 7})
    await _raw_key(cdp, "Escape", 27)
    await _raw_key(cdp, "Enter", 13, modifiers=2)  # Ctrl
    await cdp.send("Input.insertText", {"text": "再见"})
    await _raw_key(cdp, "Escape", 229)  # after compositionend, as Safari sends it
    await expect(editor).to_have_value("你好再见")
    await expect(page.locator('[data-role="user"] .bubble')).to_have_text(["你好"])
    await editor.press("Escape")  # composition over: this Escape cancels
    await expect(editor).to_have_count(0)
    await w.assert_clean()


async def _raw_key(cdp: Any, key: str, key_code: int, modifiers: int = 0) -> None:
    """A keydown with no character (an input method takes it) and its keyup, as the system sends them."""
    down = {"key": key, "code": key, "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code, "modifiers": modifiers}
    await cdp.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", **down})
    await cdp.send("Input.dispatchKeyEvent", {"type": "keyUp", **down})


async def _raw_enter(cdp: Any, key_code: int) -> None:
    await _raw_key(cdp, "Enter", key_code)


PHONE = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}
# Runs with no place to break a line: a URL, a long Latin word, full-width punctuation.
URL = "https://example.com/docs/" + "streaming-replies-after-a-reconnect-" * 2
LATIN = "Pneumonoultramicroscopicsilicovolcanoconiosis"
PUNCTUATION = "！！！？？？。。。，，，；；；：：："

# How far the page's parts reach at 360 px, and whether anything scrolls sideways.
_WIDTHS = """() => {
  const log = document.getElementById("log");
  const box = (sel) => [...document.querySelectorAll(sel)].map((n) => n.getBoundingClientRect().right);
  const wrap = document.querySelector(".table-wrap");
  return {
    page: document.documentElement.scrollWidth, log: [log.scrollWidth, log.clientWidth],
    right: Math.max(...box(".msg, .bubble, .msg-body > *, .msg-body a, .code-block, .table-wrap, td, .msg-note, .msg-actions")),
    table: [wrap.scrollWidth, wrap.clientWidth],
    bubbleLines: document.querySelector(".bubble").getClientRects().length
      && Math.round(document.querySelector(".bubble").getBoundingClientRect().height / 20),
  };
}"""


def _fits(sizes: dict[str, Any]) -> None:
    assert sizes["page"] <= 360, sizes
    assert sizes["log"][0] <= sizes["log"][1], sizes
    assert sizes["right"] <= 360, sizes
    assert sizes["table"][0] <= sizes["table"][1], f"the table wraps instead of scrolling: {sizes}"
    assert sizes["bubbleLines"] > 3, sizes


async def test_chinese_text_wraps_at_360_px(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream
) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    w = await open_page(browser, gw.http_url + "/", **PHONE, **CHINESE)
    page = w.page
    long_question = (
        f"{QUESTION}，看看这个链接：{URL} {LATIN}{PUNCTUATION}"
        + "我想知道网关如何在断线后继续接收流式回复并保存对话" * 2
    )
    await _send(page, long_question)
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(reply.locator(".code-block")).to_have_count(1)
    await expect(reply.locator("table")).to_have_count(1)
    quote = reply.locator("blockquote")  # the demo quotes the question
    await expect(quote).to_contain_text(LATIN + PUNCTUATION)
    await expect(quote.locator("a")).to_have_attribute("href", URL)
    _fits(await page.evaluate(_WIDTHS))
    await shot(page, "i18n-zh-CN-360")
    await w.assert_clean()

    # A long URL in a table cell (a real model's table) wraps in its cell, too.
    table = f"| 链接 | 说明 |\n|---|---|\n| {URL} | 断线后继续接收流式回复{PUNCTUATION} |\n| `{LATIN}` | {LATIN}{LATIN} |\n"
    upstream.enqueue(Script([openai_sse(["这些链接值得一看：\n\n", table])]))
    modelled = await start_gateway(env=openai_env(upstream))
    w = await open_page(browser, modelled.http_url + "/", **PHONE, **CHINESE)
    page = w.page
    await _send(page, long_question)
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(reply.locator("td a").first).to_have_attribute("href", URL)
    _fits(await page.evaluate(_WIDTHS))
    await shot(page, "i18n-zh-CN-360-table")
    await w.assert_clean()


async def test_screenshots_of_the_chinese_page(browser: Browser, start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    w = await _open(browser, gw.http_url + "/", viewport={"width": 1100, "height": 900}, **CHINESE)
    page = w.page
    await _send(page, QUESTION)
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "done")
    await page.get_by_test_id("composer").focus()
    await doc_shot(page, "zh-CN-chat")
    await page.get_by_role("button", name="对话菜单").click()
    await expect(page.get_by_role("menuitem", name="对话设置")).to_be_focused()
    await expect(page.get_by_role("menuitem", name="导出为 Markdown")).to_be_visible()
    await expect(page.get_by_role("combobox", name="语言")).to_be_visible()
    await doc_shot(page, "zh-CN-menu")
    await w.assert_clean()
