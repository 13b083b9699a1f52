"""What a chaos run produced: samples, checks, executed events, the result, metric lookups.

Shared by the runner (which fills them) and the report (which renders them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos.scenario import MetricSelector
from outlet import metrics as names
from teststack import promtext


def metric_value(metrics: dict[str, float], sel: MetricSelector | str,
                 **labels: str) -> float:
    """Sum of samples of ``sel`` whose labels include the selector's (and ``labels``)."""
    if isinstance(sel, str):
        sel = MetricSelector(sel)
    return promtext.metric_value(metrics, sel.name, **dict(sel.labels), **labels)


LOSS_METRICS = (names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL,)
"""What a destination reports it lost: given up without a spool, or dropped by its spool
(reasons ``spool_full`` and ``spool_error``; the same flows are also in
``outlet_spool_dropped_flows_total``, so that one is not added again)."""


def reported_loss(metrics: dict[str, float], label: str, **labels: str) -> int:
    return int(sum(metric_value(metrics, m, destination=label, **labels) for m in LOSS_METRICS))


@dataclass
class Sample:
    t: float  # seconds since the load started
    produced: int
    rate: float  # target load rate at that time
    rows: dict[str, int | None]
    written: dict[str, float | None]  # outlet_destination_flows_written_total (over restarts)
    lost: dict[str, float | None]  # retries_exceeded flows (over restarts)
    lag: float | None  # outlet_kafka_consumergroup_lag_messages, summed
    pending: float | None  # outlet_commit_pending_flows
    paused: float | None
    outlet_up: bool
    produced_by: dict[str, int] = field(default_factory=dict)  # multi-dc: per datacenter


@dataclass
class Check:
    name: str
    expected: str
    observed: str
    passed: bool
    detail: str = ""


@dataclass
class Event:
    at: float  # planned (scaled) time
    started: float  # actual start, seconds since load start
    ended: float
    action: str
    label: str
    params: dict[str, Any]
    ok: bool
    error: str = ""


@dataclass
class RunResult:
    scenario: str
    passed: bool
    checks: list[Check]
    events: list[Event]
    samples: list[Sample]
    info: dict[str, Any]
    destinations: dict[str, dict[str, Any]]
    metrics: dict[str, float]
    report_dir: Path
    error: str = ""

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "passed": self.passed,
            "error": self.error,
            "info": self.info,
            "checks": [asdict(c) for c in self.checks],
            "destinations": self.destinations,
            "events": [asdict(e) for e in self.events],
            "metrics": self.metrics,
            "samples": [asdict(s) for s in self.samples],
        }
