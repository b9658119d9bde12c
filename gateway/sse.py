"""Sans-I/O Server-Sent Events decoder.

Implements the WHATWG HTML "event stream interpretation" rules on raw bytes,
so input may be split at any offset: mid-line, between CR and LF, or in the
middle of a multibyte UTF-8 character. Feed whatever the transport delivers
and get back the complete events::

    decoder = SSEDecoder()
    for chunk in chunks:
        for event in decoder.feed(chunk):
            handle(event)
    for event in decoder.close():
        handle(event)

Differences from a browser ``EventSource`` that callers should know:

* ``id`` and ``retry`` are reported per event: they describe only the fields
  seen in the block that produced the event, and are forgotten at every blank
  line. A block without ``data`` dispatches nothing, so its ``id``/``retry``
  are dropped.
* :meth:`SSEDecoder.close` is lenient about a missing final blank line.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "SSEEvent", "SSEError"]

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A


class SSEEvent(NamedTuple):
    """One dispatched server-sent event.

    Attributes:
        data: The ``data`` lines joined with ``"\\n"``.
        event: The ``event`` field, or ``"message"`` when absent or empty.
        id: The last valid ``id`` field of this event, or None if it had none.
        retry: The last all-digits ``retry`` field of this event, or None.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEError(ValueError):
    """The stream broke a limit (a line or an event larger than max_event_bytes)."""


def _too_large(what: str, limit: int) -> SSEError:
    """The error for a ``what`` (a line, or an event's data) longer than ``limit`` bytes."""
    return SSEError(f"SSE {what} exceeds max_event_bytes={limit}")


class _LineSplitter:
    """Splits a byte stream into lines at CR, LF or CRLF, wherever the chunks break.

    Drops the UTF-8 BOM that may start the stream, even split across chunks,
    and holds at most one unterminated line of at most ``limit`` bytes.
    """

    __slots__ = ("_limit", "_buf", "_skip_lf", "_bom_done")

    @property
    def clean(self) -> bool:
        """Whether the next byte starts a line (nothing held, the BOM dealt with)."""
        return self._bom_done and not self._buf and not self._skip_lf

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._skip_lf = False
        self._bom_done = False

    def feed(self, data: bytes) -> list[bytes]:
        """The lines these bytes complete, without their terminators.

        Raises:
            SSEError: If the unterminated line grows past the limit.
        """
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == _LF:
                data = data[1:]
        if not self._bom_done:
            data = self._strip_bom(data)
        if not data:
            return []
        if b"\n" not in data and b"\r" not in data:
            if len(self._buf) + len(data) > self._limit:
                raise _too_large("line", self._limit)
            self._buf += data
            return []
        chunk = bytes(self._buf) + data if self._buf else data
        self._buf.clear()
        lines = chunk.splitlines()
        last = chunk[-1]
        if last == _CR:
            self._skip_lf = True
        elif last != _LF:
            tail = lines.pop()
            if len(tail) > self._limit:
                raise _too_large("line", self._limit)
            self._buf += tail
        return lines

    def close(self) -> list[bytes]:
        """The unterminated last line, if any; afterwards a new stream may start."""
        lines = [bytes(self._buf)] if self._buf and self._bom_done else []
        self.reset()
        return lines

    def reset(self) -> None:
        """Forget the stream so far."""
        self._buf = bytearray()
        self._skip_lf = False
        self._bom_done = False

    def _strip_bom(self, data: bytes) -> bytes:
        """Return the stream start without its BOM, buffering a partial one."""
        head = bytes(self._buf) + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._buf[:] = head
            return b""
        self._bom_done = True
        self._buf.clear()
        return head[len(_BOM) :] if head.startswith(_BOM) else head


class SSEDecoder:
    """Incremental, sans-I/O decoder of a ``text/event-stream`` byte stream.

    Memory stays bounded by about ``max_event_bytes``: a line longer than the
    limit (counted in raw bytes, without its terminator) or an event whose
    data is larger than the limit (raw UTF-8 bytes of the joined data, without
    the final newline) raises :class:`SSEError`. The decoder then drops all
    buffered state; the stream should be treated as failed. Events decoded
    earlier in the same ``feed`` call are lost with it.

    Args:
        max_event_bytes: Largest allowed line and event data, in bytes.

    Raises:
        ValueError: If ``max_event_bytes`` is not positive.
    """

    __slots__ = (
        "_max",
        "_lines",
        "_data",
        "_data_size",
        "_event",
        "_id",
        "_retry",
    )

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be positive")
        self._max = max_event_bytes
        self._lines = _LineSplitter(max_event_bytes)
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Consume the next bytes of the stream.

        Args:
            data: Any number of bytes, split anywhere.

        Returns:
            The events completed by these bytes, possibly none.

        Raises:
            SSEError: If a line or an event's data exceeds the limit.
        """
        if data[-2:] == b"\n\n" and data[:6] == b"data: " and self._lines.clean and not self._pending:
            # The usual read, one event of one data line: "data: …\n\n".
            if data.find(b"\n") == len(data) - 2 and b"\r" not in data and len(data) - 2 <= self._max:
                return [SSEEvent(data[6:-2].decode("utf-8", "replace"))]
        try:
            return self._process(self._lines.feed(data))
        except SSEError:
            self._reset()
            raise

    def close(self) -> list[SSEEvent]:
        """Signal the end of the stream.

        Lenient on purpose: a final unterminated line is processed as if it
        were terminated, and then a pending event with data is dispatched as
        if a blank line had followed (many servers omit the final blank line,
        e.g. after ``data: [DONE]``). A strict parser would drop both.
        Afterwards the decoder is reset and may decode a new stream.

        Returns:
            The events completed by the end of the stream, possibly none.

        Raises:
            SSEError: If the final line or event exceeds the limit.
        """
        try:
            return self._process([*self._lines.close(), b""])
        finally:
            self._reset()

    def _process(self, lines: list[bytes]) -> list[SSEEvent]:
        """Interpret complete lines, returning the events they dispatch."""
        events: list[SSEEvent] = []
        limit = self._max
        for line in lines:
            if not line:
                if self._data:
                    events.append(self._dispatch())
                else:
                    self._clear_event()
                continue
            if len(line) > limit:
                raise _too_large("line", limit)
            name, _, value = line.partition(b":")
            if not name:
                continue
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data_size += len(value) + 1
                if self._data_size > limit + 1:
                    raise _too_large("event data", limit)
                self._data.append(value)
            else:
                self._set_field(name, value)
        return events

    @property
    def _pending(self) -> bool:
        """Whether the event being built has a field already."""
        return bool(self._data or self._event) or self._id is not None or self._retry is not None

    def _set_field(self, name: bytes, value: bytes) -> None:
        """Apply a non-``data`` field; unknown fields are ignored."""
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            try:
                self._retry = int(value)
            except ValueError:  # more digits than int() accepts
                pass

    def _dispatch(self) -> SSEEvent:
        """Build the pending event and start a new one."""
        event = SSEEvent(b"\n".join(self._data).decode("utf-8", "replace"), self._event or "message", self._id, self._retry)
        self._clear_event()
        return event

    def _clear_event(self) -> None:
        """Forget the fields of the event being built."""
        self._data = []
        self._data_size = 0
        self._event = ""
        self._id = None
        self._retry = None

    def _reset(self) -> None:
        """Return to the state of a fresh decoder."""
        self._lines.reset()
        self._clear_event()
