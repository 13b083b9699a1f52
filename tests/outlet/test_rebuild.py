"""Rebuild planning (outlet/rebuild.py) and the Kafka input's ordered outbox."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from outlet.kafka_input import Barrier, Chunk, Outbox
from outlet.notify import Notifier
from outlet.offset_ledger import Sealed
from outlet.rebuild import Rebuilds, plans_for


def route_all(r: Rebuilds, records: list[tuple[int, int]]) -> list[bool]:
    return [r.route(p, off, f"{p}:{off}".encode()) for p, off in records]


def sealed(p: int, first: int, last: int, at: float = 1000.0) -> Sealed:
    return Sealed(p, first, last, at, "fake-cluster")


def test_plans_rebuild_exact_ranges_and_complete_when_read_past_them() -> None:
    r = Rebuilds()
    ids = itertools.count(1)
    plans = plans_for("flows", {0: 10}, [sealed(0, 10, 19), sealed(0, 20, 29, 1003.0)],
                      [("flows/0:0-9,1:0-4", {1: (0, 4)})], ids, epoch=3)
    first, second, legacy = plans
    assert (first.seq, second.seq, legacy.seq) == (1, 2, 3)
    assert first.token == "v2:fake-cluster/flows/0:10-19" and first.sealed_at == 1000.0
    assert (first.epoch, first.legacy, legacy.legacy) == (3, False, True)
    r.assign({0, 1}, plans)
    r.assign({0, 1}, plans)  # assigned again: the plans are replaced, not doubled
    assert len(r.plans) == 3, "a batch being rebuilt is not planned twice"
    assert route_all(r, [(0, 9), (0, 10), (1, 0)]) == [False, True, True]
    assert r.take_complete() == []
    route_all(r, [(1, p) for p in range(1, 5)] + [(0, p) for p in range(11, 20)])
    assert sorted(p.seq for p in r.take_complete()) == [first.seq, legacy.seq]
    assert first.builder.ranges == {0: (10, 19)} and len(first.builder) == 10
    assert bool(r)  # the second plan is still open


def test_a_revoked_partitions_plans_are_dropped_not_cut() -> None:
    """Its next owner rebuilds them whole from the commit metadata; only a legacy batch
    of several partitions completes with the partitions still ours (the old behaviour)."""
    r = Rebuilds()
    plans = plans_for("flows", {}, [sealed(1, 0, 9)], [("flows/0:0-9,2:0-9", {0: (0, 9),
                                                                           2: (0, 9)})],
                      itertools.count(1), epoch=1)
    r.assign({0, 1, 2}, plans)
    route_all(r, [(0, p) for p in range(10)] + [(1, p) for p in range(5)])
    assert r.take_complete() == []  # partitions 1 and 2 not read through yet
    assert r.revoke({1}) == [] and r.partitions() == {0, 2}
    assert r.revoke({2}) == [plans[1]]
    assert not r


async def test_outbox_hands_over_in_order_and_barriers_wait_behind_chunks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emptied = Notifier()
    box = Outbox(emptied)
    send, recv = trio.open_memory_channel[Chunk](0)
    a, b = Chunk([0], [1], [b"a"]), Chunk([1], [2], [b"b"])
    barrier = Barrier(revoked=frozenset({1}))
    got: list[Chunk] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.forward, send)
        for item in (a, barrier, b):
            box.put(item)
        await trio.sleep(5)  # nobody receives: everything stays in order in the outbox
        assert len(box) == 3
        async with recv:
            for _ in range(3):
                got.append(await recv.receive())
        nursery.cancel_scope.cancel()
    assert got == [a, barrier, b]
    assert len(box) == 0


def test_dropping_the_outbox_releases_barriers() -> None:
    box = Outbox(Notifier())
    barrier = Barrier(revoked=frozenset({0}))
    box.put(Chunk([0], [0], [b"x"]))
    box.put(barrier)
    box.drop()
    assert len(box) == 0 and barrier.sealed.is_set()


async def test_dropping_while_the_head_is_being_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """stop() can run between the channel taking the head and the forwarder resuming."""
    box = Outbox(Notifier())
    send, recv = trio.open_memory_channel[Chunk](0)
    a = Chunk([0], [1], [b"a"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.forward, send)
        box.put(a)
        box.put(Chunk([0], [2], [b"b"]))
        async with recv:
            await trio.testing.wait_all_tasks_blocked()  # the forwarder waits in send()
            assert recv.receive_nowait() is a  # it is rescheduled, has not run yet
            box.drop()
            await trio.sleep(1)  # it resumes: nothing to pop, nothing more to send
            assert len(box) == 0
        nursery.cancel_scope.cancel()
