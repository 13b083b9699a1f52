"""In-process tests of the batcher's size bound: ``maximum-batch-size`` counts flows.

The batcher's only output is its ``seal`` callable: a list collects the cuts; the flows
of each record come from the real framing scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from outlet.batch import Cut
from outlet.batcher import Batcher
from outlet.kafka_input import Chunk
from outlet.ledger import LedgerEntry


def frames(n: int) -> bytes:
    return b"\x02\x48\x01" * n  # n length-delimited messages: bytes = 1


@dataclass
class Sealed:
    cuts: list[Cut] = field(default_factory=list)

    async def __call__(self, cut: Cut) -> None:
        self.cuts.append(cut)

    @property
    def batches(self) -> list[tuple[bytes, ...]]:
        return [tuple(c.records) for c in self.cuts if c.records]


def batcher(size: int, max_flows: int = 1000) -> tuple[Batcher, Sealed]:
    sealed = Sealed()
    return Batcher(size, 3600.0, sealed, max_flows_per_record=max_flows), sealed


async def run(b: Batcher, *chunks: Chunk) -> None:
    """Feed the chunks, then close the channel: the batcher cuts what is left (shutdown)."""
    send, recv = trio.open_memory_channel[Chunk](len(chunks))
    for c in chunks:
        send.send_nowait(c)
    send.close()
    await b.run(recv)


def chunk(values: list[bytes], first: int = 0) -> Chunk:
    n = len(values)
    return Chunk(partitions=[0] * n, offsets=list(range(first, first + n)), values=values)


def flows(batch: tuple[bytes, ...]) -> int:
    return sum(max(len(r) // 3, 1) for r in batch)


async def test_batches_are_bounded_in_flows_not_records() -> None:
    b, fake = batcher(size=10)
    await run(b, chunk([frames(1)] * 5 + [frames(4)] * 3 + [frames(1)] * 7))
    # 5 x 1 + 4 (the next 4 would make 13) | 4 + 4 + 1 + 1 | the last 5 x 1
    assert [flows(x) for x in fake.batches] == [9, 10, 5]
    assert [len(x) for x in fake.batches] == [6, 4, 5]
    # the cut ranges cover every offset once, in order
    covered = [o for c in fake.cuts for o in range(c.ranges[0][0], c.ranges[0][1] + 1)]
    assert covered == list(range(15))


async def test_a_record_larger_than_a_batch_goes_alone() -> None:
    b, fake = batcher(size=10, max_flows=100)
    await run(b, chunk([frames(1), frames(30), frames(2)]))
    assert [flows(x) for x in fake.batches] == [1, 30, 2]


async def test_bad_records_weigh_one() -> None:
    b, fake = batcher(size=4, max_flows=5)
    bad = [b"", b"\x00", frames(6), b"\xff\xff"]  # empty, zero-length, too many, framing
    await run(b, chunk([*bad, frames(1)]))
    assert [len(x) for x in fake.batches] == [4, 1]


async def test_rebuild_path_counts_flows_too() -> None:
    b, fake = batcher(size=5)
    entry = LedgerEntry({7: (0, 0)}, "v2:test-cluster/flows/7:0-0")
    assert b.plan_rebuilds({0, 7}, [(entry, {7: (0, 0)})])  # a rebuild on partition 7
    await run(b, chunk([frames(2), frames(2), frames(2), frames(1)]))
    assert [flows(x) for x in fake.batches] == [4, 3]


async def test_sealing_waits_for_nothing() -> None:
    """Cutting by size happens as the chunk is added (no deadline needed)."""
    b, fake = batcher(size=2)
    with trio.fail_after(5):
        await run(b, chunk([frames(1)] * 4))
    assert [len(x) for x in fake.batches] == [2, 2]
    assert [c.reason for c in fake.cuts] == ["size", "size"]
