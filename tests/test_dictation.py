"""A connection's dictation state, without sockets: what a binary frame means, and the bounds."""

from __future__ import annotations

import io
import wave

import pytest

from gateway.dictation import Dictations, VoiceLimits
from gateway.errors import ErrorCode, ProtocolError
from gateway.stt.wav import wav

LIMITS = VoiceLimits(sample_rate=16000, max_seconds=1.0, max_frame_bytes=4096)


def test_audio_goes_to_the_open_dictation_and_is_cut_at_its_limit() -> None:
    state = Dictations(LIMITS)
    d = state.start("v1", None, now=100.0)
    assert (d.sample_rate, d.max_bytes, d.deadline(LIMITS)) == (16000, 32000, 102.0)
    for _ in range(7):
        audio = state.audio(bytes(4000))
        assert audio is not None and not audio.full and len(audio.pcm) == 4000
    audio = state.audio(bytes(4096))
    assert audio is not None and audio.full and len(audio.pcm) == 4000 and d.seconds == 1.0


def test_a_start_at_another_rate_is_bounded_by_its_own_bytes() -> None:
    d = Dictations(LIMITS).start("v1", 8000, now=0.0)
    assert d.max_bytes == 16000


@pytest.mark.parametrize("rate", [7999, 48001, 0, -16000])
def test_sample_rates_out_of_range_are_refused(rate: int) -> None:
    state = Dictations(LIMITS)
    with pytest.raises(ProtocolError) as caught:
        state.start("v1", rate, now=0.0)
    assert caught.value.code is ErrorCode.BAD_REQUEST and state.open is None


def test_one_dictation_at_a_time() -> None:
    state = Dictations(LIMITS)
    state.start("v1", None, now=0.0)
    with pytest.raises(ProtocolError) as caught:
        state.start("v2", None, now=0.0)
    assert caught.value.code is ErrorCode.BUSY and state.open is not None and state.open.id == "v1"


def test_a_binary_frame_outside_a_dictation_is_bad_request() -> None:
    with pytest.raises(ProtocolError) as caught:
        Dictations(LIMITS).audio(b"\x00\x00")
    assert caught.value.code is ErrorCode.BAD_REQUEST and caught.value.ref is None


@pytest.mark.parametrize(("frame", "code"), [(b"\x00" * 3, ErrorCode.BAD_REQUEST), (bytes(4098), ErrorCode.TOO_LARGE)])
def test_bad_audio_ends_the_dictation_and_its_rest_is_dropped(frame: bytes, code: ErrorCode) -> None:
    state = Dictations(LIMITS)
    state.start("v1", None, now=0.0)
    with pytest.raises(ProtocolError) as caught:
        state.audio(frame)
    assert (caught.value.code, caught.value.ref, state.open) == (code, "v1", None)
    assert state.audio(b"\x00\x00") is None  # dropped quietly
    assert state.stop("v1") is None  # its stop too
    with pytest.raises(ProtocolError):  # and after that stop, audio is outside any dictation again
        state.audio(b"\x00\x00")


def test_audio_after_a_refused_start_is_dropped_until_its_stop() -> None:
    state = Dictations(LIMITS)
    state.refused("v9")
    assert state.audio(b"\x00\x00") is None
    assert state.stop("v9") is None
    with pytest.raises(ProtocolError):
        state.stop("v9")


def test_stop_returns_the_dictation_once() -> None:
    state = Dictations(LIMITS)
    d = state.start("v1", None, now=0.0)
    state.audio(b"\x01\x00" * 10)
    assert state.stop("v1") is d and d.seconds == round(20 / 32000, 3)
    assert state.audio(b"\x00\x00") is None  # audio in flight after the stop
    with pytest.raises(ProtocolError) as caught:
        state.stop("other")
    assert caught.value.ref == "other"


def test_wav_wraps_pcm_in_a_header_any_reader_accepts() -> None:
    pcm = bytes(range(200))
    with wave.open(io.BytesIO(wav(pcm, 22050))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 22050, 100)
        assert w.readframes(100) == pcm


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1/audio/transcriptions"),
        ("https://api.groq.com/openai/v1/", "https://api.groq.com/openai/v1/audio/transcriptions"),
        ("http://127.0.0.1:8000/v1/audio/transcriptions", "http://127.0.0.1:8000/v1/audio/transcriptions"),
        ("http://127.0.0.1:9000/inference", "http://127.0.0.1:9000/inference"),
    ],
)
def test_the_transcription_endpoint_of_a_base_url_or_its_own(url: str, endpoint: str) -> None:
    from gateway.stt.openai import transcriptions_url

    assert transcriptions_url(url) == endpoint


@pytest.mark.parametrize(
    ("pieces", "text"),
    [
        (("今天 天气 很 好",), "今天天气很好"),
        (("今天 天气", "不错"), "今天天气不错"),
        (("안녕하세요 오늘", "날씨가"), "안녕하세요 오늘 날씨가"),  # Korean keeps its spaces
        (("hello world", "", "again"), "hello world again"),
        (("我 用 Python 写 代码",), "我用 Python 写代码"),
    ],
)
def test_vosk_pieces_read_as_the_language_writes(pieces: tuple[str, ...], text: str) -> None:
    from gateway.stt.vosk import _joined

    assert _joined(*pieces) == text
