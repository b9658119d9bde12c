"""The HTTP listener: page, health, readiness, config, safe static files."""

from __future__ import annotations

import aiohttp
import pytest
from conftest import StartGateway


async def _get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + path, allow_redirects=False) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def test_index_is_html_with_csp_and_no_cache(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    status, headers, body = await _get(gw.http_url, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-cache"
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert f"ws://127.0.0.1:{gw.gateway.ws_port}" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert b"<html" in body.lower()


@pytest.mark.parametrize(
    "path",
    ["/../pyproject.toml", "/%2e%2e/pyproject.toml", "/..%2fpyproject.toml", "/static/../../etc/passwd",
     "/.hidden", "/%00", "/nope.js", "//etc/passwd", "/..\\pyproject.toml"],
)
async def test_static_refuses_traversal(start_gateway: StartGateway, path: str) -> None:
    gw = await start_gateway()
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.http_url + path, allow_redirects=False) as resp:
            body = await resp.read()
            assert resp.status in (400, 403, 404), (path, resp.status)
    assert b"[project]" not in body and b"root:" not in body


async def test_hashed_assets_are_immutable_and_the_rest_revalidated(start_gateway: StartGateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    static = tmp_path / "site"
    (static / "assets").mkdir(parents=True)
    (static / "index.html").write_text("<html>page</html>")
    (static / "assets" / "app-1a2b3c.js").write_text("export {}")
    (static / "assets" / "app-1a2b3c.css").write_text("body{}")
    (static / "favicon.svg").write_text("<svg/>")
    gw = await start_gateway(env={"GATEWAY_STATIC_DIR": str(static)})
    status, headers, _ = await _get(gw.http_url, "/assets/app-1a2b3c.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    status, headers, _ = await _get(gw.http_url, "/assets/app-1a2b3c.css")
    assert headers["Content-Type"].startswith("text/css") and "immutable" in headers["Cache-Control"]
    for path in ("/", "/index.html", "/favicon.svg"):
        status, headers, _ = await _get(gw.http_url, path)
        assert status == 200 and headers["Cache-Control"] == "no-cache", path


async def test_symlink_out_of_static_is_refused(start_gateway: StartGateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    static = tmp_path / "site"
    static.mkdir()
    (static / "index.html").write_text("<html>ok</html>")
    (tmp_path / "secret.txt").write_text("top secret")
    (static / "link.txt").symlink_to(tmp_path / "secret.txt")
    gw = await start_gateway(env={"GATEWAY_STATIC_DIR": str(static)})
    status, _, body = await _get(gw.http_url, "/link.txt")
    assert status == 404 and b"secret" not in body


async def test_health_ready_and_config(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    assert (await _get(gw.http_url, "/healthz"))[0] == 200
    status, _, body = await _get(gw.http_url, "/readyz")
    assert status == 200 and b"ready" in body
    status, headers, body = await _get(gw.http_url, "/config.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    import orjson

    cfg = orjson.loads(body)
    assert cfg == {
        "ws_url": f"ws://127.0.0.1:{gw.gateway.ws_port}/chat", "model": "demo", "provider": "demo",
        "models": [{"id": "demo", "label": "demo", "default": True}], "auth": {"mode": "none"},
    }


async def test_config_behind_a_proxy_says_same_origin(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.http_url + "/config.json", headers={"X-Forwarded-Proto": "https"}) as resp:
            assert (await resp.json())["ws_url"] is None


async def test_readyz_is_503_while_draining(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    gw.gateway._web_state.draining = True  # type: ignore[union-attr]
    status, _, body = await _get(gw.http_url, "/readyz")
    assert status == 503 and b"draining" in body


async def test_compression_is_off_by_default_and_small_when_on(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    async with gw.chat() as chat:  # the client offers permessage-deflate by default
        assert chat.ws.response is not None
        assert "Sec-WebSocket-Extensions" not in chat.ws.response.headers
    gw2 = await start_gateway(toml="[server]\ncompression = true\n")
    async with gw2.chat() as chat:
        assert chat.ws.response is not None
        extensions = chat.ws.response.headers["Sec-WebSocket-Extensions"]
        assert "permessage-deflate" in extensions and "server_max_window_bits=10" in extensions
        await chat.hello()
