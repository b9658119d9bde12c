"""Log configuration: level changes reach loggers made before them; secrets are scrubbed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway import logs
from gateway.cli import log_secrets
from gateway.config import load

_log: Any = structlog.get_logger("gateway.test")


def test_reconfigured_level_applies_to_existing_loggers(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    _log.debug("hidden_event")
    _log.info("shown_event")
    logs.configure("debug", "json")
    _log.debug("now_shown_event")
    out = capsys.readouterr().out
    assert "shown_event" in out and "now_shown_event" in out and "hidden_event" not in out


def test_secrets_are_scrubbed_from_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json", secrets=("sk-very-secret-value",))
    _log.info("something_failed", detail="upstream said: bad key sk-very-secret-value")
    logging.getLogger("websockets.server").warning("stdlib says sk-very-secret-value")
    out = capsys.readouterr().out
    assert "sk-very-secret-value" not in out and out.count("[redacted]") == 2


def teardown_function() -> None:
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def test_journal_lines_carry_syslog_priority(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json", journal=True)
    _log.info("an_info")
    _log.warning("a_warning")
    _log.error("an_error")
    lines = capsys.readouterr().out.splitlines()
    assert [line[:4] for line in lines] == ["<6>{", "<4>{", "<3>{"]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_logged_exceptions_carry_no_locals_and_no_secret(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    logs.configure("info", fmt, secrets=("sk-very-secret-value",))

    def failing(user_text: str, headers: dict[str, str]) -> None:
        raise RuntimeError(f"boom near {headers['Authorization']}")

    text = " ".join(["what", "the", "user", "wrote", "in", "private"])  # data, not source code
    headers = {"Authorization": "Bearer " + "-".join(["sk", "very", "secret", "value"])}
    try:
        failing(text, headers)
    except RuntimeError:
        _log.exception("frame_failed")
    out = capsys.readouterr().out
    assert "frame_failed" in out and "RuntimeError" in out
    assert "what the user wrote" not in out, "tracebacks carry no local variables"
    assert "sk-very-secret-value" not in out and "[redacted]" in out


def test_every_secret_of_the_configuration_is_masked_in_logs(tmp_path: Path) -> None:
    """The provider's key, each deployment's, the transcription endpoint's, and the passwords."""
    (tmp_path / "pg").write_text("pg-password-1\n")
    (tmp_path / "redis").write_text("redis-password-2\n")
    cfg = load(None, {
        "GATEWAY_PROVIDER": "openai", "GATEWAY_API_KEY": "sk-provider-key-3", "GATEWAY_STT_PROVIDER": "openai",
        "GATEWAY_STT_URL": "http://127.0.0.1:9/v1", "GATEWAY_STT_API_KEY": "sk-transcription-key-4",
        "GATEWAY_STORE": "postgres", "GATEWAY_DATABASE_URL": "postgresql://gw@127.0.0.1/gw",
        "GATEWAY_DATABASE_PASSWORD_FILE": str(tmp_path / "pg"), "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0",
        "GATEWAY_REDIS_PASSWORD_FILE": str(tmp_path / "redis"),
    })
    secrets = log_secrets(cfg)
    for secret in ("sk-provider-key-3", "sk-transcription-key-4", "pg-password-1", "redis-password-2"):
        assert secret in secrets
