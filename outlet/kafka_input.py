"""Kafka input: a consumer-group member that hands chunks of records to the batcher.

``KafkaInput(cfg, metrics, source)``, once ``open(hooks)`` joined the group, runs two tasks:

- the **poll task** owns the consumer (a ``RecordSource``: librdkafka in
  outlet/kafka_client.py, a fake in tests). Each poll carries what the Trio side wants
  done in the consumer's thread: the pause state and the commits other tasks asked for
  (``commit()`` waits for the broker's answer). While the outbox is not handed over
  (the pipeline is full: backpressure), it pauses fetching after ``PAUSE_AFTER`` and
  polls only every ``POLL_WHILE_PAUSED`` (rebalance callbacks and commits are served
  inside polls), woken early when the outbox empties or a commit waits;
- the **forward task** hands the outbox to the batcher's bounded channel, in the order
  the records were read.

Rebalances go through the same outbox, in the order they happened: a ``Barrier``
(partitions revoked or lost) behind every chunk read before it, then an ``Assigned``
marker (partitions given to us, with the batches to rebuild) ahead of every chunk read
after it. So a barrier can never overtake a chunk held back by backpressure, and the
batcher drops what it holds of a partition exactly where its ownership ended: records of
one assignment are never batched with those of the next (each assignment of a partition
has its own ``epoch``). ``stop()`` ends the hand-over (the batcher flushes); the poll task
keeps serving commits, paused, until the pipeline cancels it.

Commits carry offset-commit metadata (the batch ledger, outlet/offset_ledger.py) and
are issued in the order they were made, one poll at a time; the commits still queued for
partitions being revoked or lost fail at once (``KafkaCommitError.revoked``): what they
would have sealed must never be inserted.

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
OFFSET_METADATA_TOO_LARGE = 12  # Kafka's error code for metadata over offset.metadata.max.bytes
POLL_WHILE_PAUSED = 0.5  # seconds between polls while paused (rebalances, commits)
COMMIT_ANSWER_TIMEOUT = 30.0  # seconds to wait for the broker's answer to a commit


class ClusterIdError(RuntimeError):
    """The Kafka cluster id (part of every deduplication token) cannot be determined, or
    the brokers would refuse the ledger's metadata (read at start-up: ``RecordSource.cluster``
    and outlet/pipeline.py ``check_cluster``); the outlet does not start."""


@dataclass(frozen=True)
class ClusterFacts:
    """What the brokers say about the cluster, read once at start-up."""

    cluster_id: str
    metadata_max_bytes: int | None  # offset.metadata.max.bytes (None: not readable)


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
    """No records: these partitions are no longer ours (revoked, or ``lost``); the batcher
    drops what it holds of them (their next owner re-reads it from the commit)."""

    revoked: frozenset[int] = frozenset()
    lost: bool = False
    sealed: trio.Event = field(default_factory=trio.Event)


@dataclass
class Assigned(Chunk):
    """No records: these partitions are ours from here on, in assignment ``epoch``;
    ``plans`` are the batches to rebuild (whatever the pipeline's hook returned)."""

    epoch: int = 0
    assigned: frozenset[int] = frozenset()
    plans: tuple[object, ...] = ()


@dataclass
class CommitRequest:
    """Offsets (with metadata) to commit from the consumer's thread; ``done`` once the
    broker answered (``error``, and Kafka's ``code`` when it did not accept them)."""

    offsets: dict[int, int]
    metadata: dict[int, str] = field(default_factory=dict)
    on_revoke: bool = False  # made by the revoke callback: nobody waits for the answer
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None
    code: int | None = None
    revoked: bool = False  # failed without being issued: its partitions are not ours

    def abort(self, partitions: set[int]) -> None:
        """Forget these partitions (revoked before the request was issued)."""
        for p in partitions:
            self.offsets.pop(p, None)
            self.metadata.pop(p, None)
        if not self.offsets:
            self.error, self.revoked = "partition revoked before the commit was made", True
            self.done.set()


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

    def assigned(
        self, partitions: set[int], committed: dict[int, int], metadata: dict[int, str]
    ) -> None:
        """`committed`: next offsets (absent: never committed); `metadata`: theirs."""
        ...

    async def revoking(self, partitions: set[int]) -> CommitRequest | None:
        """Returns the commit to make before the partitions go (None: nothing)."""
        ...

    def revoked(self, partitions: set[int]) -> None: ...

    def lost(self, partitions: set[int]) -> None:
        """Taken away without a revoke (session timeout): nothing can be committed."""
        ...


class RecordSource(Protocol):
    """The consumer: librdkafka (outlet/kafka_client.py) or a fake."""

    async def cluster(self) -> ClusterFacts:
        """Wait until the brokers answer (backing off while they cannot be reached or
        refuse us), then their cluster id and metadata cap, before joining the group.
        Raises ClusterIdError, naming the brokers, when they report no id."""
        ...

    async def open(self, hooks: SourceHooks) -> None:
        """Join the group (subscribe); rebalance callbacks then run inside polls."""
        ...

    async def poll(self, request: PollRequest) -> Polled: ...

    async def aclose(self) -> None: ...

    def failure_reason(self) -> str:
        """Why the brokers cannot be reached now ('' when they can), for /readyz."""
        ...


class RebalanceHooks(Protocol):
    """The pipeline's side of a rebalance (outlet/pipeline.py)."""

    def assigned(
        self,
        partitions: set[int],
        committed: dict[int, int],
        metadata: dict[int, str],
        epoch: int,
    ) -> tuple[object, ...]:
        """Partitions assigned in `epoch`, with their committed offsets (next to read) and
        commit metadata; returns the rebuild plans the batcher gets with the assignment."""
        ...

    async def revoking(self, partitions: set[int]) -> tuple[dict[int, int], dict[int, str]]:
        """Partitions about to go: wait (bounded) for their batches to settle; returns
        the offsets, with metadata, to commit before they go."""
        ...

    def revoked(self, partitions: set[int], lost: bool) -> None: ...


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

    def __init__(self, cfg: KafkaConfig, metrics: Metrics, source: RecordSource) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._source = source
        self._hooks: RebalanceHooks | None = None
        self._epochs = 0  # assignments so far
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

    async def cluster(self) -> ClusterFacts:
        """See RecordSource.cluster: before open (the ledger is built from it)."""
        return await self._source.cluster()

    async def open(self, hooks: RebalanceHooks) -> None:
        """Join the group; from now on rebalances call `hooks` (inside polls)."""
        self._hooks = hooks
        await self._source.open(self)

    def owns(self, partition: int) -> bool:
        return partition in self.owned

    async def aclose(self) -> None:
        await self._source.aclose()

    def link_problem(self) -> str:
        """What keeps the consumer from its brokers ('' when nothing does)."""
        return self._source.failure_reason()

    # -- the pipeline's calls -------------------------------------------------------------
    async def commit(
        self, offsets: Mapping[int, int], metadata: Mapping[int, str] | None = None
    ) -> None:
        """Commit next-offsets of owned partitions, with their metadata (default "").

        Issued by the poll task's next poll, after every commit requested before; raises
        KafkaCommitError if the broker refused it (``code``), if its partitions went
        before it was issued (``revoked``), or if no answer came within
        COMMIT_ANSWER_TIMEOUT (the caller decides whether to retry).
        """
        todo = {p: off for p, off in offsets.items() if p in self.owned}
        if not todo:
            raise KafkaCommitError("partitions not assigned to this member", revoked=True)
        meta = {p: (metadata or {}).get(p, "") for p in todo}
        request = CommitRequest(todo, meta)
        self._commits.append(request)
        self._wake.notify()
        with trio.move_on_after(COMMIT_ANSWER_TIMEOUT):
            await request.done.wait()
        if not request.done.is_set():
            raise KafkaCommitError(f"no answer within {COMMIT_ANSWER_TIMEOUT:g} s")
        if request.error is not None:
            raise KafkaCommitError(request.error, request.code, request.revoked)

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
    def assigned(
        self, partitions: set[int], committed: dict[int, int], metadata: dict[int, str]
    ) -> None:
        assert self._hooks is not None
        self._epochs += 1
        self._abort_commits(partitions & self.owned)  # assigned again: a new assignment
        self.owned |= partitions
        self.ever_assigned = True
        plans = self._hooks.assigned(partitions, committed, metadata, self._epochs)
        if not self._stopping:
            self._outbox.put(Assigned(epoch=self._epochs, assigned=frozenset(partitions),
                                      plans=plans))

    async def revoking(self, partitions: set[int]) -> CommitRequest | None:
        assert self._hooks is not None
        self._abort_commits(partitions)
        self._put_barrier(partitions, lost=False)
        offsets, metadata = await self._hooks.revoking(partitions)
        todo = {p: off for p, off in offsets.items() if p in partitions}
        if not todo:
            return None
        return CommitRequest(todo, {p: metadata.get(p, "") for p in todo}, on_revoke=True)

    def revoked(self, partitions: set[int]) -> None:
        assert self._hooks is not None
        self.owned -= partitions
        self._hooks.revoked(partitions, lost=False)

    def lost(self, partitions: set[int]) -> None:
        assert self._hooks is not None
        log.warning(
            "kafka: partitions %s lost (session timeout): their next owner rebuilds what we "
            "had sealed", sorted(partitions),
        )
        self._abort_commits(partitions)
        self._put_barrier(partitions, lost=True)
        self.owned -= partitions
        self._hooks.revoked(partitions, lost=True)

    def _abort_commits(self, partitions: set[int]) -> None:
        """Requests not issued yet lose these partitions (a seal among them aborts)."""
        for request in self._commits:
            request.abort(partitions)
        self._commits = [r for r in self._commits if not r.done.is_set()]

    def _put_barrier(self, partitions: set[int], lost: bool) -> None:
        barrier = Barrier(revoked=frozenset(partitions), lost=lost)
        if self._stopping:
            barrier.sealed.set()
        else:
            self._outbox.put(barrier)


class KafkaCommitError(Exception):
    """An offset commit was not made: ``code`` is Kafka's error code when the broker
    refused it; ``revoked`` when its partitions were not ours any more."""

    def __init__(self, message: str, code: int | None = None, revoked: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.revoked = revoked
