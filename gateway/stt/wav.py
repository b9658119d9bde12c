"""PCM as a WAV file (pure): what a transcription endpoint is sent."""

from __future__ import annotations

import struct

__all__ = ["wav"]


def wav(pcm: bytes | bytearray, sample_rate: int) -> bytes:
    """``pcm`` (16-bit little-endian mono) with a RIFF/WAVE header."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(pcm), b"WAVE",
        b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16,
        b"data", len(pcm),
    )
    return header + pcm  # one copy, even of a bytearray
