"""The state directory's health, as the outlet's own writes to it see it.

Since issue 12 the batch ledger lives in Kafka's offset-commit metadata
(outlet/offset_ledger.py): sealing a batch writes nothing to the local disk, so a failing
state disk (ENOSPC, EIO, a read-only remount) can neither hold back nor endanger the
primary's exactly-once, and consumption never pauses for it. What is left on that disk:
the spools (their write errors are handled in outlet/fallback.py, alert
OutletSpoolWriteFailing) and an older outlet's ledger file (outlet/ledger.py), read once
and compacted as Kafka commits past it. A failed compaction costs only disk space: it is
counted in ``outlet_state_disk_errors_total{operation="compact", error}``, logged, and
tried again once another of the file's batches is committed.
"""

from __future__ import annotations

import logging

from outlet import diskio
from outlet.metrics import Metrics

log = logging.getLogger(__name__)

OPERATIONS = ("compact",)


class StateDisk:
    """Counts and logs the failed writes to the state directory."""

    def __init__(self, path: str, metrics: Metrics) -> None:
        self.path = path
        self.metrics = metrics
        for op in OPERATIONS:
            for error in diskio.ERROR_CLASSES:
                metrics.state_disk_errors.labels(op, error)

    def compact_failed(self, exc: OSError) -> None:
        self.metrics.state_disk_errors.labels("compact", diskio.error_class(exc)).inc()
        log.warning(
            "state disk: compaction of the older outlet's ledger file failed: %s; it keeps "
            "its committed entries until the next compaction (nothing else is affected)",
            diskio.describe(exc, self.path),
        )
