"""Voice input on the chat page, in Chromium with a fake microphone.

Against a gateway that transcribes (``GATEWAY_STT_PROVIDER=vosk``, Vosk's Korean model):
the microphone is Chromium's fake capture device playing Korean speech made here
(espeak-ng, then sox to 16 kHz mono), and what is recognised lands in the message box,
unsent. What speech cannot make a gateway do (refuse, reach the time limit, drop the
socket) is played by a scripted relay between the page and a gateway without voice input:
the page's side of the contract, frame by frame. A refused permission is a
``getUserMedia`` that rejects.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, StartGateway
from page_helpers import (  # noqa: F401  (browser is a fixture)
    Watched,
    browser,
    chromium,
    doc_shot,
    fake_mic_args,
    missing_browser_reason,
    new_page,
    open_page,
    shot,
)
from speech import SENTENCE, shared_syllables, speak, vosk_model

_reason = missing_browser_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

from playwright.async_api import Browser, Page, WebSocketRoute, expect  # noqa: E402

expect.set_options(timeout=int(TIMEOUT * 1000))

DEMO_TOML = "[provider]\ndemo_delay_ms = 2\n"
DESKTOP = {"viewport": {"width": 1100, "height": 760}}
PHONE = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}
HANGUL = re.compile(r"[\uac00-\ud7a3]")
HEARD_MS = TIMEOUT * 6 * 1000  # the model loaded, and enough of the sentence said and recognised
OFFER = {"sample_rate": 16000, "max_seconds": 60, "max_frame_bytes": 32768, "partials": True, "provider": "vosk"}
BEFORE = "Note:"  # typed before a dictation: it stays in front

# The box holds BEFORE, a space, then at least n Hangul syllables (a partial, while it listens).
_DICTATED = r"""([before, n]) => {
  const v = document.getElementById("composer").value;
  return v.startsWith(before + " ") && (v.slice(before.length).match(/[\uac00-\ud7a3]/g) || []).length >= n;
}"""

_METER_MOVED = "() => parseFloat(/scaleX\\(([\\d.]+)\\)/.exec(document.getElementById('voice-level').style.transform)?.[1] || 0) > 0"

# getUserMedia refused with the DOMException named by window.__micError (a permission
# refused unless a test says otherwise).
_REFUSE_MIC = """
navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException("refused by the test", window.__micError || "NotAllowedError"));
"""

# How far the composer reaches at 360 px, and whether anything scrolls sideways.
_COMPOSER = """() => {
  const r = (id) => document.getElementById(id).getBoundingClientRect();
  const [box, voice, send, input] = [r("composer-form"), r("voice"), r("send"), r("composer")];
  return { page: document.documentElement.scrollWidth, right: Math.max(box.right, voice.right, send.right),
           apart: voice.right <= send.left, input: input.width, voiceLeft: voice.left, inputRight: input.right };
}"""


# The microphone watched: tracks opened and still live (track.stop() not called), audio
# contexts made and closed; and, while window.__micGate is a promise, getUserMedia waits for
# it (the browser still asking: the microphone "opening").
_WATCH_MIC = """
(() => {
  const mic = (window.__mic = { opened: 0, live: 0, ctxs: 0, closed: 0 });
  window.__micGate = null;
  const md = navigator.mediaDevices;
  const ask = md.getUserMedia.bind(md);
  md.getUserMedia = async (constraints) => {
    if (window.__micGate) await window.__micGate;
    const stream = await ask(constraints);
    for (const track of stream.getTracks()) {
      mic.opened++;
      mic.live++;
      const stop = track.stop.bind(track);
      let on = true;
      track.stop = () => {
        if (on) mic.live--;
        on = false;
        stop();
      };
    }
    return stream;
  };
  const Base = window.AudioContext;
  window.AudioContext = class extends Base {
    constructor(...args) {
      super(...args);
      mic.ctxs++;
    }
    close() {
      if (!this.__closed) mic.closed++;
      this.__closed = true;
      return super.close();
    }
  };
})();
"""
_HOLD_MIC = "() => { window.__micGate = new Promise((r) => { window.__openMic = r; }); }"
_OPEN_MIC = "() => { window.__openMic(); window.__micGate = null; }"

# The microphone let go since ``before`` (window.__mic then): no live track, every context
# closed, and a new one was made (and, with ``tracks``, a track opened).
_RELEASED = """([before, tracks]) => {
  const m = window.__mic;
  return m.live === 0 && m.closed === m.ctxs && m.ctxs > before.ctxs && (!tracks || m.opened > before.opened);
}"""

# The box's caret (a collapsed selection; -1 otherwise).
_CARET = "() => { const b = document.getElementById('composer'); return b.selectionStart === b.selectionEnd ? b.selectionStart : -1; }"


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENTENCE, spoken: a 16 kHz mono 16-bit WAV file."""
    return speak(tmp_path_factory.mktemp("speech"))


@pytest.fixture
def stt_env(speech: Path) -> dict[str, str]:
    """A gateway's environment for voice input with Vosk's Korean model."""
    return {"GATEWAY_STT_PROVIDER": "vosk", "GATEWAY_STT_MODEL_PATH": vosk_model()}


class _Sent:
    """What a page sent on its sockets, in order: JSON frames, and binary frames' sizes."""

    def __init__(self, page: Page) -> None:
        self.frames: list[dict[str, Any] | int] = []
        page.on("websocket", lambda ws: ws.on("framesent", self._sent))

    def _sent(self, payload: str | bytes) -> None:
        self.frames.append(len(payload) if isinstance(payload, bytes) else json.loads(payload))

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames if isinstance(f, dict)]

    def audio(self) -> list[int]:
        return [f for f in self.frames if isinstance(f, int)]


class _Scripted:
    """A relay between the page and a gateway without voice input that plays the gateway's
    side of voice input: ``ready`` frames gain ``voice`` (``offer``; None: they pass as
    they are), the page's ``voice.*`` frames and audio stop here (``got``, in order: frames,
    and binary frames' sizes), and the test answers with :meth:`say`."""

    def __init__(self, offer: dict[str, Any] | None) -> None:
        self.offer = offer
        self.got: list[dict[str, Any] | int] = []
        self.sockets: list[WebSocketRoute] = []
        self._arrived = asyncio.Event()
        self._taken: dict[str, int] = {}  # frames of each type :meth:`next` returned

    async def attach(self, page: Page) -> None:
        def route(ws: WebSocketRoute) -> None:
            server = ws.connect_to_server()
            self.sockets.append(ws)

            def up(message: str | bytes) -> None:
                if isinstance(message, bytes):
                    self.got.append(len(message))
                elif str(json.loads(message).get("type", "")).startswith("voice."):
                    self.got.append(json.loads(message))
                else:
                    server.send(message)
                    return
                self._arrived.set()

            def down(message: str | bytes) -> None:
                if isinstance(message, str) and self.offer is not None:
                    frame = json.loads(message)
                    if frame.get("type") == "ready":
                        message = json.dumps({**frame, "voice": self.offer})
                ws.send(message)

            ws.on_message(up)
            server.on_message(down)

        await page.route_web_socket(re.compile(r"/chat$"), route)

    def say(self, **frame: Any) -> None:
        self.sockets[-1].send(json.dumps(frame))

    def audio(self) -> list[int]:
        return [f for f in self.got if isinstance(f, int)]

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait (at most TIMEOUT) until ``done()``, checked as each frame arrives."""
        async with asyncio.timeout(TIMEOUT):
            while not done():
                self._arrived.clear()
                await self._arrived.wait()

    async def next(self, type_: str) -> dict[str, Any]:
        """The page's next frame of ``type_`` not taken yet (it may have come already)."""
        taken = self._taken.get(type_, 0)
        of_type = lambda: [f for f in self.got if isinstance(f, dict) and f["type"] == type_]  # noqa: E731
        await self.until(lambda: len(of_type()) > taken)
        self._taken[type_] = taken + 1
        return of_type()[taken]


async def _relayed(browser: Browser, relay: _Scripted, url: str, *init_scripts: str, **context: Any) -> Watched:
    """A page whose socket goes through ``relay`` (attached before it loads), ready to send."""
    w = await new_page(browser, **context)
    for script in init_scripts:
        await w.context.add_init_script(script)
    await relay.attach(w.page)
    await w.page.goto(url + "/")
    await expect(w.page.get_by_test_id("send")).to_be_enabled()
    return w


async def test_dictation_puts_what_was_said_after_the_typed_text_and_sends_nothing(
    speech: Path, stt_env: dict[str, str], start_gateway: StartGateway
) -> None:
    gw = await start_gateway(env=stt_env, toml=DEMO_TOML)
    plain = await start_gateway(toml=DEMO_TOML)  # no voice input
    async with chromium(*fake_mic_args(speech)) as b:
        w = await new_page(b, **DESKTOP)
        page = w.page
        sent = _Sent(page)
        await page.goto(gw.http_url + "/")
        await expect(page.get_by_test_id("send")).to_be_enabled()
        voice = page.get_by_role("button", name="Voice input")
        box = page.get_by_test_id("composer")
        await expect(voice).to_be_visible()
        await expect(voice).to_have_attribute("aria-pressed", "false")
        await box.fill(BEFORE)

        await voice.click()
        await expect(voice).to_have_attribute("aria-pressed", "true")
        await expect(voice).to_have_attribute("data-state", "recording")
        await expect(page.get_by_test_id("voice-time")).to_have_text(re.compile(r"^\d:\d\d / 1:00$"))
        await expect(page.get_by_test_id("voice-meter")).to_be_visible()
        await expect(box).to_be_focused()  # the click left the caret in the box
        # Partials, while it listens: the words so far, after the typed text.
        await page.wait_for_function(_DICTATED, arg=[BEFORE, 26], timeout=HEARD_MS)  # about all of the sentence
        await page.wait_for_function(_METER_MOVED)  # the level meter follows the voice
        await expect(voice).to_have_attribute("aria-pressed", "true")
        await doc_shot(page, "voice-recording")

        await voice.click()  # Stop: the final text replaces the partial
        await expect(voice).to_have_attribute("data-state", "idle", timeout=HEARD_MS)
        await expect(voice).to_have_attribute("aria-pressed", "false")
        value = await box.input_value()
        assert value.startswith(BEFORE + " "), value
        heard = value[len(BEFORE) + 1:]
        assert HANGUL.search(heard), heard
        print(f"\nheard: {heard!r}, {shared_syllables(heard)} syllables of the sentence")
        assert shared_syllables(heard) >= 3, f"{heard!r} has too little of {SENTENCE!r}"
        await expect(box).to_be_focused()
        await expect(page.locator('[data-role="user"]')).to_have_count(0)  # nothing was sent as a message
        assert "message" not in sent.types()
        await shot(page, "voice-done")

        types = sent.types()
        assert types.count("voice.start") == 1 and types.count("voice.stop") == 1, types
        start = next(i for i, f in enumerate(sent.frames) if isinstance(f, dict) and f["type"] == "voice.start")
        stop = next(i for i, f in enumerate(sent.frames) if isinstance(f, dict) and f["type"] == "voice.stop")
        assert sent.frames[start]["sample_rate"] == 16000  # type: ignore[index]
        audio = [i for i, f in enumerate(sent.frames) if isinstance(f, int)]
        assert audio and start < audio[0] and audio[-1] < stop, "the audio between voice.start and voice.stop"
        assert all(0 < n <= OFFER["max_frame_bytes"] and n % 2 == 0 for n in sent.audio()), sorted(set(sent.audio()))
        await w.assert_clean()

        # Without voice input on the gateway, no microphone button.
        other = await open_page(b, plain.http_url + "/", **DESKTOP)
        await expect(other.page.get_by_test_id("voice")).to_be_hidden()
        await expect(other.page.get_by_role("button", name="Voice input")).to_have_count(0)
        await other.assert_clean()


async def test_the_page_s_side_of_the_contract(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    relay = _Scripted({**OFFER, "max_frame_bytes": 1000, "max_seconds": 30})  # frames of 500 samples at most
    async with chromium(*fake_mic_args()) as b:  # Chromium's beep
        w = await _relayed(b, relay, gw.http_url, **DESKTOP)
        page = w.page
        send = page.get_by_test_id("send")
        voice = page.get_by_role("button", name="Voice input")
        box = page.get_by_test_id("composer")
        note = page.get_by_test_id("voice-note")
        await box.fill(BEFORE)

        # voice.start, then the audio: whole samples, never over max_frame_bytes.
        await voice.click()
        start = await relay.next("voice.start")
        assert start["sample_rate"] == 16000 and start["id"], start
        assert relay.got[0] == start, "no audio before voice.start"
        relay.say(type="voice.started", id=start["id"], sample_rate=16000, max_seconds=30)
        await relay.until(lambda: len(relay.audio()) >= 3)
        assert all(0 < n <= 1000 and n % 2 == 0 for n in relay.audio()), relay.audio()
        await expect(voice).to_have_attribute("aria-pressed", "true")
        await expect(page.get_by_test_id("voice-time")).to_have_text(re.compile(r"^0:\d\d / 0:30$"))
        await expect(send).to_be_disabled()  # the text is still coming
        await page.wait_for_function(_METER_MOVED)  # the beep moves the level meter

        # Partials replace each other after the typed text; the final replaces them.
        relay.say(type="voice.partial", id=start["id"], text="hello")
        await expect(box).to_have_value(f"{BEFORE} hello")
        relay.say(type="voice.partial", id=start["id"], text="hello wor")
        await expect(box).to_have_value(f"{BEFORE} hello wor")
        await shot(page, "voice-scripted-recording")
        await box.press("Escape")  # stops, as the button does
        stop = await relay.next("voice.stop")
        assert stop["id"] == start["id"]
        await expect(voice).to_have_attribute("aria-pressed", "false")
        relay.say(type="voice.final", id=start["id"], text="Hello, world.", seconds=1.5)
        await expect(box).to_have_value(f"{BEFORE} Hello, world.")
        await expect(voice).to_have_attribute("data-state", "idle")
        await expect(box).to_be_focused()
        await expect(send).to_be_enabled()
        assert relay.got.index(stop) == len(relay.got) - 1, "no audio after voice.stop"
        await expect(page.locator('[data-role="user"]')).to_have_count(0)
        typed = f"{BEFORE} Hello, world."

        # The time limit ends it by itself: an empty final takes the partial away, and says why.
        await voice.click()
        start = await relay.next("voice.start")
        relay.say(type="voice.partial", id=start["id"], text="um")
        await expect(box).to_have_value(f"{typed} um")
        relay.say(type="voice.final", id=start["id"], text="", seconds=30.0, reason="max_seconds")
        await expect(box).to_have_value(typed)
        await expect(voice).to_have_attribute("aria-pressed", "false")
        await expect(note).to_have_text("The time limit for one dictation was reached, so it stopped.")
        await shot(page, "voice-scripted-limit")

        # Nothing recognised.
        await voice.click()
        start = await relay.next("voice.start")
        await expect(note).to_be_hidden()
        await voice.click()
        await relay.next("voice.stop")
        relay.say(type="voice.final", id=start["id"], text="", seconds=0.4)
        await expect(note).to_have_text("Nothing was recognised.")
        await expect(box).to_have_value(typed)

        # The gateway refuses (its dictations all in use): the page's own words, counted down.
        await voice.click()
        start = await relay.next("voice.start")
        relay.say(type="error", id=start["id"], code="overloaded", message="all dictations in use", retry_after=30)
        banner = page.get_by_test_id("banner")
        await expect(banner).to_contain_text("Too many people are dictating on the gateway right now. Try again in")
        await expect(voice).to_have_attribute("data-state", "idle")

        # The socket drops mid-dictation: it stops, and the words so far stay.
        await voice.click()
        start = await relay.next("voice.start")
        await expect(banner).to_be_hidden()
        relay.say(type="voice.partial", id=start["id"], text="kept words")
        await expect(box).to_have_value(f"{typed} kept words")
        await relay.sockets[-1].close(code=1001)
        await expect(note).to_have_text("The connection dropped, so the dictation stopped. The text so far stays in the box.")
        await expect(voice).to_have_attribute("aria-pressed", "false")
        await expect(box).to_have_value(f"{typed} kept words")
        await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")  # reconnected
        await expect(voice).to_be_enabled()

        # A ready without voice takes the button away.
        relay.offer = None
        await page.get_by_test_id("new-chat").click()
        await expect(page.get_by_test_id("voice")).to_be_hidden()
        await expect(page.locator('[data-role="user"]')).to_have_count(0)
        await w.assert_clean()


async def test_typing_during_a_dictation_keeps_its_place_and_the_caret(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    relay = _Scripted(OFFER)
    async with chromium(*fake_mic_args()) as b:
        w = await _relayed(b, relay, gw.http_url, **DESKTOP)
        page = w.page
        voice = page.get_by_role("button", name="Voice input")
        box = page.get_by_test_id("composer")
        await box.fill(BEFORE)

        await voice.click()
        start = await relay.next("voice.start")
        relay.say(type="voice.started", id=start["id"], sample_rate=16000, max_seconds=60)

        def say(text: str) -> None:
            relay.say(type="voice.partial", id=start["id"], text=text)

        say("hello wor")
        await expect(box).to_have_value("Note: hello wor")
        assert await page.evaluate(_CARET) == len("Note: hello wor")  # the caret follows the dictated text

        # Typed after the dictated text: a tail it keeps (it was "Note: hello wor, hello world").
        await page.keyboard.type(",")
        say("hello world")
        await expect(box).to_have_value("Note: hello world,")
        assert await page.evaluate(_CARET) == len("Note: hello world,"), "the caret stays after the comma"

        # Typed before it: it moves along, and the caret stays where the person typed.
        await page.evaluate("document.getElementById('composer').setSelectionRange(0, 0)")
        await page.keyboard.type("A ")
        say("hello world again")
        await expect(box).to_have_value("A Note: hello world again,")
        assert await page.evaluate(_CARET) == 2, "the caret stays where the person typed"

        # Typed inside it: that text is the person's now; only what the recogniser adds
        # after what it had written goes in, at the end of the dictated text.
        inside = len("A Note: hello")
        await page.evaluate(f"document.getElementById('composer').setSelectionRange({inside}, {inside})")
        await page.keyboard.type(";")
        await expect(box).to_have_value("A Note: hello; world again,")
        say("hello world again and")
        await expect(box).to_have_value("A Note: hello; world again and,")
        say("hello word again and")  # a revision of the words the person may have corrected: left out
        await page.wait_for_timeout(300)
        await expect(box).to_have_value("A Note: hello; world again and,")
        assert await page.evaluate(_CARET) == inside + 1, "the caret stays after the typed ';'"
        await box.press("Escape")
        await relay.next("voice.stop")
        relay.say(type="voice.final", id=start["id"], text="hello world again and more", seconds=3.0)
        await expect(voice).to_have_attribute("data-state", "idle")
        await expect(box).to_have_value("A Note: hello; world again and more,")
        assert await page.evaluate(_CARET) == inside + 1
        await expect(box).to_be_focused()

        # A final with the caret at the end of the dictated text: it moves with the text.
        await box.fill(BEFORE)
        await voice.click()
        start = await relay.next("voice.start")
        relay.say(type="voice.partial", id=start["id"], text="one")
        await expect(box).to_have_value("Note: one")
        await box.press("Escape")
        await relay.next("voice.stop")
        relay.say(type="voice.final", id=start["id"], text="one two", seconds=1.0)
        await expect(box).to_have_value("Note: one two")
        assert await page.evaluate(_CARET) == len("Note: one two")
        await w.assert_clean()


async def test_the_microphone_is_let_go_however_a_dictation_ends(start_gateway: StartGateway) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    relay = _Scripted(OFFER)
    async with chromium(*fake_mic_args()) as b:  # Chromium's beep
        w = await _relayed(b, relay, gw.http_url, _WATCH_MIC, **DESKTOP)
        page = w.page
        send = page.get_by_test_id("send")
        voice = page.get_by_role("button", name="Voice input")
        box = page.get_by_test_id("composer")
        note = page.get_by_test_id("voice-note")
        status = page.get_by_test_id("status")

        async def mic() -> dict[str, int]:
            counts: dict[str, int] = await page.evaluate("({...window.__mic})")
            return counts

        async def recording() -> dict[str, Any]:
            """A dictation, started and sending audio: its voice.start."""
            audio = len(relay.audio())
            await voice.click()
            start = await relay.next("voice.start")
            relay.say(type="voice.started", id=start["id"], sample_rate=16000, max_seconds=60)
            await relay.until(lambda: len(relay.audio()) > audio)
            await expect(voice).to_have_attribute("data-state", "recording")
            return start

        async def quiet(start: dict[str, Any]) -> None:
            """Nothing more from the page about ``start``'s dictation: no audio, no voice.stop."""
            n = len(relay.got)
            await page.wait_for_timeout(1000)
            assert relay.got[n:] == [], relay.got[n:]
            assert {"type": "voice.stop", "id": start["id"]} not in relay.got

        # Stopped: the microphone goes once the last audio is out.
        before = await mic()
        start = await recording()
        await voice.click()
        await relay.next("voice.stop")
        relay.say(type="voice.final", id=start["id"], text="done", seconds=1.0)
        await expect(voice).to_have_attribute("data-state", "idle")
        await page.wait_for_function(_RELEASED, arg=[before, True])

        # The time limit: the final ends it, the microphone goes; no more audio, no voice.stop.
        before = await mic()
        start = await recording()
        relay.say(type="voice.final", id=start["id"], text="", seconds=60.0, reason="max_seconds")
        await expect(voice).to_have_attribute("data-state", "idle")
        await page.wait_for_function(_RELEASED, arg=[before, True])
        await quiet(start)

        # An error ends it.
        before = await mic()
        start = await recording()
        relay.say(type="error", id=start["id"], code="upstream_error", message="the endpoint failed")
        await expect(voice).to_have_attribute("data-state", "idle")
        await page.wait_for_function(_RELEASED, arg=[before, True])
        await quiet(start)
        await page.locator("#banner-close").click()

        # Stop, Escape, or a double click while the browser still opens the microphone: no
        # dictation, no audio, and the microphone let go once the browser hands it over.
        for how in ("click", "escape", "dblclick"):
            before, sent = await mic(), len(relay.got)
            await page.evaluate(_HOLD_MIC)
            if how == "dblclick":
                await voice.dblclick()
            else:
                await voice.click()
                await expect(voice).to_have_attribute("data-state", "opening")
                await (voice.click() if how == "click" else box.press("Escape"))
            await expect(voice).to_have_attribute("data-state", "idle")
            await expect(voice).to_have_attribute("aria-pressed", "false")
            await page.evaluate(_OPEN_MIC)
            await page.wait_for_function(_RELEASED, arg=[before, True])
            await page.wait_for_timeout(500)
            assert relay.got[sent:] == [], (how, relay.got[sent:])
            await expect(voice).to_have_attribute("data-state", "idle")
            await expect(send).to_be_enabled()

        # The socket drops before anything was recognised: nothing is said to be kept.
        before = await mic()
        await recording()
        await relay.sockets[-1].close(code=1001)
        await expect(note).to_have_text("The connection dropped, so the dictation stopped before any text was recognised.")
        await page.wait_for_function(_RELEASED, arg=[before, True])
        await expect(status).to_have_attribute("data-state", "live")

        # ... or while the microphone is still opening.
        before, sent = await mic(), len(relay.got)
        await page.evaluate(_HOLD_MIC)
        await voice.click()
        await expect(voice).to_have_attribute("data-state", "opening")
        await relay.sockets[-1].close(code=1001)
        await expect(note).to_have_text("The connection dropped, so the dictation stopped before any text was recognised.")
        await expect(voice).to_have_attribute("data-state", "idle")
        await page.evaluate(_OPEN_MIC)
        await page.wait_for_function(_RELEASED, arg=[before, True])
        assert relay.audio() == [f for f in relay.got[:sent] if isinstance(f, int)], "no audio"
        assert [f for f in relay.got[sent:] if isinstance(f, dict)] == [], relay.got[sent:]
        await expect(status).to_have_attribute("data-state", "live")

        # The page is hidden (into the back/forward cache): the dictation ends with it, and the
        # page shown again is idle, and says why.
        await box.fill("")
        before = await mic()
        start = await recording()
        relay.say(type="voice.partial", id=start["id"], text="so far")
        await expect(box).to_have_value("so far")
        await page.evaluate("window.dispatchEvent(new PageTransitionEvent('pagehide', { persisted: true }))")
        await expect(voice).to_have_attribute("data-state", "idle")
        await expect(voice).to_have_attribute("aria-pressed", "false")
        await page.wait_for_function(_RELEASED, arg=[before, True])
        await page.evaluate("window.dispatchEvent(new PageTransitionEvent('pageshow', { persisted: true }))")
        await expect(status).to_have_attribute("data-state", "live")
        await expect(note).to_have_text("The dictation stopped when you left the page. The text so far stays in the box.")
        await expect(send).to_be_enabled()
        await expect(box).to_have_value("so far")
        await box.fill("")

        # A ready without voice mid-dictation: voice.stop goes first, and the note says why it ended.
        before = await mic()
        start = await recording()
        relay.offer = None
        await page.get_by_test_id("new-chat").click()
        stop = await relay.next("voice.stop")
        assert stop["id"] == start["id"], stop
        await expect(note).to_have_text("Voice input was turned off on the gateway, so the dictation stopped.")
        await expect(page.get_by_test_id("voice")).to_be_hidden()
        await page.wait_for_function(_RELEASED, arg=[before, True])
        n = len(relay.got)
        await page.wait_for_timeout(500)
        assert relay.got[n:] == [], "no audio after the voice.stop"
        await expect(send).to_be_enabled()
        await w.assert_clean()


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
async def test_a_refused_or_missing_microphone_is_explained_and_nothing_is_dictated(
    browser: Browser, start_gateway: StartGateway, locale: str
) -> None:
    gw = await start_gateway(toml=DEMO_TOML)
    relay = _Scripted(OFFER)
    chinese = locale == "zh-CN"
    w = await _relayed(browser, relay, gw.http_url, _REFUSE_MIC, locale=locale, **PHONE)
    page = w.page
    voice = page.get_by_role("button", name="语音输入" if chinese else "Voice input")
    await expect(voice).to_be_visible()
    sizes = await page.evaluate(_COMPOSER)  # at 360 px, beside Send, nothing sideways
    assert sizes["page"] <= 360 and sizes["right"] <= 360 and sizes["apart"], sizes
    assert sizes["inputRight"] <= sizes["voiceLeft"] and sizes["input"] > 150, sizes
    banner = page.get_by_test_id("banner")

    await voice.click()  # the permission refused (NotAllowedError)
    await expect(banner).to_contain_text(
        "此页面无权使用麦克风" if chinese else "The microphone is blocked for this page. Allow it in the browser's site settings"
    )
    await expect(voice).to_have_attribute("aria-pressed", "false")
    await expect(voice).to_have_attribute("data-state", "idle")
    await shot(page, f"voice-refused-{locale}")

    await page.evaluate("window.__micError = 'NotFoundError'")
    await voice.click()
    await expect(banner).to_contain_text("没有找到麦克风" if chinese else "No microphone was found.")

    await page.evaluate("window.AudioWorkletNode = undefined")
    await voice.click()
    await expect(banner).to_contain_text("AudioWorklet")
    await expect(banner).to_contain_text("此浏览器无法" if chinese else "This browser cannot process audio")
    await expect(voice).to_have_attribute("data-state", "idle")
    assert relay.got == [], "no dictation started, no audio sent"
    await w.assert_clean()
