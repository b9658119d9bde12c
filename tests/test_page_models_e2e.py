"""The chat page in Chromium with several models: picking one, watching a reasoning model
think, the model and usage under a reply, and a reload mid-reasoning."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, StartGateway
from fakeupstream import FakeUpstream, Pause, Script, openai_sse
from page_helpers import Watched, browser, missing_browser_reason, new_page, shot  # noqa: F401

_reason = missing_browser_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

from playwright.async_api import Browser, Page, expect  # noqa: E402

expect.set_options(timeout=int(TIMEOUT * 1000))
DESKTOP = {"viewport": {"width": 1280, "height": 800}}


def models_toml(up: FakeUpstream, tmp_path: Path) -> str:
    (tmp_path / "key").write_text("sk-page-models-0123456789")
    return f"""
[[models]]
id = "quick"
label = "Quick"
deployments = ["q"]
price_input = 2
price_output = 8

[[models]]
id = "thinker"
label = "Deep Thinker"
deployments = ["t"]
reasoning = true

[[deployments]]
id = "q"
upstream_url = "{up.openai_base}"
model = "upstream-quick"
api_key_file = "{tmp_path / 'key'}"

[[deployments]]
id = "t"
upstream_url = "{up.openai_base}"
model = "upstream-thinker"
api_key_file = "{tmp_path / 'key'}"
"""


def thoughts(*texts: str) -> list[bytes]:
    return [openai_sse([], reasoning=[t], finish=None, usage=None, done=False).split(b"\n\n", 1)[1] for t in texts]


def answer(*texts: str, usage: dict[str, Any] | None = None) -> list[bytes]:
    body = openai_sse(list(texts), usage=usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    return [body.split(b"\n\n", 1)[1]]


async def _open(browser: Browser, url: str) -> Watched:
    w = await new_page(browser, **DESKTOP)
    await w.page.goto(url)
    await expect(w.page.get_by_test_id("send")).to_be_enabled()
    return w


async def _send(page: Page, text: str) -> None:
    await page.get_by_test_id("composer").fill(text)
    await page.get_by_test_id("composer").press("Enter")


def _assistant(page: Page) -> Any:
    return page.locator('[data-testid="messages"] [data-role="assistant"]').last


async def test_picking_a_model_answers_with_it_and_sticks_after_a_reload(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.set_default(lambda rec: Script([openai_sse([f"from {rec.json['model']}"])]))
    gw = await start_gateway(toml=models_toml(upstream, tmp_path))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    picker = page.get_by_role("combobox", name="Model")
    await expect(picker).to_have_value("quick")  # the gateway's default
    assert await picker.locator("option").all_inner_texts() == ["Quick", "Deep Thinker"]
    await picker.select_option("thinker")
    await _send(page, "who answers?")
    await expect(_assistant(page).locator(".msg-body")).to_have_text("from upstream-thinker")
    await expect(_assistant(page).get_by_test_id("reply-meta")).to_contain_text("Deep Thinker")
    await page.reload()
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    await expect(page.get_by_role("combobox", name="Model")).to_have_value("thinker")  # remembered by the gateway
    await _send(page, "again?")
    await expect(_assistant(page).locator(".msg-body")).to_have_text("from upstream-thinker")
    assert [r.json["model"] for r in upstream.requests] == ["upstream-thinker", "upstream-thinker"]
    await w.assert_clean()


async def test_the_thinking_panel_streams_then_folds_and_usage_is_shown(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
             "completion_tokens_details": {"reasoning_tokens": 300}}
    upstream.enqueue(Script([
        *thoughts("Let me ", "work it out."), Pause(gate), *answer("It is ", "**42**.", usage=usage),
    ]))
    gw = await start_gateway(toml=models_toml(upstream, tmp_path))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "the answer?")
    panel = _assistant(page).get_by_test_id("thinking")
    await expect(panel.locator("summary")).to_have_text("Thinking…")
    await expect(panel.locator(".thinking-body")).to_have_text("Let me work it out.")
    await expect(panel).to_have_attribute("open", "")
    await shot(page, "thinking-live")
    gate.set()
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(reply.locator(".msg-body")).to_have_text("It is 42.")
    await expect(panel.locator("summary")).to_have_text(re.compile(r"^Thought for \d+ s$"))
    assert await panel.get_attribute("open") is None  # folded once the answer began
    meta = reply.get_by_test_id("reply-meta")
    await expect(meta).to_have_text("Quick · 1,500 tokens (300 thinking) · cost 0.006000")
    await panel.locator("summary").click()  # expandable later
    await expect(panel.locator(".thinking-body")).to_be_visible()
    await shot(page, "thinking-done")
    await w.assert_clean()


async def test_a_reload_mid_reasoning_shows_all_the_thinking_once(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    upstream.enqueue(Script([*thoughts("first, ", "second, "), Pause(gate), *thoughts("third."), *answer("Done.")]))
    gw = await start_gateway(toml=models_toml(upstream, tmp_path))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "think hard")
    await expect(_assistant(page).get_by_test_id("thinking").locator(".thinking-body")).to_have_text("first, second,")
    await page.reload()
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    panel = _assistant(page).get_by_test_id("thinking")
    await expect(panel.locator(".thinking-body")).to_have_text("first, second,")
    await expect(panel.locator("summary")).to_have_text("Thinking…")
    gate.set()
    reply = _assistant(page)
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(reply.locator(".msg-body")).to_have_text("Done.")
    assert await panel.locator(".thinking-body").text_content() == "first, second, third."
    await page.reload()  # from the stored history now
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    stored = _assistant(page).get_by_test_id("thinking")
    await expect(stored.locator("summary")).to_have_text("Thoughts")
    assert await stored.locator(".thinking-body").text_content() == "first, second, third."
    await expect(page.locator('[data-role="assistant"]')).to_have_count(1)
    await w.assert_clean()


async def test_one_model_shows_no_picker(browser: Browser, start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml="[provider]\ndemo_delay_ms = 1\n")
    w = await _open(browser, gw.http_url + "/")
    await expect(w.page.get_by_test_id("model-picker")).to_be_hidden()
    await expect(w.page.get_by_test_id("model")).to_have_text("demo · demo")
    await w.assert_clean()


async def test_the_picker_fits_a_360_px_phone(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    gw = await start_gateway(toml=models_toml(upstream, tmp_path))
    w = await new_page(browser, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    await w.page.goto(gw.http_url + "/")
    await expect(w.page.get_by_test_id("send")).to_be_enabled()
    picker = w.page.get_by_role("combobox", name="Model")
    await expect(picker).to_be_visible()
    box, status = await picker.bounding_box(), await w.page.get_by_test_id("status").bounding_box()
    assert box is not None and status is not None
    assert box["x"] + box["width"] <= status["x"] + 1  # beside the status pill, not over it
    assert await w.page.evaluate("document.documentElement.scrollWidth") <= 360
    await w.assert_clean()


async def test_a_picked_model_answers_from_the_next_message_of_the_same_conversation(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Picking sends nothing; the next message carries it (before, none is sent: the
    gateway's own choice answers)."""
    upstream.set_default(lambda rec: Script([openai_sse([f"from {rec.json['model']}"])]))
    gw = await start_gateway(toml=models_toml(upstream, tmp_path))
    w = await _open(browser, gw.http_url + "/")
    page = w.page
    await _send(page, "first, with the default")
    await expect(_assistant(page).locator(".msg-body")).to_have_text("from upstream-quick")
    await page.get_by_role("combobox", name="Model").select_option("thinker")
    await _send(page, "now the thinker")
    await expect(_assistant(page).locator(".msg-body")).to_have_text("from upstream-thinker")
    assert [r.json["model"] for r in upstream.requests] == ["upstream-quick", "upstream-thinker"]
    await w.assert_clean()
