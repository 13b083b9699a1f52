"""The commit watermark: which Kafka offsets are safe to commit.

A batch is *settled* when the primary has stored it and every additional destination
has stored it or given it up. Per partition, the committable offset is one past the
last offset of the longest prefix of settled batches, so a slow batch holds back the
commit of later ones (they will be rebuilt identically from the ledger after a crash).

Waiting is driven by the tracker's own changes: ``wait_settled()`` (shutdown grace,
rebalance) and ``wait_moved()`` (the committer) return as soon as the state they wait
for is reached, without polling.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from outlet.batch import Ranges
from outlet.notify import Notifier


@dataclass
class _Pending:
    ranges: Ranges
    flows: int
    waiting: set[str]
    sealed: bool  # False: a rebuild reserved at assignment, not sealed yet


@dataclass
class CommitTracker:
    """Tracks settled batches and computes per-partition commit offsets."""

    _batches: dict[int, _Pending] = field(default_factory=dict)
    _order: dict[int, deque[tuple[int, int]]] = field(default_factory=dict)  # p -> (first, seq)
    _committable: dict[int, int] = field(default_factory=dict)
    _changed: Notifier = field(default_factory=Notifier)
    _moves: int = 0  # how many times the committable offsets moved

    def register(
        self,
        seq: int,
        ranges: Ranges,
        flows: int,
        destinations: set[str] | frozenset[str],
        sealed: bool = True,
    ) -> None:
        """Register a batch (again: updates its flow count and seal state only).

        ``sealed=False`` reserves the place of a batch to be rebuilt: the watermark
        cannot pass it, but shutdown does not wait for it (it is not being inserted).
        When a reserved batch is sealed, it waits for the ``destinations`` given then:
        the destination set may have changed since the reservation (live
        reconfiguration), and a destination that never receives it must not hold it.
        """
        known = self._batches.get(seq)
        if known is not None:
            known.flows = flows
            if sealed and not known.sealed:
                known.waiting = set(destinations)
            known.sealed = known.sealed or sealed
            self._changed.notify()
            return
        self._batches[seq] = _Pending(dict(ranges), flows, set(destinations), sealed)
        self._changed.notify()
        for p, (first, _) in ranges.items():
            queue = self._order.setdefault(p, deque())
            queue.append((first, seq))
            if len(queue) > 1 and queue[-2][0] > first:
                # Rebuilt batches are registered first; keep the queue sorted anyway.
                self._order[p] = deque(sorted(queue))

    def settle(self, seq: int, destination: str) -> bool:
        """Mark one destination done with a batch; True when the commit point moved."""
        pending = self._batches.get(seq)
        if pending is None:
            return False
        pending.waiting.discard(destination)
        if pending.waiting:
            return False
        moved = False
        for p in pending.ranges:
            queue = self._order.get(p)  # None once the partition was revoked
            while queue:
                head_seq = queue[0][1]
                head = self._batches.get(head_seq)
                if head is not None and head.waiting:
                    break
                queue.popleft()
                if head is not None:
                    self._committable[p] = max(self._committable.get(p, -1), head.ranges[p][1] + 1)
                    moved = True
        self._forget_settled()
        if moved:
            self._moves += 1
        self._changed.notify()
        return moved

    def _forget_settled(self) -> None:
        heads = {q[0][1] for q in self._order.values() if q}
        still_queued = {seq for q in self._order.values() for _, seq in q}
        for seq in [s for s, b in self._batches.items() if not b.waiting]:
            if seq not in still_queued and seq not in heads:
                del self._batches[seq]

    def committable(self) -> dict[int, int]:
        """Next offset to read, per partition, that is safe to commit."""
        return dict(self._committable)

    def pending_in(self, partitions: set[int]) -> bool:
        """Whether any unsettled batch holds records of these partitions."""
        return any(b.waiting and partitions & b.ranges.keys() for b in self._batches.values())

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop state of revoked partitions (their new owner re-reads from the commit)."""
        for p in partitions:
            self._order.pop(p, None)
            self._committable.pop(p, None)
        self._changed.notify()

    def in_flight(self, partitions: set[int] | None = None) -> bool:
        """Whether a batch is still unsettled: any batch holding records of `partitions`,
        or (None) any sealed batch."""
        if partitions is None:
            return any(b.waiting and b.sealed for b in self._batches.values())
        return self.pending_in(partitions)

    async def wait_settled(self, partitions: set[int] | None = None) -> None:
        """Return once no batch is in flight (see in_flight)."""
        while self.in_flight(partitions):
            await self._changed.wait()

    async def wait_moved(self, seen: int) -> int:
        """Return once the committable offsets moved more than `seen` times; the new count."""
        while self._moves <= seen:
            await self._changed.wait()
        return self._moves

    @property
    def pending_batches(self) -> int:
        return sum(1 for b in self._batches.values() if b.waiting)

    @property
    def pending_flows(self) -> int:
        return sum(b.flows for b in self._batches.values() if b.waiting)
