"""The state directory's health, as the outlet's own writes to it see it.

Since issue 12 the batch ledger lives in Kafka's offset-commit metadata
(outlet/offset_ledger.py): sealing a batch writes nothing to the local disk, so a failing
state disk (ENOSPC, EIO, a read-only remount) can no longer hold back or endanger the
primary's exactly-once. What is left on that disk: the spools (their write errors are
handled in outlet/fallback.py) and an older outlet's ledger file, read once and
compacted as Kafka commits past it: a failed compaction costs only disk space, counted in
``outlet_state_disk_errors_total{operation="compact", error}`` and logged, and is tried
again at the next commit. ``failing`` (/readyz) and ``outlet_state_disk_failing`` stay
for a store that must be written before an insert; none is, today.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from outlet import diskio
from outlet.metrics import Metrics
from outlet.retry import RetryPolicy

log = logging.getLogger(__name__)

STATE_RETRY = RetryPolicy(max_attempts=0, initial_backoff=0.5, max_backoff=5.0)
OPERATIONS = ("ledger", "compact")


class StateDisk:
    """Health of the state directory as the ledger's writes see it."""

    def __init__(
        self, path: str, metrics: Metrics, on_failing: Callable[[], None] = lambda: None
    ) -> None:
        """`on_failing` is called at every failed ledger write (the outlet abandons the
        open batch there when it is stopping)."""
        self.path = path
        self.metrics = metrics
        self.failing: str | None = None  # error class while the ledger cannot be written
        self._on_failing = on_failing
        self._since = 0.0
        self._attempts = 0
        for op in OPERATIONS:
            for error in diskio.ERROR_CLASSES:
                metrics.state_disk_errors.labels(op, error)
        metrics.state_disk_failing.set(0)

    def failed(self, exc: OSError) -> None:
        """A ledger write failed: consumption pauses (logged once)."""
        error = diskio.error_class(exc)
        self.metrics.state_disk_errors.labels("ledger", error).inc()
        self._attempts += 1
        if self.failing is None:
            self.failing = error
            self._since = time.monotonic()
            self.metrics.state_disk_failing.set(1)
            log.error(
                "state disk: cannot write the ledger: %s; consumption paused (nothing is "
                "sealed, inserted or committed) until it can, retried every %g s at most",
                diskio.describe(exc, self.path), STATE_RETRY.max_backoff,
            )
        self._on_failing()

    def recovered(self) -> None:
        if self.failing is None:
            return
        log.warning(
            "state disk: the ledger is written again after %d failed attempt(s) in %.0f s; "
            "consumption resumes", self._attempts, time.monotonic() - self._since,
        )
        self.failing = None
        self._attempts = 0
        self.metrics.state_disk_failing.set(0)

    def compact_failed(self, exc: OSError) -> None:
        self.metrics.state_disk_errors.labels("compact", diskio.error_class(exc)).inc()
        log.warning(
            "state disk: ledger compaction failed: %s; the ledger keeps its committed "
            "entries until the next compaction", diskio.describe(exc, self.path),
        )
