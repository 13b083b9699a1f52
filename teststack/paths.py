"""Where the repository and the harnesses' reports are (one place for both)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REPORTS_DIR = PROJECT_ROOT / "reports"
"""``reports/<harness>/...``: chaos, load, capacity, demo."""
