"""In-process tests of the batcher's size bound: ``maximum-batch-size`` counts flows.

A fake outlet stands in for the ledger, the codec and the fan-out (the batcher only
calls them); the flows of each record come from the real framing scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from outlet.batch import EncodedJob, RebuildPlan
from outlet.codec import EncodedBatch
from outlet.config import BatchConfig, OutletConfig
from outlet.kafka_input import Chunk
from outlet.metrics import Metrics
from outlet.pipeline import Batcher


def frames(n: int) -> bytes:
    return b"\x02\x48\x01" * n  # n length-delimited messages: bytes = 1


@dataclass
class FakeLedger:
    sealed: list[dict[int, tuple[int, int]]] = field(default_factory=list)

    def record(self, ranges: dict[int, tuple[int, int]], token: str) -> None:
        self.sealed.append(dict(ranges))


@dataclass
class FakeOutlet:
    cfg: OutletConfig
    metrics: Metrics = field(default_factory=Metrics)
    ledger: FakeLedger = field(default_factory=FakeLedger)
    batches: list[tuple[bytes, ...]] = field(default_factory=list)
    kafka: Any = field(default_factory=lambda: type("Kafka", (), {"assigned": set()})())
    identity: str = "test-cluster"  # the Kafka cluster's, in every token
    cluster_id: str = "test-cluster"

    def encode(self, records: tuple[bytes, ...]) -> EncodedBatch:
        self.batches.append(records)
        return EncodedBatch(native=b"x", rows=len(records), bad_records=())

    async def fan_out(self, job: EncodedJob) -> None:
        pass


def batcher(size: int, max_flows: int = 1000) -> tuple[Batcher, FakeOutlet]:
    cfg = OutletConfig(
        clickhouse=BatchConfig(maximum_batch_size=size, maximum_flows_per_record=max_flows)
    )
    fake = FakeOutlet(cfg)
    return Batcher(fake), fake  # type: ignore[arg-type]


def chunk(values: list[bytes], first: int = 0) -> Chunk:
    n = len(values)
    return Chunk(partitions=[0] * n, offsets=list(range(first, first + n)), values=values)


def flows(batch: tuple[bytes, ...]) -> int:
    return sum(max(len(r) // 3, 1) for r in batch)


async def test_batches_are_bounded_in_flows_not_records() -> None:
    b, fake = batcher(size=10)
    await b._add_chunk(chunk([frames(1)] * 5 + [frames(4)] * 3 + [frames(1)] * 7))
    await b._seal_current("shutdown")
    # 5 x 1 + 4 (the next 4 would make 13) | 4 + 4 + 1 + 1 | the last 5 x 1
    assert [flows(x) for x in fake.batches] == [9, 10, 5]
    assert [len(x) for x in fake.batches] == [6, 4, 5]
    # the sealed ranges cover every offset once, in order
    covered = [o for r in fake.ledger.sealed for o in range(r[0][0], r[0][1] + 1)]
    assert covered == list(range(15))


async def test_a_record_larger_than_a_batch_goes_alone() -> None:
    b, fake = batcher(size=10, max_flows=100)
    await b._add_chunk(chunk([frames(1), frames(30), frames(2)]))
    await b._seal_current("shutdown")
    assert [flows(x) for x in fake.batches] == [1, 30, 2]


async def test_bad_records_weigh_one() -> None:
    b, fake = batcher(size=4, max_flows=5)
    bad = [b"", b"\x00", frames(6), b"\xff\xff"]  # empty, zero-length, too many, framing
    await b._add_chunk(chunk([*bad, frames(1)]))
    await b._seal_current("shutdown")
    assert [len(x) for x in fake.batches] == [4, 1]


async def test_rebuild_path_counts_flows_too() -> None:
    b, fake = batcher(size=5)
    b.plans = [RebuildPlan(ranges={7: (0, 0)}, token="v2:test-cluster/flows/7:0-0")]  # p. 7
    await b._add_chunk(chunk([frames(2), frames(2), frames(2), frames(1)]))
    await b._seal_current("shutdown")
    assert [flows(x) for x in fake.batches] == [4, 3]


async def test_sealing_waits_for_nothing() -> None:
    """Sealing happens inside _add_chunk (no deadline needed)."""
    b, fake = batcher(size=2)
    with trio.fail_after(5):
        await b._add_chunk(chunk([frames(1)] * 4))
    assert [len(x) for x in fake.batches] == [2, 2]
