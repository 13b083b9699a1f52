"""Metric names: every exported name is a constant of outlet/metrics.py, and only those."""

from __future__ import annotations

import outlet.metrics as m


def test_every_exported_metric_has_its_name_constant() -> None:
    constants = {v for k, v in vars(m).items()
                 if k.isupper() and isinstance(v, str) and v.startswith("outlet_")}
    metrics = m.Metrics()
    metrics.enable_config_refresh()  # the orchestrator's metrics exist only when enabled
    everything = {f.name + "_total" if f.type == "counter" else f.name
                  for f in metrics.registry.collect()}
    # prometheus_client's standard process collector (CPU per flow: docs/operations.md)
    standard = {n for n in everything if n.startswith("process_")}
    assert "process_cpu_seconds_total" in standard
    exported = everything - standard
    assert exported - constants == set(), "add the constant next to the others"
    assert constants - exported == set(), "a constant names no exported metric"
