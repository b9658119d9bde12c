"""The network edge: the HTTP providers, one POST each, streamed as SSE."""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import orjson
import structlog

from .config import ProviderConfig
from .context import continuation
from .errors import ErrorCode, UpstreamError
from .inflate import PIECE, BodyError, BodyTooLarge, Inflater
from .sse import SSEDecoder, SSEError, SSEEvent
from .providers import ChatMessage, Chunk, Provider, dashscope, openai
from .providers.demo import DemoProvider

__all__ = ["DashScopeProvider", "OpenAIProvider", "client_session", "make_provider", "status_error", "stream_sse"]

_log: Any = structlog.get_logger("gateway.upstream")
_MAX_ERROR_BODY = 64 * 1024
_DEFAULT_RETRY_AFTER = 5.0


class Decoder(Protocol):
    done: bool
    finished: bool

    def receive(self, event: SSEEvent) -> Chunk | None: ...


async def stream_sse(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    decoder: Decoder,
    timeout: aiohttp.ClientTimeout,
    idle_timeout: float,
    api_key: str,
    max_bytes: int,
    error_from_body: Any = None,
) -> AsyncGenerator[list[Chunk], None]:
    """POST ``body`` and yield the chunks each read decodes into.

    Every failure is raised as an :class:`UpstreamError` whose message is
    redacted of ``api_key``; ``idle_timeout`` seconds without a byte (before the
    headers, the first token or between tokens) is ``upstream_timeout``; a body
    that decodes to more than ``max_bytes`` is ``upstream_error``. Leaving the
    generator (cancellation included) releases the upstream connection at once.
    The session must not decompress (``auto_decompress=False``): bodies are
    inflated here, in bounded pieces.
    """
    idle = _Inactivity(idle_timeout)
    try:
        async with session.post(url, data=orjson.dumps(body), headers=headers, timeout=timeout) as resp:
            idle.touch()
            if resp.status != 200:
                raise await status_error(resp, error_from_body)
            reader = _Body(_inflater(resp, max_bytes), decoder)
            async for data in resp.content.iter_any():
                idle.touch()
                # The usual read is one piece as it came; a compressed one may inflate to many.
                pieces = (data,) if reader.plain and len(data) <= PIECE else reader.pieces(data)
                for n, piece in enumerate(pieces):
                    if n:
                        await asyncio.sleep(0)  # let others run between the pieces of one read
                    chunks = reader.decode(piece)
                    if chunks:
                        yield chunks
                    if reader.over:
                        reader.check()
                        return
            chunks = reader.end()
            if chunks:
                yield chunks
            reader.check()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        assert task is not None
        if not idle.fired or task.uncancel() > 0:  # a cancel of its own as well: that one wins
            raise
        raise UpstreamError(ErrorCode.UPSTREAM_TIMEOUT, "the provider stopped sending data") from None
    except UpstreamError as exc:
        exc.redact(api_key)
        raise
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamError(ErrorCode.UPSTREAM_UNAVAILABLE, "timed out connecting to the provider") from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamError(ErrorCode.UPSTREAM_TIMEOUT, "the provider stopped sending data") from None
    except aiohttp.ClientConnectorError as exc:
        # The address and the OS's words stay in the log: clients learn nothing of the network.
        _log.warning("upstream_connect_failed", error=str(exc.os_error), errno=exc.os_error.errno)
        raise UpstreamError(ErrorCode.UPSTREAM_UNAVAILABLE, "cannot connect to the provider") from None
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        raise UpstreamError(
            ErrorCode.UPSTREAM_ERROR, "the connection to the provider was lost mid-reply", retryable=True
        ) from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(
            ErrorCode.UPSTREAM_ERROR, f"HTTP error talking to the provider: {type(exc).__name__}", retryable=True
        ) from None
    finally:
        idle.close()


class _Inactivity:
    """Cancels the current task after ``limit`` seconds without a byte.

    One timer per ``limit`` seconds, re-armed lazily, instead of aiohttp's
    ``sock_read``, which cancels and creates a timer for every chunk read.
    """

    __slots__ = ("limit", "last", "fired", "_loop", "_task", "_handle")

    def __init__(self, limit: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.limit, self.last, self.fired = limit, self._loop.time(), False
        self._handle = self._loop.call_at(self.last + limit, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        deadline = self.last + self.limit
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
        elif self._task is not None:
            self.fired = True
            self._task.cancel()

    def close(self) -> None:
        self._handle.cancel()


def _inflater(resp: aiohttp.ClientResponse, max_bytes: int) -> Inflater:
    try:
        return Inflater(resp.headers.get("Content-Encoding", ""), max_bytes)
    except BodyError as exc:
        raise UpstreamError(ErrorCode.UPSTREAM_ERROR, f"the provider's answer is unreadable: {exc}") from None


class _Body:
    """A response body's bytes, inflated, cut into SSE events and decoded into chunks.

    A failure, an error event or the end of the body before the reply's end is kept
    as :attr:`error` (an :class:`UpstreamError`): the chunks decoded before it are
    returned first, and :meth:`check` raises it.
    """

    __slots__ = ("plain", "error", "_inflater", "_decoder", "_sse")

    def __init__(self, inflater: Inflater, decoder: Decoder) -> None:
        self.plain = inflater.plain
        self.error: UpstreamError | None = None
        self._inflater, self._decoder, self._sse = inflater, decoder, SSEDecoder()

    @property
    def over(self) -> bool:
        """Whether the reply is complete or failed: nothing more is to be read."""
        return self.error is not None or self._decoder.done

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """``data`` decoded, in bounded pieces (see :mod:`.inflate`)."""
        try:
            yield from self._inflater.feed(data)
        except BodyError as exc:
            raise _body_error(exc, self._inflater) from None

    def decode(self, piece: bytes) -> list[Chunk]:
        """The chunks a decoded piece completes."""
        try:
            events = self._sse.feed(piece)
        except SSEError as exc:
            self.error = _sse_error(exc)
            return []
        chunks, self.error = _decode(events, self._decoder)
        return chunks

    def end(self) -> list[Chunk]:
        """The body ended: the chunks it still held (and an error if the reply had not ended)."""
        try:
            events = self._sse.feed(self._inflater.close()) + self._sse.close()
        except SSEError as exc:
            self.error = _sse_error(exc)
            return []
        except BodyError as exc:
            self.error = _body_error(exc, self._inflater)
            return []
        chunks, self.error = _decode(events, self._decoder)
        if self.error is None and not (self._decoder.done or self._decoder.finished):
            self.error = UpstreamError(
                ErrorCode.UPSTREAM_ERROR, "the provider ended the stream before the reply finished", retryable=True
            )
        return chunks


def _sse_error(exc: SSEError) -> UpstreamError:
    return UpstreamError(ErrorCode.UPSTREAM_ERROR, f"the provider's stream is malformed: {exc}", retryable=True)


def _body_error(exc: BodyError, inflater: Inflater) -> UpstreamError:
    if isinstance(exc, BodyTooLarge):
        return UpstreamError(
            ErrorCode.UPSTREAM_ERROR, f"the provider's answer is larger than {inflater.max_bytes} bytes", retryable=False
        )
    return UpstreamError(ErrorCode.UPSTREAM_ERROR, f"the provider's answer is unreadable: {exc}", retryable=True)


def _decode(events: list[SSEEvent], decoder: Decoder) -> tuple[list[Chunk], UpstreamError | None]:
    """Decode a read's events; an error event ends it, keeping the text before it."""
    chunks: list[Chunk] = []
    for event in events:
        try:
            chunk = decoder.receive(event)
        except UpstreamError as exc:
            return chunks, exc
        except Exception:  # a shape the decoder did not foresee is the provider's fault, not ours
            _log.exception("upstream_chunk_unreadable")
            return chunks, UpstreamError(
                ErrorCode.UPSTREAM_ERROR, "the provider sent a chunk the gateway cannot read", retryable=True
            )
        if chunk is not None:
            chunks.append(chunk)
    return chunks, None


async def status_error(resp: aiohttp.ClientResponse, error_from_body: Any, *, what: str = "provider") -> UpstreamError:
    """The error a non-200 answer of ``what`` (read at most 64 KiB of its body) is."""
    try:
        raw = await resp.content.read(_MAX_ERROR_BODY)
    except (aiohttp.ClientError, TimeoutError):
        raw = b""
    detail, obj = _detail(_error_body(raw, resp.headers.get("Content-Encoding", "")))
    status, asked = resp.status, _retry_after(resp.headers)
    if error_from_body is not None and obj is not None and status != 429:
        exc: UpstreamError = error_from_body(obj, status)
    elif status == 429:
        exc = UpstreamError(
            ErrorCode.RATE_LIMITED, f"the {what} is rate limiting (HTTP 429)", detail=detail,
            status=status, retry_after=_DEFAULT_RETRY_AFTER if asked is None else asked,
        )
    elif status in (401, 403):
        exc = UpstreamError(
            ErrorCode.UPSTREAM_ERROR, f"the {what} refused the gateway's credentials (HTTP {status})", detail=detail,
            status=status, retryable=False,
        )
    else:
        exc = UpstreamError(
            ErrorCode.UPSTREAM_ERROR, f"the {what} answered HTTP {status}", detail=detail,
            status=status, retryable=status >= 500 or status in (408, 409),
        )
    exc.asked_wait = asked  # a Retry-After on any status is honoured by the route
    return exc


def _error_body(raw: bytes, encoding: str) -> bytes:
    """An error body decoded, at most its first 64 KiB; empty if it cannot be decoded
    (the status still says what happened)."""
    out = bytearray()
    try:
        for piece in Inflater(encoding, _MAX_ERROR_BODY).feed(raw):
            out += piece
            if len(out) >= _MAX_ERROR_BODY:
                break
    except BodyError:
        pass
    return bytes(out[:_MAX_ERROR_BODY])


def _detail(raw: bytes) -> tuple[str, dict[str, Any] | None]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip() or "no details", None
    if not isinstance(obj, dict):
        return str(obj), None
    err = obj.get("error")
    message = err.get("message") if isinstance(err, dict) else err
    return str(message or obj.get("message") or obj.get("detail") or "no details"), obj


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The delay the provider asks for (bounded later by GatewayError), or None if it
    gives none that makes sense."""
    if value := headers.get("retry-after-ms"):
        seconds = _number(value)
        if seconds is not None:
            return seconds / 1000
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, round(when.timestamp() - time.time(), 3))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


_USER_AGENT = "llm-ws-gateway"
# Streams are sent uncompressed: compression would only add latency to each token.
_STREAM_HEADERS = {"Accept": "text/event-stream", "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}


def _timeout(cfg: ProviderConfig) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout)


class OpenAIProvider:
    name = "openai"

    def __init__(self, cfg: ProviderConfig, session: aiohttp.ClientSession) -> None:
        self.model = cfg.model
        self._cfg, self._session = cfg, session
        self._url = openai.endpoint(cfg.upstream_url)
        self._headers = {"Content-Type": "application/json", **_STREAM_HEADERS}
        if cfg.api_key:
            self._headers["Authorization"] = f"Bearer {cfg.api_key}"

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[list[Chunk], None]:
        messages = continuation(messages, self._cfg.continuation or "prompt")
        body = openai.build_body(self.model, messages, self._cfg.params, include_usage=self._cfg.include_usage)
        return stream_sse(
            self._session, self._url, headers=self._headers, body=body, decoder=openai.OpenAIDecoder(),
            timeout=_timeout(self._cfg), idle_timeout=self._cfg.upstream_timeout, api_key=self._cfg.api_key,
            max_bytes=self._cfg.max_response_bytes,
        )


class DashScopeProvider:
    name = "dashscope"

    def __init__(self, cfg: ProviderConfig, session: aiohttp.ClientSession) -> None:
        self.model = cfg.model
        self._cfg, self._session = cfg, session
        self._headers = {
            "Content-Type": "application/json",
            **_STREAM_HEADERS,
            "X-DashScope-SSE": "enable",
            "Authorization": f"Bearer {cfg.api_key}",
        }

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[list[Chunk], None]:
        incremental = self._cfg.incremental_output
        messages = continuation(messages, self._cfg.continuation or "partial")
        body = dashscope.build_body(self.model, messages, self._cfg.params, incremental=incremental)
        return stream_sse(
            self._session, self._cfg.upstream_url, headers=self._headers, body=body,
            decoder=dashscope.DashScopeDecoder(incremental=incremental), timeout=_timeout(self._cfg),
            idle_timeout=self._cfg.upstream_timeout, max_bytes=self._cfg.max_response_bytes,
            api_key=self._cfg.api_key, error_from_body=dashscope.error_from_body,
        )


def client_session() -> aiohttp.ClientSession:
    """The gateway's one HTTP client session, shared by every upstream request."""
    # No cookie jar: one user's upstream cookies must never ride on another's request.
    # No automatic decompression: this module inflates in bounded pieces.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )


def make_provider(cfg: ProviderConfig, session: aiohttp.ClientSession) -> Provider:
    """The provider ``cfg`` names, sharing the gateway's one HTTP session."""
    if cfg.name == "openai":
        return OpenAIProvider(cfg, session)
    if cfg.name == "dashscope":
        return DashScopeProvider(cfg, session)
    return DemoProvider(cfg.model, cfg.demo_delay_ms)
