"""Voice input: the process's recogniser and dictation slots (:class:`Voice`), and one
connection's dictation driver (:class:`Dictating`), which owns the task that feeds the
recogniser and sends ``voice.partial`` and ``voice.final``.

The reader hands audio over through a small bounded queue: a client that sends faster
than the recogniser decodes waits (TCP pushes back), it never grows memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from . import wire
from .config import Config
from .dictation import Dictation, Dictations, VoiceLimits
from .errors import ErrorCode, GatewayError, ProtocolError
from .metrics import Metrics
from .stt import Recogniser, Recognition

__all__ = ["Dictating", "Voice"]

_log: Any = structlog.get_logger("gateway.voice")
QUEUED_FRAMES = 16  # audio frames waiting for the recogniser, per dictation
LIMIT, SHUTDOWN = "max_seconds", "shutdown"  # why a dictation ended by itself (voice.final reason)
RETRY_AFTER = 2.0  # seconds, when every slot is in use
STALL = 10.0  # seconds the reader waits for the recogniser before the dictation is given up


class Voice:
    """What every connection's dictations share: the recogniser, and the slots."""

    def __init__(self, config: Config, recogniser: Recogniser, metrics: Metrics) -> None:
        stt = config.stt
        self.recogniser = recogniser
        frame = min(stt.max_frame_bytes, config.limits.max_message_bytes)
        self.limits = VoiceLimits(stt.sample_rate, stt.max_seconds, frame)
        self.max_dictations = stt.max_dictations or recogniser.capacity
        self.active = 0
        self.draining = False  # the gateway stops: no new dictation
        self.dictating: set[Dictating] = set()  # connections with a dictation open or being recognised
        self.metrics = metrics
        metrics.dictations_active.set_function(lambda: self.active)

    def offer(self) -> dict[str, Any]:
        """What ``ready`` and ``/config.json`` tell clients."""
        return {
            "provider": self.recogniser.name, "sample_rate": self.limits.sample_rate,
            "max_seconds": self.limits.max_seconds, "max_frame_bytes": self.limits.max_frame_bytes,
            "partials": self.recogniser.partials,
        }

    def acquire(self) -> None:
        if self.draining or self.active >= self.max_dictations:
            self.metrics.dictations.labels("refused").inc()
            why = "this server is restarting" if self.draining else "every voice input slot of this server is in use"
            exc = ProtocolError(ErrorCode.OVERLOADED, f"{why}; try again shortly")
            exc.retry_after = RETRY_AFTER
            raise exc
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    async def end_all(self, timeout: float) -> None:
        """The drain: refuse new dictations; end the open ones now, each with its text so
        far (``reason: "shutdown"``), waiting up to ``timeout`` seconds for their finals."""
        self.draining = True
        ending = [asyncio.ensure_future(d.end_now()) for d in list(self.dictating)]
        if not ending:
            return
        _log.info("dictations_ended_for_shutdown", count=len(ending))
        _, late = await asyncio.wait(ending, timeout=timeout)
        for waiting in late:  # their connections drop them when they close
            waiting.cancel()
        await asyncio.gather(*late, return_exceptions=True)


class Dictating:
    """One connection's dictations: ``voice.start``, audio frames, ``voice.stop``."""

    def __init__(self, voice: Voice, put: Callable[[bytes], None], session_id: str) -> None:
        self._voice = voice
        self._put = put
        self._session_id = session_id
        self.state = Dictations(voice.limits)
        self._queue: asyncio.Queue[bytes | str] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, msg: wire.VoiceStart) -> None:
        if self._task is not None and not self._task.done():
            still_open = self.state.open is not None
            self.state.refused(msg.id)
            raise ProtocolError(ErrorCode.BUSY, (
                "a dictation is already open on this connection; stop it first" if still_open else
                "the previous dictation is still being recognised; wait for its voice.final"
            ), ref=msg.id)
        try:
            dictation = self.state.start(msg.id, msg.sample_rate, asyncio.get_running_loop().time())
            self._voice.acquire()
        except ProtocolError as exc:
            if self.state.open is not None and self.state.open.id == msg.id:
                self.state.finished()
            else:
                self.state.refused(msg.id)
            exc.ref = msg.id
            raise
        try:
            recognition = self._voice.recogniser.recognition(dictation.sample_rate, msg.language or "")
        except Exception:
            self._voice.release()
            self.state.finished()
            raise
        self._queue = queue = asyncio.Queue[bytes | str](QUEUED_FRAMES)
        task = asyncio.create_task(self._recognise(dictation, recognition, queue), name=f"dictation-{msg.id}")
        # Released when the task ends, even one cancelled before it ever ran.
        task.add_done_callback(lambda done: self._ended(done, dictation, recognition, queue))
        self._task = task
        self._voice.dictating.add(self)
        self._put(wire.encode(
            "voice.started", id=msg.id, sample_rate=dictation.sample_rate, max_seconds=self._voice.limits.max_seconds,
        ))
        _log.info("dictation_started", session_id=self._session_id, sample_rate=dictation.sample_rate)

    async def audio(self, frame: bytes) -> None:
        try:
            audio = self.state.audio(frame)
        except ProtocolError as exc:
            if exc.ref is not None:  # the open dictation ended with it: no final
                await self._cancel()
                self._voice.metrics.dictations.labels("bad_audio").inc()
            raise
        if audio is None or self._queue is None:
            return
        if audio.pcm:
            await self._hand_over(audio.dictation, audio.pcm)
        if audio.full:
            self.state.finished()
            await self._hand_over(audio.dictation, LIMIT)

    async def stop(self, msg: wire.VoiceStop) -> None:
        if (d := self.state.stop(msg.id)) is not None:
            await self._hand_over(d, "")

    async def end_now(self) -> None:
        """End the open dictation with what was said so far (the gateway stops), and wait for its final."""
        if (d := self.state.finished()) is not None:
            await self._hand_over(d, SHUTDOWN)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _hand_over(self, d: Dictation, item: bytes | str) -> None:
        """Queue ``item`` for the recogniser. Past ``STALL`` seconds without room (it is far
        behind) the dictation ends with ``overloaded``: this connection's other frames must
        not wait behind it."""
        assert self._queue is not None
        if not self._queue.full():  # the usual case: no timer
            self._queue.put_nowait(item)
            return
        try:
            async with asyncio.timeout(STALL):
                await self._queue.put(item)
        except TimeoutError:
            await self._cancel()
            exc = ProtocolError(ErrorCode.OVERLOADED, "voice input is behind on this server; try again shortly",
                                ref=d.id)
            exc.retry_after = RETRY_AFTER
            raise exc from None

    async def _cancel(self) -> None:
        """Drop the dictation being recognised: no final."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        """The connection ended: a dictation still open is dropped."""
        if self._task is not None and not self._task.done():
            self._voice.metrics.dictations.labels("dropped").inc()
        await self._cancel()

    def _ended(
        self, task: asyncio.Task[None], d: Dictation, recognition: Recognition, queue: asyncio.Queue[bytes | str]
    ) -> None:
        """The task is over, however (done, failed, cancelled, even before it ran)."""
        self._voice.release()
        if self._task is task:  # not a next dictation, started before this callback ran
            self._voice.dictating.discard(self)
        self._voice.metrics.dictation_seconds.inc(d.seconds)
        recognition.abandon()  # frees what it still holds; nothing after a final
        if self.state.open is d:  # it ended while the client still sends: drop the rest
            self.state.finished()
        while not queue.empty():  # and free a reader waiting for room
            queue.get_nowait()

    async def _recognise(self, d: Dictation, recognition: Recognition, queue: asyncio.Queue[bytes | str]) -> None:
        """Feed the audio to the recogniser as it comes; partials while it does; one final."""
        metrics = self._voice.metrics
        try:
            reason = await self._feed(d, recognition, queue)
            text = await recognition.finish()
            self._put(wire.encode("voice.final", id=d.id, text=text, seconds=d.seconds, reason=reason or None))
            metrics.dictations.labels({"": "final", LIMIT: "limit", SHUTDOWN: "shutdown"}[reason]).inc()
            _log.info("dictation_ended", session_id=self._session_id, seconds=d.seconds, reason=reason or "stop",
                      chars=len(text))
        except GatewayError as exc:
            metrics.dictations.labels("error").inc()
            _log.warning("dictation_failed", session_id=self._session_id, code=str(exc.code), error=exc.message)
            self._put(wire.encode_error(exc, ref=d.id))
        except Exception:
            metrics.dictations.labels("error").inc()
            _log.exception("dictation_failed", session_id=self._session_id)
            self._put(wire.encode_error(GatewayError(ErrorCode.INTERNAL, "voice input failed"), ref=d.id))

    async def _feed(self, d: Dictation, recognition: Recognition, queue: asyncio.Queue[bytes | str]) -> str:
        """Until the audio ends: the reason it ended ("" for a stop, LIMIT, SHUTDOWN)."""
        deadline = d.deadline(self._voice.limits)
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    item = await queue.get()
            except TimeoutError:  # audio stopped coming, and no stop: the dictation ends by itself
                if self.state.open is d:
                    self.state.finished()
                return LIMIT
            parts: list[bytes] = []
            while isinstance(item, bytes):  # what else waits goes in the same hand-off
                parts.append(item)
                if queue.empty():
                    break
                item = queue.get_nowait()
            pcm = parts[0] if len(parts) == 1 else b"".join(parts)
            if pcm and (text := await recognition.feed(pcm)) is not None:
                self._put(wire.encode("voice.partial", id=d.id, text=text))
            if isinstance(item, str):
                return item
