"""The batcher: cuts each partition's stream of records into batches.

``Batcher(max_size, max_wait, seal, max_flows_per_record)`` receives chunks (and
rebalance markers) from the Kafka input's bounded channel. Every batch holds records of
one partition only, a contiguous range of its offsets, so that whoever owns the
partition next can rebuild it whole (outlet/rebuild.py, docs/dual-write.md: why).

- A partition's batch is cut when it holds ``max_size`` flows (counted per record by the
  compiled framing scan, outlet/protoscan.py; a record alone larger than a batch goes
  alone).
- One timer serves all partitions, and its wait scales with them: when the oldest open
  batch is ``max_wait`` times the number of partitions holding records old, every open
  batch is cut (``time``) in one round (one seal commit for them all). So at low
  traffic a process inserts about once per ``max_wait``, as an outlet with one batch
  over every partition did (N partitions: N inserts every N x ``max_wait``), instead
  of N times as often: each insert has a fixed cost (a codec query of ~15-20 ms of CPU,
  an HTTP request, a part on the server, a commit) that at low rates outweighs the
  flows (docs/dual-write.md: measured). The price is latency at low traffic: a partial
  batch waits up to N x ``max_wait``. Batches that fill up are cut by size, as before.
- Before a time cut, the chunks already waiting in the channel are added first: their
  records are older than the deadline too, and would otherwise start the next batches
  (in a backlog, the timer then cut batches half full).
- At a ``Barrier`` (partitions revoked or lost) the open batches and rebuild plans of
  those partitions are dropped, not sealed: their records were never sealed, so their
  next owner reads them again from the committed offset. An ``Assigned`` marker opens
  the rebuild plans of the new assignment and its ``epoch``; each cut carries the epoch
  its records were read in.
- At shutdown every open batch is cut (``shutdown``).

Cuts go to ``seal`` (the sealer), several at once when they come together (a time cut's
round, the batches one chunk filled, of any partitions: one Kafka commit seals them all),
awaited: while the sealer is busy (ledger, encoding, a full primary queue) the channel
fills and the input pauses. Records covered by a rebuild plan go to that plan instead,
and the plan is cut when complete.

Per-record Python work is kept out of the usual path: a chunk is split into runs of one
partition and weighed in compiled passes, and added with slices (BatchBuilder.extend);
only records of a partition with an open rebuild are looked at one by one.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
import numpy.typing as npt
import trio

from outlet import protoscan
from outlet.batch import BatchBuilder, Cut, RebuildPlan
from outlet.kafka_input import Assigned, Barrier, Chunk
from outlet.rebuild import Rebuilds

log = logging.getLogger(__name__)

Seal = Callable[[Sequence[Cut]], Awaitable[None]]


class Batcher:
    """Per-partition batches, cut by size, by one shared timer (its wait scales with the
    partitions holding records) and at shutdown."""

    def __init__(
        self, max_size: int, max_wait: float, seal: Seal, max_flows_per_record: int = 1000
    ) -> None:
        self.max_size = max_size  # flows
        self.max_wait = max_wait
        self.max_flows_per_record = max_flows_per_record
        self._seal = seal
        self.open: dict[int, BatchBuilder] = {}  # partition -> its open batch
        self.epochs: dict[int, int] = {}  # partition -> assignment it is read in
        self.rebuilds = Rebuilds()
        self.dropped_records = 0  # records of revoked partitions never sealed (re-read)
        self._ids = itertools.count(1)

    def ids(self) -> itertools.count[int]:
        """The batch sequence numbers (rebuild plans take theirs at assignment)."""
        return self._ids

    async def run(self, recv: trio.MemoryReceiveChannel[Chunk]) -> None:
        """Until the channel closes; then the open batches are cut ("shutdown")."""
        async with recv:
            while True:
                chunk: Chunk | None = None
                with trio.move_on_at(self._deadline()):
                    try:
                        chunk = await recv.receive()
                    except trio.EndOfChannel:
                        break
                if chunk is None:
                    await self._cut_on_time(recv)
                else:
                    await self._handle(chunk)
        await self._cut_all("shutdown")

    async def _handle(self, chunk: Chunk) -> None:
        if isinstance(chunk, Barrier):
            await self._barrier(chunk)
        elif isinstance(chunk, Assigned):
            self._assigned(chunk)
        elif self.rebuilds:
            await self._add_with_rebuilds(chunk)
        else:
            await self._add(chunk)

    async def _cut_on_time(self, recv: trio.MemoryReceiveChannel[Chunk]) -> None:
        """The deadline passed: add what already waits in the channel (at most what is
        there now: a channel kept full must not postpone the cut), then cut every open
        batch if the deadline still holds (size cuts may have emptied the open set)."""
        for _ in range(recv.statistics().current_buffer_used):
            try:
                chunk = recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            await self._handle(chunk)
        if trio.current_time() >= self._deadline():
            await self._cut_all("time")

    def wait(self) -> float:
        """How long the oldest open batch may wait: ``max_wait`` per partition holding
        records (module docstring: the insert rate at low traffic)."""
        return self.max_wait * max(1, len(self.open))

    def _deadline(self) -> float:
        if not self.open:
            return math.inf
        return min(b.started_at for b in self.open.values()) + self.wait()

    # -- rebalances --------------------------------------------------------------------------
    def _assigned(self, marker: Assigned) -> None:
        for p in marker.assigned:
            # Assigned again without a revoke first: the partition is read again from its
            # committed offset, so what the open batch holds would come twice.
            builder = self.open.pop(p, None)
            if builder is not None:
                self.dropped_records += len(builder)
            self.epochs[p] = marker.epoch
        plans = [p for p in marker.plans if isinstance(p, RebuildPlan)]
        self.rebuilds.assign(set(marker.assigned), plans)

    async def _barrier(self, barrier: Barrier) -> None:
        """The partitions are not ours any more: drop what we hold of them."""
        for p in barrier.revoked:
            builder = self.open.pop(p, None)
            if builder is not None:
                self.dropped_records += len(builder)
            self.epochs.pop(p, None)
        complete = self.rebuilds.revoke(set(barrier.revoked))
        barrier.sealed.set()
        if complete:  # legacy rebuilds whose other partitions were all read
            await self._seal([self._plan_cut(plan) for plan in complete])

    # -- adding records ----------------------------------------------------------------------
    def _weights(self, values: list[bytes]) -> npt.NDArray[np.int64]:
        """Flows each record adds to a batch (framing only; a bad record weighs 1), so
        that ``maximum-batch-size`` bounds the flows of a batch, not its records."""
        counts, _ = protoscan.scan(values, self.max_flows_per_record, framing_only=True)
        return np.maximum(counts, 1)

    async def _add(self, chunk: Chunk) -> None:
        parts, offs, vals = chunk.partitions, chunk.offsets, chunk.values
        cum: list[int] = np.concatenate(([0], np.cumsum(self._weights(vals)))).tolist()
        cuts: list[Cut] = []  # every partition's full batches of the chunk: one seal commit
        for start, end in _runs(parts):
            cuts += self._add_run(parts[start], parts, offs, vals, cum, start, end)
        if cuts:
            await self._seal(cuts)

    def _add_run(
        self,
        p: int,
        parts: list[int],
        offs: list[int],
        vals: list[bytes],
        cum: list[int],
        start: int,
        end: int,
    ) -> list[Cut]:
        """Add records [start, end) of partition `p`; returns the batches they filled."""
        epoch = self.epochs.get(p)
        if epoch is None:  # read before a revoke we already handled: never ours to seal
            self.dropped_records += end - start
            return []
        cuts: list[Cut] = []
        while start < end:
            cur = self.open.get(p)
            if cur is None:
                cur = self.open[p] = BatchBuilder(started_at=trio.current_time())
            # the most records that fit; a record alone larger than a batch goes alone
            room = self.max_size - cur.flows
            stop = bisect.bisect_right(cum, cum[start] + room, start, end + 1) - 1
            if stop == start and not cur.records:
                stop = start + 1
            cur.extend(parts, offs, vals, start, stop)
            cur.flows += cum[stop] - cum[start]
            start = stop
            if cur.flows >= self.max_size or start < end:
                cuts.append(self._cut(p, "size"))
        return cuts

    async def _add_with_rebuilds(self, chunk: Chunk) -> None:
        """Partitions with an open rebuild take the slow path, record by record."""
        parts, offs, vals = chunk.partitions, chunk.offsets, chunk.values
        slow = self.rebuilds.partitions()
        cum: list[int] | None = None
        for start, end in _runs(parts):
            p = parts[start]
            if p in slow and p in self.epochs:
                await self._route_run(p, parts, offs, vals, start, end)
                continue
            if cum is None:
                cum = np.concatenate(([0], np.cumsum(self._weights(vals)))).tolist()
            cuts = self._add_run(p, parts, offs, vals, cum, start, end)
            if cuts:
                await self._seal(cuts)

    async def _route_run(
        self, p: int, parts: list[int], offs: list[int], vals: list[bytes], start: int, end: int
    ) -> None:
        weights: list[int] = self._weights(vals[start:end]).tolist()
        for i in range(start, end):
            routed = self.rebuilds.route(p, offs[i], vals[i])
            done = self.rebuilds.take_complete()
            if done:
                await self._seal([self._plan_cut(plan) for plan in done])
            if routed:
                continue
            w = weights[i - start]
            cur = self.open.get(p)
            if cur is not None and cur.records and cur.flows + w > self.max_size:
                await self._seal([self._cut(p, "size")])
                cur = None
            if cur is None:
                cur = self.open[p] = BatchBuilder(started_at=trio.current_time())
            cur.add(p, offs[i], vals[i])
            cur.flows += w
            if cur.flows >= self.max_size:
                await self._seal([self._cut(p, "size")])

    # -- cutting -----------------------------------------------------------------------------
    def _cut(self, p: int, reason: str) -> Cut:
        builder = self.open.pop(p)
        return Cut(next(self._ids), builder.records, builder.ranges, reason, self.epochs[p])

    async def _cut_all(self, reason: str) -> None:
        """Cut every open batch (one round of seals)."""
        cuts = [self._cut(p, reason) for p in sorted(self.open) if self.open[p].records]
        self.open.clear()
        if cuts:
            await self._seal(cuts)

    def _plan_cut(self, plan: RebuildPlan) -> Cut:
        """A complete rebuild (possibly empty: then it only settles)."""
        return Cut(plan.seq, plan.builder.records, plan.ranges, "rebuild", plan.epoch, plan)


def _runs(parts: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of one partition in a chunk (librdkafka returns each
    fetched partition's records together, so runs are long)."""
    n = len(parts)
    if n == 0:
        return []
    if parts[0] == parts[-1] and parts.count(parts[0]) == n:
        return [(0, n)]
    arr = np.asarray(parts)
    bounds = [0, *(np.flatnonzero(arr[1:] != arr[:-1]) + 1).tolist(), n]
    return list(itertools.pairwise(bounds))
