"""`loadtest` command line (placeholder until the harness vocabulary lands)."""

from __future__ import annotations

import sys


def main() -> int:
    from loadtest.run import main as run_main

    return run_main(sys.argv[1:])
