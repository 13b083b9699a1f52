"""The commit component: follows every batch to settlement and commits the watermark.

Destinations report settlement through ``Committer.settled`` (their ``on_settled``); the
fan-out registers each batch before queuing it. ``run(offsets)`` commits as soon as the
settled watermark moves (outlet/commit.py computes it) through the offset store (the
Kafka ledger: each commit carries the batches still pending past it), then lets the
older outlets' file ledger forget what is committed; a failed commit is retried every
``COMMIT_RETRY`` seconds until one succeeds.

A batch is wanted while the assignment it was read in lasts (``wanted``): once its
partition was revoked or lost, its next owner rebuilds it from the commit metadata, so
destinations drop it instead of inserting it (``outlet_batches_handed_over_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import trio

from outlet.batch import EncodedJob, Ranges
from outlet.commit import CommitTracker
from outlet.kafka_input import KafkaCommitError
from outlet.metrics import Metrics

log = logging.getLogger(__name__)

COMMIT_RETRY = 1.0  # seconds between attempts after a failed commit


class OffsetStore(Protocol):
    """Where committed offsets go (the Kafka ledger, outlet/offset_ledger.py)."""

    @property
    def committed(self) -> Mapping[int, int]:
        """Next offsets committed, per partition."""
        ...

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit next-offsets of partitions we own; raises KafkaCommitError."""
        ...


class Compactable(Protocol):
    """The older outlets' file ledger (outlet/ledger.py): forgets what Kafka committed."""

    async def compact(self, committed: Mapping[int, int]) -> None: ...


EpochOf = Callable[[int], "int | None"]  # partition -> the assignment it is ours in


class Committer:
    """Settlement book (a CommitTracker), commit loop and ledger compaction."""

    def __init__(
        self,
        destinations: Iterable[str],
        legacy: Compactable | None,
        metrics: Metrics,
        epoch_of: EpochOf = lambda p: 0,
    ) -> None:
        self.names = frozenset(destinations)  # the fan-out's, kept current by it
        self.legacy = legacy
        self.metrics = metrics
        self.tracker = CommitTracker()
        self._epoch_of = epoch_of

    def wanted(self, job: EncodedJob) -> bool:
        """Whether the assignment the batch was read in still lasts (a spool replay, epoch
        0, always is: it is this process's alone)."""
        if job.epoch == 0:
            return True
        return all(self._epoch_of(p) == job.epoch for p in job.ranges)

    def forget(self, partitions: set[int]) -> None:
        """The partitions went: their unsettled batches are handed over to the next owner."""
        handed = sum(
            1 for b in self.tracker.batches() if b.waiting and b.ranges.keys() <= partitions
        )
        if handed:
            self.metrics.batches_handed_over.inc(handed)
            log.info("%d unsettled batch(es) of partitions %s handed over to their next owner",
                     handed, sorted(partitions))
        self.tracker.forget_partitions(partitions)
        self._update_gauges()

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
        except KafkaCommitError as exc:
            if exc.revoked:  # the partitions went meanwhile: nothing to commit
                return True
            self.metrics.kafka_errors.labels("commit").inc()
            log.warning("kafka commit failed (will retry): %s", exc)
            return False
        if self.legacy is not None:
            await self.legacy.compact(offsets.committed)
        return True
