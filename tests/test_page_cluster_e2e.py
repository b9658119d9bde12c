"""The chat page behind Caddy in front of two instances of a cluster (real Redis, real
PostgreSQL, real Chromium): when the instance serving the page restarts mid-reply, it
closes with 1012, the page reconnects through Caddy to the other instance and resumes
the reply there, without a word to the user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import StartGateway, openai_env
from fakeupstream import FakeUpstream, Pause, Script
from page_helpers import browser, missing_browser_reason, new_page, sse_end, sse_pieces  # noqa: F401
from pgserver import PgServer
from test_caddy_e2e import Caddy

_reason = missing_browser_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

from playwright.async_api import Browser, expect  # noqa: E402


@pytest.fixture
async def caddy(tmp_path: Path) -> AsyncIterator[Caddy]:
    front = Caddy(tmp_path)
    try:
        yield front
    finally:
        await asyncio.to_thread(front.stop)


async def test_a_restart_mid_reply_moves_the_page_to_the_other_instance_quietly(
    browser: Browser, start_gateway: StartGateway, upstream: FakeUpstream, pg_server: PgServer,
    redis_env: dict[str, str], caddy: Caddy,
) -> None:
    env = {
        **openai_env(upstream, GATEWAY_UPSTREAM_TIMEOUT="60"), **redis_env,
        "GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": pg_server.url(pg_server.create_database()),
        "GATEWAY_ALLOWED_ORIGINS": caddy.origin, "GATEWAY_DRAIN_TIMEOUT": "30",
    }
    instances = [await start_gateway(env=env), await start_gateway(env=env)]
    await asyncio.to_thread(
        caddy.start,
        " ".join(f"127.0.0.1:{g.gateway.ws_port}" for g in instances),
        " ".join(f"127.0.0.1:{g.gateway.http_port}" for g in instances),
    )
    gate = asyncio.Event()
    upstream.enqueue(Script([*sse_pieces("Before the ", "restart, "), Pause(gate), *sse_pieces("and after."), sse_end()]))
    w = await new_page(browser, viewport={"width": 1280, "height": 800}, ignore_https_errors=True)
    page = w.page
    await page.goto(caddy.origin + "/")
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await page.get_by_test_id("composer").fill("Survive a restart")
    await page.get_by_test_id("composer").press("Enter")
    reply = page.locator('[data-testid="messages"] [data-role="assistant"]').last
    await expect(reply.locator(".msg-body")).to_have_text("Before the restart,")
    serving = next(g for g in instances if g.gateway.hub and g.gateway.hub.connections)
    closing = asyncio.create_task(serving.gateway.close())  # SIGTERM's drain: 1012 at once, the reply streams on
    await expect(page.get_by_test_id("status")).not_to_have_attribute("data-state", "live")
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")  # on the other one
    other = next(g for g in instances if g is not serving)
    assert other.gateway.hub is not None and other.gateway.hub.connections
    gate.set()
    await expect(reply).to_have_attribute("data-state", "done")
    assert await reply.locator(".msg-body").inner_text() == "Before the restart, and after."
    await expect(page.get_by_test_id("banner")).to_be_hidden()
    await closing
    await w.assert_clean()
