"""The shipped example configuration is complete, current and valid."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT

from gateway import config
from gateway.example import example

EXAMPLE = ROOT / "gateway.example.toml"


def test_example_file_is_generated_from_the_settings() -> None:
    assert EXAMPLE.read_text() == example(), "run `make example-config` and commit the result"


def test_every_setting_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    for setting in config.SETTINGS:
        assert f"# {setting.key} = " in text, setting.name
        assert setting.doc, f"{setting.name} has no documentation"


def test_example_uncommented_loads(tmp_path: Path) -> None:
    """Every table's settings uncommented load (the [[models]] and [[deployments]]
    examples stay commented: they replace [provider]'s own model)."""
    lines, in_array = [], False
    for line in EXAMPLE.read_text().splitlines():
        body = line[2:] if line.startswith("# ") else line
        in_array = body.startswith("[[") or (in_array and not body.startswith("["))
        is_setting = " = " in body and not body.startswith(("#", " ")) and body.split(" = ")[0].isidentifier()
        lines.append(body if is_setting and not in_array else line)
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines))
    cfg = config.load(path, {})
    assert cfg.provider.params == {"temperature": 0.7, "max_tokens": 1024}
    assert cfg.server.allowed_origins == ("https://chat.example.com",)
