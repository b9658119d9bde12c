"""The built-in demo model: no key, no network, a useful streamed answer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Sequence

from .base import ChatMessage, Chunk, Usage

__all__ = ["DemoProvider", "chinese", "demo_answer"]

# A token: a CJK character (and the space before it), a run of other non-space, or spaces.
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_TOKEN = re.compile(rf"\s*[{_CJK}]|\s*[^\s{_CJK}]+|\s+")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")
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


_TEMPLATE_ZH = """\
这是网关内置的**演示模型**：不需要 API 密钥，也不需要联网，你马上就能看到流式输出。

你写道：

> {quote}

你的消息有 **{chars} 个字符**。要和真正的模型对话，请把网关指向一个模型服务商：

```bash
export GATEWAY_PROVIDER=dashscope       # 阿里云百炼 DashScope 原生接口
export GATEWAY_MODEL=qwen-plus
export GATEWAY_API_KEY=...              # 或者密钥文件 / systemd 凭据
gateway serve
```

| 服务商 | 支持的接口 |
|---|---|
| `openai` | OpenAI、OpenRouter、DeepSeek、vLLM、Ollama、LiteLLM，以及 DashScope 兼容模式 |
| `dashscope` | 阿里云 DashScope 原生接口 |

这个对话目前有 {turns} 条消息。
"""


def chinese(text: str) -> bool:
    """Whether ``text`` reads as Chinese: Han characters are at least a third of its letters."""
    han = len(_HAN.findall(text))
    return han > 0 and 3 * han >= han + len(_LATIN.findall(text))


def demo_answer(messages: Sequence[ChatMessage]) -> str:
    """The demo's answer to the last user message of ``messages``, in its language
    (Chinese or English)."""
    question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    quote = " ".join(question.split())
    if len(quote) > 280:
        quote = quote[:279] + "…"
    template = _TEMPLATE_ZH if chinese(question) else _TEMPLATE
    return template.format(
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
