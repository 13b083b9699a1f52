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
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from outlet.batch import Ranges

log = logging.getLogger(__name__)

COMPACT_AFTER_LINES = 10_000


class Ledger:
    """Append-only record of sealed batches, compacted against committed offsets."""

    def __init__(self, directory: Path, topic: str, group: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        safe = f"{group}-{topic}".replace("/", "_")
        self.path = directory / f"ledger-{safe}.jsonl"
        self.topic = topic
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

    def pending(
        self, committed: dict[int, int], partitions: set[int] | None = None
    ) -> list[tuple[Ranges, Ranges]]:
        """Recorded batches with records not yet committed, in seal order.

        Returns (full ranges, ranges still to rebuild) pairs. Part of a batch can be
        committed already (partitions commit independently): only the rest is re-read,
        and it is rebuilt under the batch's original token, so a destination that stored
        the batch drops the repeat and one that never did stores the part it lacks.
        `partitions` restricts the result to ranges of partitions we own.
        """
        plans: list[tuple[Ranges, Ranges]] = []
        for ranges in self._entries:
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
        self._file.write(line.encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._entries.append(dict(ranges))
        self._lines += 1

    def compact(self, committed: dict[int, int]) -> None:
        """Drop batches fully below the committed offsets (atomic rewrite)."""
        if self._lines < COMPACT_AFTER_LINES:
            return
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
        self._file.close()
