"""Inline ``<think>…</think>`` reasoning, as some models emit it in their answer text (pure).

DeepSeek R1 and Qwen's thinking models served by engines that do not split reasoning out
(some vLLM, Ollama and llama.cpp set-ups) put their thinking at the start of the content
between ``<think>`` and ``</think>``. :class:`ThinkSplitter` takes the content as it
streams, in pieces cut anywhere (inside a tag too), and says which part is reasoning
and which is the answer. Only a reply that *starts* with ``<think>`` (after blanks) is
split, so an answer that merely mentions the tag is left alone.
"""

from __future__ import annotations

__all__ = ["ThinkSplitter"]

OPEN, CLOSE = "<think>", "</think>"


class ThinkSplitter:
    """Feed content pieces; get ``(reasoning, answer)`` for each."""

    __slots__ = ("_state", "_held", "_began")

    def __init__(self) -> None:
        # start: no text yet; think: inside the tag; after: just past it; answer: the rest (or no tag)
        self._state = "start"
        self._held = ""  # text that may still be the start of a tag
        self._began = False  # the thinking had more than blanks (an empty <think></think> is none)

    @property
    def done(self) -> bool:
        """Whether everything from now on is answer (the tag closed, or there was none)."""
        return self._state == "answer"

    def feed(self, text: str) -> tuple[str, str]:
        if self._state == "answer":
            return "", text
        if self._state == "after":  # the blank lines after </think> are not the answer's
            text = text.lstrip("\n")
            if text:
                self._state = "answer"
            return "", text
        text, self._held = self._held + text, ""
        if self._state == "start":
            stripped = text.lstrip()
            if OPEN.startswith(stripped):  # blanks, or a part of "<think>": wait for more
                self._held = text
                return "", ""
            if not stripped.startswith(OPEN):
                self._state = "answer"
                return "", text
            self._state, text = "think", stripped[len(OPEN):]
        end = text.find(CLOSE)
        if end >= 0:
            self._state = "after"
            reasoning, rest = text[:end], text[end + len(CLOSE):]
            return self._thought(reasoning), self.feed(rest)[1] if rest else ""
        keep = _partial_suffix(text, CLOSE)
        self._held = text[len(text) - keep:] if keep else ""
        return self._thought(text[:len(text) - keep]), ""

    def _thought(self, text: str) -> str:
        """Reasoning without the blanks it starts with."""
        if not self._began:
            text = text.lstrip()
            self._began = bool(text)
        return text

    def close(self) -> tuple[str, str]:
        """The stream ended: what was held back (an unfinished tag is text, as it came)."""
        held, self._held = self._held, ""
        if self._state == "think":
            return self._thought(held), ""
        return "", held


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
