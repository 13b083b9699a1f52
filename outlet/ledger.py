"""The batch ledger: offset ranges of sealed batches, written before any insert.

After a crash the outlet re-reads Kafka from the committed offsets. Without the
ledger it would cut batches at other boundaries, so their deduplication tokens
would differ from those of inserts that may already have reached a destination,
and rows would be duplicated. With it, the outlet rebuilds exactly the batches it
had sealed (same ranges, same tokens), as the ClickHouse Kafka Connect sink does
with its state store, and ClickHouse drops the repeats.

Format: one JSON object per line, fsynced per seal. A torn last line (SIGKILL
mid-append) is ignored: that batch had not been inserted anywhere yet, because the
seal is durable before its first insert starts.

``BatchLedger`` is the interface the sealer (record) and the rebuild planner (pending)
use; ``LocalLedger`` is that interface over the local file (``Ledger``, blocking I/O in
worker threads). Another store (issue 12: the sealed ranges kept in Kafka's offset-commit
metadata, readable by whichever group member gets the partition) implements the same
three methods.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import trio

from outlet.batch import Ranges

RunSync = Callable[..., Awaitable[Any]]  # trio.to_thread.run_sync, or inline in tests

log = logging.getLogger(__name__)

COMPACT_AFTER_LINES = 10_000

# (ranges as sealed: the token, ranges still to rebuild), in seal order
Pending = list[tuple[Ranges, Ranges]]


class BatchLedger(Protocol):
    """Where the boundaries of sealed batches live until Kafka has their commit."""

    async def record(self, ranges: Ranges) -> None:
        """Durably keep a sealed batch; returns before its first insert may start."""
        ...

    def pending(self, committed: Mapping[int, int], partitions: set[int] | None = None) -> Pending:
        """Batches with records past `committed` (see Ledger.pending)."""
        ...

    async def compact(self, committed: Mapping[int, int]) -> None:
        """Forget batches Kafka has committed (may do nothing until it is worth it)."""
        ...

    def close(self) -> None: ...


class Ledger:
    """Append-only record of sealed batches, compacted against committed offsets.

    Thread-safe: the sealer records and the committer compacts from two worker threads;
    a lock makes each call atomic, so a seal recorded while a compaction rewrites the
    file is never lost (a lost seal means other batch boundaries after a crash, hence
    duplicates).
    """

    def __init__(self, directory: Path, topic: str, group: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        safe = f"{group}-{topic}".replace("/", "_")
        self.path = directory / f"ledger-{safe}.jsonl"
        self.topic = topic
        self._lock = threading.Lock()
        self._lines = 0
        self._entries: list[Ranges] = self._read()
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends

    def _read(self) -> list[Ranges]:
        if not self.path.exists():
            return []
        entries: list[Ranges] = []
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    obj = json.loads(raw)
                    ranges = {int(p): (int(r[0]), int(r[1])) for p, r in obj["ranges"].items()}
                except (ValueError, KeyError, TypeError, IndexError):
                    log.warning("ledger %s: ignoring a torn or corrupt line", self.path)
                    continue
                entries.append(ranges)
                self._lines += 1
        return entries

    def pending(self, committed: Mapping[int, int], partitions: set[int] | None = None) -> Pending:
        """Recorded batches with records not yet committed, in seal order.

        Returns (full ranges, ranges still to rebuild) pairs. Part of a batch can be
        committed already (partitions commit independently): only the rest is re-read,
        and it is rebuilt under the batch's original token, so a destination that stored
        the batch drops the repeat and one that never did stores the part it lacks.
        `partitions` restricts the result to ranges of partitions we own.
        """
        plans: Pending = []
        with self._lock:
            entries = list(self._entries)
        for ranges in entries:
            left = {
                p: rng
                for p, rng in ranges.items()
                if rng[1] >= committed.get(p, -1) and (partitions is None or p in partitions)
            }
            if left:
                plans.append((dict(ranges), left))
        return plans

    def record(self, ranges: Ranges) -> None:
        """Durably append a sealed batch before it is inserted anywhere."""
        line = json.dumps({"ranges": {str(p): list(r) for p, r in ranges.items()}})
        with self._lock:
            self._file.write(line.encode() + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._entries.append(dict(ranges))
            self._lines += 1

    def compact(self, committed: Mapping[int, int]) -> None:
        """Drop batches fully below the committed offsets (atomic rewrite)."""
        with self._lock:
            if self._lines >= COMPACT_AFTER_LINES:
                self._rewrite(committed)

    def _rewrite(self, committed: Mapping[int, int]) -> None:
        keep = [
            r
            for r in self._entries
            if any(last >= committed.get(p, -1) for p, (_, last) in r.items())
        ]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for ranges in keep:
                line = json.dumps({"ranges": {str(p): list(r) for p, r in ranges.items()}})
                f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._entries = keep
        self._lines = len(keep)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class LocalLedger:
    """BatchLedger over the local file: its blocking calls run in worker threads."""

    def __init__(self, ledger: Ledger, run_sync: RunSync = trio.to_thread.run_sync) -> None:
        self.ledger = ledger
        self._run_sync = run_sync

    async def record(self, ranges: Ranges) -> None:
        await self._run_sync(self.ledger.record, ranges)

    def pending(self, committed: Mapping[int, int], partitions: set[int] | None = None) -> Pending:
        return self.ledger.pending(committed, partitions)

    async def compact(self, committed: Mapping[int, int]) -> None:
        await self._run_sync(self.ledger.compact, dict(committed))

    def close(self) -> None:
        self.ledger.close()
