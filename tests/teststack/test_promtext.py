"""The one Prometheus text parser (prometheus_client's) and metric selection on a scrape."""

from __future__ import annotations

import math

from prometheus_client import generate_latest

from outlet import metrics as names
from outlet.metrics import Metrics
from teststack.promtext import by_label, histogram_buckets, metric_value, parse_metrics


def _scrape() -> dict[str, float]:
    m = Metrics()
    m.dest_flows.labels(destination="primary").inc(10)
    m.dest_flows.labels(destination="azure").inc(4)
    m.dest_flows.labels(destination="azure-2").inc(1)
    m.dest_errors.labels(destination="azure", error='say "hi"\\').inc()
    m.dest_insert_seconds.labels(destination="azure").observe(0.3)
    m.kafka_lag.labels(partition="0").set(5)
    m.kafka_lag.labels(partition="1").set(7)
    return parse_metrics(generate_latest(m.registry).decode())


def test_keys_keep_the_exposition_format() -> None:
    s = _scrape()
    assert s[f'{names.DESTINATION_FLOWS_WRITTEN_TOTAL}{{destination="azure"}}'] == 4
    assert s[f'{names.DESTINATION_INSERT_ERRORS_TOTAL}{{destination="azure",'
             f'error="say \\"hi\\"\\\\"}}'] == 1  # escapes as Prometheus writes them
    assert names.KAFKA_PAUSED in s  # no labels: the bare name


def test_selection_matches_label_values_exactly() -> None:
    s = _scrape()
    total = names.DESTINATION_FLOWS_WRITTEN_TOTAL
    assert metric_value(s, total) == 15
    assert metric_value(s, total, destination="azure") == 4  # not azure-2
    assert metric_value(s, total, destination="gcp") == 0
    assert metric_value(s, names.DESTINATION_INSERT_ERRORS_TOTAL, error='say "hi"\\') == 1
    assert metric_value(s, names.KAFKA_CONSUMERGROUP_LAG_MESSAGES) == 12
    assert by_label(s, total, "destination") == {"primary": 10, "azure": 4, "azure-2": 1}
    buckets = histogram_buckets(s, names.DESTINATION_INSERT_DURATION_SECONDS,
                                destination="azure")
    assert buckets[0.25] == 0 and buckets[0.5] == 1 and buckets[math.inf] == 1
