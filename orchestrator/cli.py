"""`orchestrator` command line: run, check-config, --version."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

import yaml

from orchestrator.config import OrchestratorConfig, load_orchestrator_config, redacted_dict
from outlet.config import REDACTED, ConfigError


def _version() -> str:
    try:
        return version("flow-outlet")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def _load(path: str) -> OrchestratorConfig:
    try:
        return load_orchestrator_config(path)
    except ConfigError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    import trio

    from orchestrator.service import Orchestrator
    from outlet.logs import setup_logging

    cfg = _load(args.config)
    setup_logging(cfg.log_level, cfg.log_format)
    logging.getLogger("orchestrator").info(
        "orchestrator %s starting: database %s on %s%s", _version(), cfg.clickhousedb.database,
        cfg.clickhousedb.servers[0], f" (cluster {cfg.cluster})" if cfg.cluster else "",
    )  # fmt: skip
    trio.run(Orchestrator(cfg, config_path=args.config).run)
    logging.getLogger("orchestrator").info("orchestrator stopped cleanly")
    return 0


def _redact_served(document: object, literals: tuple[str, ...]) -> object:
    """Served documents with any allowed literal password shown as '******'."""
    text = yaml.safe_dump(document, sort_keys=False)
    doc = yaml.safe_load(text)
    for path in literals:
        node = doc
        keys = path.replace("[", ".[").split(".")
        for key in keys[:-1]:
            node = node[int(key[1:-1])] if key.startswith("[") else node[key]
        node[keys[-1]] = REDACTED
    return doc


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    out = {
        "orchestrator": redacted_dict(cfg),
        "outlet": [_redact_served(s.document, s.literal_secrets) for s in cfg.outlets],
    }
    sys.stdout.write(yaml.safe_dump(out, sort_keys=False, default_flow_style=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Serve outlet configurations and manage this site's ClickHouse schema",
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the orchestrator")
    run.add_argument("--config", "-c", required=True, help="orchestrator.yaml")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser(
        "check-config", help="validate a configuration; print it and what each outlet gets"
    )
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
