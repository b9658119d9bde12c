"""The recogniser seam: what every speech-to-text engine provides."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Recogniser", "Recognition"]


class Recognition(Protocol):
    """One dictation's recognition: audio in, text out. Calls come one at a time."""

    async def feed(self, pcm: bytes) -> str | None:
        """Take 16-bit little-endian mono PCM; the whole text recognised so far if it
        changed (engines with partial results), else None."""
        ...

    async def finish(self) -> str:
        """The final text of everything fed (raises UpstreamError for a remote engine)."""
        ...

    def abandon(self) -> None:
        """The dictation was dropped (a disconnect, bad audio): free what it holds."""
        ...


class Recogniser(Protocol):
    """An engine, opened once per process and shared by every dictation."""

    name: str
    partials: bool  # whether feed() returns text while the person speaks
    capacity: int  # dictations at once it keeps up with ([stt] max_dictations = 0)

    async def open(self) -> None:
        """Load what the engine needs; raise StartupError if it cannot work."""
        ...

    def recognition(self, sample_rate: int, language: str) -> Recognition:
        """A new dictation's recognition (``language``: a hint, "" for none)."""
        ...

    def state(self) -> str:
        """Its health in a word, for ``/healthz``: ready, failing..."""
        ...

    async def close(self) -> None: ...
