"""The batch ledger: offset ranges and tokens of sealed batches, written before any insert.

After a crash the outlet re-reads Kafka from the committed offsets. Without the
ledger it would cut batches at other boundaries, so their deduplication tokens
would differ from those of inserts that may already have reached a destination,
and rows would be duplicated. With it, the outlet rebuilds exactly the batches it
had sealed (same ranges, same tokens), as the ClickHouse Kafka Connect sink does
with its state store, and ClickHouse drops the repeats.

Format: one JSON object per line, fsynced per seal::

    {"ranges": {"<partition>": [first, last], ...}, "token": "<deduplication token>"}

The token is recorded as it was sent (outlet/tokens.py), so a batch is rebuilt under
its original token even when the token format or the writer identity changed since.
Lines without ``token`` were written by outlets before token version 2: their batches
were sent with the version-1 token of their ranges, and are rebuilt with it.

A torn last line (SIGKILL mid-append) is ignored: that batch had not been inserted
anywhere yet, because the seal is durable before its first insert starts. A failed
append (ENOSPC, EIO) is cut back off the file before ``record`` raises, so the next line
is never glued to a partial one (if even the cut fails, the next line starts on a line of
its own); outlet/statedisk.py retries it while consumption waits.

``BatchLedger`` is the interface the sealer (record) and the rebuild planner (pending)
use; ``LocalLedger`` is that interface over the local file (``Ledger``, blocking I/O in
worker threads). Another store (issue 12: the sealed ranges kept in Kafka's offset-commit
metadata, readable by whichever group member gets the partition) implements the same
three methods.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import trio

from outlet import diskio
from outlet.tokens import Ranges, make_token_v1, token_cluster_id

RunSync = Callable[..., Awaitable[Any]]  # trio.to_thread.run_sync, or inline in tests

log = logging.getLogger(__name__)

COMPACT_AFTER_LINES = 10_000


@dataclass(frozen=True)
class LedgerEntry:
    """One sealed batch: the records it holds and the token its inserts carry."""

    ranges: Ranges
    token: str


# (the batch as sealed: ranges and token, ranges still to rebuild), in seal order
Pending = list[tuple[LedgerEntry, Ranges]]


class BatchLedger(Protocol):
    """Where the boundaries of sealed batches live until Kafka has their commit."""

    async def record(self, ranges: Ranges, token: str) -> None:
        """Durably keep a sealed batch; returns before its first insert may start."""
        ...

    def pending(
        self,
        committed: Mapping[int, int],
        partitions: set[int] | None = None,
        cluster_id: str | None = None,
    ) -> Pending:
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
        self._entries: list[LedgerEntry] = self._read()
        self._file: BinaryIO | None = None  # opened (unbuffered) by the first append
        self._torn = False  # a failed append could not be cut back off the file

    def _read(self) -> list[LedgerEntry]:
        if not self.path.exists():
            return []
        entries: list[LedgerEntry] = []
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    entry = self._parse(json.loads(raw))
                except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                    log.warning("ledger %s: ignoring a torn or corrupt line", self.path)
                    continue
                entries.append(entry)
                self._lines += 1
        return entries

    def _parse(self, obj: Any) -> LedgerEntry:
        ranges = {int(p): (int(r[0]), int(r[1])) for p, r in obj["ranges"].items()}
        if not ranges:
            raise ValueError("no ranges")
        token = obj.get("token")
        if token is None:  # written before token version 2
            token = make_token_v1(self.topic, ranges)
        elif not isinstance(token, str) or not token:
            raise TypeError("bad token")
        return LedgerEntry(ranges, token)

    def pending(
        self,
        committed: Mapping[int, int],
        partitions: set[int] | None = None,
        cluster_id: str | None = None,
    ) -> Pending:
        """Recorded batches with records not yet committed, in seal order.

        Returns (entry, ranges still to rebuild) pairs. Part of a batch can be committed
        already (partitions commit independently): only the rest is re-read, and it is
        rebuilt under the batch's original token, so a destination that stored the batch
        drops the repeat and one that never did stores the part it lacks.
        `partitions` restricts the result to ranges of partitions we own. With
        `cluster_id`, batches sealed on another Kafka cluster (the brokers now report
        another id: a re-created cluster, whose offsets hold other records) are left out:
        rebuilt under their old tokens, different flows would be dropped as duplicates.
        """
        plans: Pending = []
        foreign = 0
        with self._lock:
            entries = list(self._entries)
        for entry in entries:
            sealed_on = token_cluster_id(entry.token)
            if cluster_id is not None and sealed_on is not None and sealed_on != cluster_id:
                foreign += 1
                continue
            left = {
                p: rng
                for p, rng in entry.ranges.items()
                if rng[1] >= committed.get(p, -1) and (partitions is None or p in partitions)
            }
            if left:
                plans.append((entry, left))
        if foreign:
            log.warning(
                "ledger %s: %d batch(es) were sealed on another Kafka cluster than %s; "
                "they are not rebuilt", self.path, foreign, cluster_id,
            )
        return plans

    def record(self, ranges: Ranges, token: str) -> None:
        """Durably append a sealed batch before it is inserted anywhere."""
        entry = LedgerEntry(dict(ranges), token)
        with self._lock:
            self._append(_line(entry))
            self._entries.append(entry)
            self._lines += 1

    def _append(self, line: bytes) -> None:
        fd = self._open_for_append()
        size = os.fstat(fd).st_size
        try:
            diskio.write_all(fd, b"\n" + line if self._torn else line)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                self._torn = True
            raise
        self._torn = False

    def _open_for_append(self) -> int:
        """The file's descriptor; a file deleted under us (its directory removed) is
        written again from memory first, so a restart still rebuilds what it held."""
        if self._file is not None:
            if os.fstat(self._file.fileno()).st_nlink > 0:
                return self._file.fileno()
            log.error("ledger %s was deleted; writing its %d entries again",
                      self.path, len(self._entries))
            self._file.close()
            self._file = None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite({})
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
        return self._file.fileno()

    def compact(self, committed: Mapping[int, int]) -> None:
        """Drop batches fully below the committed offsets (atomic rewrite)."""
        with self._lock:
            if self._lines >= COMPACT_AFTER_LINES:
                self._rewrite(committed)

    def _rewrite(self, committed: Mapping[int, int]) -> None:
        keep = [
            e
            for e in self._entries
            if any(last >= committed.get(p, -1) for p, (_, last) in e.ranges.items())
        ]
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                for entry in keep:
                    f.write(_line(entry))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if self._file is not None:
            self._file.close()
        self._file = None  # the next append opens the new file
        self._torn = False
        self._entries = keep
        self._lines = len(keep)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()


def _line(entry: LedgerEntry) -> bytes:
    ranges = {str(p): list(r) for p, r in entry.ranges.items()}
    return json.dumps({"ranges": ranges, "token": entry.token}).encode() + b"\n"


class LocalLedger:
    """BatchLedger over the local file: its blocking calls run in worker threads."""

    def __init__(self, ledger: Ledger, run_sync: RunSync = trio.to_thread.run_sync) -> None:
        self.ledger = ledger
        self._run_sync = run_sync

    async def record(self, ranges: Ranges, token: str) -> None:
        await self._run_sync(self.ledger.record, ranges, token)

    def pending(
        self,
        committed: Mapping[int, int],
        partitions: set[int] | None = None,
        cluster_id: str | None = None,
    ) -> Pending:
        return self.ledger.pending(committed, partitions, cluster_id)

    async def compact(self, committed: Mapping[int, int]) -> None:
        await self._run_sync(self.ledger.compact, dict(committed))

    def close(self) -> None:
        self.ledger.close()
