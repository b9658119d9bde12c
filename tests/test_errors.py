"""Tests for gateway.errors: the error tree, retryable defaults, and redact()."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import (
    EXIT_CONFIG,
    EXIT_STARTUP,
    MAX_RETRY_AFTER,
    WITHHELD,
    ConfigError,
    ErrorCode,
    GatewayError,
    ProtocolError,
    StartupError,
    UpstreamError,
    quotes_secret,
    redact,
)

KEY = "sk-proj-Zq8vT3xLm2Nw9Rk4Yb7Hc1Jd6Fg5"
R = "[redacted]"

PROTOCOL_CODES = {
    "bad_request", "unauthorized", "forbidden", "not_found", "too_large", "busy", "rate_limited", "budget_exceeded",
    "upstream_error", "upstream_timeout", "upstream_unavailable", "resume_unavailable", "overloaded", "internal",
}
RETRYABLE = {"busy", "rate_limited", "upstream_timeout", "upstream_unavailable", "overloaded", "internal"}


def test_error_codes_are_the_protocol_codes() -> None:
    assert {c.value for c in ErrorCode} == PROTOCOL_CODES
    assert all(str(c) == c.value for c in ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_retryable_default_per_code(code: ErrorCode) -> None:
    assert GatewayError(code, "m").retryable is (code.value in RETRYABLE)
    assert ProtocolError(code, "m").retryable is (code.value in RETRYABLE)
    assert UpstreamError(code, "m").retryable is (code.value in RETRYABLE)


@pytest.mark.parametrize("retryable", [True, False])
def test_retryable_can_be_overridden(retryable: bool) -> None:
    assert GatewayError(ErrorCode.BUSY, "m", retryable=retryable).retryable is retryable
    assert UpstreamError(ErrorCode.UPSTREAM_ERROR, "m", retryable=retryable).retryable is retryable


def test_error_attributes() -> None:
    exc = UpstreamError(ErrorCode.RATE_LIMITED, "slow down", status=429, retry_after=5)
    assert (exc.code, exc.message, exc.status, exc.retry_after) == (ErrorCode.RATE_LIMITED, "slow down", 429, 5)
    assert str(exc) == "rate_limited: slow down"
    assert GatewayError(ErrorCode.BUSY, "m").retry_after is None
    assert UpstreamError(ErrorCode.UPSTREAM_ERROR, "m").status is None
    proto = ProtocolError(ErrorCode.BUSY, "busy", ref="m1")
    assert proto.ref == "m1" and ProtocolError(ErrorCode.BUSY, "busy").ref is None


def test_config_error() -> None:
    exc = ConfigError("server.ws_addr", "expected host:port")
    assert exc.key == "server.ws_addr"
    assert exc.retry is False and exc.exit_code == EXIT_CONFIG == 2
    assert exc.message == exc.reason == "server.ws_addr: expected host:port"


@pytest.mark.parametrize(("retry", "code"), [(True, EXIT_STARTUP), (False, EXIT_CONFIG)])
def test_a_startup_error_maps_to_one_exit_code(retry: bool, code: int) -> None:
    assert StartupError("address in use", retry=retry).exit_code == code


@pytest.mark.parametrize("cls", [ProtocolError, UpstreamError])
def test_client_errors_are_one_tree(cls: type[GatewayError]) -> None:
    assert issubclass(cls, GatewayError) and not issubclass(cls, StartupError)


def test_startup_errors_are_another() -> None:
    """A bad configuration is never told to a client as if it were a protocol error."""
    assert issubclass(ConfigError, StartupError) and not issubclass(ConfigError, GatewayError)


# --------------------------------------------------------------------------- redact


def fragments(secret: str) -> list[str]:
    return [secret[:n] for n in range(4, len(secret) + 1)] + [secret[-n:] for n in range(4, len(secret) + 1)]


@pytest.mark.parametrize(
    "message",
    [
        f"Incorrect API key provided: {KEY[:6]}***************************{KEY[-4:]}.",
        f"Incorrect API key provided: {KEY[:7]}*****{KEY[-6:]}. You can find your API key at ...",
    ],
)
def test_masked_key_end_fragments_are_removed(message: str) -> None:
    out = redact(message, KEY)
    assert R in out and out.startswith("Incorrect API key provided:")
    for fragment in fragments(KEY):
        assert fragment not in out


@pytest.mark.parametrize(
    "message",
    [
        f"Incorrect API key provided: {KEY}.",
        f"key={KEY[:-1]}",  # truncated echo
        f"key={KEY[1:]}",
        f"{KEY}{KEY}",
        f"key {KEY.upper()} refused",  # another case
        f"key {KEY.lower()} refused",
        f"slice {KEY[10:20]} only",  # a middle slice
        f"url {KEY.replace('-', '%2D').replace('Z', '%5A')} encoded",
        f"twice {KEY.replace('-', '%252D')} encoded",
        "spaced " + " ".join(KEY) + " out",
        "html " + "".join(f"&#{ord(c)};" for c in KEY[:12]),
        f"plus+{KEY[5:9]}+{KEY[9:14]}+spaced",
    ],
)
def test_text_quoting_the_key_in_any_form_is_withheld(message: str) -> None:
    assert quotes_secret(message, KEY)
    assert redact(message, KEY) == WITHHELD


@pytest.mark.parametrize(
    "message",
    ["Incorrect API key provided", "rate limit reached for gpt-4o-mini", "上游服务暂时不可用", f"ends {KEY[-7:]}"],
)
def test_text_without_eight_characters_of_the_key_is_not_withheld(message: str) -> None:
    assert not quotes_secret(message, KEY)


def test_upstream_error_keeps_its_summary_when_the_detail_is_withheld() -> None:
    exc = UpstreamError(ErrorCode.UPSTREAM_ERROR, "the provider answered HTTP 401", detail=f"bad key {KEY.upper()}")
    exc.redact(KEY)
    assert exc.message == f"the provider answered HTTP 401: {WITHHELD}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, None), (7, 7), (1.23456, 1.235), (-3, 0.0), (float("inf"), MAX_RETRY_AFTER), (1e305, MAX_RETRY_AFTER),
     (float("-inf"), 0.0), (float("nan"), 0.0)],
)
def test_retry_after_is_finite_bounded_and_non_negative(given: float | None, expected: float | None) -> None:
    assert GatewayError(ErrorCode.RATE_LIMITED, "m", retry_after=given).retry_after == expected


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("abcd1234efgh5678", "bad key abcd***5678 given"),
        ("密钥密钥密钥", "key 密钥密钥密钥 refused"),
    ],
)
def test_non_key_shaped_secret_is_removed(secret: str, message: str) -> None:
    out = redact(message, secret)
    assert out.startswith(message.split()[0]) and out.endswith(message.split()[-1])
    for fragment in fragments(secret):
        assert fragment not in out


@pytest.mark.parametrize("message", ["bad key abcd1234efgh5678 given", "prefix abcd1234 only", "suffix efgh5678 only"])
def test_eight_characters_of_a_secret_withhold_the_text(message: str) -> None:
    assert redact(message, "abcd1234efgh5678") == WITHHELD


def test_short_secret_is_removed_whole_only() -> None:
    assert redact("pin abcd and abc", "abcd") == f"pin {R} and abc"


def test_empty_secret_is_ignored() -> None:
    assert redact("nothing secret here", "", "") == "nothing secret here"


def test_several_secrets() -> None:
    out = redact("first s3cr3t-one then tok", "s3cr3t-one", "t0ken-two")
    assert out == WITHHELD
    assert redact("first pin1 then pin2", "pin1", "pin2") == f"first {R} then {R}"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("leaked sk-abcdef123456 here", f"leaked {R} here"),
        ("leaked sk-proj-abc_DEF-123 here", f"leaked {R} here"),
        ("masked sk-abc*****wxyz here", f"masked {R} here"),
        ("anthropic sk-ant-api03-AbCdEf here", f"anthropic {R} here"),
        ("too short sk-abc here", "too short sk-abc here"),
        ("Authorization: Bearer eyJhbGciOi.J9.abc-_=", f"Authorization: {R}"),
        ("authorization: bearer abc123", f"authorization: {R}"),
        ("BEARER    tok/en+=", R),
        ("opaque 0123456789abcdef0123456789abcdef end", f"opaque {R} end"),
        ("opaque 0123456789abcdef0123456789abcde end", "opaque 0123456789abcdef0123456789abcde end"),
        ("上游服务暂时不可用，请稍后再试", "上游服务暂时不可用，请稍后再试"),
        ("model qwen-plus is overloaded (429)", "model qwen-plus is overloaded (429)"),
    ],
)
def test_key_shaped_things_are_removed(message: str, expected: str) -> None:
    assert redact(message) == expected


@pytest.mark.parametrize("message", ["network-timeout talking to upstream", "a risk-adjusted answer", "task-runner-01 failed"])
def test_ordinary_hyphenated_words_survive(message: str) -> None:
    assert redact(message) == message


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("a\n\n b\t\tc  ", "a b c"),
        ("  leading and trailing  ", "leading and trailing"),
        ("line1\r\nline2", "line1 line2"),
        ("", ""),
    ],
)
def test_whitespace_is_collapsed(message: str, expected: str) -> None:
    assert redact(message) == expected


def test_length_is_capped() -> None:
    assert redact("x " * 150) == ("x " * 150).strip()  # 299 chars: untouched
    out = redact("错误 " * 500)
    assert len(out) == 300 and out.endswith("…")
    exact = "ab " * 99 + "abc"  # 300 chars: the cap, untouched
    assert len(exact) == 300 and redact(exact) == exact
    assert redact(exact + "d") == exact[:299] + "…"


def test_secret_cut_by_the_cap_is_not_half_leaked() -> None:
    message = "ab " * 97 + KEY  # the key straddles the cap
    assert redact(message, KEY) == WITHHELD


@settings(max_examples=200, deadline=None)
@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    secret=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=8, max_size=40),
)
def test_secret_never_survives(before: str, after: str, secret: str) -> None:
    out = redact(before + secret + after, secret)
    assert secret not in out
    assert len(out) <= 300
    assert not re.search(r"\s{2}", out) and out == out.strip()
