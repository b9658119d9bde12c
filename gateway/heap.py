"""Handing freed memory back to the system.

glibc keeps the memory of freed blocks for reuse: after a burst of output for
clients that were then cut off, the process would stay at its peak size.
``malloc_trim(0)`` returns it; it walks the heap (tens of milliseconds on a
large one), so it runs in a thread, and only where glibc provides it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
from collections.abc import Callable

__all__ = ["trim"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
    return function


async def trim() -> None:
    """Return freed heap memory to the system, if the C library can."""
    function = _malloc_trim()
    if function is not None:
        await asyncio.to_thread(function, 0)
