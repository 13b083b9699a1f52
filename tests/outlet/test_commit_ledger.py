"""Pure logic of the commit watermark, the ledger and deduplication tokens."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import outlet.ledger
from outlet.batch import BatchBuilder, make_token
from outlet.commit import CommitTracker
from outlet.ledger import Ledger

DESTS = {"primary", "azure"}


def test_token_is_derived_from_offsets_only() -> None:
    a = make_token("flows", {1: (10, 20), 0: (5, 9)})
    b = make_token("flows", {0: (5, 9), 1: (10, 20)})
    assert a == b == "flows/0:5-9,1:10-20"
    assert make_token("flows", {0: (5, 10)}) != make_token("flows", {0: (5, 9)})


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
    t.register(1, {0: (0, 9), 2: (0, 3)}, 14, DESTS)
    assert t.pending_in({2}) and not t.pending_in({1})
    t.forget_partitions({2})
    t.settle(1, "primary")
    t.settle(1, "azure")  # must not fail although partition 2 was forgotten
    assert t.committable() == {0: 10}


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
        nursery.start_soon(wait, "partition 1", {1})
        await trio.sleep(1)
        assert done == []
        t.settle(1, "primary")
        t.settle(1, "azure")
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["all sealed"], "shutdown does not wait for an unsealed rebuild"
        assert await t.wait_moved(0) == 1
        t.register(2, {1: (0, 9)}, 10, DESTS)  # sealed now
        assert t.in_flight()
        t.settle(2, "primary")
        t.settle(2, "azure")
    assert done == ["all sealed", "partition 1"]
    assert t.committable() == {0: 10, 1: 10}


def test_ledger_survives_restart_and_torn_line(tmp_path: Path) -> None:
    led = Ledger(tmp_path, "flows", "g")
    led.record({0: (0, 9), 1: (0, 4)})
    led.record({0: (10, 19)})
    led.close()
    with open(led.path, "ab") as f:
        f.write(b'{"ranges": {"0": [20,')  # SIGKILL mid-append
    again = Ledger(tmp_path, "flows", "g")
    # partition 0 committed up to 10, partition 1 up to 0: the first batch is partly
    # committed; its partition-1 part is rebuilt under the original (full) token.
    pending = again.pending({0: 10, 1: 0})
    assert pending == [({0: (0, 9), 1: (0, 4)}, {1: (0, 4)}), ({0: (10, 19)}, {0: (10, 19)})]
    assert again.pending({0: 20, 1: 5}) == []
    assert again.pending({0: 10, 1: 5}, partitions={1}) == []
    again.close()


def test_ledger_record_racing_compact_loses_no_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sealer records and the committer compacts from two worker threads. Without a
    lock, a seal appended while compaction rewrites the file went to the replaced file
    and out of memory (or failed with "write to closed file"): other boundaries after a
    crash, hence duplicates."""
    monkeypatch.setattr(outlet.ledger, "COMPACT_AFTER_LINES", 2)
    led = Ledger(tmp_path, "flows", "g")
    led.record({0: (0, 9)})
    led.record({0: (10, 19)})
    in_compact, release = threading.Event(), threading.Event()
    real_replace = os.replace

    def slow_replace(src: Any, dst: Any) -> None:
        in_compact.set()
        release.wait(5)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", slow_replace)
    compact = threading.Thread(target=led.compact, args=({0: 10},))
    compact.start()
    assert in_compact.wait(5)
    record = threading.Thread(target=led.record, args=({0: (20, 29)},))
    record.start()
    record.join(0.3)  # an unsynchronised record would finish inside the compaction here
    release.set()
    compact.join(5)
    record.join(5)
    monkeypatch.setattr(os, "replace", real_replace)
    expected = [({0: (10, 19)}, {0: (10, 19)}), ({0: (20, 29)}, {0: (20, 29)})]
    assert led.pending({0: 10}) == expected, "the seal recorded during compaction is lost"
    led.close()
    assert Ledger(tmp_path, "flows", "g").pending({0: 10}) == expected
