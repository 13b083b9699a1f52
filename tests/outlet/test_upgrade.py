"""Upgrading in the middle of an outage (issue 10) against the real stack.

An outlet from before token version 2 sealed batches in its ledger (ranges only) and
inserted them under version-1 tokens (`topic/partition:first-last,...`): both batches on
the local server, the second one not on azure (azure was down), nothing committed to
Kafka yet. The upgraded outlet starts on that state directory: it must rebuild those
batches under their *old* tokens, so that local drops both repeats and azure stores the
one it lacks; records after them get version-2 tokens. Nothing lost, nothing twice.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from outlet.ledger import Ledger
from outlet.tokens import Ranges, make_token_v1
from tests.conftest import OutletRun

pytestmark = pytest.mark.stack

RunFactory = Callable[..., OutletRun]
N = 40_000


def read_partitions(bootstrap: str, topic: str, want: int) -> dict[int, list[bytes]]:
    """Every record of the topic, per partition, in offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time()}",
                         "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out: dict[int, list[bytes]] = {p: [] for p in parts}
        deadline = time.monotonic() + 60
        while sum(map(len, out.values())) < want and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=1.0):
                if msg.error() is None:
                    out[msg.partition()].append(msg.value())  # type: ignore[index,arg-type]
        return out
    finally:
        consumer.close()


def old_outlet_insert(config: dict[str, Any], workdir: str, topic: str,
                      batches: list[tuple[Ranges, list[bytes], list[str]]]) -> None:
    """What the outlet before issue 10 did with each sealed batch: encode it once and
    insert it into the named destinations under its version-1 token. Runs in a fresh
    process: chDB (the codec) allows one data path per process."""
    from outlet.batch import EncodedJob
    from outlet.codec import FlowCodec
    from outlet.config import parse_config
    from outlet.writer import ClickHouseWriter

    cfg = parse_config(config)
    codec = FlowCodec(cfg.metadata, Path(workdir))
    dests = {d.name: ClickHouseWriter(d.connection) for d in cfg.destinations()}
    try:
        for ranges, records, names in batches:
            encoded = codec.encode(records)
            job = EncodedJob(seq=0, token=make_token_v1(topic, ranges), native=encoded.native,
                             rows=encoded.rows, ranges=ranges)
            for name in names:
                dests[name].insert(job)
    finally:
        codec.close()
        for w in dests.values():
            w.close()


def test_batches_sealed_by_an_older_outlet_keep_their_old_tokens(
    outlet_run: RunFactory, tmp_path: Path
) -> None:
    run = outlet_run(batch_size=10_000, wait_time="1s")
    run.produce(N)
    records = read_partitions(run.ep.kafka.bootstrap, run.topic, N)
    quarter = {p: len(v) // 4 for p, v in records.items()}
    first: Ranges = {p: (0, q - 1) for p, q in quarter.items() if q}
    second: Ranges = {p: (q, 2 * q - 1) for p, q in quarter.items() if q}

    def rows(ranges: Ranges) -> list[bytes]:
        return [v for p, (a, b) in ranges.items() for v in records[p][a:b + 1]]

    old = [(first, rows(first), ["primary", "azure"]), (second, rows(second), ["primary"])]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(old_outlet_insert, (run.config, str(tmp_path / "codec"), run.topic, old))
    assert run.rows("local") == len(old[0][1]) + len(old[1][1])
    assert run.rows("azure") == len(old[0][1])
    # ...and its ledger, in the format before token version 2: ranges only.
    state = Path(run.config["state"]["path"])
    led = Ledger(state, run.topic, run.config["kafka"]["consumer-group"])
    led.close()
    led.path.write_text("".join(
        json.dumps({"ranges": {str(p): [a, b] for p, (a, b) in r.items()}}) + "\n"
        for r in (first, second)))

    outlet = run.outlet()
    outlet.start()
    for name in ("local", "azure"):
        assert run.wait_rows(name, N) == N
        run.wait_stable(name)
        stats = run.stats(name)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (N, 0, run.bytes_sum), name
    deadline = time.monotonic() + 30
    while outlet.metric("outlet_destination_deduplication_pending_batches") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.5)

    def dedup(what: str, dest: str, attempt: str) -> float:
        return outlet.metric(f"outlet_destination_deduplicated_{what}_total",
                             destination=dest, attempt=attempt)

    # local had both old batches: both rebuilt ones dropped; azure had the first only
    assert dedup("batches", "primary", "repeat") == 2
    assert dedup("flows", "primary", "repeat") == len(old[0][1]) + len(old[1][1])
    assert dedup("batches", "azure", "repeat") == 1
    assert dedup("flows", "azure", "repeat") == len(old[0][1])
    assert dedup("batches", "primary", "first") == dedup("batches", "azure", "first") == 0
    assert outlet.stop() == 0
    tokens = [line for line in led.path.read_text().splitlines() if '"token"' in line]
    assert all('"token": "v2:' in t for t in tokens)  # new batches: version 2
