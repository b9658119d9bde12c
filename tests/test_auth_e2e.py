"""Optional client auth: a token file; hello carries a token, or the handshake a Bearer header."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import StartGateway
from websockets.exceptions import ConnectionClosed, InvalidStatus

TOKEN = "tok-0123456789abcdef"
DEMO_FAST = "[provider]\ndemo_delay_ms = 0\n"


@pytest.fixture
def auth_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "tokens"
    path.write_text(f"# clients\n{TOKEN}\nother-token-fedcba9876543210\n")
    return {"GATEWAY_AUTH_TOKENS_FILE": str(path)}


async def test_hello_with_token_then_chat(start_gateway: StartGateway, auth_env: dict[str, str]) -> None:
    gw = await start_gateway(auth_env, DEMO_FAST)
    async with gw.chat() as chat:
        await chat.send(type="hello", token=TOKEN)
        await chat.expect("ready")
        text, _ = await chat.ask("hi")
    assert "demo model" in text


@pytest.mark.parametrize(
    "first",
    ['{"type":"hello","token":"wrong-token-000000000"}', '{"type":"hello"}',
     '{"type":"message","id":"m","content":"sneaky"}', "{not json"],
)
async def test_without_a_valid_token_unauthorized_then_1008(
    start_gateway: StartGateway, auth_env: dict[str, str], first: str
) -> None:
    gw = await start_gateway(auth_env, DEMO_FAST)
    async with gw.chat() as chat:
        await chat.ws.send(first)
        error = await chat.expect("error")
        assert error["code"] == "unauthorized" and error["retryable"] is False
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(chat.ws.recv(), 5)
    assert chat.ws.close_code == 1008


async def test_bearer_header_authenticates_both_modes(start_gateway: StartGateway, auth_env: dict[str, str]) -> None:
    gw = await start_gateway(auth_env, DEMO_FAST)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with gw.chat(additional_headers=headers) as chat:
        text, _ = await chat.ask("no hello needed")
    assert "no hello needed" in text
    async with gw.raw(additional_headers=headers) as ws:
        await ws.send("plain with a token")
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith("This")


async def test_plain_mode_without_token_is_401(start_gateway: StartGateway, auth_env: dict[str, str]) -> None:
    gw = await start_gateway(auth_env, DEMO_FAST)
    with pytest.raises(InvalidStatus) as info:
        async with gw.raw():
            pass
    assert info.value.response.status_code == 401


async def test_short_tokens_are_refused_at_start(start_gateway: StartGateway, tmp_path: Path) -> None:
    (tmp_path / "weak").write_text("short\n")
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        await start_gateway({"GATEWAY_AUTH_TOKENS_FILE": str(tmp_path / "weak")})
    assert info.value.key == "auth.tokens_file"
