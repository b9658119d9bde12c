"""Speech to text behind one interface (:class:`Recogniser`), each engine in its own module:
:mod:`.vosk` (embedded, offline) and :mod:`.openai` (an OpenAI-compatible transcription
endpoint). :func:`make_recogniser` builds the one ``[stt] provider`` names."""

from .base import Recogniser, Recognition
from .factory import make_recogniser

__all__ = ["Recogniser", "Recognition", "make_recogniser"]
