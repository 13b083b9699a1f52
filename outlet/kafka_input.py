"""Kafka input: a consumer-group member that hands chunks of records to the batcher.

``KafkaInput(cfg, metrics, source, hooks)`` runs two tasks:

- the **poll task** owns the consumer (a ``RecordSource``: librdkafka in
  outlet/kafka_client.py, a fake in tests). Each poll carries what the Trio side wants
  done in the consumer's thread: the pause state and the commits other tasks asked for
  (``commit()`` waits for the broker's answer). While the outbox is not handed over
  (the pipeline is full: backpressure), it pauses fetching after ``PAUSE_AFTER`` and
  polls only every ``POLL_WHILE_PAUSED`` (rebalance callbacks and commits are served
  inside polls), woken early when the outbox empties or a commit waits;
- the **forward task** hands the outbox to the batcher's bounded channel, in the order
  the records were read.

A rebalance barrier (partitions being revoked) is put in the same outbox, behind every
chunk read before it, so the batcher cuts those chunks into batches that are settled and
committed before the partitions go: a barrier can never overtake a chunk held back by
backpressure (whose records would otherwise be batched after their partition's commit,
and read again by the next owner). ``stop()`` ends the hand-over (the batcher flushes);
the poll task keeps serving commits, paused, until the pipeline cancels it.

Offsets are never auto-committed: the pipeline commits explicitly once a batch is settled
on every destination (see outlet/committer.py).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio

from outlet.config import KafkaConfig
from outlet.metrics import Metrics
from outlet.notify import Notifier

log = logging.getLogger(__name__)

PAUSE_AFTER = 0.5  # seconds blocked on a full pipeline before pausing fetches
POLL_WHILE_PAUSED = 0.5  # seconds between polls while paused (rebalances, commits)
COMMIT_ANSWER_TIMEOUT = 30.0  # seconds to wait for the broker's answer to a commit


class ClusterIdError(RuntimeError):
    """The Kafka cluster id (part of every deduplication token) cannot be determined."""


@dataclass
class Chunk:
    """Records from one poll, as parallel lists (cheap to build)."""

    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Barrier(Chunk):
    """No records: the batcher cuts its open batch now (these partitions are moving)."""

    revoked: frozenset[int] = frozenset()
    sealed: trio.Event = field(default_factory=trio.Event)


@dataclass
class CommitRequest:
    """Offsets to commit from the consumer's thread; ``done`` once the broker answered."""

    offsets: dict[int, int]
    on_revoke: bool = False  # made by the revoke callback: nobody waits for the answer
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None


@dataclass
class PollRequest:
    limit: int
    timeout: float
    paused: bool
    commits: list[CommitRequest]


@dataclass
class Polled:
    chunk: Chunk
    answered: list[CommitRequest]  # commits the broker answered (error set on failure)


class SourceHooks(Protocol):
    """What a source calls (in the Trio thread) while a poll runs: rebalance callbacks."""

    def assigned(self, partitions: set[int], committed: dict[int, int]) -> None: ...

    async def revoking(self, partitions: set[int]) -> CommitRequest | None:
        """Returns the commit to make before the partitions go (None: nothing)."""
        ...

    def revoked(self, partitions: set[int]) -> None: ...


class RecordSource(Protocol):
    """The consumer: librdkafka (outlet/kafka_client.py) or a fake."""

    async def open(self, hooks: SourceHooks) -> None:
        """Read the cluster id, then join the group (subscribe); rebalance callbacks then
        run inside polls. Raises ClusterIdError, naming the brokers, when the id cannot be
        read (nothing is consumed then)."""
        ...

    @property
    def cluster_id(self) -> str | None:
        """The Kafka cluster id from the broker metadata; known once open() returned."""
        ...

    async def poll(self, request: PollRequest) -> Polled: ...

    async def aclose(self) -> None: ...

    def failure_reason(self) -> str:
        """Why the brokers cannot be reached now ('' when they can), for /readyz."""
        ...


class RebalanceHooks(Protocol):
    """The pipeline's side of a rebalance (outlet/pipeline.py)."""

    def assigned(self, partitions: set[int], committed: dict[int, int]) -> None:
        """Partitions assigned; `committed` = their committed offsets (next to read)."""
        ...

    async def revoking(self, partitions: set[int], barrier: Barrier) -> dict[int, int]:
        """Partitions about to go: wait (bounded) for the barrier and their batches;
        returns the offsets to commit before they go."""
        ...

    def revoked(self, partitions: set[int]) -> None: ...


class Outbox:
    """Chunks and barriers in the order they were read, on their way to the batcher."""

    def __init__(self, emptied: Notifier) -> None:
        self._items: deque[Chunk] = deque()
        self._added = Notifier()
        self._emptied = emptied

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Chunk) -> None:
        self._items.append(item)
        self._added.notify()

    async def forward(self, send: trio.MemorySendChannel[Chunk]) -> None:
        """Hand every item over, in order, until cancelled."""
        while True:
            while not self._items:
                await self._added.wait()
            item = self._items[0]  # stays counted as held until the channel took it
            await send.send(item)
            if self._items and self._items[0] is item:  # (not dropped meanwhile)
                self._items.popleft()
            if not self._items:
                self._emptied.notify()

    def drop(self) -> None:
        """Forget what was not handed over (stopping); barriers are released."""
        for item in self._items:
            if isinstance(item, Barrier):
                item.sealed.set()
        self._items.clear()
        self._emptied.notify()


class KafkaInput:
    """Consumes the flows topic and hands chunks to a bounded channel, in order."""

    def __init__(
        self,
        cfg: KafkaConfig,
        metrics: Metrics,
        source: RecordSource,
        hooks: RebalanceHooks,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._source = source
        self._hooks = hooks
        self.owned: set[int] = set()  # partitions assigned to us
        self.ever_assigned = False
        self.committed: dict[int, int] = {}  # next offsets we committed, per partition
        self._wake = Notifier()  # the outbox emptied, or a commit waits to be issued
        self._outbox = Outbox(emptied=self._wake)
        self._commits: list[CommitRequest] = []
        self._paused = False
        self._blocked_since: float | None = None
        self._stopping = False
        self._forward_scope = trio.CancelScope()

    async def open(self) -> None:
        """Raises ClusterIdError when the cluster id cannot be read (see RecordSource)."""
        await self._source.open(self)

    @property
    def cluster_id(self) -> str | None:
        return self._source.cluster_id

    async def aclose(self) -> None:
        await self._source.aclose()

    def link_problem(self) -> str:
        """What keeps the consumer from its brokers ('' when nothing does)."""
        return self._source.failure_reason()

    # -- the pipeline's calls -------------------------------------------------------------
    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit next-offsets of owned partitions (skipping unchanged ones).

        Issued by the poll task's next poll; raises KafkaCommitError if the broker
        refused it or did not answer within COMMIT_ANSWER_TIMEOUT (the caller retries).
        """
        todo = {
            p: off
            for p, off in offsets.items()
            if p in self.owned and self.committed.get(p) != off
        }
        if not todo:
            return
        request = CommitRequest(todo)
        self._commits.append(request)
        self._wake.notify()
        with trio.move_on_after(COMMIT_ANSWER_TIMEOUT):
            await request.done.wait()
        if not request.done.is_set():
            raise KafkaCommitError(f"no answer within {COMMIT_ANSWER_TIMEOUT:g} s")
        if request.error is not None:
            raise KafkaCommitError(request.error)

    def stop(self) -> None:
        """Stop handing chunks over: the batcher's channel closes (it flushes and ends);
        what was read and not handed over is dropped (it is past every commit)."""
        self._stopping = True
        self._forward_scope.cancel()
        self._outbox.drop()

    # -- tasks ------------------------------------------------------------------------------
    async def run(
        self,
        send: trio.MemorySendChannel[Chunk],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Poll and hand over until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward, send)
            task_status.started()
            await self._poll_loop()

    async def _forward(self, send: trio.MemorySendChannel[Chunk]) -> None:
        """Until stop(); then the channel closes: the batcher flushes and returns."""
        async with send:
            with self._forward_scope:
                await self._outbox.forward(send)

    async def _poll_loop(self) -> None:
        limit = self.cfg.max_poll_records
        timeout = max(0.05, self.cfg.fetch_max_wait)
        while True:
            commits, self._commits = self._commits, []
            polled = await self._source.poll(
                PollRequest(limit, timeout, self._paused or self._stopping, commits)
            )
            self._answered(polled.answered)
            if polled.chunk and not self._stopping:
                self._outbox.put(polled.chunk)
            await self._wait_for_room()

    async def _wait_for_room(self) -> None:
        """Backpressure: before the next poll, wait for the outbox to be handed over.

        Polls again without waiting when it is; pauses fetching once it has been held
        for PAUSE_AFTER; while paused, polls every POLL_WHILE_PAUSED so that rebalance
        callbacks and commits are still served. Woken early by the outbox emptying or by
        a commit request.
        """
        if not self._outbox or self._stopping:
            self._blocked_since = None
            self._set_paused(False)
            return
        now = trio.current_time()
        if self._blocked_since is None:
            self._blocked_since = now
        deadline = now + POLL_WHILE_PAUSED if self._paused else self._blocked_since + PAUSE_AFTER
        if not self._commits:
            with trio.move_on_at(deadline):
                await self._wake.wait()
        if not self._outbox:
            self._blocked_since = None
            self._set_paused(False)
        elif trio.current_time() >= self._blocked_since + PAUSE_AFTER:
            self._set_paused(True)

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        self.metrics.kafka_paused.set(int(paused))
        if paused:
            log.info("kafka: pipeline full, consumption paused")
        else:
            log.info("kafka: consumption resumed")

    def _answered(self, answered: list[CommitRequest]) -> None:
        for request in answered:
            if request.error is None:
                self.metrics.kafka_commits.inc()
                for p, off in request.offsets.items():
                    self.committed[p] = off
                    self.metrics.kafka_committed_offset.labels(str(p)).set(off)
            elif request.on_revoke:  # lost assignment: the ledger rebuilds instead
                self.metrics.kafka_errors.labels("commit").inc()
                log.warning("commit on revoke failed: %s", request.error)
            request.done.set()

    # -- SourceHooks: called while a poll runs ------------------------------------------
    def assigned(self, partitions: set[int], committed: dict[int, int]) -> None:
        self.owned |= partitions
        self.ever_assigned = True
        self._hooks.assigned(partitions, committed)

    async def revoking(self, partitions: set[int]) -> CommitRequest | None:
        barrier = Barrier(revoked=frozenset(partitions))
        if self._stopping:
            barrier.sealed.set()
        else:
            self._outbox.put(barrier)
        offsets = await self._hooks.revoking(partitions, barrier)
        todo = {
            p: off
            for p, off in offsets.items()
            if p in partitions and self.committed.get(p) != off
        }
        return CommitRequest(todo, on_revoke=True) if todo else None

    def revoked(self, partitions: set[int]) -> None:
        self.owned -= partitions
        self._hooks.revoked(partitions)


class KafkaCommitError(Exception):
    """The broker refused an offset commit."""
