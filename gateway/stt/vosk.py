"""Vosk: embedded, offline recognition with partial results (``pip install 'llm-ws-gateway[voice]'``).

The model is loaded once, at start. Kaldi's decoding is blocking C code that releases
the GIL: it runs on a pool of ``[stt] workers`` threads, never on the event loop, so a
dictation costs the loop nothing but the hand-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import structlog

from ..config import SttConfig
from ..errors import StartupError

__all__ = ["VoskRecogniser", "default_workers"]

_log: Any = structlog.get_logger("gateway.voice")
# Dictations one worker thread keeps up with in real time: each costs about a quarter of a
# core with partial text every 100 ms (bench/voice.py; docs/voice.md).
PER_WORKER = 4


def default_workers() -> int:
    """One fewer than the CPUs, at least one: the chats keep a core."""
    return max(1, (os.cpu_count() or 1) - 1)


class VoskRecogniser:
    name = "vosk"
    partials = True

    def __init__(self, cfg: SttConfig) -> None:
        self._path = Path(cfg.model_path)
        self._workers = cfg.workers or default_workers()
        self.capacity = PER_WORKER * self._workers
        self._pool: ThreadPoolExecutor | None = None
        self._model: Any = None
        self._vosk: Any = None

    async def open(self) -> None:
        try:
            import vosk  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError:
            raise StartupError(
                "[stt] provider vosk needs the vosk package: pip install 'llm-ws-gateway[voice]'", retry=False
            ) from None
        if not (self._path / "conf").is_dir() and not (self._path / "am").is_dir():
            raise StartupError(f"[stt] model_path {self._path} is not a Vosk model directory", retry=False)
        vosk.SetLogLevel(-1)  # Kaldi's own chatter on stderr; failures are raised
        try:
            self._model = await asyncio.to_thread(vosk.Model, str(self._path))
        except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
            raise StartupError(f"[stt] cannot load the Vosk model in {self._path}: {exc}", retry=False) from None
        self._vosk = vosk
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="vosk")
        _log.info("stt_ready", provider="vosk", model_path=str(self._path), workers=self._workers)

    def recognition(self, sample_rate: int, language: str) -> VoskRecognition:
        assert self._pool is not None, "open() first"
        return VoskRecognition(lambda: self._vosk.KaldiRecognizer(self._model, sample_rate), self._pool)

    def state(self) -> str:
        return "ready" if self._pool is not None else "loading"

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:  # what runs now ends within one chunk's decoding
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


class VoskRecognition:
    """One dictation: utterances Vosk has closed, and the one still open. Its recogniser
    is made, used and freed in the workers only: making one takes about 0.1 s of CPU,
    which would stall every chat if done on the event loop."""

    def __init__(self, make: Callable[[], Any], pool: ThreadPoolExecutor) -> None:
        self._make = make
        self._rec: Any = None
        self._lock = threading.Lock()  # one call at a time, even a cancelled one still running
        self._closed = False
        self._pool = pool
        self._done: list[str] = []
        self._shown = ""

    async def feed(self, pcm: bytes) -> str | None:
        loop = asyncio.get_running_loop()
        partial = await loop.run_in_executor(self._pool, self._accept, pcm)
        text = _joined(*self._done, partial)
        if text == self._shown:
            return None
        self._shown = text
        return text

    def _accept(self, pcm: bytes) -> str:
        """In a worker: decode ``pcm``; the open utterance's text."""
        with self._lock:
            if self._closed:  # a call cancelled after the dictation ended
                return ""
            if self._rec is None:
                self._rec = self._make()
            if self._rec.AcceptWaveform(pcm):
                self._done.append(_text(self._rec.Result(), "text"))
                return ""
            return _text(self._rec.PartialResult(), "partial")

    async def finish(self) -> str:
        loop = asyncio.get_running_loop()
        return _joined(*self._done, await loop.run_in_executor(self._pool, self._final))

    def _final(self) -> str:
        """In a worker: the last utterance's text; the recogniser is freed here."""
        with self._lock:
            rec, self._rec, self._closed = self._rec, None, True
            return "" if rec is None else _text(rec.FinalResult(), "text")

    def abandon(self) -> None:
        with contextlib.suppress(RuntimeError):  # the pool is shut down: the process is ending anyway
            self._pool.submit(self._free)

    def _free(self) -> None:
        """In a worker: drop the recogniser (Kaldi frees it here, not on the event loop)."""
        with self._lock:
            self._rec, self._closed = None, True


def _text(result: str, key: str) -> str:
    value = orjson.loads(result).get(key, "")
    return value if isinstance(value, str) else ""


def _joined(*parts: str) -> str:
    """Vosk's pieces as text: Chinese and Japanese models put spaces between words, which
    those languages do not write (Korean does: its spaces stay)."""
    return _CJK_SPACE.sub("", " ".join(p for p in parts if p))


# A space between two Han or kana characters (and their punctuation).
_CJK = r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"
_CJK_SPACE = re.compile(rf"(?<={_CJK}) +(?={_CJK})")
