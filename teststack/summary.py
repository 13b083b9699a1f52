"""Result summaries: the small files under ``docs/results/`` that the README's "Measured"
table points to (``--summary-dir DIR`` of ``chaos run`` and ``loadtest bench``; ``make
results`` regenerates them).

One JSON file per benchmark or scenario, ``DIR/<name>.json``: what was run (the command
that reproduces it), when, on which commit, how loaded the machine was, and the figures
the README quotes. Never raw logs or samples (those stay in ``reports/``), never a secret
(the figures are counts, rates and verdicts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    """The machine's cores and load average now (a run's numbers depend on both)."""
    return {"cores": psutil.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def write_summary(directory: str | Path, name: str, command: str, figures: dict[str, Any]
                  ) -> Path:
    """Write ``directory/name.json`` and return its path."""
    path = Path(directory) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime()),
           "commit": _commit(), "machine": machine(), **figures}
    path.write_text(json.dumps(_rounded(doc), indent=2) + "\n")
    return path


def _rounded(x: Any) -> Any:
    """Floats to 3 decimals: a summary is read by people and diffed, not re-computed."""
    if isinstance(x, float):
        return round(x, 3)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    return x


def add_summary_dir(parser: argparse.ArgumentParser) -> None:
    """``--summary-dir DIR`` (argparse) for every harness command that measures something."""
    parser.add_argument("--summary-dir", default=None, metavar="DIR",
                        help="also write a small result summary per run to DIR/NAME.json "
                             "(docs/results/ holds the committed ones: make results)")


def count_tests() -> dict[str, Any]:
    """What ``make test`` runs: ``pytest --collect-only -q -m "not slow"``'s last line."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m",
                          "not slow", "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    last = (out.stdout.strip().splitlines() or [""])[-1]
    m = re.match(r"(\d+)(?:/(\d+))? tests? collected(?: \((\d+) deselected\))?", last)
    if not m:
        raise RuntimeError(f"pytest --collect-only: unexpected output {last!r}")
    selected, total = int(m[1]), int(m[2] or m[1])
    return {"make_test_tests": selected, "all_tests": total, "slow_tests": total - selected,
            "collect_output": last.split(" in ")[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m teststack.summary",
                                 description="write docs/results/make-test.json: the count of "
                                             "tests `make test` runs")
    ap.add_argument("--summary-dir", default="docs/results", metavar="DIR")
    args = ap.parse_args(argv)
    path = write_summary(args.summary_dir, "make-test",
                         'pytest --collect-only -q -m "not slow"', count_tests())
    print(f"summary: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
