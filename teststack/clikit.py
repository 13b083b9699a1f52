"""The vocabulary every harness command shares (``chaos run``, ``loadtest run|capacity|bench``).

- ``--time-scale F`` multiplies every duration of a run (timeline, load, windows, steps):
  ``2`` makes it twice as long, ``0.5`` half as long. Rates are kept.
- ``--stack-dir D`` (default ``.stack``): reuse a healthy stack there or start one, and stop
  a stack the command started.
- ``--json [FILE]``: the verdict as JSON on stdout (or in FILE); while ``--json`` prints to
  stdout, everything else goes to stderr, subprocesses included.
- ``--yes``: start even when the run would last more than an hour (otherwise a terminal
  asks, and a non-interactive run refuses, exit 2).

Exit status: 0 every invariant held, 1 an invariant failed or a run could not complete,
2 bad usage, an invalid scenario/profile, a refused long run or a stack that would not start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LONG_RUN_S = 3600.0
STACK_DIR = ".stack"


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_common(parser: argparse.ArgumentParser, *, time_scale: str | None = None) -> None:
    """``--stack-dir``, ``--json``, ``--yes`` and (with its help text) ``--time-scale``."""
    if time_scale is not None:
        parser.add_argument("--time-scale", type=positive_float, default=1.0, metavar="F",
                            help=f"multiply {time_scale} by F: 2 = twice as long, 0.5 = half "
                                 "(default: 1)")
    add_stack_dir(parser)
    add_json(parser)
    parser.add_argument("--yes", action="store_true",
                        help="start even if the run would last more than an hour")


def add_stack_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack-dir", default=STACK_DIR, metavar="DIR",
                        help="reuse a healthy stack there or start one, stopped afterwards "
                             f"(default: {STACK_DIR})")


def add_json(parser: argparse.ArgumentParser, what: str = "the verdict") -> None:
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help=f"print {what} as JSON on stdout (or write it to FILE); the "
                             "progress then goes to stderr")


def human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def confirm_long_run(seconds: float, what: str, assume_yes: bool, *,
                     stdin: TextIO | None = None, out: TextIO | None = None) -> bool:
    """True to go on. Past an hour: say so; ask on a terminal; refuse otherwise (no ``--yes``)."""
    if seconds <= LONG_RUN_S:
        return True
    stdin = stdin or sys.stdin
    out = out or sys.stderr
    msg = f"{what} will take about {human_duration(seconds)}, more than an hour"
    if assume_yes:
        print(f"note: {msg} (--yes given)", file=out, flush=True)
        return True
    if stdin.isatty():
        print(f"{msg}. Continue? [y/N] ", end="", file=out, flush=True)
        return stdin.readline().strip().lower() in ("y", "yes")
    print(f"error: {msg}; pass --yes (make: YES=1) to run it anyway, or lower --time-scale",
          file=out, flush=True)
    return False


@dataclass
class Failure:
    check: str
    expected: str
    observed: str


@dataclass
class RunVerdict:
    """One run (a scenario, a profile, a capacity or bench part) in the JSON verdict."""

    name: str
    passed: bool
    report: str = ""  # the report's Markdown file
    wall_s: float | None = None
    failures: list[Failure] = field(default_factory=list)
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    harness: str  # "chaos run", "loadtest run", ...
    runs: list[RunVerdict] = field(default_factory=list)
    exit_code: int = EXIT_PASSED
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_PASSED

    def to_json(self) -> dict[str, Any]:
        return {"harness": self.harness, "passed": self.passed, "exit_code": self.exit_code,
                "error": self.error, "runs": [asdict(r) for r in self.runs]}


@contextlib.contextmanager
def verdict_output(target: str | None) -> Iterator[list[Verdict]]:
    """Collects the verdict (append it to the yielded list) and writes it as JSON at the end.

    With ``target == "-"`` file descriptor 1 is pointed at stderr for the duration, so
    progress lines, subprocess output and warnings cannot mix with the JSON on stdout.
    """
    verdicts: list[Verdict] = []
    if target is None:
        yield verdicts
        return
    saved: int | None = None
    if target == "-":
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    try:
        yield verdicts
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
        for v in verdicts:
            text = json.dumps(v.to_json(), indent=2, default=str) + "\n"
            if target == "-":
                sys.stdout.write(text)
                sys.stdout.flush()
            else:
                Path(target).write_text(text)
                print(f"verdict: {target}", file=sys.stderr)


def failures_of(checks: Sequence[Any]) -> list[Failure]:
    """Failed checks (objects with name/expected/observed/passed) as verdict failures."""
    return [Failure(c.name, c.expected, c.observed) for c in checks if not c.passed]


def run_with_verdict(harness: str, args: argparse.Namespace,
                     body: Callable[[argparse.Namespace, Verdict], int]) -> int:
    """``body(args, verdict)`` fills the verdict and returns the exit status; the verdict is
    written as JSON when ``--json`` asked for it (even after a usage error)."""
    with verdict_output(args.json) as verdicts:
        verdict = Verdict(harness)
        verdicts.append(verdict)
        verdict.exit_code = body(args, verdict)
    return verdict.exit_code


def module_main(prog: str, configure: Callable[[argparse.ArgumentParser], None],
                command: Callable[[argparse.Namespace], int],
                argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.run ...``: the same command as ``loadtest run ...``."""
    parser = argparse.ArgumentParser(prog=prog)
    configure(parser)
    return command(parser.parse_args(argv))
