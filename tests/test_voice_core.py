"""A connection's dictation driver with a recogniser of the test's own (no sockets): the
bounded hand-over, a recogniser that falls behind, slots, and the drain."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway import voice as voice_module
from gateway.config import load
from gateway.errors import ErrorCode, ProtocolError
from gateway.metrics import Metrics
from gateway.voice import Dictating, Voice
from gateway.wire import VoiceStart, VoiceStop


class Stuck:
    """A recognition whose decoding waits until ``go`` is set."""

    def __init__(self, go: asyncio.Event) -> None:
        self.go, self.fed, self.abandoned = go, 0, False

    async def feed(self, pcm: bytes) -> str | None:
        await self.go.wait()
        self.fed += len(pcm)
        return None

    async def finish(self) -> str:
        return f"{self.fed} bytes"

    def abandon(self) -> None:
        self.abandoned = True


class Recogniser:
    name, partials, capacity = "test", False, 2

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.made: list[Stuck] = []

    async def open(self) -> None: ...

    def recognition(self, sample_rate: int, language: str) -> Stuck:
        self.made.append(Stuck(self.go))
        return self.made[-1]

    def state(self) -> str:
        return "ready"

    async def close(self) -> None: ...


def setup() -> tuple[Voice, Recogniser, list[dict[str, object]], Dictating]:
    recogniser = Recogniser()
    voice = Voice(load(None, {}), recogniser, Metrics())
    sent: list[dict[str, object]] = []
    return voice, recogniser, sent, Dictating(voice, lambda f: sent.append(orjson.loads(f)), "s1")


async def test_a_recogniser_far_behind_ends_the_dictation_instead_of_holding_the_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(voice_module, "STALL", 0.05)
    voice, recogniser, sent, dictating = setup()
    await dictating.start(VoiceStart("v1"))
    with pytest.raises(ProtocolError) as caught:
        for _ in range(voice_module.QUEUED_FRAMES * 3):  # one batch in decoding, one queued, then no room
            await dictating.audio(bytes(3200))
    assert (caught.value.code, caught.value.ref, caught.value.retry_after) == (ErrorCode.OVERLOADED, "v1", 2.0)
    assert voice.active == 0 and recogniser.made[0].abandoned and dictating.state.open is None
    assert await dictating.audio(bytes(3200)) is None  # the rest of its audio is dropped quietly
    assert [e["type"] for e in sent] == ["voice.started"]


async def test_the_slot_is_freed_even_when_the_task_never_ran() -> None:
    voice, recogniser, sent, dictating = setup()
    await dictating.start(VoiceStart("v1"))
    with pytest.raises(ProtocolError):
        await dictating.audio(b"\x00")  # at once: the task has not started yet
    assert voice.active == 0 and recogniser.made[0].abandoned
    await dictating.start(VoiceStart("v2"))
    await dictating.close()
    assert voice.active == 0 and not voice.dictating


async def test_the_process_limit_and_the_drain() -> None:
    voice, recogniser, _, first = setup()
    second = Dictating(voice, lambda f: None, "s2")
    third = Dictating(voice, lambda f: None, "s3")
    await first.start(VoiceStart("a"))
    await second.start(VoiceStart("b"))
    with pytest.raises(ProtocolError) as caught:
        await third.start(VoiceStart("c"))
    assert caught.value.code is ErrorCode.OVERLOADED and voice.active == 2
    await first.audio(bytes(320))
    recogniser.go.set()
    await voice.end_all(timeout=5)
    assert voice.active == 0 and not voice.dictating
    with pytest.raises(ProtocolError) as caught:
        await third.start(VoiceStart("d"))
    assert "restarting" in caught.value.message


async def test_stop_gives_one_final_with_what_was_fed() -> None:
    voice, recogniser, sent, dictating = setup()
    recogniser.go.set()
    await dictating.start(VoiceStart("v1", 8000))
    for _ in range(3):
        await dictating.audio(bytes(1600))
    await dictating.stop(VoiceStop("v1"))
    await dictating.end_now()  # waits for the final
    assert sent[-1] == {"type": "voice.final", "id": "v1", "text": "4800 bytes", "seconds": 0.3}
    assert voice.active == 0
