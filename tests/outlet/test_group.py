"""Several outlets in one consumer group, in process: partitions move between members.

Every outlet runs whole (tests/outlet/fakes.py: one fake topic and group, two fake
ClickHouses storing by deduplication token as ClickHouse does) on Trio's autojump clock.
The guarantee under test: whatever moves, crashes or pauses, each destination holds every
produced record exactly once, because whoever owns a partition rebuilds the batches
sealed before from the commit metadata, whole, under their tokens (issue 12).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from outlet import metrics as names
from outlet.offset_ledger import decode
from outlet.pipeline import Outlet
from tests.outlet.fakes import FakeSource, FakeTopic, World, config


async def until(cond: Callable[[], bool], timeout: float = 600) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


def duplicates(rows: list[str]) -> dict[str, int]:
    return {r: n for r, n in Counter(rows).items() if n > 1}


def assert_exactly_once(w: World) -> None:
    want = sorted(w.topic.all_records())
    for server in (w.primary, w.azure):
        assert duplicates(server.rows) == {}, f"{server.name}: duplicates"
        assert sorted(server.rows) == want, f"{server.name}: missing records"


def metric(o: Outlet, name: str, **labels: str) -> float:
    value = o.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class Member:
    """One outlet process of the group: started, crashed (cancelled) or stopped."""

    def __init__(self, w: World, state: Path, **cfg: Any) -> None:
        self.outlet = Outlet(config(state, azure={}, **cfg), backends=w.backends())
        self.scope = trio.CancelScope()

    async def run(self, task_status: trio.TaskStatus[FakeSource]) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.outlet.run)
                assert self.outlet.parts is not None
                task_status.started(self.outlet.parts.kafka._source)  # type: ignore[arg-type]

    def crash(self) -> None:
        """SIGKILL: nothing flushed, nothing committed, no revoke."""
        self.scope.cancel()


def group_world(partitions: int = 2) -> World:
    return World(topic=FakeTopic(partitions=partitions, auto_assign=False))


async def test_a_crashed_members_partitions_come_back_one_at_a_time(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Member A seals and stores batches on the primary while azure hangs (nothing
    commits), then crashes. Its partitions go to member B one at a time. With batches
    over several partitions, B could only rebuild parts of them: under the batch's token
    the second part is dropped as a duplicate, under new tokens the primary stores what A
    stored again. Per-partition batches are rebuilt whole by whoever owns the partition."""
    w = group_world()
    for p in (0, 1):
        w.topic.produce(p, 45)
    w.azure.stop()
    a, b = Member(w, tmp_path / "a"), Member(w, tmp_path / "b")
    async with trio.open_nursery() as nursery:
        src_a = await nursery.start(a.run)
        src_b = await nursery.start(b.run)
        w.topic.assign(src_a, {0, 1})
        await until(lambda: len(w.primary.rows) == 90)
        stored_by_a = {i.token for i in w.primary.inserts}
        assert all(len(decode(p, 0, w.topic.metadata[p])) == 5 for p in (0, 1))
        a.crash()
        w.topic.expire(src_a)
        w.azure.start()
        w.topic.assign(src_b, {0})
        await until(lambda: w.topic.committed.get(0) == 45)
        await trio.sleep(30)
        assert 1 not in w.topic.committed or w.topic.committed[1] == 0
        w.topic.assign(src_b, {1})
        await until(lambda: w.topic.committed == {0: 45, 1: 45})
        assert b.outlet.parts is not None
        assert metric(b.outlet, names.BATCHES_SEALED_TOTAL, reason="rebuild") == 10
        b.outlet.request_stop()
    assert_exactly_once(w)
    rebuilt = {i.token for i in w.primary.inserts[len(stored_by_a):]}
    assert rebuilt == stored_by_a, "B rebuilt exactly A's batches, under A's tokens"
    assert w.topic.metadata == {0: "", 1: ""}, "nothing pending once committed"


async def test_a_member_paused_past_its_session_comes_back_fenced(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Lost assignment: A's session expires with batches in flight (azure slow) and its
    partitions go to B, which rebuilds them; A goes on as a zombie: its next seals are
    refused (fenced), its queued batches are dropped, then it rejoins and gets one
    partition back."""
    w = group_world()
    for p in (0, 1):
        w.topic.produce(p, 40)
    w.azure.latency = 3.0
    a, b = Member(w, tmp_path / "a"), Member(w, tmp_path / "b")
    async with trio.open_nursery() as nursery:
        src_a = await nursery.start(a.run)
        src_b = await nursery.start(b.run)
        w.topic.assign(src_a, {0, 1})
        await until(lambda: len(w.primary.rows) >= 40)
        w.topic.expire(src_a, to=src_b)
        for p in (0, 1):
            w.topic.produce(p, 20)  # more records while A is a zombie
        await until(lambda: w.topic.committed.get(0) == 60 and w.topic.committed.get(1) == 60)
        w.topic.move({1}, src_b, src_a)
        w.topic.produce(1, 15)
        await until(lambda: w.topic.committed == {0: 60, 1: 75})
        w.azure.latency = 0
        await until(lambda: len(w.azure.rows) >= 135)
        for m in (a, b):
            m.outlet.request_stop()
    assert_exactly_once(w)
    assert metric(a.outlet, names.BATCHES_HANDED_OVER_TOTAL) > 0


async def test_graceful_moves_under_load_hand_pending_batches_over(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Partitions move back and forth while azure is slow: at each revoke, what did not
    settle within the rebalance grace period is listed in the commit metadata and rebuilt
    by the next owner; nothing is lost or stored twice."""
    w = group_world(partitions=3)
    w.azure.latency = 2.0
    a = Member(w, tmp_path / "a", clickhouse={"rebalance-grace-period": "1s"})
    b = Member(w, tmp_path / "b", clickhouse={"rebalance-grace-period": "1s"})
    async with trio.open_nursery() as nursery:
        src_a = await nursery.start(a.run)
        src_b = await nursery.start(b.run)
        w.topic.assign(src_a, {0, 1, 2})
        for round_ in range(6):
            for p in range(3):
                w.topic.produce(p, 17)
            await trio.sleep(4)
            src, dst = (src_a, src_b) if round_ % 2 == 0 else (src_b, src_a)
            w.topic.move({round_ % 3}, src, dst)
        w.azure.latency = 0
        await until(lambda: w.topic.committed == {p: 102 for p in range(3)})
        for m in (a, b):
            m.outlet.request_stop()
    assert_exactly_once(w)
    handed = sum(metric(m.outlet, names.BATCHES_HANDED_OVER_TOTAL) for m in (a, b))
    assert handed > 0, "the slow destination kept batches unsettled at some revoke"


async def test_a_partition_assigned_again_without_a_revoke_still_commits(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A partition given to the member that owns it, without a revoke first (the member
    learns of no loss in between), while its batches are in flight (azure slow) and a
    rebuild plan of it is open. The partition is read again from its commit, in a new
    assignment: the batches of the old one must be handed over (destinations drop them
    as unwanted, so they would never settle) and the old assignment's plans replaced by
    the new ones (the same batches, the same tokens), or the commit watermark of the
    partition never moves again: sealing then waits for room in its commit metadata and
    the whole outlet stalls."""
    w = group_world(partitions=1)
    w.topic.produce(0, 30)
    w.azure.latency = 3.0
    a = Member(w, tmp_path / "a", clickhouse={"maximum-batch-size": 10})
    async with trio.open_nursery() as nursery:
        src = await nursery.start(a.run)
        w.topic.assign(src, {0})
        await until(lambda: len(w.primary.rows) == 30)
        assert len(decode(0, 0, w.topic.metadata[0])) == 3, "sealed, not committed"
        w.topic.assign(src, {0})  # again, no revoke: a rebuild of three batches opens
        await trio.sleep(0.5)
        w.topic.produce(0, 10)
        w.topic.assign(src, {0})  # and again, while those rebuilds are open
        w.azure.latency = 0
        await until(lambda: w.topic.committed.get(0) == 40, timeout=300)
        await until(lambda: len(w.azure.rows) >= 40)
        a.outlet.request_stop()
    assert_exactly_once(w)
    assert w.topic.metadata == {0: ""}
