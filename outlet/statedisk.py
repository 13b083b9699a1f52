"""The state directory failing: consumption pauses until the ledger can be written again.

The primary's exactly-once rests on the ledger (outlet/ledger.py): a batch's ranges and
token are durable before its first insert. When the state disk refuses that write
(ENOSPC, EIO, a read-only remount, the directory gone), ``GuardedLedger.record`` does not
raise: the batch stays unsealed and the write is tried again after a backoff
(``STATE_RETRY``: 0.5 s doubling up to 5 s; there is no event that says a disk has room
again). Meanwhile the sealer waits, the batcher's channel fills and the Kafka input
pauses fetching (backpressure, outlet/kafka_input.py), so nothing after that batch is
sealed, inserted or committed: the commit stops at what the ledger stores, and nothing is
lost. The first write that succeeds resumes everything.

::

    ok --record fails--> failing --record succeeds--> ok
                         (retry after STATE_RETRY.delay(n); SIGTERM: the open batch is
                          abandoned, unsealed, and read again after the restart)

``StateDisk`` is what the rest of the outlet sees: ``failing`` (the error class, for
/readyz), ``outlet_state_disk_failing`` (1 while paused), ``outlet_state_disk_errors_total
{operation, error}`` (each failed attempt), and the log: once when it starts failing
(with the path and the system's message), once when it recovers. A failed compaction
(after a commit) costs only disk space: counted and logged, tried again at the next one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping

import trio

from outlet import diskio
from outlet.ledger import BatchLedger, Pending
from outlet.metrics import Metrics
from outlet.retry import RetryPolicy
from outlet.tokens import Ranges

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


class GuardedLedger:
    """A BatchLedger whose writes wait out a failing disk instead of raising."""

    def __init__(
        self, inner: BatchLedger, disk: StateDisk, retry: RetryPolicy = STATE_RETRY
    ) -> None:
        self.inner = inner
        self.disk = disk
        self.retry = retry

    async def record(self, ranges: Ranges, token: str) -> None:
        attempt = 0
        while True:
            try:
                await self.inner.record(ranges, token)
            except OSError as exc:
                attempt += 1
                self.disk.failed(exc)
                await trio.sleep(self.retry.delay(attempt))
                continue
            self.disk.recovered()
            return

    def pending(
        self,
        committed: Mapping[int, int],
        partitions: set[int] | None = None,
        cluster_id: str | None = None,
    ) -> Pending:
        return self.inner.pending(committed, partitions, cluster_id)

    async def compact(self, committed: Mapping[int, int]) -> None:
        try:
            await self.inner.compact(committed)
        except OSError as exc:
            self.disk.compact_failed(exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.inner.close()
