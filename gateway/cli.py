"""The ``gateway`` command: ``serve``, ``check-config``, ``--version``.

Exit codes: 0 clean, 2 bad configuration or usage, 3 start-up failure
(e.g. an address already in use).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from . import __version__, config, logs
from .errors import ConfigError

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_STARTUP = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="WebSocket gateway for LLM chat.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in (
        ("serve", "run the gateway until SIGTERM or Ctrl-C"),
        ("check-config", "validate the configuration and print it, secrets masked"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", metavar="FILE", help="TOML file (default: $GATEWAY_CONFIG, else built-in defaults)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_CONFIG
    try:
        cfg = config.load(args.config, isatty=sys.stdout.isatty())
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        sys.stdout.write(config.render(cfg))
        for name in cfg.unknown_env:
            print(f"gateway: warning: unknown environment variable {name} is ignored", file=sys.stderr)
        return 0
    return _serve(cfg)


def _serve(cfg: config.Config) -> int:
    logs.configure(cfg.log_level, cfg.log_format, secrets=(cfg.provider.api_key,))
    log: Any = structlog.get_logger("gateway.cli")
    for name in cfg.unknown_env:
        log.warning("unknown_environment_variable", name=name)
    from .server import Gateway

    try:
        asyncio.run(Gateway(cfg).run())
    except OSError as exc:
        log.error("startup_failed", error=f"{exc.strerror or exc}", errno=exc.errno)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        pass
    return 0
