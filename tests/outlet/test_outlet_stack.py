"""The outlet core against the real stack: Kafka -> outlet -> ClickHouse (issue 3)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from flowgen.generator import garbage_records
from outlet import metrics as names
from tests.conftest import OutletRun

pytestmark = pytest.mark.stack

RunFactory = Callable[..., OutletRun]


def background(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_200k_flows_stored_exactly(outlet_run: RunFactory) -> None:
    run = outlet_run(destinations=("local",))
    run.produce(200_000)
    outlet = run.outlet()
    outlet.start()
    assert run.wait_rows("local", 200_000, timeout=120) == 200_000
    stats = run.stats("local")
    assert stats.rows == 200_000
    assert stats.bytes_sum == run.bytes_sum
    assert stats.duplicates == 0
    assert outlet.metric(names.FLOWS_RECEIVED_TOTAL) == 200_000
    assert outlet.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="primary") == 200_000
    assert outlet.stop() == 0, outlet.log_tail()


def test_sigkill_mid_stream_loses_nothing(outlet_run: RunFactory) -> None:
    run = outlet_run(destinations=("local",), batch_size=10_000, wait_time="500ms")
    producer = background(lambda: run.produce(150_000, rate=30_000))
    outlet = run.outlet()
    outlet.start()
    deadline = time.monotonic() + 60
    while run.rows("local") < 40_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    outlet.kill()
    producer.join()
    outlet.start()
    assert run.wait_rows("local", 150_000, timeout=120) >= 150_000
    run.wait_stable("local")
    stats = run.stats("local")
    assert stats.distinct_flows == 150_000, "flows lost"
    assert stats.duplicates == 0, "the ledger must rebuild identical batches (same tokens)"
    assert stats.bytes_sum == run.bytes_sum
    assert outlet.stop() == 0


def test_clickhouse_outage_pauses_and_resumes(outlet_run: RunFactory) -> None:
    run = outlet_run(destinations=("local",), batch_size=10_000, wait_time="500ms")
    toxi = run.ep.toxiproxy.client()
    outlet = run.outlet()
    outlet.start()
    producer = background(lambda: run.produce(300_000, rate=10_000))
    time.sleep(3)
    toxi.disable(run.ch("local").proxy)
    rows_at_cut = run.rows("local")
    paused_seen = False
    errors_seen = 0.0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        paused_seen |= outlet.metric(names.KAFKA_PAUSED) == 1
        errors_seen = outlet.metric(names.DESTINATION_INSERT_ERRORS_TOTAL, destination="primary")
        time.sleep(0.5)
    rows_during = run.rows("local")
    toxi.enable(run.ch("local").proxy)
    producer.join()
    assert rows_during - rows_at_cut <= 20_000, "nothing can be stored while the proxy is down"
    assert errors_seen > 0
    assert paused_seen, "consumption must pause (backpressure) while the primary is down"
    assert run.wait_rows("local", 300_000, timeout=120) == 300_000
    stats = run.stats("local")
    assert (stats.rows, stats.duplicates, stats.bytes_sum) == (300_000, 0, run.bytes_sum)
    assert outlet.metric(names.KAFKA_PAUSED) == 0
    assert outlet.stop() == 0


def test_garbage_records_are_counted_and_skipped(outlet_run: RunFactory) -> None:
    run = outlet_run(destinations=("local",), wait_time="500ms")
    garbage = garbage_records(seed=3)
    producer = Producer({"bootstrap.servers": run.ep.kafka.bootstrap})
    from flowgen.generator import FlowGenerator, GeneratorConfig

    gen = FlowGenerator(GeneratorConfig(seed=11, unique=True))
    valid = gen.batch(20_000)
    expected_bytes = gen.expected_bytes_sum(20_000)
    # Interleave: every partition gets garbage between valid records.
    for i, record in enumerate(valid):
        producer.produce(run.topic, record, partition=i % 4)
        if i % 2_000 == 0:
            for bad in garbage:
                producer.produce(run.topic, bad, partition=(i // 2_000) % 4)
        if i % 5_000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    bad_count = len(garbage) * 10
    outlet = run.outlet()
    outlet.start()
    assert run.wait_rows("local", 20_000, timeout=60) == 20_000
    stats = run.stats("local")
    assert (stats.rows, stats.duplicates, stats.bytes_sum) == (20_000, 0, expected_bytes)
    deadline = time.monotonic() + 10
    counted = 0.0
    while time.monotonic() < deadline:
        counted = outlet.metric(names.DECODE_ERRORS_TOTAL)
        if counted >= bad_count:
            break
        time.sleep(0.3)
    assert counted == bad_count
    assert outlet.alive()
    # Committed to the end: nothing is stuck behind a poison record.
    lag = _wait_lag_zero(outlet)
    assert lag == 0
    assert outlet.stop() == 0


def _wait_lag_zero(outlet: Any, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    lag = -1.0
    while time.monotonic() < deadline:
        lag = outlet.metric(names.KAFKA_CONSUMERGROUP_LAG_MESSAGES)
        if lag == 0 and outlet.metric(names.COMMIT_PENDING_BATCHES) == 0:
            return lag
        time.sleep(0.5)
    return lag
