"""The built-in demo model: no key, no network, a useful streamed answer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Sequence

from .base import ChatMessage, Chunk, Usage

__all__ = ["DemoProvider", "demo_answer"]

_TOKEN = re.compile(r"\s*\S+|\s+")
_TEMPLATE = """\
This is the **demo model** built into the gateway: it needs no API key and no \
network, so you can see streaming work right away.

You wrote:

> {quote}

Your message has **{words} words** and **{chars} characters**. To talk to a real \
model, point the gateway at a provider:

```bash
export GATEWAY_PROVIDER=openai          # any OpenAI-compatible API
export GATEWAY_UPSTREAM_URL=https://api.openai.com/v1
export GATEWAY_MODEL=gpt-4o-mini
export GATEWAY_API_KEY=...              # or a key file / systemd credential
gateway serve
```

| provider | what it speaks |
|---|---|
| `openai` | OpenAI, OpenRouter, DeepSeek, vLLM, Ollama, LiteLLM |
| `dashscope` | Alibaba DashScope's native API |

This conversation has {turns} message(s) so far.
"""


def demo_answer(messages: Sequence[ChatMessage]) -> str:
    """The demo's answer to the last user message of ``messages``."""
    question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    quote = " ".join(question.split())
    if len(quote) > 280:
        quote = quote[:279] + "…"
    return _TEMPLATE.format(
        quote=quote.replace("\n", " ") or "(nothing)",
        words=len(question.split()),
        chars=len(question),
        turns=sum(1 for m in messages if m.get("role") in ("user", "assistant")),
    )


def _rest(messages: Sequence[ChatMessage]) -> str:
    """The answer, or when ``messages`` end with a reply cut short, the rest of it."""
    if not messages or messages[-1].get("role") != "assistant":
        return demo_answer(messages)
    partial, whole = messages[-1].get("content", ""), demo_answer(messages[:-1])
    return whole[len(partial):] if whole.startswith(partial) else "\n\n(The demo model goes on here.)\n"


class DemoProvider:
    name = "demo"

    def __init__(self, model: str, delay_ms: float) -> None:
        self.model = model
        self._delay = delay_ms / 1000

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[list[Chunk], None]:
        tokens = _TOKEN.findall(_rest(messages))
        for token in tokens:
            await asyncio.sleep(self._delay)
            yield [Chunk(text=token)]
        prompt = sum(len(m.get("content", "").split()) for m in messages)
        yield [Chunk(finish_reason="stop", usage=Usage(prompt, len(tokens)))]
