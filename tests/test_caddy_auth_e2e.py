"""`proxy` mode behind the shipped Caddyfile's auth variants, with a real Caddy and a real
gateway process: `basicauth` (the password never reaches the gateway) and `forward_auth`
to an authentication service of the test's own (Authelia style, by cookie). In every
variant a Remote-User header the client sends is deleted, and the page's requests are
checked at a recorder standing in for the gateway's HTTP listener."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from caddyserver import Caddy
from conftest import TIMEOUT, Chat, Process, loopback_app
from page_helpers import CHROMIUM, CHROMIUM_ARGS, missing_browser_reason
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (apt-get install caddy)")

Spawn = Callable[..., Any]
PASSWORD = "correct horse battery staple"
SESSION = "alice-session-cookie-0123456789"


class Backends:
    """The forward-auth service and a recorder of the page requests Caddy passes on."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.verified = 0

    async def verify(self, request: web.Request) -> web.Response:
        self.verified += 1
        if request.cookies.get("session") == SESSION:
            return web.Response(status=200, headers={"Remote-User": "alice", "Remote-Name": "Alice"})
        return web.Response(status=401, text="sign in at the portal\n")

    async def record(self, request: web.Request) -> web.Response:
        if request.path != "/readyz":  # Caddy's health checks come straight, not through the site
            self.seen.append(dict(request.headers))
        return web.Response(text="recorded\n")


@pytest.fixture(scope="module")
def password_hash() -> str:
    out = subprocess.run(
        ["caddy", "hash-password", "--plaintext", PASSWORD], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backends, int]]:
    b = Backends()
    async with loopback_app({"/api/verify": b.verify, "/{path:.*}": b.record}) as url:
        yield b, int(url.rsplit(":", 1)[1])


class Site:
    def __init__(self, caddy: Caddy, gateway: Process) -> None:
        self.caddy = caddy
        self.gateway = gateway
        self.wss = f"wss://localhost:{caddy.https_port}/chat"

    async def subject(self, **headers: str) -> str:
        """The subject the gateway gives a JSON connection made through Caddy with ``headers``."""
        async with connect(
            self.wss, ssl=self.caddy.ssl, open_timeout=TIMEOUT, subprotocols=["chat.v1"],
            additional_headers={"Origin": self.caddy.origin, **headers},
        ) as ws:
            chat = Chat(ws)
            await chat.send(type="hello")
            subject: str = (await chat.expect("ready"))["subject"]
            return subject

    async def refused(self, **headers: str) -> int:
        with pytest.raises(InvalidStatus) as info:
            await self.subject(**headers)
        status: int = info.value.response.status_code
        return status

    async def get(self, **headers: str) -> int:
        async with aiohttp.ClientSession() as session:
            async with session.get(self.caddy.origin + "/", ssl=self.caddy.ssl, headers=headers) as resp:
                return resp.status


@pytest.fixture
async def site(spawn: Spawn, tmp_path: Path, backends: tuple[Backends, int], request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    variant, extra, *serve_page = request.param
    _, port = backends
    caddy = Caddy(tmp_path)
    env = {"GATEWAY_ALLOWED_ORIGINS": caddy.origin, "GATEWAY_LOG_FORMAT": "json", "GATEWAY_AUTH_MODE": "proxy"}
    gateway = await spawn(env)
    caddy.env |= {"CADDY_AUTH": variant, "CADDY_FORWARD_AUTH": f"127.0.0.1:{port}", "CADDY_FORWARD_AUTH_URI": "/api/verify"}
    caddy.env |= {k: request.getfixturevalue(v) if v == "password_hash" else v for k, v in extra.items()}
    try:
        ws = gateway.ws_url.removeprefix("ws://").removesuffix("/chat")
        http = gateway.http_url.removeprefix("http://").rstrip("/") if serve_page else f"127.0.0.1:{port}"
        await asyncio.to_thread(caddy.start, ws, http)
        yield Site(caddy, gateway)
    finally:
        await asyncio.to_thread(caddy.stop)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


BASICAUTH = ("basicauth", {"CADDY_BASICAUTH_USER": "alice", "CADDY_BASICAUTH_HASH": "password_hash"})


@pytest.mark.parametrize("site", [BASICAUTH], indirect=True, ids=["basicauth"])
async def test_basicauth_signs_in_and_the_password_stops_at_caddy(site: Site, backends: tuple[Backends, int]) -> None:
    recorder, _ = backends
    good = basic("alice", PASSWORD)
    assert await site.subject(Authorization=good) == "user:alice"
    # A client naming itself cannot: Caddy replaces the header with who signed in.
    assert await site.subject(Authorization=good, **{"Remote-User": "admin"}) == "user:alice"
    assert await site.refused() == 401
    assert await site.refused(Authorization=basic("alice", "wrong")) == 401
    assert await site.refused(**{"Remote-User": "alice"}) == 401
    assert await site.get(Authorization=good, **{"Remote-User": "admin"}) == 200
    assert await site.get() == 401
    [seen] = recorder.seen
    assert seen["Remote-User"] == "alice" and "Authorization" not in seen


@pytest.mark.parametrize("site", [("forward_auth", {})], indirect=True, ids=["forward_auth"])
async def test_forward_auth_signs_in_by_the_services_word(site: Site, backends: tuple[Backends, int]) -> None:
    service, _ = backends
    cookie = f"session={SESSION}"
    assert await site.subject(Cookie=cookie) == "user:alice"
    assert await site.subject(Cookie=cookie, **{"Remote-User": "admin"}) == "user:alice"
    assert await site.refused() == 401
    assert await site.refused(Cookie="session=forged", **{"Remote-User": "alice"}) == 401
    assert await site.get(Cookie=cookie, **{"Remote-User": "admin"}) == 200
    assert service.verified == 5  # every request asked the service, once
    assert [s["Remote-User"] for s in service.seen] == ["alice"]


@pytest.mark.parametrize("site", [("none", {})], indirect=True, ids=["none"])
async def test_without_an_auth_variant_a_client_sent_user_header_never_arrives(
    site: Site, backends: tuple[Backends, int]
) -> None:
    recorder, _ = backends
    assert await site.refused(**{"Remote-User": "alice"}) == 401  # proxy mode: nobody vouched
    assert await site.get(**{"Remote-User": "alice"}) == 200
    assert "Remote-User" not in recorder.seen[0]


@pytest.mark.parametrize("site", [(*BASICAUTH, "page")], indirect=True, ids=["basicauth-page"])
async def test_the_page_signs_in_through_caddy(site: Site) -> None:
    """The browser answers Caddy's password prompt; the page then chats as that user."""
    reason = missing_browser_reason()
    if reason:
        pytest.skip(reason)
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                http_credentials={"username": "alice", "password": PASSWORD}, ignore_https_errors=True
            )
            page = await context.new_page()
            await page.goto(site.caddy.origin + "/")
            await expect(page.get_by_test_id("who")).to_have_text("Signed in as alice", timeout=TIMEOUT * 1000)
            await expect(page.get_by_test_id("signin")).to_be_hidden()  # nothing to type on the page
            await page.get_by_test_id("composer").fill("hello through the proxy")
            await page.get_by_test_id("composer").press("Enter")
            reply = page.locator('[data-testid="messages"] [data-role="assistant"]').last
            await expect(reply).to_have_attribute("data-state", "done", timeout=TIMEOUT * 1000)
        finally:
            await browser.close()
