"""An upstream body's bytes as sent, decoded and bounded (pure).

aiohttp's own decompression inflates a whole read in one call: a small gzip
body can become gigabytes before the event loop runs again. Here a body is
inflated in pieces of at most :data:`PIECE` bytes, so the reader can yield to
the loop between them, and the total a compressed response may inflate to is
bounded. An uncompressed body is passed through in pieces, not bounded here: it
costs the sender as much as the gateway, and the stream's time limits bound it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

__all__ = ["BodyError", "BodyTooLarge", "Inflater", "PIECE", "SUPPORTED"]

PIECE = 64 * 1024
SUPPORTED = ("identity", "gzip", "x-gzip", "deflate")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}


class BodyError(ValueError):
    """The body cannot be decoded (an unknown encoding, corrupt data)."""


class BodyTooLarge(BodyError):
    """The body, decoded, is larger than the bound."""


class Inflater:
    """Decodes one response body with ``Content-Encoding`` ``encoding``; a compressed one
    may inflate to ``max_bytes`` at most."""

    def __init__(self, encoding: str, max_bytes: int) -> None:
        encoding = (encoding or "identity").strip().lower()
        if encoding not in SUPPORTED:
            raise BodyError(f"unsupported content encoding {encoding[:40]!r}")
        self.max_bytes = max_bytes
        self.total = 0
        self._zlib = None
        # deflate is zlib-wrapped by the RFC, raw in some servers: until the first output,
        # the bytes are kept so that a raw decoder can start over with them.
        self._head: bytes | None = b"" if encoding == "deflate" else None
        self._wbits = _WBITS.get(encoding, 32 + zlib.MAX_WBITS)  # deflate: +32, a zlib or a gzip header
        if encoding != "identity":
            self._zlib = zlib.decompressobj(self._wbits)
        self.plain = self._zlib is None  # the body is passed through as it comes

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, in pieces of at most :data:`PIECE` bytes."""
        if self._zlib is None:
            for start in range(0, len(data), PIECE):
                yield data[start : start + PIECE]
            return
        if self._head is not None:
            self._head = self._head + data if len(self._head) < PIECE else None
        while data:
            try:
                piece = self._zlib.decompress(data, PIECE)
            except zlib.error:
                data = self._start_raw()
                continue
            data = self._zlib.unconsumed_tail or self._next_member()
            if piece:
                self._head = None
                yield self._count(piece)
            elif not data:
                break

    def close(self) -> bytes:
        """Whatever the decoder still holds at the end of the body; BodyError if it is cut short."""
        if self._zlib is None:
            return b""
        rest = self._count(self._zlib.flush())
        if not self._zlib.eof:
            raise BodyError("the compressed body ends early")
        return rest

    def _next_member(self) -> bytes:
        """Bytes after the end of a compressed stream: gzip's next member, or an error."""
        assert self._zlib is not None
        rest = self._zlib.unused_data if self._zlib.eof else b""
        if not rest:
            return b""
        if self._wbits != _WBITS["gzip"]:
            raise BodyError("data after the end of the compressed body")
        self._zlib = zlib.decompressobj(self._wbits)
        return rest

    def _start_raw(self) -> bytes:
        """After a zlib error: start over as raw deflate if that is still possible."""
        if not self._head:
            raise BodyError("the body is not valid compressed data")
        head, self._head = self._head, None
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        return head

    def _count(self, piece: bytes) -> bytes:
        self.total += len(piece)
        if self.total > self.max_bytes:
            raise BodyTooLarge(f"the body is larger than {self.max_bytes} bytes")
        return piece
