"""The ``loadtest`` command: ``loadtest run PROFILE``, ``loadtest capacity``, ``loadtest bench
outlet|dualwrite|codec`` and ``loadtest demo`` (docs/loadtest.md). The ``make`` targets ``load``,
``capacity``, ``bench-*`` and ``demo`` are thin wrappers around it.

The options shared with ``chaos run`` mean the same everywhere (``teststack/clikit.py``):
``--time-scale`` multiplies durations, ``--stack-dir``, ``--json`` and ``--yes``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from loadtest import bench, capacity, demo, run

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "run": ("replay a load profile (reports/load/PROFILE/)", run.configure, run.command),
    "capacity": ("capacity steps, sizing, scale-out, dual-write overhead (reports/capacity/)",
                 capacity.configure, capacity.command),
    "bench": ("benchmarks: backlog drains (outlet, dualwrite); the codec alone (codec)",
              bench.configure, bench.command),
    "demo": ("the main job for a minute, then what was stored (make demo)",
             demo.configure, demo.command),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadtest", description="Load tests, capacity planning and benchmarks of the "
        "flow outlet against the native stack (everything on 127.0.0.1, bounded in time).",
        epilog="Exit status: 0 passed, 1 an invariant failed or a run could not complete, "
               "2 bad usage, invalid profile, refused long run or no stack. See "
               "'loadtest COMMAND --help'.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, command) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        configure(p)
        p.set_defaults(func=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "codec"]:  # in-process, no stack, its own options
        from loadtest import bench_codec

        return bench_codec.main(argv[2:])
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
