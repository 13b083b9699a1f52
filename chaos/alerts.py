"""Alerts during a chaos run: which of the shipped rules fired and resolved, and when.

When the stack runs Prometheus (``teststack/prometheus.py``; started here for a scenario
with an ``alerts:`` expectation) the runner registers its outlet as a scrape target with a
``run`` label, and after the run reads the ``ALERTS`` series of that run back over the
run's time span: a timeline of pending, firing and resolved alerts in seconds since the
load started. :func:`check` compares it with the scenario's ``alerts:`` section:

    alerts:
      fire:
        - {alert: OutletAdditionalDestinationDown, labels: {destination: azure},
           within: 2m, resolves: true}
      others: forbid        # (default) any other alert fails the run, except
      allowed: [OutletSpoolFillingUp]   # these, which may fire (not checked)

``within`` counts from the start of the first timeline action and is not scaled by
``--time-scale`` (like recovery limits, it describes the system: the test Prometheus runs
the rules on a compressed clock, see docs/operations.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chaos.results import Check, Event
from chaos.scenario import AlertExpectation, Scenario, format_duration
from teststack import prometheus
from teststack.prometheus import Prometheus

# Target labels every alert of a run carries; left out when showing an alert's labels.
HIDDEN_LABELS = frozenset({"alertname", "alertstate", "job", "instance", "run", "outlet",
                           "__name__"})
RESOLVE_TIMEOUT = 30.0


@dataclass
class AlertWindow:
    """One activation of an alert; times in seconds since the load started."""

    alert: str
    labels: dict[str, str]
    pending: float | None  # None: it was already firing when observation began
    firing: float | None  # None: it was pending only
    resolved: float | None  # None: still active when observation ended

    def matches(self, exp: AlertExpectation) -> bool:
        return self.alert == exp.alert and all(self.labels.get(k) == v for k, v in exp.labels)

    def describe(self) -> str:
        return self.alert + _labels(self.labels)


def _labels(labels: dict[str, str] | tuple[tuple[str, str], ...]) -> str:
    items = sorted(labels.items() if isinstance(labels, dict) else labels)
    return "{" + ", ".join(f'{k}="{v}"' for k, v in items) + "}" if items else ""


def prometheus_for(sc: Scenario, stack_dir: Path, wanted: bool) -> Prometheus | None:
    """The stack's Prometheus; started when the scenario expects alerts (or ``wanted``)."""
    prom = prometheus.running(stack_dir)
    if prom is None and (wanted or sc.alerts is not None):
        prom = prometheus.start(stack_dir)
    return prom


def windows(series: list[dict[str, Any]], t0: float, end: float, step: float
            ) -> list[AlertWindow]:
    """Alert windows from a ``query_range`` of ``ALERTS`` (unix times, ``t0`` = load start).

    Samples of one alert (same labels, any state) closer than 1.5 steps form one window;
    it is resolved one step after its last sample unless that is the end of the range.
    """
    states: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, str]]] = {}
    for s in series:
        metric = s["metric"]
        key = (metric["alertname"],
               tuple(sorted((k, v) for k, v in metric.items() if k not in HIDDEN_LABELS)))
        states.setdefault(key, []).extend((float(t), metric["alertstate"]) for t, _ in s["values"])
    out: list[AlertWindow] = []
    for (alert, labels), samples in states.items():
        samples.sort()
        run: list[tuple[float, str]] = []
        for sample in [*samples, (float("inf"), "")]:
            if run and sample[0] - run[-1][0] > 1.5 * step:
                out.append(_window(alert, dict(labels), run, t0, end, step))
                run = []
            run.append(sample)
    return sorted(out, key=lambda w: (w.pending if w.pending is not None else w.firing) or 0.0)


def _window(alert: str, labels: dict[str, str], run: list[tuple[float, str]], t0: float,
            end: float, step: float) -> AlertWindow:
    firing = next((t for t, state in run if state == "firing"), None)
    last = run[-1][0]
    return AlertWindow(
        alert, labels,
        pending=round(run[0][0] - t0, 1) if run[0][1] == "pending" else None,
        firing=round(firing - t0, 1) if firing is not None else None,
        resolved=round(last + step - t0, 1) if last + step <= end else None,
    )


def observe(prom: Prometheus, sc: Scenario, run_label: str, t0: float,
            step: float = 1.0) -> dict[str, Any]:
    """The run's alert timeline (after the pipeline is quiet, before the outlet stops).

    Alerts the scenario expects to resolve get up to RESOLVE_TIMEOUT to do so: a rule only
    sees the recovery at its next scrape and evaluation.
    """
    selector = f'ALERTS{{run="{run_label}"}}'
    if sc.alerts is not None and any(e.resolves for e in sc.alerts.fire):
        names = "|".join(e.alert for e in sc.alerts.fire if e.resolves)
        prometheus.wait_for(
            lambda: not prom.query(f'ALERTS{{run="{run_label}", alertname=~"{names}"}}'),
            RESOLVE_TIMEOUT)
        time.sleep(2 * step)  # the query range must hold one sample past the resolution
    end = time.time()
    found = windows(prom.query_range(selector, t0 - 5, end, step), t0, end, step)
    return {
        "url": prom.url, "run": run_label, "start": t0, "end": end,
        "time_compression": prometheus.TIME_COMPRESSION,
        "timeline": [asdict(w) for w in found],
    }


def check(sc: Scenario, observed: dict[str, Any] | None, fault: tuple[float, float] | None
          ) -> list[Check]:
    """Checks of the ``alerts:`` expectation; ``fault`` = (first start, last end) in seconds
    since the load started."""
    if sc.alerts is None:
        return []
    if observed is None:
        return [Check("alerts", "recorded by the stack's Prometheus", "no Prometheus", False)]
    fired = [w for w in (AlertWindow(**d) for d in observed["timeline"]) if w.firing is not None]
    checks: list[Check] = []
    expected: list[AlertWindow] = []
    start, stop = fault or (0.0, 0.0)
    for exp in sc.alerts.fire:
        hits = [w for w in fired if w.matches(exp)]
        expected += hits
        name = f"alert {exp.alert}{_labels(exp.labels)}"
        first = min(hits, key=lambda w: w.firing or 0.0) if hits else None
        t = first.firing if first is not None else None
        checks.append(Check(
            f"{name} fires", f"within {format_duration(exp.within)} of the first fault "
                             f"({start:.1f}s)",
            f"firing at {t:.1f}s ({t - start:.1f}s after)" if t is not None else "never fired",
            t is not None and start <= t <= start + exp.within))
        if exp.resolves:
            unresolved = [w for w in hits if w.resolved is None]
            last = max((w.resolved or 0.0 for w in hits), default=None)
            seen = ("never fired" if not hits else "still firing at the end" if unresolved
                    else f"resolved at {last:.1f}s")
            checks.append(Check(f"{name} resolves", f"after the fault ends ({stop:.1f}s)", seen,
                                bool(hits) and not unresolved and (last or 0.0) >= stop))
    if sc.alerts.others == "forbid":
        extra = [w for w in fired if w not in expected and w.alert not in sc.alerts.allowed]
        besides = [e.alert for e in sc.alerts.fire] + [f"{a} (allowed)" for a in sc.alerts.allowed]
        checks.append(Check(
            "no other alert fires", "none" + (f" besides {', '.join(besides)}" if besides else ""),
            ", ".join(f"{w.describe()} at {w.firing:.1f}s" for w in extra) or "none",
            not extra))
    return checks


def render_markdown(observed: dict[str, Any] | None) -> list[str]:
    """The report's alert timeline section."""
    if observed is None:
        return ["", "## Alerts", "", "Not recorded: no Prometheus in the stack (`chaos stack up "
                "--with-prometheus` or `chaos run --with-prometheus`)."]
    lines = ["", "## Alerts (the stack's Prometheus; every `for:` divided by "
             f"{observed['time_compression']})", ""]
    if not observed["timeline"]:
        return [*lines, "No alert was pending or firing during the run."]
    lines += ["| alert | labels | pending | firing | resolved |", "|---|---|---|---|---|"]

    def at(t: float | None, missing: str) -> str:
        return f"{t:.1f}s" if t is not None else missing

    for d in observed["timeline"]:
        w = AlertWindow(**d)
        lines.append(f"| {w.alert} | {_labels(w.labels).strip('{}') or '-'} | "
                     f"{at(w.pending, '-')} | {at(w.firing, 'never')} | "
                     f"{at(w.resolved, 'still active')} |")
    return lines


def fault_span(events: list[Event]) -> tuple[float, float] | None:
    """(start of the first timeline action, end of the last) in seconds since load start."""
    if not events:
        return None
    return min(e.started for e in events), max(e.ended for e in events)
