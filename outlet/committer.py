"""The commit component: follows every batch to settlement and commits the watermark.

Destinations report settlement through ``Committer.settled`` (their ``on_settled``); the
fan-out registers each batch before queuing it. ``run(offsets)`` commits as soon as the
settled watermark moves (outlet/commit.py computes it), then compacts the ledger; a failed
commit is retried every ``COMMIT_RETRY`` seconds until one succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

import trio

from outlet.batch import EncodedJob, Ranges
from outlet.commit import CommitTracker
from outlet.ledger import BatchLedger
from outlet.metrics import Metrics

log = logging.getLogger(__name__)

COMMIT_RETRY = 1.0  # seconds between attempts after a failed commit


class OffsetStore(Protocol):
    """Where committed offsets go (the Kafka input)."""

    @property
    def committed(self) -> Mapping[int, int]:
        """Next offsets committed, per partition."""
        ...

    async def commit(self, offsets: dict[int, int]) -> None:
        """Commit next-offsets of partitions we own; raises when the commit failed."""
        ...


class Committer:
    """Settlement book (a CommitTracker), commit loop and ledger compaction."""

    def __init__(self, destinations: Iterable[str], ledger: BatchLedger, metrics: Metrics) -> None:
        self.names = frozenset(destinations)  # the fan-out's, kept current by it
        self.ledger = ledger
        self.metrics = metrics
        self.tracker = CommitTracker()

    # -- settlement ---------------------------------------------------------------------
    def reserve(self, seq: int, ranges: Ranges) -> None:
        """A batch to rebuild: the watermark must not pass it before it is sealed."""
        self.tracker.register(seq, ranges, 0, self.names, sealed=False)
        self._update_gauges()

    def register(self, job: EncodedJob, destinations: Iterable[str] | None = None) -> None:
        """A sealed batch about to be queued on ``destinations`` (default: every one)."""
        names = self.names if destinations is None else frozenset(destinations)
        self.tracker.register(job.seq, job.ranges, job.rows, names)
        self._update_gauges()

    def settled(self, job: EncodedJob, destination: str, stored: bool) -> None:
        """A destination is done with a batch (stored it, spooled it or gave it up)."""
        self.tracker.settle(job.seq, destination)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.commit_pending_batches.set(self.tracker.pending_batches)
        self.metrics.commit_pending_flows.set(self.tracker.pending_flows)

    # -- commits ------------------------------------------------------------------------
    async def run(self, offsets: OffsetStore) -> None:
        """Commit each time the watermark moves."""
        moves = 0
        while True:
            moves = await self.tracker.wait_moved(moves)
            while not await self.commit_now(offsets):
                await trio.sleep(COMMIT_RETRY)

    async def commit_now(self, offsets: OffsetStore) -> bool:
        """Commit the settled watermark where it moved; False when the commit failed."""
        committed = offsets.committed
        todo = {p: o for p, o in self.tracker.committable().items() if committed.get(p) != o}
        if not todo:
            return True
        try:
            await offsets.commit(todo)
        except Exception as exc:
            self.metrics.kafka_errors.labels("commit").inc()
            log.warning("kafka commit failed (will retry): %s", exc)
            return False
        await self.ledger.compact(offsets.committed)
        return True
