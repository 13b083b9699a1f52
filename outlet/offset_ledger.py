"""The batch ledger in Kafka: sealed batches kept in each partition's offset-commit metadata.

Why: after a crash or a lost assignment, whoever owns a partition next (another group
member, or the same process restarted) re-reads it from the committed offset and must cut
exactly the batches that were sealed before, with the same deduplication tokens, or a
destination that stored one stores its records again. Every batch covers one partition's
contiguous offset range (outlet/batcher.py), so a partition's sealed batches are a fact
about that partition alone, and Kafka already keeps one string per partition for us: the
metadata of its offset commit, written with the offset, read back with it, fenced by the
consumer-group generation (a member that lost the partition cannot overwrite it).

Protocol, per partition:

- **seal**: before the first insert of a batch, commit the partition at its unchanged
  offset with metadata listing every sealed, uncommitted batch of it, the new one
  included; the insert starts only once Kafka acknowledged that commit. A seal whose
  commit cannot be made (the partition was revoked or lost meanwhile) is never inserted;
- **settle**: the committer commits a new offset with the batches still past it;
- **assignment**: the new owner reads the committed offset and metadata and rebuilds
  exactly those batches (outlet/rebuild.py), under the tokens they were sealed with.

Commits are issued one at a time, in the order they were made, each carrying the whole
current state of its partitions (outlet/kafka_input.py), so the last applied commit is
always the latest state: a batch is listed from its seal until the offset passes it.

Metadata format, version 1 (ASCII; what a token needs and nothing more)::

    metadata = "ol1" 1*( ";" group )            ; "" = nothing sealed past the offset
    group    = identity ";" t0 ";" entry *( "," entry )
    entry    = gap ":" count ":" dt               ; decimal integers

- ``identity``: the token identity of the group's batches (``writer_identity`` of
  outlet/tokens.py: the Kafka cluster id, ``+alias`` when set); their tokens are version
  2 tokens of one range, ``v2:<identity>/<topic>/<partition>:<first>-<last>``. A new
  group starts where the identity changes (``kafka.cluster-identity`` set while batches
  were pending: they keep the token they were sealed with).
- ``t0``: Unix seconds, the seal time of the group's first batch; ``dt``: the batch's seal
  time minus ``t0`` (the age of a rebuilt batch decides whether its replay is checked
  against the destination first: docs/dual-write.md).
- ``gap``: the batch's first offset minus the previous batch's last offset plus one (for
  the first batch: minus the commit's offset); ``count``: last - first + 1.

A sealed batch costs 6 to 15 bytes, the header about 40: the broker's cap
(``offset.metadata.max.bytes``, 4096 by default; ``kafka.offset-metadata-max-bytes`` must
not exceed it, checked at start-up) holds hundreds of pending batches, many more than
the pipeline's queues ever hold. When a seal would not fit, it waits for settlements to
free room (backpressure: the batcher, then Kafka consumption, wait).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from outlet import tokens
from outlet.kafka_input import OFFSET_METADATA_TOO_LARGE, KafkaCommitError
from outlet.metrics import Metrics
from outlet.notify import Notifier

log = logging.getLogger(__name__)

FORMAT = "ol1"
SEAL_RETRY = 0.5  # seconds between attempts of a seal commit that failed (partition still ours)


class LedgerFormatError(ValueError):
    """Offset-commit metadata this outlet cannot read (another writer or a newer format)."""


class LedgerFatal(RuntimeError):
    """The ledger cannot work (the broker refuses our metadata): the outlet must stop."""


@dataclass(frozen=True)
class Sealed:
    """One sealed batch of one partition, as the ledger keeps it."""

    partition: int
    first: int
    last: int
    sealed_at: float  # Unix seconds of its first seal (kept across rebuilds)
    identity: str  # token identity (outlet/tokens.py)

    def token(self, topic: str) -> str:
        return tokens.make_token(self.identity, topic, {self.partition: (self.first, self.last)})

    @property
    def cluster_id(self) -> str | None:
        """The Kafka cluster the batch was sealed on (its offsets name records there)."""
        return tokens.token_cluster_id(self.token("-"))


# -- format ----------------------------------------------------------------------------------
def encode(offset: int, entries: Sequence[Sealed]) -> str:
    """The metadata of a commit at `offset` listing `entries` (in offset order)."""
    if not entries:
        return ""
    out = [FORMAT]
    prev_end = offset  # the next offset after the previous entry
    group_identity: str | None = None
    t0 = 0
    items: list[str] = []
    for e in entries:
        if e.identity != group_identity:
            if items:
                out.append(",".join(items))
            group_identity, t0, items = e.identity, int(e.sealed_at), []
            out += [e.identity, str(t0)]
        items.append(f"{e.first - prev_end}:{e.last - e.first + 1}:{int(e.sealed_at) - t0}")
        prev_end = e.last + 1
    out.append(",".join(items))
    return ";".join(out)


def decode(partition: int, offset: int, metadata: str | None) -> list[Sealed]:
    """The batches listed in a commit's metadata; raises LedgerFormatError."""
    if not metadata:
        return []
    fields = metadata.split(";")
    head = fields[0]
    if head != FORMAT:
        if head.startswith("ol") and head[2:].isdigit():
            raise LedgerFormatError(
                f"partition {partition}: its offset-commit metadata is in ledger format "
                f"{head!r}, written by a newer outlet; run that version (this one reads {FORMAT!r})"
            )
        raise LedgerFormatError(
            f"partition {partition}: its offset-commit metadata ({metadata[:40]!r}) was not "
            "written by the outlet: another application commits in this consumer group; give "
            "the outlet a consumer group of its own (kafka.consumer-group)"
        )
    if (len(fields) - 1) % 3:
        raise LedgerFormatError(f"partition {partition}: truncated ledger metadata")
    entries: list[Sealed] = []
    prev_end = offset
    try:
        for g in range(1, len(fields), 3):
            identity, t0 = fields[g], int(fields[g + 1])
            if not identity:
                raise ValueError("empty identity")
            for item in fields[g + 2].split(","):
                gap, count, dt = (int(x) for x in item.split(":"))
                if count < 1 or (gap < 0 and entries):  # empty, or overlapping the previous
                    raise ValueError(f"bad entry {item!r}")
                first = prev_end + gap
                e = Sealed(partition, first, first + count - 1, float(t0 + dt), identity)
                entries.append(e)
                prev_end = e.last + 1
    except ValueError as exc:
        raise LedgerFormatError(f"partition {partition}: bad ledger metadata: {exc}") from None
    return entries


# -- the ledger --------------------------------------------------------------------------------
class Commits(Protocol):
    """The Kafka input's side: commit offsets with metadata (issued in the poll thread)."""

    def owns(self, partition: int) -> bool: ...

    async def commit(self, offsets: Mapping[int, int], metadata: Mapping[int, str]) -> None:
        """Raises KafkaCommitError when the commit was not made."""
        ...


@dataclass
class _Book:
    """What the ledger knows of one owned partition."""

    epoch: int  # the assignment it belongs to
    offset: int | None  # latest offset committed or being committed (None: never)
    acknowledged: int | None  # latest offset Kafka acknowledged
    entries: list[Sealed] = field(default_factory=list)  # past `offset`, in offset order
    revoked: bool = False

    def commit_offset(self) -> int:
        """Where a seal commits: the unchanged offset (the first batch's, never committed)."""
        if self.offset is not None:
            return self.offset
        return self.entries[0].first if self.entries else 0

    def metadata(self, offset: int) -> str:
        return encode(offset, [e for e in self.entries if e.last >= offset])


@dataclass(frozen=True)
class ToSeal:
    """A cut batch of one partition, in the assignment its records were read in."""

    partition: int
    epoch: int
    first: int
    last: int


class KafkaLedger:
    """Sealed batches per partition, committed as offset-commit metadata (module docstring).

    Also the committer's offset store: every commit goes through here, so that each one
    carries the batches still pending past its offset.
    """

    def __init__(
        self,
        topic: str,
        identity: str,
        cluster_id: str,
        max_bytes: int,
        commits: Commits,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.identity = identity
        self.cluster_id = cluster_id
        self.max_bytes = max_bytes
        self._kafka = commits
        self.metrics = metrics
        self._clock = clock
        self._books: dict[int, _Book] = {}
        self._room = Notifier()  # a commit freed metadata room, or a partition went

    # -- rebalances (the pipeline's RebalanceHooks call these) ---------------------------------
    def assigned(
        self, partition: int, offset: int | None, metadata: str | None, epoch: int
    ) -> list[Sealed]:
        """A partition is ours: its sealed, uncommitted batches, to rebuild (offset order).

        Batches sealed on another Kafka cluster (metadata carried over by a migration or
        a restore: their offsets name other records) are not rebuilt, only counted.
        """
        entries = decode(partition, offset if offset is not None else 0, metadata)
        ours = [e for e in entries if e.cluster_id == self.cluster_id]
        if len(ours) < len(entries):
            foreign = len(entries) - len(ours)
            self.metrics.ledger_foreign_batches.inc(foreign)
            log.warning(
                "partition %d: %d sealed batch(es) in the commit metadata name another Kafka "
                "cluster than %s (migrated or restored offsets); they are not rebuilt",
                partition, foreign, self.cluster_id,
            )
        old = self._books.get(partition)
        if old is not None:
            old.revoked = True
            self._room.notify()
        self._books[partition] = _Book(epoch, offset, offset, list(ours))
        return list(ours)

    def revoked(self, partitions: set[int]) -> None:
        """The partitions are no longer ours: seals waiting on them abort."""
        for p in partitions:
            book = self._books.pop(p, None)
            if book is not None:
                book.revoked = True
        self._room.notify()

    def epoch(self, partition: int) -> int | None:
        """The assignment a partition is ours in (None: not ours)."""
        book = self._books.get(partition)
        return book.epoch if book is not None else None

    def pending(self, partition: int) -> list[Sealed]:
        book = self._books.get(partition)
        return list(book.entries) if book is not None else []

    # -- seal ------------------------------------------------------------------------------------
    async def record(self, batches: list[ToSeal]) -> list[Sealed | None]:
        """Seal batches: durable in Kafka (one commit for them all) before this returns,
        so their inserts may start. Returns, per batch, its ledger entry, or None for a
        batch that must never be inserted: its partition was revoked or lost (or belongs
        to a later assignment than its records), and its records are re-read by the
        partition's next owner.

        Waits (backpressure) while a partition's metadata would exceed ``max_bytes``;
        retries a failed commit for as long as the partitions stay ours.
        """
        out: list[Sealed | None] = []
        books: dict[int, _Book] = {}
        for b in batches:
            book = self._books.get(b.partition)
            if book is None or book.revoked or book.epoch != b.epoch:
                out.append(None)
                continue
            entry = Sealed(b.partition, b.first, b.last, self._clock(), self.identity)
            if not await self._wait_room(book, entry):
                out.append(None)
                continue
            book.entries.append(entry)
            books[b.partition] = book
            out.append(entry)
        while books:
            offsets = {p: book.commit_offset() for p, book in books.items()}
            metadata = {p: books[p].metadata(off) for p, off in offsets.items()}
            try:
                await self._kafka.commit(offsets, metadata)
            except KafkaCommitError as exc:
                self._check_fatal(exc)
                books = {p: b for p, b in books.items() if not b.revoked and self._kafka.owns(p)}
                if books:
                    self.metrics.kafka_errors.labels("seal_commit").inc()
                    log.warning("kafka: seal commit failed (retrying): %s", exc)
                    await trio.sleep(SEAL_RETRY)
                continue
            for p, off in offsets.items():
                if books[p].offset is None:
                    books[p].offset = off
            break
        return [e if e is not None and e.partition in books else None for e in out]

    async def _wait_room(self, book: _Book, entry: Sealed) -> bool:
        """Until the entry fits in its partition's metadata; False: the partition went."""
        waited = False
        while True:
            if book.revoked:
                return False
            offset = book.commit_offset() if book.entries else entry.first
            size = len(encode(offset, [*book.entries, entry]))
            if size <= self.max_bytes:
                return True
            if not book.entries:
                raise LedgerFatal(
                    f"one sealed batch needs {size} bytes of offset-commit metadata, more "
                    f"than kafka.offset-metadata-max-bytes ({self.max_bytes})"
                )
            if not waited:
                waited = True
                self.metrics.ledger_full_waits.inc()
                log.info(
                    "partition %d: %d batches pending fill the commit metadata (%d bytes max):"
                    " sealing waits for settlements", entry.partition, len(book.entries),
                    self.max_bytes,
                )
            await self._room.wait()

    def _check_fatal(self, exc: KafkaCommitError) -> None:
        if exc.code == OFFSET_METADATA_TOO_LARGE:
            raise LedgerFatal(
                f"the Kafka brokers refuse offset-commit metadata of "
                f"kafka.offset-metadata-max-bytes ({self.max_bytes}) bytes "
                "(OFFSET_METADATA_TOO_LARGE): lower it to the brokers' "
                "offset.metadata.max.bytes, or raise that"
            )

    # -- the committer's offset store ------------------------------------------------------------
    @property
    def committed(self) -> Mapping[int, int]:
        """Offsets Kafka acknowledged, per owned partition."""
        return {p: b.acknowledged for p, b in self._books.items() if b.acknowledged is not None}

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit settled offsets of owned partitions, each with the batches still past it."""
        todo: dict[int, int] = {}
        metadata: dict[int, str] = {}
        for p, off in offsets.items():
            book = self._books.get(p)
            if book is None or (book.offset is not None and off < book.offset):
                continue
            book.offset = off  # also the offset of every seal commit from now on
            book.entries = [e for e in book.entries if e.last >= off]
            todo[p], metadata[p] = off, book.metadata(off)
        if not todo:
            return
        self._room.notify()
        await self._kafka.commit(todo, metadata)
        for p, off in todo.items():
            book = self._books.get(p)
            if book is not None and (book.acknowledged is None or off > book.acknowledged):
                book.acknowledged = off

    def final(self, partitions: set[int], offsets: Mapping[int, int]
              ) -> tuple[dict[int, int], dict[int, str]]:
        """The commit to make before the partitions go (a revoke): each partition at its
        settled offset (or where it stands) with the batches still pending past it."""
        todo: dict[int, int] = {}
        metadata: dict[int, str] = {}
        for p in partitions:
            book = self._books.get(p)
            if book is None:
                continue
            off = offsets.get(p)
            if off is None or (book.offset is not None and off < book.offset):
                if book.offset is None and not book.entries:
                    continue
                off = book.commit_offset()
            todo[p], metadata[p] = off, book.metadata(off)
        return todo, metadata

