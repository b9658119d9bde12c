"""Print the example configuration file (``make example-config``).

``gateway.example.toml`` is generated from :data:`gateway.config.SETTINGS`, so
every key is documented and the file cannot drift from the code (a test checks).
"""

from __future__ import annotations

from .config import SETTINGS, Config
from .settings import REQUIRED, sections
from .config_values import toml_value

__all__ = ["example"]

_HEADER = """\
# gateway.example.toml: every setting, with its default.
#
# Copy to /etc/gateway/gateway.toml (or anywhere) and run
#   gateway serve --config /etc/gateway/gateway.toml
# or set GATEWAY_CONFIG=/path/to/file. Check a file with `gateway check-config`.
#
# Environment variables (named after "env:") override the file. Unknown keys and
# bad values are refused at start-up with a message naming the key.
# Uncomment a line to change it.
"""

_SECTIONS = {
    "server": "Listeners, browser origins, shutdown.",
    "store": "Where conversations are kept.",
    "cluster": "Several instances sharing live replies through Redis (needs the postgres store).",
    "limits": "Bounds on connections, frames, queues and history.",
    "provider": "The LLM upstream: demo (built in), openai (any OpenAI-compatible API) or dashscope; "
    "with [[models]], only what every deployment shares (timeouts, limits, params, system_prompt).",
    "routing": "Retries and fallbacks before a reply's first token (docs/models.md).",
    "models": "Models people pick (the first is the default); without any, [provider] is the one model.",
    "deployments": "The upstreams that serve the models (each model lists its deployments).",
    "auth": "Client authentication (off unless a token file is configured).",
    "stt": "Voice input: speech to text for the page's microphone (off by default; docs/voice.md).",
    "log": "Structured logs on stdout (JSON lines for journald, console on a terminal).",
}

_EXAMPLES = {
    "server.allowed_origins": '["https://chat.example.com"]',
    "provider.params": "{ temperature = 0.7, max_tokens = 1024 }",
    "provider.system_prompt": '"You are a helpful assistant."',
    "store.retention": '"30d"',
    "models.id": '"qwen-plus"',
    "models.label": '"Qwen Plus"',
    "models.deployments": '["dashscope-a", "dashscope-b"]',
    "models.fallbacks": '["deepseek-r1"]',
    "deployments.id": '"dashscope-a"',
    "deployments.credential": '"dashscope_key"',
}


def example() -> str:
    lines = [_HEADER]
    section = ""
    for s in SETTINGS:
        if s.section != section:
            section = s.section
            header = f"# [[{section}]]" if sections(Config)[section][1] else f"[{section}]"
            lines += ["", f"# {_SECTIONS[section]}", header]
        lines.append(f"# {s.doc}" + (f"  (env: {s.env})" if s.env else ""))
        if s.name == "provider.api_key":
            lines.append("# Never put a key here in production: use api_key_file or LoadCredential=.")
        default = "(required)" if s.default is REQUIRED else toml_value(s.default)
        lines.append(f"# {s.key} = {_EXAMPLES.get(s.name) or default}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(example(), end="")
