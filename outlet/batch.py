"""Batches, their Kafka offset ranges and deduplication tokens.

A batch is identified by the Kafka offsets it covers, never by a counter: the
deduplication token sent with every insert is derived from those ranges and the Kafka
cluster (outlet/tokens.py), fixed when the batch is sealed and recorded in the ledger,
so the same batch always carries the same token, across retries, restarts and rebuilds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from outlet.tokens import Ranges as Ranges  # re-exported: the type of offset ranges


@dataclass
class BatchBuilder:
    """Records accumulated for one batch, in arrival order."""

    records: list[bytes] = field(default_factory=list)
    ranges: Ranges = field(default_factory=dict)
    started_at: float = 0.0
    flows: int = 0  # flows the records hold, as the batcher counts them (its size bound)

    def add(self, partition: int, offset: int, value: bytes) -> None:
        self.records.append(value)
        current = self.ranges.get(partition)
        if current is None:
            self.ranges[partition] = (offset, offset)
        else:
            self.ranges[partition] = (current[0], offset)

    def extend(
        self, parts: list[int], offs: list[int], values: list[bytes], start: int, stop: int
    ) -> None:
        """Add records [start, stop) of a chunk; per-record work kept to two dict writes."""
        self.records.extend(values[start:stop])
        firsts: dict[int, int] = {}
        lasts: dict[int, int] = {}
        for p, off in zip(parts[start:stop], offs[start:stop], strict=True):
            if p not in firsts:
                firsts[p] = off
            lasts[p] = off
        ranges = self.ranges
        for p, last in lasts.items():
            current = ranges.get(p)
            ranges[p] = (firsts[p] if current is None else current[0], last)

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class Cut:
    """What the batcher hands to the sealer: records and where they came from."""

    seq: int
    records: Sequence[bytes]
    ranges: Ranges
    reason: str  # size | time | rebalance | shutdown | rebuild
    plan: RebuildPlan | None = None  # a rebuild: the original token, no new ledger entry


@dataclass(frozen=True)
class SealedBatch:
    """A batch whose offset ranges are fixed and recorded in the ledger."""

    seq: int
    topic: str
    ranges: Ranges  # the records this batch holds
    records: tuple[bytes, ...]
    reason: str
    token: str  # fixed at the first seal; a rebuilt batch keeps its original token


@dataclass(frozen=True)
class EncodedJob:
    """What every destination receives: the same encoded bytes, once."""

    seq: int
    token: str
    native: bytes  # a Native block, or an LZ4 frame of one (see `compression`)
    rows: int
    ranges: Ranges
    repeat: bool = False  # sent before (ledger rebuild, spool replay): dedup is expected

    @property
    def compression(self) -> str | None:
        """`lz4` when the bytes are an LZ4 frame (spooled batches keep their encoding)."""
        return "lz4" if self.native[:4] == LZ4_FRAME_MAGIC else None


# A Native block starts with a varint column count, never with this frame magic.
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"


@dataclass
class RebuildPlan:
    """A batch recorded in the ledger before a crash, to be rebuilt exactly."""

    ranges: Ranges  # what to collect again (the uncommitted part)
    token: str  # the batch's token as recorded in the ledger
    seq: int = 0
    builder: BatchBuilder = field(default_factory=BatchBuilder)
    reached: set[int] = field(default_factory=set)

    def covers(self, partition: int, offset: int) -> bool:
        rng = self.ranges.get(partition)
        return rng is not None and rng[0] <= offset <= rng[1]

    def note(self, partition: int, offset: int) -> None:
        rng = self.ranges.get(partition)
        if rng is not None and offset >= rng[1]:
            self.reached.add(partition)

    def complete(self, assigned: set[int] | None) -> bool:
        wanted = set(self.ranges) if assigned is None else set(self.ranges) & assigned
        return wanted <= self.reached
