"""The file ledger of older outlets: read once after an upgrade, never written again.

Outlets before the ledger moved into Kafka (outlet/offset_ledger.py) recorded each sealed
batch (its Kafka offset ranges, over several partitions) in a local file before inserting
it, and rebuilt the uncommitted ones after a restart on the same state directory. This
module reads that file so that an upgrade in the middle of an outage duplicates nothing:
its uncommitted batches are rebuilt under their original tokens, as the older outlet
would have rebuilt them (outlet/rebuild.py: ``legacy`` plans), and entries drop out as
Kafka commits pass them; the file is deleted once empty.

Format: one JSON object per line::

    {"ranges": {"<partition>": [first, last], ...}, "token": "<deduplication token>"}

``token`` is present in files of outlets with token version 2 (outlet/tokens.py); without
it the batch was sent with the version-1 token of its ranges. A torn or damaged line is
ignored (that batch had not been inserted: its line was durable before any insert).
Batches sealed on another Kafka cluster than the current one (their version-2 token names
it) are not rebuilt: their offsets name other records.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from outlet.tokens import Ranges, make_token_v1, token_cluster_id

RunSync = Callable[..., Awaitable[Any]]  # trio.to_thread.run_sync, or inline in tests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LegacyEntry:
    """One batch an older outlet sealed: the records it holds and the token it was sent with."""

    ranges: Ranges
    token: str


class LegacyLedger:
    """The older outlets' ledger file of one group and topic (thread-safe)."""

    def __init__(
        self,
        directory: Path,
        topic: str,
        group: str,
        cluster_id: str | None = None,
        run_sync: RunSync = trio.to_thread.run_sync,
        on_compact_error: Callable[[OSError], None] = lambda exc: None,
    ) -> None:
        """`on_compact_error`: a failed rewrite of the file (a failing state disk) costs
        only disk space: reported there (outlet/statedisk.py), tried again at the next
        compaction."""
        safe = f"{group}-{topic}".replace("/", "_")
        self.path = directory / f"ledger-{safe}.jsonl"
        self.topic = topic
        self._run_sync = run_sync
        self._on_compact_error = on_compact_error
        self._lock = threading.Lock()
        self._entries = self._read(cluster_id)
        if self._entries:
            log.info(
                "ledger %s (written by an older outlet): %d sealed batch(es) to rebuild if not "
                "committed; the file goes once they are", self.path, len(self._entries),
            )

    def _read(self, cluster_id: str | None) -> list[LegacyEntry]:
        if not self.path.exists():
            return []
        entries: list[LegacyEntry] = []
        foreign = 0
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    entry = self._parse(json.loads(raw))
                except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                    log.warning("ledger %s: ignoring a torn or corrupt line", self.path)
                    continue
                sealed_on = token_cluster_id(entry.token)
                if cluster_id is not None and sealed_on is not None and sealed_on != cluster_id:
                    foreign += 1
                    continue
                entries.append(entry)
        if foreign:
            log.warning(
                "ledger %s: %d batch(es) were sealed on another Kafka cluster than %s; they are "
                "not rebuilt", self.path, foreign, cluster_id,
            )
        return entries

    def _parse(self, obj: Any) -> LegacyEntry:
        ranges = {int(p): (int(r[0]), int(r[1])) for p, r in obj["ranges"].items()}
        if not ranges:
            raise ValueError("no ranges")
        token = obj.get("token")
        if token is None:  # written before token version 2
            token = make_token_v1(self.topic, ranges)
        elif not isinstance(token, str) or not token:
            raise TypeError("bad token")
        return LegacyEntry(ranges, token)

    def pending(
        self, committed: Mapping[int, int], partitions: set[int]
    ) -> list[tuple[str, Ranges]]:
        """(token, ranges still to rebuild) of the batches with records of `partitions`
        past `committed`, restricted to those partitions, in seal order."""
        with self._lock:
            entries = list(self._entries)
        out: list[tuple[str, Ranges]] = []
        for e in entries:
            left = {
                p: rng for p, rng in e.ranges.items()
                if p in partitions and rng[1] >= committed.get(p, -1)
            }
            if left:
                out.append((e.token, left))
        return out

    async def compact(self, committed: Mapping[int, int]) -> None:
        """Forget batches every partition of which Kafka committed past; the file goes
        with the last one."""
        if self._entries:
            try:
                await self._run_sync(self._compact, dict(committed))
            except OSError as exc:
                self._on_compact_error(exc)

    def _compact(self, committed: Mapping[int, int]) -> None:
        with self._lock:
            keep = [
                e for e in self._entries
                if any(last >= committed.get(p, -1) for p, (_, last) in e.ranges.items())
            ]
            if len(keep) == len(self._entries):
                return
            if not keep:
                self.path.unlink(missing_ok=True)
                log.info("ledger %s: every batch of the older outlet is committed; removed",
                         self.path)
            else:
                tmp = self.path.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    for e in keep:
                        ranges = {str(p): list(r) for p, r in e.ranges.items()}
                        f.write(json.dumps({"ranges": ranges, "token": e.token}).encode()
                                + b"\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            self._entries = keep  # only once the file says so: a failure is tried again
