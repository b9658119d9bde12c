"""Helpers for the browser tests of the chat page (tests/test_page_e2e.py).

Playwright drives Debian's Chromium (``/usr/bin/chromium``): ``playwright install`` is
never needed. Each test gets its own browser, in its own event loop, like the gateway
fixtures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakeupstream import openai_sse

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
DOC_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
LOCALE = "en-US"  # the browser's language unless a test asks for another: the page follows it

try:
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Dialog, Page, async_playwright
except ImportError:  # the test module skips with a reason
    async_playwright = None  # type: ignore[assignment]

# Collects CSP violations from the first moment of every document. Playwright evaluates
# init scripts through the DevTools protocol, outside the page's CSP.
_WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


def missing_browser_reason() -> str | None:
    """Why the page tests cannot run here, or None."""
    if async_playwright is None:
        return "the playwright package is not installed (pip install playwright; CI installs it)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; CI installs it)"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@dataclass
class Watched:
    """A page plus everything it reported that a test must not ignore."""

    page: Page
    context: BrowserContext
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    async def csp_violations(self) -> list[str]:
        found: list[str] = await self.page.evaluate("window.__csp || []")
        return found + [m for m in self.console_errors if "Content Security Policy" in m]

    async def assert_clean(self) -> None:
        """No dialog opened, no uncaught error, no CSP violation."""
        assert self.dialogs == [], f"a dialog opened: {self.dialogs}"
        assert self.page_errors == [], f"uncaught errors: {self.page_errors}"
        assert await self.csp_violations() == [], "CSP violations"


async def new_page(browser: Browser, **context_options: Any) -> Watched:
    """A page in a fresh context (its own localStorage), watched for errors and dialogs.
    The context's ``locale`` (navigator.languages) is en-US unless given."""
    context = await browser.new_context(**{"locale": LOCALE, **context_options})
    await context.add_init_script(_WATCH_CSP)
    page = await context.new_page()
    watched = Watched(page, context)

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            watched.console_errors.append(msg.text)

    async def on_dialog(dialog: Dialog) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda exc: watched.page_errors.append(str(exc)))
    page.on("dialog", on_dialog)
    return watched


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), animations="disabled", caret="hide")


async def doc_shot(page: Page, name: str) -> None:
    """A screenshot for the docs: test-artifacts/screenshots/, and docs/images/ (tracked)
    only when ``GATEWAY_DOC_SHOTS=1``, so that a test run leaves the working tree alone."""
    await shot(page, name)
    if os.environ.get("GATEWAY_DOC_SHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOTS / f"{name}.png", DOC_IMAGES / f"{name}.png")


async def open_page(browser: Browser, url: str, **options: Any) -> Watched:
    """A new watched page at ``url`` (``options``: the browser context's), ready to send."""
    from playwright.async_api import expect

    w = await new_page(browser, **options)
    await w.page.goto(url)
    await expect(w.page.get_by_test_id("send")).to_be_enabled()
    return w


async def another_tab(first: Watched, url: str) -> Watched:
    """Another tab of ``first``'s browser (its storage, so its anonymous key), watched the same way."""
    from playwright.async_api import expect

    page = await first.context.new_page()
    w = Watched(page, first.context)
    page.on("pageerror", lambda exc: w.page_errors.append(str(exc)))
    await page.goto(url)
    await expect(page.get_by_test_id("send")).to_be_enabled()
    return w


def sse_pieces(*texts: str) -> list[bytes]:
    """One OpenAI SSE event per text (no finish, no [DONE]): the middle of a stream."""
    return [openai_sse([t], finish=None, usage=None, done=False).split(b"\n\n", 1)[1] for t in texts]


def sse_end(finish: str = "stop") -> bytes:
    """The end of an OpenAI stream: finish reason, usage, [DONE]."""
    return openai_sse([], finish=finish).split(b"\n\n", 1)[1]


# Chromium's fake microphone, allowed without asking: a beep, or a WAV file (looped).
FAKE_MIC_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def fake_mic_args(wav: Path | None = None) -> list[str]:
    """The flags for a fake microphone that plays ``wav`` (None: Chromium's beep)."""
    return [*FAKE_MIC_ARGS, *([f"--use-file-for-fake-audio-capture={wav}"] if wav else [])]


@contextlib.asynccontextmanager
async def chromium(*args: str) -> AsyncIterator[Browser]:
    """A Chromium of a test's own, launched with ``args`` besides CHROMIUM_ARGS (a fake
    microphone: :func:`fake_mic_args`)."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *args])
        try:
            yield b
        finally:
            await b.close()
