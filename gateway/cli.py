"""The ``gateway`` command: ``serve``, ``check-config``, ``conversations``, ``usage``, ``--version``.

Exit codes: 0 clean; 2 bad configuration or usage, or a start that needs a person
first (a database newer than this code, a missing event loop): systemd does not
retry it; 3 a start-up failure that may pass (e.g. an address already in use).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import structlog

from . import __version__, config, logs
from .errors import EXIT_CONFIG, EXIT_STARTUP, ConfigError, StartupError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="WebSocket gateway for LLM chat.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in (
        ("serve", "run the gateway until SIGTERM or Ctrl-C"),
        ("check-config", "validate the configuration and print it, secrets masked"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        _config_arg(cmd)
    conv = sub.add_parser("conversations", help="manage stored conversations", description="manage stored conversations")
    conv_sub = conv.add_subparsers(dest="action", metavar="ACTION", required=True)
    prune = conv_sub.add_parser("prune", help="delete conversations idle longer than a duration")
    prune.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m")
    _config_arg(prune)
    export = conv_sub.add_parser("export", help="print one conversation as JSON")
    export.add_argument("conversation_id", metavar="ID")
    _config_arg(export)
    usage = sub.add_parser(
        "usage", help="tokens used, per subject and model, from the ledger",
        description="tokens used, per subject and model, from the ledger (one entry per reply; "
        "'estimated' counts the replies whose provider reported no usage)",
    )
    usage.add_argument("--subject", metavar="SUBJECT", help="one subject only, e.g. token:alice (default: all)")
    usage.add_argument("--since", default="7d", metavar="AGE", help="how far back: 24h, 7d, 30d (default 7d)")
    _config_arg(usage)
    store = sub.add_parser("store", help="move conversations between stores", description="move conversations between stores")
    store_sub = store.add_subparsers(dest="action", metavar="ACTION", required=True)
    copy = store_sub.add_parser(
        "copy", help="copy every conversation into another store, then verify (safe to run again)",
        description="copy every conversation into another store, then verify (safe to run again); "
        "a PostgreSQL password comes from [store] password_file or $CREDENTIALS_DIRECTORY/database_password",
    )
    copy.add_argument("--from", dest="source", required=True, metavar="LOCATION", help="e.g. sqlite:///var/lib/gateway/conversations.db")
    copy.add_argument("--to", dest="target", required=True, metavar="LOCATION", help="e.g. postgresql://gateway@127.0.0.1/gateway")
    _config_arg(copy)
    rollout = sub.add_parser(
        "rollout", help="restart the gateway@N instances one at a time, each once the previous one is ready",
        description="restart the gateway@N instances (systemd/gateway@.service) one at a time: each with "
        "systemctl restart, then only once its /readyz answers 200 the next; stop at the first that does not "
        "come back",
    )
    rollout.add_argument("units", nargs="*", metavar="UNIT", help="default: every active gateway@N unit")
    rollout.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                         help="for each instance to stop and be ready again (default 120)")
    return parser


def _config_arg(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--config", metavar="FILE", help="TOML file (default: $GATEWAY_CONFIG, else built-in defaults)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_CONFIG
    if args.command == "rollout":  # systemd's business: no configuration needed
        from . import rollout

        units = args.units or rollout.active_instances()
        return 0 if rollout.rollout(units, timeout=args.timeout, say=lambda line: print(line, flush=True)) else 1
    try:
        cfg = config.load(args.config, isatty=sys.stdout.isatty())
    except ConfigError as exc:  # logging is not set up yet: said on stderr
        print(f"gateway: configuration error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    if args.command == "conversations":
        return _conversations(cfg, args)
    if args.command == "usage":
        from . import usage_report

        return usage_report.run(cfg, args.subject, args.since)
    if args.command == "store":
        from .store_copy import run

        return run(args.source, args.target, password=cfg.store.password)
    if args.command == "check-config":
        sys.stdout.write(config.render(cfg))
        for name in cfg.unknown_env:
            print(f"gateway: warning: unknown environment variable {name} is ignored", file=sys.stderr)
        return 0
    return _serve(cfg, lambda: config.load(args.config, isatty=sys.stdout.isatty()))


def _conversations(cfg: config.Config, args: argparse.Namespace) -> int:
    if cfg.store.backend == "memory":
        print("gateway: the store backend is memory: there is nothing stored to manage", file=sys.stderr)
        return EXIT_CONFIG
    if args.action == "prune":
        try:
            age = config.parse_duration(args.older_than)
        except ValueError as exc:
            print(f"gateway: --older-than: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if cfg.store.backend == "sqlite" and not cfg.store.path.exists():
        print(f"gateway: no conversation store at {cfg.store.path}", file=sys.stderr)
        return EXIT_CONFIG
    from .stores import make_store

    async def run() -> int:
        store = make_store(cfg)
        await store.open(recover=False)
        try:
            if args.action == "prune":
                print(f"deleted {await store.prune(age)} conversation(s) idle for more than {args.older_than}")
                return 0
            document = await store.export(args.conversation_id)
        finally:
            await store.close()
        if document is None:
            print(f"gateway: no conversation {args.conversation_id}", file=sys.stderr)
            return 1
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0

    from .stores import StoreUnavailable, StoreUnusable

    try:
        return asyncio.run(run())
    except (StoreUnavailable, StoreUnusable) as exc:
        print(f"gateway: the conversation store: {exc}", file=sys.stderr)
        return EXIT_STARTUP if isinstance(exc, StoreUnavailable) else EXIT_CONFIG


def _event_loop(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for or, with ``auto``, when installed; else asyncio's own loop."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise StartupError(
                    "server.event_loop is uvloop, which is not installed (pip install 'llm-ws-gateway[uvloop]')",
                    retry=False,
                ) from None
        else:
            return uvloop.new_event_loop
    return None


def _tune_gc(threshold: int) -> None:
    """Young collections every ``threshold`` allocations instead of Python's 700. Each one
    promotes what is alive at that instant, much of it dead soon after; the promoted count
    is what starts a full collection, which walks every object of every open connection:
    hundreds of milliseconds with 10,000 of them, every stream paused meanwhile. One full
    collection now, while nothing is served: the imports' count of promoted objects would
    otherwise make the first automatic collection a full one, under traffic."""
    if threshold:
        gc.collect()
        gc.set_threshold(threshold, *gc.get_threshold()[1:])


def _on_journal() -> bool:
    """Whether stdout is the journal stream systemd set up (sd_journal_stream_fd(3))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return bool(stream) and f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def log_secrets(cfg: config.Config) -> tuple[str, ...]:
    """Every key and password the configuration holds: masked wherever a log line has them."""
    keys = (d.api_key for d in cfg.deployments)
    return (cfg.provider.api_key, *keys, cfg.stt.api_key, cfg.store.password, cfg.cluster.password)


def _serve(cfg: config.Config, reload: Callable[[], config.Config]) -> int:
    journal = _on_journal()

    def configure_logs(cfg: config.Config) -> None:
        logs.configure(cfg.log.level, cfg.log.format, secrets=log_secrets(cfg), journal=journal)

    configure_logs(cfg)
    log: Any = structlog.get_logger("gateway.cli")
    for name in cfg.unknown_env:
        log.warning("unknown_environment_variable", name=name)
    from .server import Gateway

    _tune_gc(cfg.server.gc_threshold)
    try:
        with asyncio.Runner(loop_factory=_event_loop(cfg.server.event_loop)) as runner:
            runner.run(Gateway(cfg, reload=reload, configure_logs=configure_logs).run())
    except StartupError as exc:
        errno = getattr(exc.__cause__, "errno", None)
        log.error("startup_failed", error=exc.reason, errno=errno, exit_code=exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        pass
    return 0
