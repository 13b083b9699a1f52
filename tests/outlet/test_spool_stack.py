"""The spool and circuit breaker against the real stack (Kafka, Toxiproxy, two ClickHouse).

Each test uses a fresh topic, consumer group and state directory, and empties both tables.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from flowgen.generator import FlowGenerator, GeneratorConfig
from flowgen.producer import produce
from outlet import metrics as names
from teststack.outlet_proc import OutletProcess, apply_schema, free_port, outlet_config
from teststack.stack import Endpoints
from teststack.toxiproxy import Toxiproxy
from teststack.verify import TableStats, reset_table, table_stats, wait_rows

pytestmark = pytest.mark.stack

RATE = 4000  # flows/s
PARTITIONS = 4


class Load(threading.Thread):
    """Produce `seconds` of flows at RATE in the background."""

    def __init__(self, bootstrap: str, topic: str, seconds: float, run_id: int) -> None:
        super().__init__(daemon=True)
        self.n = int(RATE * seconds)
        self.gen = FlowGenerator(GeneratorConfig(unique=True, run_id=run_id, encode_chunk=400))
        self.bootstrap, self.topic = bootstrap, topic
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            produce(self.bootstrap, self.topic, self.gen.records(self.n), rate=RATE)
        except BaseException as e:
            self.error = e

    def finish(self) -> None:
        self.join(120)
        assert not self.is_alive() and self.error is None, self.error

    @property
    def bytes_sum(self) -> int:
        return self.gen.expected_bytes_sum(self.n)


@pytest.fixture
def toxi(stack: Endpoints) -> Iterator[Toxiproxy]:
    client = stack.toxiproxy.client()
    client.reset()
    yield client
    client.reset()


def new_topic(ep: Endpoints) -> str:
    topic = f"spool-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": ep.kafka.bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=30)
    return topic


def make_outlet(
    ep: Endpoints, tmp: Path, spool: dict[str, Any] | None = None, cool_down: str = "2s"
) -> OutletProcess:
    topic = new_topic(ep)
    cfg = outlet_config(
        ep,
        state_path=str(tmp / "state"),
        http_port=free_port(),
        consumer_group=f"g-{uuid.uuid4().hex[:8]}",
        topic=topic,
        batch_size=5000,
        wait_time="500ms",
        azure_max_retries=2,
    )
    azure = cfg["additional-clickhouses"][0]
    azure["spool"] = {"enable": True, "fsync": "batch", **(spool or {})}
    azure["circuit-breaker"] = {"failure-threshold": 3, "cool-down": cool_down}
    proc = OutletProcess(tmp, cfg)
    tmp.mkdir(parents=True, exist_ok=True)
    proc.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    apply_schema(proc.config_path)
    for name in ("local", "azure"):
        reset_table(ep.clickhouse[name])
    return proc


def wait_for(cond: Any, timeout: float, step: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def spool_metric(o: OutletProcess, name: str) -> float:
    return o.metric(f"outlet_spool_{name}", destination="azure")


def lost_flows(o: OutletProcess) -> float:
    return o.metric(names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL, destination="azure")


def converge(ep: Endpoints, o: OutletProcess, n: int, timeout: float = 60) -> None:
    # /metrics answers from the start: before the spool is opened, its gauges are absent (0)
    assert o.wait_ready(timeout), o.log_tail()
    assert wait_rows(ep.clickhouse["local"], n, timeout) == n, o.log_tail()
    assert wait_for(lambda: spool_metric(o, "batches") == 0, timeout), o.log_tail()


def assert_same(ep: Endpoints, load: Load) -> TableStats:
    local = table_stats(ep.clickhouse["local"])
    azure = table_stats(ep.clickhouse["azure"])
    print(f"local {local}\nazure {azure}")
    assert local == TableStats(load.n, load.bytes_sum, load.n)
    assert azure == local
    return azure


def test_azure_outage_spooled_then_replayed(
    stack: Endpoints, toxi: Toxiproxy, tmp_path: Path
) -> None:
    o = make_outlet(stack, tmp_path)
    load = Load(stack.kafka.bootstrap, o.config["kafka"]["topic"], 40, run_id=11)
    o.start()
    try:
        load.start()
        time.sleep(5)
        toxi.disable(stack.clickhouse["azure"].proxy)
        t_out = time.monotonic()
        assert wait_for(lambda: o.metric(names.DESTINATION_CIRCUIT_STATE,
                                         destination="azure") == 1, 15)
        time.sleep(25 - (time.monotonic() - t_out))
        spooled_b, spooled_bytes = spool_metric(o, "batches"), spool_metric(o, "bytes")
        age = spool_metric(o, "oldest_age_seconds")
        toxi.enable(stack.clickhouse["azure"].proxy)
        t_heal = time.monotonic()
        load.finish()
        converge(stack, o, load.n)
        print(f"spooled at heal: {spooled_b:.0f} batches, {spooled_bytes / 1e6:.1f} MB, oldest "
              f"{age:.1f} s; drained {time.monotonic() - t_heal:.1f} s after heal")
        replayed = spool_metric(o, "replayed_flows_total")
        appended = o.metric(names.SPOOL_APPENDED_FLOWS_TOTAL, destination="azure")
        print(f"appended {appended:.0f} flows, replayed {replayed:.0f}; "
              f"native bytes/flow ~{spooled_bytes / max(1.0, appended):.0f} (rough)")
        assert spooled_b > 0 and age > 10
        assert replayed == appended > 0
        assert spool_metric(o, "dropped_flows_total") == 0
        assert lost_flows(o) == 0
        assert spool_metric(o, "corrupt_records_total") == 0
        assert o.metric(names.DESTINATION_CIRCUIT_STATE, destination="azure") == 0
        assert_same(stack, load)
    finally:
        o.stop()


def test_sigkill_while_spooling_and_while_replaying(
    stack: Endpoints, toxi: Toxiproxy, tmp_path: Path
) -> None:
    o = make_outlet(stack, tmp_path)
    azure = stack.clickhouse["azure"].proxy
    load = Load(stack.kafka.bootstrap, o.config["kafka"]["topic"], 30, run_id=12)
    o.start()
    try:
        load.start()
        time.sleep(3)
        toxi.disable(azure)
        assert wait_for(lambda: spool_metric(o, "batches") >= 5, 20), o.log_tail()
        o.kill()  # while spooling (the writer appends about every 0.5 s)
        o.start()  # /healthz answers from the start, before the spool is opened
        assert wait_for(lambda: "to replay" in o.log_path.read_text(), 30), o.log_tail()
        assert wait_for(lambda: spool_metric(o, "batches") >= 15, 30), o.log_tail()
        # Heal, but slowly: 400 ms per request, so the replay takes a while.
        toxi.add_toxic(azure, "latency", {"latency": 400, "jitter": 0}, name="slow")
        toxi.enable(azure)
        assert wait_for(lambda: spool_metric(o, "replayed_batches_total") >= 3, 30), o.log_tail()
        left = spool_metric(o, "batches")
        o.kill()  # while replaying
        print(f"killed while replaying with {left:.0f} batch(es) left")
        assert left > 0
        o.start()
        toxi.remove_toxic(azure, "slow")
        load.finish()
        converge(stack, o, load.n, timeout=70)
        assert lost_flows(o) == 0
        assert_same(stack, load)
    finally:
        o.stop()


def test_small_spool_drop_oldest_loses_exactly_the_metric(
    stack: Endpoints, toxi: Toxiproxy, tmp_path: Path
) -> None:
    o = make_outlet(stack, tmp_path, spool={"max-bytes": "1MiB", "when-full": "drop-oldest"})
    load = Load(stack.kafka.bootstrap, o.config["kafka"]["topic"], 25, run_id=13)
    o.start()
    try:
        load.start()
        time.sleep(3)
        toxi.disable(stack.clickhouse["azure"].proxy)
        time.sleep(15)
        assert spool_metric(o, "bytes") <= 1 << 20
        toxi.enable(stack.clickhouse["azure"].proxy)
        load.finish()
        converge(stack, o, load.n)
        time.sleep(2)
        dropped = spool_metric(o, "dropped_flows_total")
        dropped_b = spool_metric(o, "dropped_batches_total")
        lost = lost_flows(o)
        local = table_stats(stack.clickhouse["local"])
        azure = table_stats(stack.clickhouse["azure"])
        print(f"dropped {dropped:.0f} flows in {dropped_b:.0f} batches; local {local}; "
              f"azure {azure}")
        assert local == TableStats(load.n, load.bytes_sum, load.n)
        assert dropped > 0
        assert lost == dropped  # the spool_full reason is the only loss
        assert azure.duplicates == 0
        assert azure.rows == local.rows - dropped
    finally:
        o.stop()


def test_small_spool_block_applies_backpressure_then_loses_nothing(
    stack: Endpoints, toxi: Toxiproxy, tmp_path: Path
) -> None:
    # 256 KiB of lz4 batches (the default encoding) fill up as fast as 1 MiB of Native did
    o = make_outlet(stack, tmp_path, spool={"max-bytes": "256KiB", "when-full": "block"})
    load = Load(stack.kafka.bootstrap, o.config["kafka"]["topic"], 30, run_id=14)
    local = stack.clickhouse["local"]
    o.start()
    try:
        load.start()
        time.sleep(3)
        toxi.disable(stack.clickhouse["azure"].proxy)
        time.sleep(14)  # spool (256 KiB) and azure's queue (16 batches) fill up
        before = table_stats(local).rows
        time.sleep(6)
        after = table_stats(local).rows
        spooled = spool_metric(o, "bytes")
        print(f"local rows while blocked: {before} -> {after}; spool {spooled:.0f} bytes")
        assert after - before <= 5000  # at most the batch in flight: the primary waits too
        assert after < load.n
        toxi.enable(stack.clickhouse["azure"].proxy)
        load.finish()
        converge(stack, o, load.n, timeout=70)
        assert lost_flows(o) == 0
        assert spool_metric(o, "dropped_flows_total") == 0
        # the spool is empty, the last live batches may still be on their way to azure
        assert wait_rows(stack.clickhouse["azure"], load.n, 30) == load.n, o.log_tail()
        assert_same(stack, load)
    finally:
        o.stop()
