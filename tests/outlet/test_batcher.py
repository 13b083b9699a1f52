"""In-process tests of the batcher: ``maximum-batch-size`` counts flows, batches are per
partition, one shared timer, revoked partitions dropped.

The batcher's only output is its ``seal`` callable: a list collects the cuts; the flows
of each record come from the real framing scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio
import trio.testing

from outlet.batch import Cut, RebuildPlan
from outlet.batcher import Batcher
from outlet.kafka_input import Assigned, Barrier, Chunk


def frames(n: int) -> bytes:
    return b"\x02\x48\x01" * n  # n length-delimited messages: bytes = 1


@dataclass
class Sealed:
    cuts: list[Cut] = field(default_factory=list)
    rounds: list[list[Cut]] = field(default_factory=list)  # what each seal call got

    async def __call__(self, cuts: Sequence[Cut]) -> None:
        self.cuts.extend(cuts)
        self.rounds.append(list(cuts))

    @property
    def batches(self) -> list[tuple[bytes, ...]]:
        return [tuple(c.records) for c in self.cuts if c.records]


def batcher(size: int, max_flows: int = 1000) -> tuple[Batcher, Sealed]:
    sealed = Sealed()
    return Batcher(size, 3600.0, sealed, max_flows_per_record=max_flows), sealed


def assigned(*partitions: int, plans: tuple[RebuildPlan, ...] = ()) -> Assigned:
    return Assigned(epoch=1, assigned=frozenset(partitions or (0,)), plans=plans)


async def run(b: Batcher, *chunks: Chunk) -> None:
    """Assign partition 0 (unless the first item is an assignment), feed the chunks, then
    close the channel: the batcher cuts what is left (shutdown)."""
    items = list(chunks) if chunks and isinstance(chunks[0], Assigned) else [assigned(), *chunks]
    send, recv = trio.open_memory_channel[Chunk](len(items))
    for c in items:
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
    plan = RebuildPlan(ranges={0: (0, 0)}, token="t", seq=100, epoch=1)  # one record, rebuilt
    await run(b, assigned(0, plans=(plan,)), chunk([frames(2)] * 4 + [frames(1)] * 3))
    assert [c.reason for c in fake.cuts] == ["rebuild", "size", "size"]
    assert [flows(x) for x in fake.batches] == [2, 4, 5]


async def test_sealing_waits_for_nothing() -> None:
    """Cutting by size happens as the chunk is added (no deadline needed)."""
    b, fake = batcher(size=2)
    with trio.fail_after(5):
        await run(b, chunk([frames(1)] * 4))
    assert [len(x) for x in fake.batches] == [2, 2]
    assert [c.reason for c in fake.cuts] == ["size", "size"]


def mixed(*runs: tuple[int, int, int]) -> Chunk:
    """A chunk of (partition, first offset, count) runs of one-flow records."""
    c = Chunk()
    for p, first, n in runs:
        c.partitions += [p] * n
        c.offsets += list(range(first, first + n))
        c.values += [frames(1)] * n
    return c


async def test_each_batch_holds_one_partitions_contiguous_range() -> None:
    b, fake = batcher(size=4)
    await run(b, assigned(0, 1, 2), mixed((0, 0, 3), (1, 0, 5), (0, 3, 2), (2, 10, 1)))
    got = sorted((next(iter(c.ranges.items())), c.reason) for c in fake.cuts)
    assert all(len(c.ranges) == 1 for c in fake.cuts)
    assert got == [
        ((0, (0, 3)), "size"), ((0, (4, 4)), "shutdown"),
        ((1, (0, 3)), "size"), ((1, (4, 4)), "shutdown"),
        ((2, (10, 10)), "shutdown"),
    ]
    assert fake.rounds[-1] == [c for c in fake.cuts if c.reason == "shutdown"], (
        "the open batches of every partition are sealed together"
    )


async def test_one_timer_seals_every_partition_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The oldest open batch decides: once it waited max_wait per partition holding
    records, every partition's batch is cut, in one seal call (one Kafka commit), then
    nothing more until new records come."""
    fake = Sealed()
    b = Batcher(100, 5.0, fake)
    send, recv = trio.open_memory_channel[Chunk](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run, recv)
        send.send_nowait(assigned(0, 1, 2))
        send.send_nowait(mixed((0, 0, 2)))
        await trio.sleep(3)
        send.send_nowait(mixed((1, 0, 1), (2, 0, 1)))
        await trio.sleep(11.5)  # three partitions hold records: 15 s after the first
        assert fake.rounds == []
        await trio.sleep(1)
        assert [sorted(c.ranges) for c in fake.rounds[0]] == [[0], [1], [2]]
        assert all(c.reason == "time" for c in fake.rounds[0])
        await trio.sleep(60)
        assert len(fake.rounds) == 1
        send.close()


async def test_a_lone_partition_waits_max_wait(autojump_clock: trio.testing.MockClock) -> None:
    fake = Sealed()
    b = Batcher(100, 5.0, fake)
    send, recv = trio.open_memory_channel[Chunk](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run, recv)
        send.send_nowait(assigned(0, 1, 2))
        send.send_nowait(mixed((1, 0, 2)))
        await trio.sleep(5.5)
        assert [(c.ranges, c.reason) for c in fake.cuts] == [({1: (0, 1)}, "time")]
        send.close()


async def test_low_traffic_inserts_about_once_per_max_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Four partitions, a trickle on each: the batches of a process are cut about once per
    max_wait in all (as one batch over every partition was before issue 12), not four
    times as often, and no record waits more than max_wait per partition (the latency
    price, docs/dual-write.md)."""
    @dataclass
    class Timed(Sealed):
        at: list[float] = field(default_factory=list)

        async def __call__(self, cuts: Sequence[Cut]) -> None:
            await super().__call__(cuts)
            self.at.append(trio.current_time())

    fake = Timed()
    b = Batcher(10_000, 1.0, fake)
    send, recv = trio.open_memory_channel[Chunk](10)
    read_at: dict[tuple[int, int], float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run, recv)
        send.send_nowait(assigned(0, 1, 2, 3))
        for second in range(120):
            for p in range(4):
                read_at[(p, second)] = trio.current_time()
                send.send_nowait(mixed((p, second, 1)))
            await trio.sleep(1)
        send.close()
    timed = [(r, at) for r, at in zip(fake.rounds, fake.at, strict=True) if r[0].reason == "time"]
    inserts = sum(len(r) for r, _ in timed)
    assert 100 <= inserts <= 124, f"{inserts} inserts in 120 s at max_wait 1 s"
    assert all(len(r) == 4 for r, _ in timed), "the partitions are cut together"
    waited = max(at - read_at[(p, c.ranges[p][0])] for r, at in timed for c in r
                 for p in c.ranges)
    assert waited <= 4 * 1.0


async def test_a_time_cut_takes_the_chunks_already_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The sealer was busy past a batch's deadline while more of its records queued up
    (a backlog): they go into the batch before the time cut, which then fills to its size
    instead of two half batches."""
    @dataclass
    class SlowSeal(Sealed):
        async def __call__(self, cuts: Sequence[Cut]) -> None:
            await super().__call__(cuts)
            if any(c.reason == "size" for c in cuts):
                await trio.sleep(5)  # encoding, a full primary queue

    fake = SlowSeal()
    b = Batcher(4, 1.0, fake)
    await run(b, assigned(0, 1), mixed((1, 0, 2)), mixed((0, 0, 4)), mixed((1, 2, 2)))
    assert [(c.ranges, c.reason) for c in fake.cuts] == [
        ({0: (0, 3)}, "size"), ({1: (0, 3)}, "size"),
    ]


async def test_a_revoked_partition_is_dropped_not_sealed() -> None:
    """Its records were never sealed: the next owner reads them again from the commit."""
    b, fake = batcher(size=10)
    barrier = Barrier(revoked=frozenset({1}))
    await run(b, assigned(0, 1), mixed((0, 0, 3), (1, 0, 3)), barrier, mixed((1, 3, 2), (0, 3, 1)))
    assert barrier.sealed.is_set()
    assert [(c.ranges, c.reason) for c in fake.cuts] == [({0: (0, 3)}, "shutdown")]
    assert b.dropped_records == 5, "three held and two read before the revoke was handled"


async def test_an_assignment_without_revoke_first_drops_the_open_batch() -> None:
    """A partition assigned again while its batch is open (no revoke before) is read again
    from its committed offset: the open batch is dropped, or its records would be in the
    next batch twice (found in test_group's graceful moves: one batch held 1:34-38 twice,
    5 duplicate rows)."""
    b, fake = batcher(size=100)
    again = Assigned(epoch=2, assigned=frozenset({0}), plans=())
    await run(b, assigned(), chunk([frames(1)] * 5), again, chunk([frames(1)] * 10))
    assert [c.ranges for c in fake.cuts] == [{0: (0, 9)}]
    assert [len(c.records) for c in fake.cuts] == [10]
    assert b.dropped_records == 5


async def test_an_assignment_without_revoke_first_replaces_the_open_rebuilds() -> None:
    """The same, with a rebuild open: the new assignment's plan (same batch, same token)
    takes over; the old one would hold the re-read records twice and be cut in the
    assignment that ended (dropped by the destinations, never settled)."""
    b, fake = batcher(size=100)
    old = RebuildPlan(ranges={0: (0, 4)}, token="t", seq=100, epoch=1)
    new = RebuildPlan(ranges={0: (0, 4)}, token="t", seq=200, epoch=2)
    again = Assigned(epoch=2, assigned=frozenset({0}), plans=(new,))
    await run(b, assigned(0, plans=(old,)), chunk([frames(1)] * 3), again,
              chunk([frames(1)] * 6))
    rebuilt = [c for c in fake.cuts if c.reason == "rebuild"]
    assert [(c.seq, c.epoch, len(c.records)) for c in rebuilt] == [(200, 2, 5)]
    assert [(c.ranges, c.epoch) for c in fake.cuts if c.reason != "rebuild"] == [
        ({0: (5, 5)}, 2)]


async def test_the_batches_one_chunk_fills_are_sealed_together() -> None:
    """One seal call (one Kafka commit) for every partition's full batches of a chunk, not
    one per batch (at backlog drains a commit per batch doubled the commits)."""
    b, fake = batcher(size=4)
    await run(b, assigned(0, 1, 2), mixed((0, 0, 4), (1, 0, 4), (2, 0, 8)))
    assert [[(c.ranges, c.reason) for c in r] for r in fake.rounds] == [[
        ({0: (0, 3)}, "size"), ({1: (0, 3)}, "size"), ({2: (0, 3)}, "size"),
        ({2: (4, 7)}, "size"),
    ]]
