"""The chat listener's connection class keeps its attributes in its class's shared table.

A burst of sockets accepted before the first one's ``connection_made()`` used to give
every later connection a dictionary of its own (about 1.5 KiB on CPython 3.11).
"""

from __future__ import annotations

import asyncio
import sys
import tracemalloc

import pytest
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.server import ServerProtocol

from gateway.chat_listener import ChatSocket


class _Transport(asyncio.Transport):
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _bytes_per_connect(base: type[ServerConnection], burst: int = 5) -> float:
    """What ``connection_made()`` allocates per socket, for a burst accepted at once
    (a fresh subclass each time: a fresh shared table)."""
    cls = type("Fresh", (base,), {})
    sockets = [cls(ServerProtocol(), object()) for _ in range(burst)]  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for ws in sockets:
            Connection.connection_made(ws, _Transport())
        return (tracemalloc.get_traced_memory()[0] - before) / burst
    finally:
        tracemalloc.stop()


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the shared-table rule measured here is CPython 3.11's")
async def test_a_burst_of_sockets_keeps_no_dictionary_each() -> None:
    plain = await _bytes_per_connect(ServerConnection)
    ours = await _bytes_per_connect(ChatSocket)
    assert plain - ours > 1024, (plain, ours)


async def test_the_names_set_on_connect_stay_the_libraries() -> None:
    """The placeholders are replaced by what websockets sets, not left behind."""
    ws = ChatSocket(ServerProtocol(), object())  # type: ignore[arg-type]
    assert ws.transport is None
    transport = _Transport()
    Connection.connection_made(ws, transport)
    assert ws.transport is transport and ws.recv_messages is not None
