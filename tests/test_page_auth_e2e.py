"""The page signs in the way the gateway's auth mode asks, in a real browser (Chromium):
a key of its own in `none` mode, a token typed once in `tokens` mode, a JWT from
`token_url` (renewed on the open socket, or fetched anew after a 1008) in `jwt` mode.
Its conversation list comes from the gateway: it follows a person to another device (a
fresh browser context signed in with the same token), searches on the gateway, sends
renames and deletes, and still shows its cached copy (and filters it) while the
gateway is away."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from conftest import TIMEOUT, StartGateway, loopback_app
from page_helpers import browser, missing_browser_reason, new_page, shot  # noqa: F401  (browser is a fixture)

_reason = missing_browser_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

from playwright.async_api import Browser, Page, expect  # noqa: E402

expect.set_options(timeout=int(TIMEOUT * 1000))

TOKEN = "tok-alice-0123456789abcdef"
SECRET = "a-shared-secret-of-forty-bytes-or-so-000"
DEMO = "[provider]\ndemo_delay_ms = 1\n"


class Frames:
    """Every JSON frame a page sends and receives, and the URL of each socket it opens."""

    def __init__(self, page: Page) -> None:
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.sockets: list[str] = []
        self._arrived: dict[str, asyncio.Event] = {}
        page.on("websocket", self._on_socket)

    def arrived(self, frame_type: str) -> asyncio.Event:
        """Set once a frame of ``frame_type`` has reached the page."""
        return self._arrived.setdefault(frame_type, asyncio.Event())

    def _on_socket(self, ws: Any) -> None:
        self.sockets.append(ws.url)
        ws.on("framesent", lambda payload: self.sent.append(json.loads(payload)))
        ws.on("framereceived", self._on_received)

    def _on_received(self, payload: str | bytes) -> None:
        frame = json.loads(payload)
        self.received.append(frame)
        self.arrived(frame["type"]).set()


async def chat(page: Page, text: str) -> None:
    await page.get_by_test_id("composer").fill(text)
    await page.get_by_test_id("composer").press("Enter")
    reply = page.locator('[data-testid="messages"] [data-role="assistant"]').last
    await expect(reply).to_have_attribute("data-state", "done")
    await expect(reply).to_contain_text("demo model")


async def test_none_mode_gives_each_browser_a_key_of_its_own(browser: Browser, start_gateway: StartGateway) -> None:
    gw = await start_gateway(None, DEMO)
    keys = []
    for _ in range(2):
        w = await new_page(browser)
        frames = Frames(w.page)
        await w.page.goto(gw.http_url + "/")
        await chat(w.page, "hello")
        key = await w.page.evaluate("localStorage.getItem('gateway.anonKey')")
        assert isinstance(key, str) and len(key) == 64
        assert frames.sent[0]["type"] == "hello" and frames.sent[0]["token"] == key
        assert all(key not in url for url in frames.sockets)  # never in a URL
        assert next(f for f in frames.received if f["type"] == "ready")["subject"].startswith("anon:")
        await expect(w.page.get_by_test_id("who")).to_be_hidden()
        await expect(w.page.get_by_test_id("signin")).to_be_hidden()
        keys.append(key)
        await w.assert_clean()
        await w.context.close()
    assert keys[0] != keys[1]


async def test_tokens_mode_asks_once_and_refuses_a_wrong_token(
    browser: Browser, start_gateway: StartGateway, tmp_path: Path
) -> None:
    (tmp_path / "tokens").write_text(f"alice {TOKEN}\n")
    gw = await start_gateway({"GATEWAY_AUTH_TOKENS_FILE": str(tmp_path / "tokens")}, DEMO)
    w = await new_page(browser)
    page = w.page
    frames = Frames(page)
    await page.goto(gw.http_url + "/")
    dialog = page.get_by_test_id("signin")
    await expect(dialog).to_be_visible()
    await expect(page.get_by_role("dialog", name="Sign in")).to_be_visible()
    await page.get_by_label("Access token").fill("tok-wrong-0123456789abcdef")
    await page.get_by_test_id("signin-submit").click()
    await expect(dialog.get_by_role("alert")).to_contain_text("not accepted")  # asked again
    await shot(page, "signin-refused")
    await page.get_by_label("Access token").fill(TOKEN)
    await page.get_by_label("Access token").press("Enter")
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_test_id("who")).to_have_text("Signed in as alice")
    await chat(page, "hello")
    await page.reload()  # the tab keeps its token: no second question
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    await expect(dialog).to_be_hidden()
    assert await page.evaluate("localStorage.getItem('gateway.token')") is None  # session storage only
    assert all(TOKEN not in url for url in [*frames.sockets, page.url])
    assert [f.get("token") for f in frames.sent if f["type"] == "hello" and "token" in f][-1] == TOKEN
    await w.assert_clean()


class TokenService:
    """The operator's own sign-in app: hands the page JWTs (first ones short-lived)."""

    def __init__(self, first_ttls: list[float]) -> None:
        self.ttls = first_ttls
        self.calls = 0
        self.origin = ""

    async def token(self, request: web.Request) -> web.Response:
        self.calls += 1
        ttl = self.ttls.pop(0) if self.ttls else 3600
        token = jwt.encode({"sub": "carol", "name": "Carol", "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")
        headers = {"Access-Control-Allow-Origin": self.origin, "Access-Control-Allow-Credentials": "true"}
        return web.json_response({"token": token}, headers=headers)


@pytest.fixture
async def token_service() -> AsyncIterator[tuple[TokenService, str]]:
    service = TokenService([])
    async with loopback_app({"/token": service.token}) as url:
        yield service, url + "/token"


@pytest.mark.parametrize(("ttls", "sockets_expected"), [([-60], 2), ([3], 1)], ids=["expired-then-fresh", "renewed-live"])
async def test_jwt_mode_fetches_renews_and_resigns(
    browser: Browser, start_gateway: StartGateway, tmp_path: Path,
    token_service: tuple[TokenService, str], ttls: list[float], sockets_expected: int,
) -> None:
    service, url = token_service
    service.ttls = list(ttls)
    (tmp_path / "jwt_secret").write_text(SECRET)
    env = {"GATEWAY_AUTH_MODE": "jwt", "GATEWAY_JWT_SECRET_FILE": str(tmp_path / "jwt_secret"), "GATEWAY_AUTH_TOKEN_URL": url}
    gw = await start_gateway(env, DEMO + "[auth]\nexpiry_warning = 60\njwt_leeway = 0\n")
    service.origin = gw.http_url
    w = await new_page(browser)
    frames = Frames(w.page)
    await w.page.goto(gw.http_url + "/")
    await expect(w.page.get_by_test_id("who")).to_have_text("Signed in as Carol")
    await chat(w.page, "hello")
    if sockets_expected == 1:  # a 3 s token: warned at once, renewed on the same socket
        await asyncio.wait_for(frames.arrived("auth.refreshed").wait(), TIMEOUT)
        assert [f["type"] for f in frames.sent].count("refresh") == 1
    assert service.calls == 2 and len(frames.sockets) == sockets_expected
    await w.assert_clean()


# the conversation list


async def sign_in(page: Page, url: str) -> None:
    await page.goto(url)
    await page.get_by_label("Access token").fill(TOKEN)
    await page.get_by_label("Access token").press("Enter")
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")


def titles(page: Page) -> object:
    return page.get_by_test_id("conversation").locator(".conv-open")


async def test_the_list_follows_the_person_searches_renames_and_deletes(
    browser: Browser, start_gateway: StartGateway, tmp_path: Path
) -> None:
    (tmp_path / "tokens").write_text(f"alice {TOKEN}\n")
    gw = await start_gateway({"GATEWAY_AUTH_TOKENS_FILE": str(tmp_path / "tokens")}, DEMO)
    laptop = await new_page(browser)
    await sign_in(laptop.page, gw.http_url + "/")
    await chat(laptop.page, "weekend plans")
    await laptop.page.get_by_test_id("new-chat").click()
    await chat(laptop.page, "tax forms")
    await expect(titles(laptop.page)).to_have_text(["tax forms", "weekend plans"])

    phone = await new_page(browser, viewport={"width": 1280, "height": 800})  # another device: nothing cached
    page = phone.page
    await sign_in(page, gw.http_url + "/")
    await expect(titles(page)).to_have_text(["tax forms", "weekend plans"])  # from the gateway
    search = page.get_by_role("searchbox", name="Search conversations")
    await search.fill("WEEKEND")
    await expect(titles(page)).to_have_text(["weekend plans"])  # the gateway searched
    await search.fill("no such words")
    await expect(page.get_by_test_id("sidebar")).to_contain_text("No conversation matches.")
    await search.fill("")
    await expect(titles(page)).to_have_text(["tax forms", "weekend plans"])

    item = page.get_by_test_id("conversation").filter(has_text="weekend plans")
    await item.hover()
    await item.get_by_role("button", name="Rename “weekend plans”").click()
    rename = page.get_by_role("textbox", name="Conversation name")
    await rename.fill("Trip")
    await rename.press("Enter")
    await expect(titles(page)).to_have_text(["tax forms", "Trip"])
    item = page.get_by_test_id("conversation").filter(has_text="tax forms")
    await item.hover()
    await item.get_by_role("button", name="Delete “tax forms”").click()
    await expect(titles(page)).to_have_text(["Trip"])
    await shot(page, "sidebar-from-the-gateway")

    await laptop.page.reload()  # the laptop sees what the phone did
    await expect(titles(laptop.page)).to_have_text(["Trip"])

    await gw.gateway.close()  # the gateway goes away: the list stays, and filters what it has
    await expect(page.get_by_test_id("status")).not_to_have_attribute("data-state", "live")
    await expect(titles(page)).to_have_text(["Trip"])
    await search.fill("tri")
    await expect(titles(page)).to_have_text(["Trip"])
    await search.fill("tax")
    await expect(titles(page)).to_have_count(0)
    for w in (laptop, phone):
        assert w.page_errors == [] and w.dialogs == []
