"""What a reload applies live and what it reports as needing a restart (pure)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from conftest import Running, make_config
from websockets.exceptions import ConnectionClosed

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.reload import FIXED_ON_RELOAD, live_config
from gateway.server import Gateway


def test_nothing_changed_needs_nothing(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert live_config(cfg, cfg) == (cfg, ())


def test_live_settings_apply_and_fixed_ones_are_kept_and_reported(tmp_path: Path) -> None:
    old = make_config(tmp_path, toml='[provider]\nmodel = "m-1"\n')
    new = make_config(
        tmp_path, {"GATEWAY_WS_ADDR": "127.0.0.1:9999"},
        toml='[provider]\nmodel = "m-2"\n[server]\ncompression = true\n[limits]\nmax_replies = 7\n',
    )
    cfg, needs_restart = live_config(old, new)
    assert (cfg.provider.model, cfg.limits.max_replies) == ("m-2", 7)
    assert (cfg.server.ws_addr, cfg.server.compression) == (old.server.ws_addr, old.server.compression)
    assert needs_restart == ("server.ws_addr", "server.compression")


def test_every_fixed_setting_is_a_config_field(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    for name in FIXED_ON_RELOAD:
        section, _, key = name.partition(".")
        assert hasattr(getattr(cfg, section), key or "__class__"), name


async def test_a_reload_swaps_the_runtime_everywhere_at_once(tmp_path: Path) -> None:
    """One swap reaches the page's /config.json, new connections' ``ready``, new replies,
    the output budget and the auth check; a bad file changes nothing."""
    tokens = tmp_path / "tokens"
    tokens.write_text("a-client-token-0123456789\n")
    old = make_config(tmp_path, {"GATEWAY_MODEL": "m-1"}, "[provider]\ndemo_delay_ms = 0\n")
    new = make_config(
        tmp_path, {"GATEWAY_MODEL": "m-2", "GATEWAY_AUTH_TOKENS_FILE": str(tokens)},
        "[provider]\ndemo_delay_ms = 0\n[limits]\nmax_total_pending_bytes = 2097152\n",
    )
    sources: list[Config] = [new]

    def source() -> Config:
        if not sources:
            raise ConfigError("server.nonsense", "unknown key")
        return sources.pop()

    logged: list[Config] = []  # what the process's logging was set to (the CLI's job)
    gateway = Gateway(old, reload=source, configure_logs=logged.append)
    await gateway.start()
    try:
        gw = Running(gateway)
        async with gw.chat() as chat:
            assert (await chat.hello())["model"] == "m-1"
            gateway._on_reload()
            async with aiohttp.ClientSession() as http, http.get(gw.http_url + "/config.json") as resp:
                assert (await resp.json())["model"] == "m-2"
            assert gateway.hub is not None and gateway.hub.budget.limit == 2 << 20
            # Sign-in is on now: the anonymous connection may not stay (test_auth_e2e.py has more).
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(chat.ws.recv(), 5)
            assert chat.ws.close_code == 1008
        async with gw.chat() as chat:  # a new one must now present a token
            await chat.send(type="hello", token="a-client-token-0123456789")
            assert (await chat.expect("ready"))["model"] == "m-2"
        swapped = gateway.runtime
        gateway._on_reload()  # the next file is bad: the runtime in force stays
        assert gateway.runtime is swapped and gateway.config.provider.model == "m-2"
        assert [c.provider.model for c in logged] == ["m-2"]
    finally:
        await gateway.close()
