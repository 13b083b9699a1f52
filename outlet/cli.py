"""`outlet` command line: run, check-config, schema apply, --version."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

from outlet import remote_config
from outlet.config import (
    ConfigError,
    OutletConfig,
    certificate_warnings,
    dump_redacted,
    load_config,
)

log = logging.getLogger("outlet")
T = TypeVar("T")


def _version() -> str:
    try:
        return version("flow-outlet")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def _load(path: str) -> OutletConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"outlet: {exc}", file=sys.stderr)  # names the file; never quotes a value
        raise SystemExit(2) from None
    except OSError as exc:
        print(f"outlet: cannot read configuration {path}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None


def _remote(load: Callable[[], T], source: str) -> T:
    """A configuration from an orchestrator (outlet/remote_config.py), errors as for files."""
    try:
        return load()
    except (ConfigError, remote_config.FetchError, remote_config.StartupAborted) as exc:
        print(f"outlet: configuration from {source}:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from outlet.kafka_input import ClusterIdError
    from outlet.logs import setup_logging
    from outlet.metrics import Metrics
    from outlet.pipeline import ConfigSource, Outlet
    from outlet.reload import FileSource, OrchestratorPoller

    metrics = Metrics()
    source: ConfigSource
    if remote_config.is_remote(args.config):
        setup_logging()  # defaults, until the configuration arrives
        started = _remote(lambda: remote_config.startup(args, metrics), args.config)
        cfg = started.config
        source = OrchestratorPoller(started.remote, started.refresh_interval, started.etag,
                                    metrics)  # fmt: skip
    else:
        cfg = _load(args.config)
        source = FileSource(args.config, metrics)
    setup_logging(cfg.log_level, cfg.log_format)
    for warning in certificate_warnings(cfg):
        log.warning("configuration: %s", warning)
    _tune_gc()
    names = ", ".join(d.name for d in cfg.destinations())
    log.info("outlet %s starting: topic %s, destinations: %s", _version(), cfg.kafka.topic, names)
    from outlet.httpapi import HttpListenError

    try:
        trio.run(Outlet(cfg, metrics, source=source).run)
    except (ClusterIdError, HttpListenError) as exc:
        log.error("outlet cannot start: %s", exc)
        return 1
    log.info("outlet stopped cleanly")
    return 0


def _tune_gc() -> None:
    """Batches hold ~50k record objects: default GC thresholds rescan them constantly.

    Freeze what start-up allocated and collect the young generation far less often
    (NOTES.md measured a 2x throughput swing from GC thrash on per-flow objects).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 50, 50)


def cmd_check_config(args: argparse.Namespace) -> int:
    if remote_config.is_remote(args.file):
        cfg = _remote(lambda: remote_config.check(args), args.file)
    else:
        cfg = _load(args.file)
    for warning in certificate_warnings(cfg):
        print(f"outlet: warning: {warning}", file=sys.stderr)
    sys.stdout.write(dump_redacted(cfg))
    return 0


def cmd_schema_apply(args: argparse.Namespace) -> int:
    from outlet.logs import setup_logging
    from outlet.schema_apply import apply_schema

    if remote_config.is_remote(args.config):
        print("outlet: schema apply takes a configuration file: with an orchestrator, the"
              " orchestrator manages its site's schema", file=sys.stderr)  # fmt: skip
        return 2
    cfg = _load(args.config)
    setup_logging(cfg.log_level, cfg.log_format)
    return apply_schema(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outlet",
        description="Kafka flows -> decode -> enrich -> batch -> several ClickHouse destinations",
    )
    parser.add_argument("--version", action="version", version=f"outlet {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the outlet")
    run.add_argument(
        "--config", "-c", required=True,
        help="YAML configuration file, or an orchestrator URL http(s)://host:port[#index]",
    )  # fmt: skip
    remote_config.add_arguments(run, run=True)
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a configuration and print it normalized")
    check.add_argument("file", help="YAML configuration file or orchestrator URL")
    remote_config.add_arguments(check, run=False)
    check.set_defaults(func=cmd_check_config)
    schema = sub.add_parser("schema", help="manage the flows table")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    apply = schema_sub.add_parser("apply", help="create database and flows table everywhere")
    apply.add_argument("--config", "-c", required=True)
    apply.set_defaults(func=cmd_schema_apply)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
