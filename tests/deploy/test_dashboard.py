"""deploy/grafana/outlet.json, statically (the live evaluation runs in tests/chaos: the
azure-partition run evaluates every query against the stack's Prometheus)."""

from __future__ import annotations

from chaos.scenario import known_metric_names
from tests.deploy.conftest import NOT_YET_EXPORTED, unknown_metrics
from tests.deploy.dashboard import dashboard, panels, queries, substitute


def test_dashboard_shape() -> None:
    d = dashboard()
    assert d["uid"] == "flow-outlet" and d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
    # one row per datacenter for everything but the overview
    rows = [p for p in d["panels"] if p["type"] == "row"]
    assert [r.get("repeat") for r in rows] == [None] + ["datacenter"] * (len(rows) - 1)


def test_dashboard_covers_what_the_issue_asks() -> None:
    exprs = " ".join(e for _, e in queries())
    for metric in ("outlet_destination_flows_written_total",
                   "outlet_destination_insert_duration_seconds_bucket",
                   "outlet_destination_insert_errors_total", "outlet_destination_retries_total",
                   "outlet_spool_bytes", "outlet_spool_replayed_flows_total",
                   "outlet_destination_circuit_state", "outlet_kafka_consumergroup_lag_messages",
                   "outlet_commit_pending_flows", "outlet_destination_deduplicated_batches_total",
                   "process_cpu_seconds_total"):
        assert metric in exprs, metric


def test_dashboard_queries_use_known_metrics_and_variables() -> None:
    assert len(panels()) >= 20
    for where, expr in queries():
        assert not unknown_metrics(expr), where
        substitute(expr, {"datacenter": ".*", "instance": ".*"})  # no other variable


def test_pending_metrics_are_not_exported_yet() -> None:
    """When the outlet exports them, their panels must return data: drop them from
    NOT_YET_EXPORTED (tests/deploy/conftest.py)."""
    assert not NOT_YET_EXPORTED & (known_metric_names() or set())
