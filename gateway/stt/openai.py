"""An OpenAI-compatible ``/audio/transcriptions`` endpoint: OpenAI Whisper, Groq, a local
whisper.cpp or faster-whisper server. The audio is kept until the dictation stops (bounded
by ``[stt] max_seconds``), then sent as one WAV file; final text only."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import structlog

from ..config import SttConfig
from ..errors import ErrorCode, UpstreamError
from ..upstream import status_error
from .wav import wav

__all__ = ["OpenAIRecogniser", "transcriptions_url"]

_log: Any = structlog.get_logger("gateway.voice")
_MAX_ANSWER = 1 << 20  # bytes of a transcription answer read


def transcriptions_url(url: str) -> str:
    """``[stt] url`` as the endpoint: an API's base URL (ending in ``/v1``) gets
    ``/audio/transcriptions``; any other is the endpoint itself (whisper.cpp's ``/inference``)."""
    url = url.rstrip("/")
    return f"{url}/audio/transcriptions" if url.endswith("/v1") else url


class OpenAIRecogniser:
    name = "openai"
    partials = False
    capacity = 16  # each only keeps its audio until it stops, then waits on the endpoint

    def __init__(self, cfg: SttConfig, session: aiohttp.ClientSession) -> None:
        self._cfg = cfg
        self._session = session
        self._url = transcriptions_url(cfg.url)
        self.failing = False  # the last transcription failed on the endpoint's side

    async def open(self) -> None:
        _log.info("stt_ready", provider="openai", model=self._cfg.model)

    def recognition(self, sample_rate: int, language: str) -> OpenAIRecognition:
        return OpenAIRecognition(self, sample_rate, language or self._cfg.language)

    def state(self) -> str:
        return "failing" if self.failing else "ready"

    async def close(self) -> None:
        pass

    async def transcribe(self, audio: bytes, language: str) -> str:
        """POST ``audio`` (a WAV file) as multipart/form-data; its text."""
        form = aiohttp.FormData()
        form.add_field("model", self._cfg.model)
        form.add_field("response_format", "json")
        if language:
            form.add_field("language", language)
        form.add_field("file", audio, filename="speech.wav", content_type="audio/wav")
        # The shared session does not inflate (it bounds what upstreams send): ask for no compression.
        headers = {"Accept-Encoding": "identity"}
        if self._cfg.api_key:
            headers["Authorization"] = f"Bearer {self._cfg.api_key}"
        try:
            text = await self._post(form, headers)
        except UpstreamError as exc:
            exc.redact(self._cfg.api_key)
            self.failing = exc.status is None or exc.status >= 500 or exc.status in (401, 403)
            raise
        self.failing = False
        return text

    async def _post(self, form: aiohttp.FormData, headers: dict[str, str]) -> str:
        timeout = aiohttp.ClientTimeout(total=self._cfg.timeout)
        try:
            async with self._session.post(self._url, data=form, headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    raise await status_error(resp, None, what="transcription endpoint")
                if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                    raise UpstreamError(ErrorCode.UPSTREAM_ERROR, "the transcription endpoint's answer came compressed")
                return _text(await _body(resp))
        except aiohttp.ClientConnectorError as exc:
            _log.warning("stt_connect_failed", error=str(exc.os_error), errno=exc.os_error.errno)
            raise UpstreamError(ErrorCode.UPSTREAM_UNAVAILABLE, "cannot connect to the transcription endpoint") from None
        except TimeoutError:
            raise UpstreamError(ErrorCode.UPSTREAM_TIMEOUT, "the transcription endpoint did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                ErrorCode.UPSTREAM_ERROR, f"HTTP error talking to the transcription endpoint: {type(exc).__name__}",
                retryable=True,
            ) from None


async def _body(resp: aiohttp.ClientResponse) -> bytes:
    """The whole answer, however it is chunked, up to one byte past the bound."""
    body = bytearray()
    async for data in resp.content.iter_any():
        body += data
        if len(body) > _MAX_ANSWER:
            break
    return bytes(body)


def _text(raw: bytes) -> str:
    """The ``text`` of a JSON answer (``response_format=json``)."""
    if len(raw) > _MAX_ANSWER:
        raise UpstreamError(ErrorCode.UPSTREAM_ERROR, "the transcription endpoint's answer is too large")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        raise UpstreamError(ErrorCode.UPSTREAM_ERROR, "the transcription endpoint's answer has no text")
    return text.strip()


class OpenAIRecognition:
    """One dictation's audio, kept until it stops."""

    def __init__(self, recogniser: OpenAIRecogniser, sample_rate: int, language: str) -> None:
        self._recogniser = recogniser
        self._rate = sample_rate
        self._language = language
        self._pcm = bytearray()

    async def feed(self, pcm: bytes) -> str | None:
        self._pcm += pcm
        return None

    def abandon(self) -> None:
        self._pcm = bytearray()

    async def finish(self) -> str:
        if not self._pcm:
            return ""
        return await self._recogniser.transcribe(wav(self._pcm, self._rate), self._language)
