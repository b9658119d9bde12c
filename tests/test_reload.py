"""What a reload applies live and what it reports as needing a restart (pure)."""

from __future__ import annotations

from pathlib import Path

from conftest import make_config

from gateway.reload import FIXED_ON_RELOAD, live_config


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
    assert (cfg.provider.model, cfg.max_replies) == ("m-2", 7)
    assert (cfg.ws_addr, cfg.compression) == (old.ws_addr, old.compression)
    assert needs_restart == ("ws_addr", "compression")


def test_every_fixed_setting_is_a_config_field(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert all(hasattr(cfg, name) for name in FIXED_ON_RELOAD)
