"""Pure logic of the commit watermark, the ledger and deduplication tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
import trio.testing

from outlet.batch import BatchBuilder
from outlet.commit import CommitTracker
from outlet.ledger import LegacyLedger

DESTS = {"primary", "azure"}


def test_batch_builder_extend_tracks_ranges_per_partition() -> None:
    b = BatchBuilder()
    b.extend([0, 1, 0, 1], [5, 7, 6, 8], [b"a", b"b", b"c", b"d"], 0, 4)
    b.extend([0], [9], [b"e"], 0, 1)
    assert b.ranges == {0: (5, 9), 1: (7, 8)}
    assert b.records == [b"a", b"b", b"c", b"d", b"e"]


def test_commit_waits_for_every_destination_and_for_earlier_batches() -> None:
    t = CommitTracker()
    t.register(1, {0: (0, 9)}, 10, DESTS)
    t.register(2, {0: (10, 19), 1: (0, 4)}, 15, DESTS)
    assert not t.settle(2, "primary")
    assert t.settle(2, "azure")  # partition 1 moves; batch 1 holds partition 0 back
    assert t.committable() == {1: 5}  # ...but partition 1 can move
    assert not t.settle(1, "azure")
    assert t.settle(1, "primary")
    assert t.committable() == {0: 20, 1: 5}
    assert t.pending_batches == 0


def test_pending_in_and_revoked_partitions() -> None:
    t = CommitTracker()
    t.register(1, {0: (0, 9), 2: (0, 3)}, 14, DESTS)  # a rebuild of an older outlet's batch
    t.register(2, {2: (4, 9)}, 6, DESTS)
    assert t.pending_in({2}) and not t.pending_in({1})
    t.forget_partitions({2})
    assert not t.tracks(2), "a batch of revoked partitions only is not waited for any more"
    assert t.tracks(1), "one that also holds records of a partition still ours is"
    t.settle(1, "primary")
    t.settle(1, "azure")  # must not fail although partition 2 was forgotten
    assert t.committable() == {0: 10}
    assert not t.settle(2, "primary") and t.pending_batches == 0


async def test_waits_are_driven_by_settlement(autojump_clock: trio.testing.MockClock) -> None:
    t = CommitTracker()
    t.register(1, {0: (0, 9)}, 10, DESTS)
    t.register(2, {1: (0, 9)}, 0, DESTS, sealed=False)  # a rebuild not sealed yet
    done: list[str] = []

    async def wait(name: str, partitions: set[int] | None) -> None:
        await t.wait_settled(partitions)
        done.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "all sealed", None)
        nursery.start_soon(wait, "partition 1, unsealed", {1})
        await trio.sleep(1)
        assert done == ["partition 1, unsealed"], (
            "a rebuild not sealed yet is not being inserted: a revoke hands it over at once"
        )
        t.settle(1, "primary")
        t.settle(1, "azure")
        await trio.testing.wait_all_tasks_blocked()
        assert done[-1] == "all sealed", "shutdown does not wait for an unsealed rebuild"
        assert await t.wait_moved(0) == 1
        t.register(2, {1: (0, 9)}, 10, DESTS)  # sealed now
        nursery.start_soon(wait, "partition 1, sealed", {1})
        await trio.sleep(1)
        assert t.in_flight() and done[-1] == "all sealed"
        t.settle(2, "primary")
        t.settle(2, "azure")
    assert done[-1] == "partition 1, sealed"
    assert t.committable() == {0: 10, 1: 10}


def test_legacy_ledger_is_read_for_the_upgrade_and_goes_once_committed(tmp_path: Path) -> None:
    """The file an older outlet wrote: entries without a token (token version 1) and with
    one (version 2, its own cluster or another), a torn last line."""
    path = tmp_path / "ledger-g-flows.jsonl"
    lines = [
        {"ranges": {"0": [0, 9], "1": [0, 4]}},
        {"ranges": {"0": [10, 19]}, "token": "v2:fake-cluster/flows/0:10-19"},
        {"ranges": {"1": [5, 9]}, "token": "v2:other-cluster/flows/1:5-9"},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"ranges": {"0": [20,')
    led = LegacyLedger(tmp_path, "flows", "g", "fake-cluster", run_sync=_inline)
    # Partition 0 committed up to 10, partition 1 up to 0: the first batch is partly
    # committed; its partition-1 part is rebuilt under its original (v1) token.
    assert led.pending({0: 10, 1: 0}, {0, 1}) == [
        ("flows/0:0-9,1:0-4", {1: (0, 4)}),
        ("v2:fake-cluster/flows/0:10-19", {0: (10, 19)}),
    ]
    assert led.pending({0: 10, 1: 0}, {0}) == [("v2:fake-cluster/flows/0:10-19", {0: (10, 19)})]
    trio.run(led.compact, {0: 10, 1: 5})
    assert [json.loads(x)["ranges"] for x in path.read_text().splitlines()] == [{"0": [10, 19]}]
    trio.run(led.compact, {0: 20, 1: 5})
    assert not path.exists(), "the file goes with its last uncommitted batch"
    assert led.pending({0: 0, 1: 0}, {0, 1}) == []


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)
