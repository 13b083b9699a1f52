"""Shared by the deploy/ tests: the outlet's metric names and those other work will add."""

from __future__ import annotations

import re

from chaos.scenario import known_metric_names

# Used by the shipped rules and dashboard ahead of the code that exports them. Once
# outlet/metrics.py exports one, the dashboard test requires its data and the entry must go
# (test_dashboard.py checks). The deduplication counters of the multi-datacenter issue are
# exported now.
NOT_YET_EXPORTED: frozenset[str] = frozenset()
# Exported only by an outlet configured from an orchestrator (orchestrator issue): absent
# by design from the harness's outlets, which run from a file.
ORCHESTRATOR_ONLY = frozenset({
    "outlet_config_last_refresh_timestamp_seconds",
    "outlet_config_refresh_errors_total",
    "outlet_config_refresh_interval_seconds",
})

_METRIC = re.compile(r"\b((?:outlet|process)_[a-z0-9_]+)\b")


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def unknown_metrics(expr: str) -> set[str]:
    """Names in ``expr`` that the outlet does not export (and no pending work adds)."""
    known = known_metric_names() or set()
    known |= {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    return {m for m in metric_names(expr)
            if m not in known and m not in NOT_YET_EXPORTED | ORCHESTRATOR_ONLY}
