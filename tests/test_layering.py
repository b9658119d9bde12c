"""The sans-I/O core imports no I/O library (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = ("asyncio", "aiohttp", "websockets", "structlog", "redis", "psycopg")
PURE = (
    "gateway.sse",
    "gateway.inflate",
    "gateway.clientip",
    "gateway.wire",
    "gateway.replylog",
    "gateway.events",
    "gateway.bus",
    "gateway.auth",
    "gateway.auth.base",
    "gateway.auth.anonymous",
    "gateway.auth.tokens",
    "gateway.auth.proxy",
    "gateway.auth.jwt_auth",
    "gateway.handshake",
    "gateway.paging",
    "gateway.watchers",
    "gateway.reload",
    "gateway.stores",
    "gateway.stores.base",
    "gateway.stores.memory",
    "gateway.stores.listing",
    "gateway.quota",
    "gateway.stores.sqlite_schema",
    "gateway.stores.postgres_schema",
    "gateway.outbox_queue",
    "gateway.context",
    "gateway.exports",
    "gateway.errors",
    "gateway.config",
    "gateway.config_values",
    "gateway.settings",
    "gateway.models_config",
    "gateway.catalog",
    "gateway.routing",
    "gateway.providers.think",
    "gateway.providers.base",
    "gateway.providers.openai",
    "gateway.providers.dashscope",
    "gateway.cluster.names",
    "gateway.cluster.mirror",
    "gateway.cluster.scripts",
    "gateway.dictation",
    "gateway.stt.wav",
    "gateway.stt.base",
)

# Imports `module` in a fresh interpreter and prints the I/O libraries that got
# loaded, with, for each, the module whose import pulled it in.
PROBE = """
import builtins, importlib, json, sys
sys.path.insert(0, {root!r})
roots = set({libs!r})
culprits = {{}}
real_import = builtins.__import__

def tracking_import(name, globals=None, locals=None, fromlist=(), level=0):
    top = name.split(".")[0]
    if top in roots and top not in sys.modules and level == 0:
        culprits.setdefault(top, (globals or {{}}).get("__name__", "?"))
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = tracking_import
importlib.import_module({module!r})
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & roots)
print(json.dumps({{lib: culprits.get(lib, "?") for lib in loaded}}))
"""


def io_imports(module: str) -> dict[str, str]:
    """The I/O libraries importing ``module`` loads, mapped to who imported them."""
    code = PROBE.format(root=str(ROOT), libs=IO_LIBRARIES, module=module)
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, str] = json.loads(result.stdout)
    return loaded


def test_bare_interpreter_loads_no_io_library() -> None:
    """Control: the check starts clean, so what it finds comes from the module."""
    assert io_imports("json") == {}


def test_probe_detects_an_io_import() -> None:
    """Control: a module that does use asyncio is caught, and its importer named."""
    assert io_imports("gateway.outbox") == {"asyncio": "gateway.outbox"}


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_library(module: str) -> None:
    assert io_imports(module) == {}
