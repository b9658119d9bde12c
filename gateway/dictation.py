"""One connection's dictations (pure): which is open, and what a binary frame means.

A connection dictates once at a time: binary frames carry no id, so the audio is the
open dictation's. Frames that follow a refused ``voice.start``, or a dictation that
reached its limit, are discarded until that dictation's ``voice.stop``, so a client
that streams before it is answered gets one error, not one per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ErrorCode, ProtocolError

__all__ = ["OUTSIDE", "Audio", "Dictation", "Dictations", "VoiceLimits"]

MIN_RATE, MAX_RATE = 8000, 48_000
OUTSIDE = "a binary frame outside a dictation; send voice.start first"
GRACE = 10.0  # seconds past max_seconds a dictation may stay open (a client that paused), at most


@dataclass(frozen=True, slots=True)
class VoiceLimits:
    sample_rate: int  # offered; a dictation may ask for another
    max_seconds: float
    max_frame_bytes: int


@dataclass(slots=True)
class Dictation:
    id: str
    sample_rate: int
    max_bytes: int  # of audio: max_seconds at its sample rate, whole samples
    started: float  # on the loop's clock
    taken: int = 0  # bytes of audio accepted

    @property
    def seconds(self) -> float:
        return round(self.taken / (2 * self.sample_rate), 3)

    @property
    def full(self) -> bool:
        return self.taken >= self.max_bytes

    def deadline(self, limits: VoiceLimits) -> float:
        """When it ends by itself even if audio stopped coming (loop clock)."""
        return self.started + limits.max_seconds + min(GRACE, limits.max_seconds)


@dataclass(frozen=True, slots=True)
class Audio:
    """What a binary frame gives the open dictation: ``pcm`` to recognise, and whether it is now full."""

    dictation: Dictation
    pcm: bytes
    full: bool


@dataclass(slots=True)
class Dictations:
    """A connection's dictation state."""

    limits: VoiceLimits
    open: Dictation | None = None
    _discarding: str | None = field(default=None)  # a dictation whose audio is dropped until its stop

    def start(self, dictation_id: str, sample_rate: int | None, now: float) -> Dictation:
        """Open a dictation (ProtocolError ``busy`` while one is open, ``bad_request`` for a bad rate)."""
        if self.open is not None:
            raise ProtocolError(ErrorCode.BUSY, "a dictation is already open on this connection; stop it first")
        rate = self.limits.sample_rate if sample_rate is None else sample_rate
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"field 'sample_rate' must be from {MIN_RATE} to {MAX_RATE}")
        max_bytes = int(self.limits.max_seconds * rate) * 2
        self.open = Dictation(dictation_id, rate, max_bytes, now)
        self._discarding = None
        return self.open

    def refused(self, dictation_id: str) -> None:
        """``voice.start`` of ``dictation_id`` was refused: drop its audio until its stop."""
        if self.open is None:
            self._discarding = dictation_id

    def audio(self, frame: bytes) -> Audio | None:
        """A binary frame: audio for the open dictation, None to discard, or ProtocolError."""
        d = self.open
        if d is None:
            if self._discarding is not None:
                return None
            raise ProtocolError(ErrorCode.BAD_REQUEST, OUTSIDE)
        if len(frame) > self.limits.max_frame_bytes:
            raise self._ended(ProtocolError(
                ErrorCode.TOO_LARGE, f"an audio frame is larger than {self.limits.max_frame_bytes} bytes"
            ))
        if len(frame) % 2:
            raise self._ended(ProtocolError(
                ErrorCode.BAD_REQUEST, "an audio frame must hold whole 16-bit samples (an even number of bytes)"
            ))
        pcm = frame[: d.max_bytes - d.taken]
        d.taken += len(pcm)
        return Audio(d, bytes(pcm), d.full)

    def _ended(self, exc: ProtocolError) -> ProtocolError:
        """The open dictation ends with ``exc`` (its id as the error's ref); the rest of its audio is dropped."""
        assert self.open is not None
        exc.ref = self.open.id
        self.finished()
        return exc

    def finished(self) -> Dictation | None:
        """The open dictation is over (a stop, its limit, an error): its later audio and stop are dropped."""
        d, self.open = self.open, None
        if d is not None:
            self._discarding = d.id
        return d

    def stop(self, dictation_id: str) -> Dictation | None:
        """``voice.stop``: the open dictation if it is ``dictation_id``; None for one already over
        (ProtocolError for one never started)."""
        if self.open is not None and self.open.id == dictation_id:
            return self.finished()
        if self._discarding == dictation_id:
            self._discarding = None
            return None
        raise ProtocolError(ErrorCode.BAD_REQUEST, "no such dictation", ref=dictation_id)
