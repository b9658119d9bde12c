"""The recogniser ``[stt] provider`` names (engines are imported only when chosen)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import SttConfig
from .base import Recogniser

if TYPE_CHECKING:
    import aiohttp

__all__ = ["make_recogniser"]


def make_recogniser(cfg: SttConfig, session: aiohttp.ClientSession) -> Recogniser | None:
    """None when voice input is off."""
    if cfg.provider == "vosk":
        from .vosk import VoskRecogniser

        return VoskRecogniser(cfg)
    if cfg.provider == "openai":
        from .openai import OpenAIRecogniser

        return OpenAIRecogniser(cfg, session)
    return None
