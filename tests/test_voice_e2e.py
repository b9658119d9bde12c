"""Voice input end to end: a real gateway, the real Vosk recogniser with a real model and
real (synthetic) speech, and the ``openai`` recogniser against a transcription endpoint
of the test's own. Bounds and bad input lose nothing and leave the connection usable."""

from __future__ import annotations

import asyncio
import io
import os
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import TIMEOUT, Chat, StartGateway
from ports import free_port
from speech import SENTENCE, pcm_of, shared_syllables, speak, vosk_model
from websockets.exceptions import ConnectionClosed

DEMO_FAST = "[provider]\ndemo_delay_ms = 0\n"
FRAME = 3200  # 100 ms at 16 kHz, as the page sends
KEY = "sk-stt-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return pcm_of(speak(tmp_path_factory.mktemp("speech")))


def vosk_env(**extra: str) -> dict[str, str]:
    return {"GATEWAY_STT_PROVIDER": "vosk", "GATEWAY_STT_MODEL_PATH": vosk_model(), **extra}


async def dictate(chat: Chat, pcm: bytes, dictation_id: str = "v1", *, stop: bool = True) -> list[dict[str, Any]]:
    """Start a dictation, send ``pcm`` as the page does, stop it; every voice event to the final."""
    await chat.send(type="voice.start", id=dictation_id)
    started = await chat.expect("voice.started")
    assert started == {"type": "voice.started", "id": dictation_id, "sample_rate": 16000,
                       "max_seconds": started["max_seconds"]}
    for i in range(0, len(pcm), FRAME):
        await chat.ws.send(pcm[i:i + FRAME])
    if stop:
        await chat.send(type="voice.stop", id=dictation_id)
    return await until_final(chat)


async def until_final(chat: Chat) -> list[dict[str, Any]]:
    events = []
    while True:
        event = await chat.recv()
        events.append(event)
        if event["type"] in ("voice.final", "error"):
            return events


async def until_released(voice: Any) -> None:
    """The server notices a close in its own time: wait (bounded) until every slot is free."""
    async def released() -> None:
        while voice.active:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(released(), TIMEOUT)


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()


# The embedded recogniser, on real speech

async def test_vosk_turns_speech_into_text_with_partials_first(start_gateway: StartGateway, speech: bytes) -> None:
    gw = await start_gateway(vosk_env(), toml=DEMO_FAST)
    async with gw.chat() as chat:
        ready = await chat.hello()
        assert ready["voice"] == {"provider": "vosk", "sample_rate": 16000, "max_seconds": 60.0,
                                  "max_frame_bytes": 32768, "partials": True}
        events = await dictate(chat, speech)
        partials, final = events[:-1], events[-1]
        assert final["type"] == "voice.final", final
        assert final["seconds"] == round(len(speech) / 32000, 3) and "reason" not in final
        assert final["text"].strip() and shared_syllables(final["text"]) >= 4, (final["text"], SENTENCE)
        assert partials and all(e["type"] == "voice.partial" and e["id"] == "v1" and e["text"] for e in partials)
        assert len({e["text"] for e in partials}) == len(partials)  # sent only when it changed
        # The text is the client's to send: nothing reached the conversation.
        await chat.send(type="history", id="h")
        assert (await chat.expect("history"))["messages"] == []
    health = await get_json(gw.http_url + "/healthz")
    assert health == {"status": "ok", "llm": "ok", "store": "ok", "stt": "ready"}
    config = await get_json(gw.http_url + "/config.json")
    assert config["voice"]["provider"] == "vosk"


async def test_a_reply_streams_whole_while_its_connection_dictates(start_gateway: StartGateway, speech: bytes) -> None:
    gw = await start_gateway(vosk_env(), toml="[provider]\ndemo_delay_ms = 5\n")
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="message", id="m1", content="Tell me something")
        await chat.send(type="voice.start", id="v1")
        for i in range(0, len(speech), FRAME):
            await chat.ws.send(speech[i:i + FRAME])
        await chat.send(type="voice.stop", id="v1")
        text, seqs, final, done = "", [], None, None
        while final is None or done is None:
            event = await chat.recv()
            if event["type"] == "reply.delta":
                text += event["text"]
                seqs.append(event["seq"])
            elif event["type"] == "voice.final":
                final = event
            elif event["type"] == "reply.done":
                done = event
        assert seqs == list(range(1, len(seqs) + 1)) and done["finish_reason"] == "stop"
        assert shared_syllables(final["text"]) >= 4
        await chat.send(type="history", id="h")
        history = await chat.expect("history")
        assert [m["content"] for m in history["messages"]] == ["Tell me something", text]


async def test_vosk_at_another_sample_rate(start_gateway: StartGateway, tmp_path: Path) -> None:
    pcm = pcm_of(speak(tmp_path, rate=8000))
    gw = await start_gateway(vosk_env(), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="voice.start", id="v8", sample_rate=8000)
        assert (await chat.expect("voice.started"))["sample_rate"] == 8000
        for i in range(0, len(pcm), 1600):
            await chat.ws.send(pcm[i:i + 1600])
        await chat.send(type="voice.stop", id="v8")
        final = (await until_final(chat))[-1]
    assert final["type"] == "voice.final" and final["seconds"] == round(len(pcm) / 16000, 3)
    assert shared_syllables(final["text"]) >= 3, final["text"]


async def test_vosk_a_dictation_cut_mid_decoding_or_left_open_ends_cleanly(
    start_gateway: StartGateway, speech: bytes
) -> None:
    gw = await start_gateway(vosk_env(GATEWAY_STT_MAX_DICTATIONS="1", GATEWAY_STT_MAX_SECONDS="2"), toml=DEMO_FAST)
    hub = gw.gateway.hub
    assert hub is not None and hub.voice is not None
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="voice.start", id="cut")
        await chat.expect("voice.started")
        for i in range(0, len(speech), FRAME):  # faster than real time: decoding is under way at the close
            await chat.ws.send(speech[i:i + FRAME])
    await until_released(hub.voice)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="voice.start", id="open")
        await chat.expect("voice.started")
        await chat.ws.send(speech[:FRAME * 5])  # half a second, then nothing and no stop
        events = await until_final(chat)
        assert events[-1]["type"] == "voice.final" and events[-1]["reason"] == "max_seconds"
        assert events[-1]["seconds"] == 0.5
        assert (await dictate(chat, speech[:32000 * 2], "again"))[-1]["seconds"] == 2.0
    assert gw.gateway.metrics.dictations.labels("dropped")._value.get() == 1


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"GATEWAY_STT_MODEL_PATH": "/nonexistent/model"}, "is not a Vosk model directory"),
        ({}, "cannot load the Vosk model"),  # a directory that looks like a model, with nothing in it
    ],
)
async def test_a_missing_or_broken_model_stops_the_start_with_exit_2(
    spawn: Any, tmp_path: Path, env: dict[str, str], says: str
) -> None:
    broken = tmp_path / "broken-model"
    (broken / "am").mkdir(parents=True)
    (broken / "conf").mkdir()
    (broken / "am" / "final.mdl").write_bytes(b"not a model")
    vosk_model()  # skips without vosk
    proc = await spawn({"GATEWAY_STT_PROVIDER": "vosk", "GATEWAY_STT_MODEL_PATH": str(broken),
                        "GATEWAY_LOG_FORMAT": "json", **env}, wait_ready=False)
    assert await proc.finish() == 2
    failed = next(line for line in proc.lines if line.get("event") == "startup_failed")
    assert says in failed["error"]


# Voice off

async def test_voice_off_offers_nothing_and_refuses_clearly(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_FAST)
    async with gw.chat() as chat:
        ready = await chat.hello()
        assert "voice" not in ready
        await chat.send(type="voice.start", id="v1")
        error = await chat.expect("error")
        assert (error["code"], error["id"]) == ("bad_request", "v1") and "not enabled" in error["message"]
        await chat.ws.send(b"\x00\x01" * 100)
        error = await chat.expect("error")
        assert error["code"] == "bad_request" and "binary" in error["message"]
        await chat.send(type="voice.stop", id="v1")
        assert (await chat.expect("error"))["code"] == "bad_request"
        await chat.send(type="ping", id="alive")
        assert await chat.expect("pong") == {"type": "pong", "id": "alive"}
    assert "voice" not in await get_json(gw.http_url + "/config.json")
    assert (await get_json(gw.http_url + "/healthz"))["stt"] == "off"


# The openai recogniser, against a transcription endpoint of the test's own

class Transcriber:
    """``POST /v1/audio/transcriptions`` as OpenAI answers it; ``answers`` says what the next request gets."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.stall = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form: dict[str, Any] = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            form[part.name or ""] = (part.filename, part.headers.get("Content-Type"), await part.read())
        self.requests.append({"headers": dict(request.headers), "form": form})
        status, headers, body = self.answers.pop(0) if self.answers else (200, {}, b'{"text": "hello there"}')
        if status == 0:  # hang until the gateway gives up
            await self.stall.wait()
        if status == -1:  # reset the connection
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if status == -2:  # 200, the body in two chunks with a pause between them
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(body[:7])
            await asyncio.sleep(0.05)  # the network's pause: the gateway must read on
            await resp.write(body[7:])
            await resp.write_eof()
            return resp
        resp = web.Response(status=status, headers={"Content-Type": "application/json", **headers}, body=body)
        resp.enable_compression()  # gzip or deflate when the request accepts either, as APIs do
        return resp


@pytest.fixture
async def transcriber() -> AsyncIterator[Transcriber]:
    fake = Transcriber()
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/audio/transcriptions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield fake
    finally:
        fake.stall.set()
        await runner.cleanup()


def openai_stt(fake: Transcriber, **extra: str) -> dict[str, str]:
    return {"GATEWAY_STT_PROVIDER": "openai", "GATEWAY_STT_URL": fake.url, "GATEWAY_STT_API_KEY": KEY,
            "GATEWAY_STT_MODEL": "whisper-large-v3", **extra}


TONE = bytes(range(256)) * 50  # 12,800 bytes: any even-length bytes are PCM


async def test_openai_sends_one_wav_as_multipart_and_returns_its_text(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST)
    async with gw.chat() as chat:
        ready = await chat.hello()
        assert ready["voice"]["partials"] is False and ready["voice"]["provider"] == "openai"
        await chat.send(type="voice.start", id="v1", language="en")
        await chat.expect("voice.started")
        for i in range(0, len(TONE), FRAME):
            await chat.ws.send(TONE[i:i + FRAME])
        await chat.send(type="voice.stop", id="v1")
        final = await chat.expect("voice.final")  # no partials from this engine
    assert final == {"type": "voice.final", "id": "v1", "text": "hello there", "seconds": 0.4}
    [request] = transcriber.requests
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    form = request["form"]
    assert form["model"][2] == b"whisper-large-v3" and form["language"][2] == b"en"
    assert form["response_format"][2] == b"json"
    filename, content_type, audio = form["file"]
    assert (filename, content_type) == ("speech.wav", "audio/wav")
    with wave.open(io.BytesIO(audio)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.readframes(w.getnframes()) == TONE
    assert (await get_json(gw.http_url + "/healthz"))["stt"] == "ready"


@pytest.mark.parametrize(
    ("answer", "code", "says"),
    [
        ((401, {}, orjson.dumps({"error": {"message": f"Incorrect API key provided: {KEY}",
                                           "type": "invalid_request_error", "code": "invalid_api_key"}})),
         "upstream_error", "refused the gateway's credentials"),
        ((429, {"Retry-After": "7"}, b'{"error": {"message": "Rate limit reached"}}'), "rate_limited", "rate limiting"),
        ((500, {}, b"<html>oops</html>"), "upstream_error", "answered HTTP 500"),
        ((200, {}, b"not json"), "upstream_error", "has no text"),
        ((200, {}, b'{"txt": 1}'), "upstream_error", "has no text"),
        ((-1, {}, b""), "upstream_error", "transcription endpoint"),
    ],
)
async def test_openai_failures_are_clear_errors_without_the_key(
    start_gateway: StartGateway, transcriber: Transcriber, answer: tuple[int, dict[str, str], bytes], code: str,
    says: str,
) -> None:
    transcriber.answers.append(answer)
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        error = (await dictate(chat, TONE))[-1]
        assert (error["type"], error["code"], error["id"]) == ("error", code, "v1"), error
        assert says in error["message"] and KEY not in error["message"] and KEY[-12:] not in error["message"]
        if code == "rate_limited":
            assert error["retry_after"] == 7
        # The next dictation on the same connection works.
        assert (await dictate(chat, TONE, "v2"))[-1]["text"] == "hello there"


async def test_an_unreachable_or_stalled_endpoint_is_an_error_to_the_client(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    closed_port = free_port()  # nothing listens there
    gw = await start_gateway(
        openai_stt(transcriber, GATEWAY_STT_URL=f"http://127.0.0.1:{closed_port}/v1"), toml=DEMO_FAST
    )
    async with gw.chat() as chat:
        await chat.hello()
        error = (await dictate(chat, TONE))[-1]
        assert (error["code"], error["retryable"]) == ("upstream_unavailable", True)
    assert (await get_json(gw.http_url + "/healthz"))["stt"] == "failing"
    transcriber.answers.append((0, {}, b""))
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST + "[stt]\ntimeout = 1\n")
    async with gw.chat() as chat:
        await chat.hello()
        error = (await dictate(chat, TONE))[-1]
        assert error["code"] == "upstream_timeout"


# Bounds and bad input (the openai engine: quick to start, and it keeps every byte it was sent)

async def test_bad_audio_ends_the_dictation_with_a_clear_error_and_the_next_one_works(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST + "[stt]\nmax_frame_bytes = 4096\n")
    async with gw.chat() as chat:
        await chat.hello()
        for dictation_id, frame, code in (("odd", b"\x01\x02\x03", "bad_request"), ("big", bytes(4098), "too_large")):
            await chat.send(type="voice.start", id=dictation_id)
            await chat.expect("voice.started")
            await chat.ws.send(b"\x00\x00" * 10)
            await chat.ws.send(frame)
            error = await chat.expect("error")
            assert (error["code"], error["id"]) == (code, dictation_id), error
            await chat.ws.send(b"\x00\x00" * 10)  # the rest of its audio, and its stop, are dropped quietly
            await chat.send(type="voice.stop", id=dictation_id)
            await chat.send(type="ping", id=dictation_id)
            assert await chat.expect("pong") == {"type": "pong", "id": dictation_id}
        assert (await dictate(chat, TONE, "v3"))[-1]["text"] == "hello there"
    assert len(transcriber.requests) == 1
    assert gw.gateway.hub is not None and gw.gateway.hub.voice is not None and gw.gateway.hub.voice.active == 0


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "voice.start"},
        {"type": "voice.start", "id": 7},
        {"type": "voice.start", "id": "v", "sample_rate": 100},
        {"type": "voice.start", "id": "v", "sample_rate": 96000},
        {"type": "voice.start", "id": "v", "sample_rate": "16000"},
        {"type": "voice.start", "id": "v", "language": "../../etc"},
        {"type": "voice.stop"},
        {"type": "voice.stop", "id": "never-started"},
    ],
)
async def test_bad_voice_frames_get_bad_request(
    start_gateway: StartGateway, transcriber: Transcriber, frame: dict[str, Any]
) -> None:
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(**frame)
        error = await chat.expect("error")
        assert error["code"] == "bad_request", error
        assert (await dictate(chat, TONE, "after"))[-1]["text"] == "hello there"


async def test_binary_garbage_outside_and_inside_a_dictation(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    garbage = os.urandom(FRAME)
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.ws.send(garbage)
        error = await chat.expect("error")
        assert error["code"] == "bad_request" and "voice.start" in error["message"]
        final = (await dictate(chat, garbage))[-1]  # noise is audio too: a final, whatever it says
        assert final["type"] == "voice.final" and final["seconds"] == 0.1
    [request] = transcriber.requests
    with wave.open(io.BytesIO(request["form"]["file"][2])) as w:
        assert w.readframes(w.getnframes()) == garbage


async def test_one_dictation_per_connection_and_the_process_limit(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    gw = await start_gateway(openai_stt(transcriber, GATEWAY_STT_MAX_DICTATIONS="1"), toml=DEMO_FAST)
    async with gw.chat() as first, gw.chat() as second:
        await first.hello()
        await second.hello()
        await first.send(type="voice.start", id="a")
        await first.expect("voice.started")
        await first.send(type="voice.start", id="b")
        busy = await first.expect("error")
        assert (busy["code"], busy["id"], busy["retryable"]) == ("busy", "b", True)
        await second.send(type="voice.start", id="c")
        full = await second.expect("error")
        assert (full["code"], full["id"], full["retryable"], full["retry_after"]) == ("overloaded", "c", True, 2)
        for _ in range(30):  # audio that follows a refused start is dropped quietly, not one error per frame
            await second.ws.send(TONE[:FRAME])
        await second.send(type="voice.stop", id="c")
        await second.send(type="ping", id="quiet")
        assert await second.expect("pong") == {"type": "pong", "id": "quiet"}
        await first.ws.send(TONE)
        await first.send(type="voice.stop", id="a")
        assert (await first.expect("voice.final"))["seconds"] == 0.4
        assert (await dictate(second, TONE, "d"))[-1]["text"] == "hello there"  # the slot is free again
    assert [len(r["form"]["file"][2]) for r in transcriber.requests] == [44 + len(TONE)] * 2


async def test_a_dictation_that_never_stops_ends_at_its_limit_with_its_text(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    gw = await start_gateway(openai_stt(transcriber, GATEWAY_STT_MAX_SECONDS="1"), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        events = await dictate(chat, TONE * 3, stop=False)  # 1.2 s of audio
        assert events == [{"type": "voice.final", "id": "v1", "text": "hello there", "seconds": 1.0,
                           "reason": "max_seconds"}]
        await chat.ws.send(TONE[:FRAME])  # late audio and the late stop are dropped quietly
        await chat.send(type="voice.stop", id="v1")
        # One that sends nothing more and never stops ends too, on the clock.
        await chat.send(type="voice.start", id="idle")
        await chat.expect("voice.started")
        await chat.ws.send(TONE[:FRAME])
        final = await chat.expect("voice.final")
        assert (final["reason"], final["seconds"]) == ("max_seconds", 0.1)
    assert len(transcriber.requests[0]["form"]["file"][2]) == 44 + 32000


async def test_a_disconnect_mid_dictation_drops_it_and_frees_its_slot(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    gw = await start_gateway(openai_stt(transcriber, GATEWAY_STT_MAX_DICTATIONS="1"), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="voice.start", id="gone")
        await chat.expect("voice.started")
        await chat.ws.send(TONE)
    hub = gw.gateway.hub
    assert hub is not None and hub.voice is not None
    await until_released(hub.voice)
    async with gw.chat() as chat:
        await chat.hello()
        assert (await dictate(chat, TONE))[-1]["text"] == "hello there"
    assert len(transcriber.requests) == 1  # the dropped one was never sent
    dropped = gw.gateway.metrics.dictations.labels("dropped")._value.get()
    assert dropped == 1


async def test_plain_text_mode_is_unchanged(start_gateway: StartGateway, transcriber: Transcriber) -> None:
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST)
    async with gw.raw() as ws:
        await ws.send(TONE[:FRAME])
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Error: binary frames are not supported; send text"
        await ws.send('{"type": "voice.start", "id": "v1"}')  # only a user message here
        reply = ""
        while "voice.start" not in reply:
            reply += await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert transcriber.requests == []


def together(chat: Chat, *frames: str | bytes) -> None:
    """Send ``frames`` in one TCP write: the server reads them in one go."""
    protocol = chat.ws.protocol
    for frame in frames:
        if isinstance(frame, str):
            protocol.send_text(frame.encode())
        else:
            protocol.send_binary(frame)
    chat.ws.transport.write(b"".join(protocol.data_to_send()))


async def test_a_start_and_its_bad_audio_in_one_read_leave_no_slot_behind(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    gw = await start_gateway(openai_stt(transcriber, GATEWAY_STT_MAX_DICTATIONS="1"), toml=DEMO_FAST)
    hub = gw.gateway.hub
    assert hub is not None and hub.voice is not None
    async with gw.chat() as chat:
        await chat.hello()
        for n in range(5):  # each would leak the one slot if a task cancelled before it ran kept it
            together(chat, orjson.dumps({"type": "voice.start", "id": f"v{n}"}).decode(), b"\x01\x02\x03")
            await chat.expect("voice.started")
            assert (await chat.expect("error"))["id"] == f"v{n}"
        assert hub.voice.active == 0
        together(chat, orjson.dumps({"type": "voice.start", "id": "last"}).decode())
        await chat.expect("voice.started")
    await until_released(hub.voice)  # a close right after a start drops it, and frees its slot too
    assert transcriber.requests == []


async def test_a_malformed_voice_start_gets_one_error_not_one_per_frame(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="voice.start", id="v1", language="en_US")
        error = await chat.expect("error")
        assert (error["code"], error["id"]) == ("bad_request", "v1")
        for _ in range(20):
            await chat.ws.send(TONE[:FRAME])
        await chat.send(type="voice.stop", id="v1")
        await chat.send(type="ping", id="quiet")
        assert await chat.expect("pong") == {"type": "pong", "id": "quiet"}
        assert (await dictate(chat, TONE, "v2"))[-1]["text"] == "hello there"


async def test_a_chunked_transcription_answer_is_read_whole(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    transcriber.answers.append((-2, {}, '{"text": "안녕하세요, 반갑습니다"}'.encode()))
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        assert (await dictate(chat, TONE))[-1]["text"] == "안녕하세요, 반갑습니다"
    assert (await get_json(gw.http_url + "/healthz"))["stt"] == "ready"


async def test_the_answer_is_asked_for_uncompressed(start_gateway: StartGateway, transcriber: Transcriber) -> None:
    """The shared session does not inflate: the endpoint, which compresses for clients that
    accept it, is asked not to."""
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        assert (await dictate(chat, TONE))[-1]["text"] == "hello there"
    assert transcriber.requests[0]["headers"]["Accept-Encoding"] == "identity"


async def test_the_drain_ends_open_dictations_with_their_text(
    start_gateway: StartGateway, transcriber: Transcriber
) -> None:
    gw = await start_gateway(openai_stt(transcriber), toml=DEMO_FAST)
    async with gw.chat() as chat:
        await chat.hello()
        await chat.send(type="voice.start", id="v1")
        await chat.expect("voice.started")
        await chat.ws.send(TONE)
        await chat.send(type="ping", id="sent")
        await chat.expect("pong")  # the audio is in
        closing = asyncio.ensure_future(gw.gateway.close())
        final = await chat.expect("voice.final")
        assert final == {"type": "voice.final", "id": "v1", "text": "hello there", "seconds": 0.4,
                         "reason": "shutdown"}
        with pytest.raises(ConnectionClosed) as closed:
            await chat.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        await closing
    assert gw.gateway.metrics.dictations.labels("shutdown")._value.get() == 1
