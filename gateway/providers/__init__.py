"""Providers: what they produce, and pure decoders for each upstream format.

The network side (one shared aiohttp session) is :mod:`gateway.upstream`.
"""

from __future__ import annotations

from .base import ChatMessage, Chunk, Provider, Usage

__all__ = ["ChatMessage", "Chunk", "Provider", "Usage"]
