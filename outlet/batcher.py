"""The batcher: cuts the stream of record chunks into batches.

``Batcher(max_size, max_wait, seal, max_flows_per_record)`` receives chunks (and
rebalance barriers) from the Kafka input's bounded channel and cuts a batch when it holds
``max_size`` flows (counted per record by the compiled framing scan, outlet/protoscan.py;
a record alone larger than a batch goes alone), when its first record is ``max_wait``
old, at a barrier and at shutdown. Each cut goes to
``seal`` (the sealer), awaited: while the sealer is busy (ledger, encoding, a full primary
queue) the channel fills and the input pauses. Records covered by a rebuild plan
(outlet/rebuild.py) go to that plan instead, and the plan is cut when complete.

Per-record Python work is kept out of the usual path: a chunk is weighed in one compiled
pass and added with slices (BatchBuilder.extend); only while a rebuild is open is each
record looked at.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt
import trio

from outlet import protoscan
from outlet.batch import BatchBuilder, Cut, RebuildPlan
from outlet.kafka_input import Barrier, Chunk
from outlet.ledger import Pending
from outlet.rebuild import Rebuilds

Seal = Callable[[Cut], Awaitable[None]]


class Batcher:
    """Cuts chunks into batches by size, by wait time, at rebalances and at shutdown."""

    def __init__(
        self, max_size: int, max_wait: float, seal: Seal, max_flows_per_record: int = 1000
    ) -> None:
        self.max_size = max_size  # flows
        self.max_wait = max_wait
        self.max_flows_per_record = max_flows_per_record
        self._seal = seal
        self.current = BatchBuilder()
        self.rebuilds = Rebuilds()
        self._ids = itertools.count(1)

    def plan_rebuilds(self, partitions: set[int], pending: Pending) -> list[RebuildPlan]:
        """Partitions assigned: the ledger's uncommitted batches to rebuild (new plans)."""
        return self.rebuilds.assign(partitions, pending, self._ids)

    async def run(self, recv: trio.MemoryReceiveChannel[Chunk]) -> None:
        """Until the channel closes; then the open batch is cut ("shutdown")."""
        async with recv:
            while True:
                deadline = self.current.started_at + self.max_wait if self.current else math.inf
                chunk: Chunk | None = None
                with trio.move_on_at(deadline):
                    try:
                        chunk = await recv.receive()
                    except trio.EndOfChannel:
                        break
                if chunk is None:
                    await self._cut_current("time")
                elif isinstance(chunk, Barrier):
                    await self._barrier(chunk)
                elif self.rebuilds:
                    await self._add_with_rebuilds(chunk)
                else:
                    await self._add(chunk)
        await self._cut_current("shutdown")

    async def _barrier(self, barrier: Barrier) -> None:
        """Everything read before the barrier is cut now: its partitions are moving."""
        await self._cut_current("rebalance")
        for plan in self.rebuilds.revoke(set(barrier.revoked)):
            await self._cut_plan(plan)
        barrier.sealed.set()

    def _weights(self, values: list[bytes]) -> npt.NDArray[np.int64]:
        """Flows each record adds to a batch (framing only; a bad record weighs 1), so
        that ``maximum-batch-size`` bounds the flows of a batch, not its records."""
        counts, _ = protoscan.scan(values, self.max_flows_per_record, framing_only=True)
        return np.maximum(counts, 1)

    async def _add(self, chunk: Chunk) -> None:
        parts, offs, vals = chunk.partitions, chunk.offsets, chunk.values
        cum: list[int] = np.concatenate(([0], np.cumsum(self._weights(vals)))).tolist()
        start, end = 0, len(vals)
        while start < end:
            cur = self.current
            if not cur.records:
                cur.started_at = trio.current_time()
            # the most records that fit; a record alone larger than a batch goes alone
            room = self.max_size - cur.flows
            stop = bisect.bisect_right(cum, cum[start] + room, start, end + 1) - 1
            if stop == start and not cur.records:
                stop = start + 1
            cur.extend(parts, offs, vals, start, stop)
            cur.flows += cum[stop] - cum[start]
            start = stop
            if cur.flows >= self.max_size or start < end:
                await self._cut_current("size")

    async def _add_with_rebuilds(self, chunk: Chunk) -> None:
        """Slow path, only while rebuilding batches sealed before."""
        parts, offs, vals = chunk.partitions, chunk.offsets, chunk.values
        weights: list[int] = self._weights(vals).tolist()
        for i in range(len(vals)):
            p, off = parts[i], offs[i]
            routed = self.rebuilds.route(p, off, vals[i])
            for plan in self.rebuilds.take_complete():
                await self._cut_plan(plan)
            if routed:
                continue
            cur = self.current
            if cur.records and cur.flows + weights[i] > self.max_size:
                await self._cut_current("size")
                cur = self.current
            if not cur.records:
                cur.started_at = trio.current_time()
            cur.add(p, off, vals[i])
            cur.flows += weights[i]
            if cur.flows >= self.max_size:
                await self._cut_current("size")

    async def _cut_current(self, reason: str) -> None:
        """Cut the open batch (if it holds anything) and start a new one."""
        builder, self.current = self.current, BatchBuilder()
        if builder.records:
            await self._seal(Cut(next(self._ids), builder.records, builder.ranges, reason))

    async def _cut_plan(self, plan: RebuildPlan) -> None:
        """A complete rebuild (possibly empty: then it only settles)."""
        await self._seal(Cut(plan.seq, plan.builder.records, plan.ranges, "rebuild", plan))
