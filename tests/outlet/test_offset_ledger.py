"""The batch ledger in the offset-commit metadata (outlet/offset_ledger.py): its format,
its commits, the seal racing the committer, backpressure and refusal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from outlet import metrics as names
from outlet.kafka_input import OFFSET_METADATA_TOO_LARGE, KafkaCommitError
from outlet.metrics import Metrics
from outlet.offset_ledger import (
    KafkaLedger,
    LedgerFatal,
    LedgerFormatError,
    Sealed,
    ToSeal,
    decode,
    encode,
)

ID = "fake-cluster"


def entry(first: int, last: int, at: float = 1_800_000_000.0, identity: str = ID) -> Sealed:
    return Sealed(0, first, last, at, identity)


def test_format_round_trips_gaps_seal_times_and_identity_changes() -> None:
    entries = [
        entry(100, 149, 1_800_000_000.9),
        entry(150, 199, 1_800_000_003.2),
        entry(202, 202, 1_800_000_004.0),  # a gap (transaction markers, compaction)
        entry(203, 260, 1_800_000_009.0, identity=f"{ID}+dc2"),  # cluster-identity set
    ]
    text = encode(100, entries)
    assert text == f"ol1;{ID};1800000000;0:50:0,0:50:3,2:1:4;{ID}+dc2;1800000009;0:58:0"
    back = decode(0, 100, text)
    assert [(e.first, e.last, e.identity) for e in back] == [
        (e.first, e.last, e.identity) for e in entries
    ]
    assert [e.sealed_at for e in back] == [1_800_000_000, 1_800_000_003, 1_800_000_004,
                                           1_800_000_009], "seconds are enough"
    assert back[0].token("flows") == f"v2:{ID}/flows/0:100-149"
    assert back[3].token("flows") == f"v2:{ID}+dc2/flows/0:203-260"
    assert back[0].cluster_id == ID == back[3].cluster_id
    assert encode(100, []) == "" and decode(0, 100, "") == decode(0, 100, None) == []


def test_hundreds_of_pending_batches_fit_the_default_cap() -> None:
    t = 1_800_000_000.0
    big = [entry(10**12 + i * 50_000, 10**12 + i * 50_000 + 49_999, t + i) for i in range(300)]
    size = len(encode(10**12, big))
    assert size <= 4096, size
    assert size / len(big) < 14, "a pending batch costs a dozen bytes"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ol2;x;1;0:1:0", "written by a newer outlet"),
        ("some other application", "another application commits in this consumer group"),
        (f"ol1;{ID};1", "truncated"),
        (f"ol1;{ID};1;0:0:0", "bad entry"),
        (f"ol1;{ID};1;0:5:0,-2:5:0", "bad entry"),
        (f"ol1;{ID};x;0:5:0", "bad ledger metadata"),
    ],
)
def test_metadata_the_outlet_cannot_read_is_refused(text: str, problem: str) -> None:
    with pytest.raises(LedgerFormatError, match=problem):
        decode(3, 0, text)


@dataclass
class FakeCommits:
    """The Kafka input's commit side: requests issued (applied) in the order they were
    made, as the poll thread issues them; the answer waits for the test's gate."""

    owned: set[int] = field(default_factory=lambda: {0, 1})
    requests: list[tuple[dict[int, int], dict[int, str]]] = field(default_factory=list)
    gate: trio.Event | None = None  # while set to an unset event, commits wait on it
    fail: list[KafkaCommitError] = field(default_factory=list)
    applied: dict[int, tuple[int, str]] = field(default_factory=dict)  # what Kafka holds

    def owns(self, partition: int) -> bool:
        return partition in self.owned

    async def commit(self, offsets: Mapping[int, int], metadata: Mapping[int, str]) -> None:
        self.requests.append((dict(offsets), dict(metadata)))
        failure = self.fail.pop(0) if self.fail else None
        if failure is None:
            for p, off in offsets.items():
                self.applied[p] = (off, metadata[p])
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if failure is not None:
            raise failure


def ledger(commits: FakeCommits, max_bytes: int = 4096) -> tuple[KafkaLedger, Metrics]:
    metrics = Metrics()
    return KafkaLedger("flows", ID, ID, max_bytes, commits, metrics, clock=lambda: 1e9), metrics


def listed(commits: FakeCommits, p: int = 0) -> list[tuple[int, int]]:
    off, text = commits.applied[p]
    return [(e.first, e.last) for e in decode(p, off, text)]


async def test_a_seal_commits_the_unchanged_offset_with_every_pending_batch() -> None:
    c = FakeCommits()
    led, _ = ledger(c)
    assert led.assigned(0, 100, "", epoch=1) == []
    (s1,) = await led.record([ToSeal(0, 1, 100, 149)])
    assert s1 is not None and s1.token("flows") == f"v2:{ID}/flows/0:100-149"
    await led.record([ToSeal(0, 1, 150, 199)])
    assert c.applied[0][0] == 100 and listed(c) == [(100, 149), (150, 199)]
    await led.commit({0: 150})  # the first batch settled
    assert c.applied[0][0] == 150 and listed(c) == [(150, 199)]
    assert led.committed == {0: 150}
    await led.commit({0: 200})
    assert c.applied[0] == (200, "")


async def test_a_partition_never_committed_seals_at_its_first_batch() -> None:
    c = FakeCommits()
    led, _ = ledger(c)
    led.assigned(0, None, None, epoch=1)
    await led.record([ToSeal(0, 1, 7, 9)])
    assert c.applied[0][0] == 7 and listed(c) == [(7, 9)]


async def test_a_seal_racing_the_committer_is_never_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The ledger's version of the record-vs-compact race: the committer's commit (which
    drops settled batches) made while a seal's commit is on its way must still list the
    new batch, and the last commit issued is the one Kafka keeps."""
    c = FakeCommits()
    led, _ = ledger(c)
    led.assigned(0, 0, "", epoch=1)
    await led.record([ToSeal(0, 1, 0, 9)])
    c.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(led.record, [ToSeal(0, 1, 10, 19)])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(led.commit, {0: 10})
        await trio.testing.wait_all_tasks_blocked()
        c.gate.set()
    seal, settle = c.requests[-2:]
    assert decode(0, seal[0][0], seal[1][0])[-1].first == 10
    assert settle[0] == {0: 10} and [(e.first, e.last) for e in
                                     decode(0, 10, settle[1][0])] == [(10, 19)]
    assert listed(c) == [(10, 19)] and c.applied[0][0] == 10
    c.gate = None
    await led.record([ToSeal(0, 1, 20, 29)])
    assert c.applied[0][0] == 10, "a later seal keeps the committed offset"
    assert listed(c) == [(10, 19), (20, 29)]


async def test_seals_of_a_revoked_or_reassigned_partition_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = FakeCommits()
    led, metrics = ledger(c)
    led.assigned(0, 0, "", epoch=1)
    led.assigned(1, 0, "", epoch=1)
    c.gate = trio.Event()
    # partition 0 is revoked while the commit waits to be issued: the input fails it
    c.fail.append(KafkaCommitError("partition revoked before the commit was made",
                                   revoked=True))
    results: list[list[Sealed | None]] = []

    async def seal() -> None:
        results.append(await led.record([ToSeal(0, 1, 0, 9), ToSeal(1, 1, 0, 4)]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(seal)
        await trio.testing.wait_all_tasks_blocked()
        led.revoked({0})
        c.owned = {1}
        c.gate.set()
    ((p0, p1),) = results
    assert p0 is None, "never insert a batch whose seal was not made"
    assert p1 is not None and listed(c, 1) == [(0, 4)]
    assert metrics.registry.get_sample_value(names.KAFKA_ERRORS_TOTAL,
                                             {"error": "seal_commit"}) == 1
    c.gate = None
    led.assigned(0, 0, f"ol1;{ID};1;0:10:0", epoch=2)
    assert await led.record([ToSeal(0, 1, 10, 19)]) == [None], "records of an older epoch"
    (ok,) = await led.record([ToSeal(0, 2, 10, 19)])
    assert ok is not None and listed(c) == [(0, 9), (10, 19)]


async def test_a_full_partition_waits_for_settlements(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = FakeCommits()
    led, metrics = ledger(c, max_bytes=512)
    led.assigned(0, 0, "", epoch=1)
    n = 0
    while len(encode(0, [*led.pending(0), entry(n * 10, n * 10 + 9, at=1e9)])) <= 512:
        await led.record([ToSeal(0, 1, n * 10, n * 10 + 9)])
        n += 1
    done: list[Sealed | None] = []

    async def seal() -> None:
        done.extend(await led.record([ToSeal(0, 1, n * 10, n * 10 + 9)]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(seal)
        await trio.sleep(60)
        assert done == [], "no room: the seal waits (backpressure)"
        await led.commit({0: 10})
    assert done and done[0] is not None
    assert metrics.registry.get_sample_value(names.LEDGER_FULL_WAITS_TOTAL) == 1


async def test_brokers_refusing_the_metadata_stop_the_outlet() -> None:
    c = FakeCommits(fail=[KafkaCommitError("too large", code=OFFSET_METADATA_TOO_LARGE)])
    led, _ = ledger(c)
    led.assigned(0, 0, "", epoch=1)
    with pytest.raises(LedgerFatal, match=r"lower it to the brokers' offset\.metadata\.max\.bytes"):
        await led.record([ToSeal(0, 1, 0, 9)])


def test_batches_sealed_on_another_cluster_are_not_rebuilt() -> None:
    led, metrics = ledger(FakeCommits())
    text = f"ol1;{ID};1;0:10:0;other-cluster;1;0:10:0"
    assert [(e.first, e.last) for e in led.assigned(0, 0, text, epoch=1)] == [(0, 9)]
    assert metrics.registry.get_sample_value(names.LEDGER_FOREIGN_BATCHES_TOTAL) == 1
