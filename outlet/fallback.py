"""Where a batch goes when its destination cannot insert it live: ``GiveUp`` or ``SpoolLane``.

Both settle the batch (the commit watermark may pass it: it is handed over, not pending).

- ``GiveUp``: counted in ``outlet_destination_retries_exceeded_{batches,flows}`` by reason:
  what that destination lost.
- ``SpoolLane`` (``spool.enable``): the batch is appended to the on-disk spool
  (outlet/spool.py) and a drain task replays spooled batches, oldest first, with their
  original deduplication tokens: one insert at a time, only while the circuit lets it and
  the live queue is less than half full (or a writer waits for spool room). With
  ``when-full: block`` a full spool holds the batch (and, through the full queue, the
  fan-out and Kafka consumption) until the drain frees room: nothing the drain needs
  waits on the writer, so this cannot deadlock. Every wait is on an event (spooled,
  dequeued, circuit changed, room freed) or on a known deadline (backoff, fsync
  interval), never a polling loop. While the circuit is open the drain waits for it to
  move: the destination's probes (outlet/destination.py) turn it half-open, and the
  drain's next replay is then the one attempt that closes it. Replays are repeats: what
  the server deduplicates of them counts as ``attempt="repeat"``.

  A spool write error (ENOSPC, EIO, a read-only or vanished directory; outlet/spool.py
  reports it) is handled like a full spool and never ends the destination's task:
  ``drop-oldest`` drops the batch it cannot write (counted as ``spool_dropped`` and as
  given up with reason ``spool_error``), ``block`` holds it and tries again when the
  drain frees room or after the destination's retry backoff. The first failure is logged
  with the path; ``outlet_spool_write_errors_total{error}`` counts each one,
  ``outlet_spool_write_failing`` is 1 and /readyz names it until an append succeeds (or,
  with nothing to replay while live inserts succeed, a small write of the cursor does:
  tried each time the live path moves); then the recovery is logged.
"""

from __future__ import annotations

import logging
import time

import trio

from outlet import diskio
from outlet.batch import EncodedJob
from outlet.config import DestinationConfig
from outlet.destination import LivePath, Settled
from outlet.ledger import RunSync
from outlet.metrics import Metrics
from outlet.notify import Notifier
from outlet.retry import RetryPolicy, classify
from outlet.spool import Spool, SpooledBatch
from outlet.writer import Writer

log = logging.getLogger(__name__)

# Why a batch could not be inserted live: given up (no spool) or spooled (spool).
# "removed": held by a destination removed from the configuration past its drain time.
SPOOL_REASONS = ("retries_exceeded", "queue_full", "permanent_error", "circuit_open", "removed")
# retries_exceeded flows by reason = what a destination lost; spool_full = dropped from a
# full spool (drop-oldest).
# spool_error = not written to (drop-oldest), or lost from, a spool whose disk failed.
GIVE_UP_REASONS = (*SPOOL_REASONS, "spool_full", "spool_error")


def _init_give_up_metrics(metrics: Metrics, name: str) -> None:
    for reason in GIVE_UP_REASONS:
        metrics.dest_retries_exceeded_flows.labels(name, reason)
        metrics.dest_retries_exceeded_batches.labels(name, reason)


class GiveUp:
    """No spool: the batch is not stored on this destination (counted, logged)."""

    def __init__(self, name: str, metrics: Metrics, on_settled: Settled) -> None:
        self.name = name
        self.metrics = metrics
        self._settled = on_settled
        _init_give_up_metrics(metrics, name)

    async def take(self, job: EncodedJob, reason: str) -> None:
        m = self.metrics
        m.dest_retries_exceeded_batches.labels(self.name, reason).inc()
        m.dest_retries_exceeded_flows.labels(self.name, reason).inc(job.rows)
        log.warning(
            "destination %s: gave up on batch %s (%d flows): %s",
            self.name, job.token, job.rows, reason,
        )
        self._settled(job, self.name, False)

    async def run(self, live: LivePath) -> None:
        """Nothing to do in the background."""

    def live_changed(self) -> None:
        """Nothing waits on the live path."""

    def update(self, cfg: DestinationConfig) -> None:
        """Nothing depends on the settings."""


class SpoolLane:
    """The spool of one additional destination: append on fallback, replay in the background."""

    def __init__(
        self,
        cfg: DestinationConfig,
        metrics: Metrics,
        spool: Spool,
        replay_writer: Writer,
        on_settled: Settled,
        run_sync: RunSync = trio.to_thread.run_sync,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.metrics = metrics
        self.spool = spool
        self._writer = replay_writer
        self._settled = on_settled
        self._run_sync = run_sync  # the spool's blocking disk I/O
        self.retry = RetryPolicy.of(cfg.connection)
        self._changed = Notifier()  # spooled, room wanted, live queue shrank, circuit moved
        self._room = Notifier()  # the drain freed spool room
        self._waiting_for_room = 0
        self._corrupt_seen = 0
        self._vanished_seen = (0, 0)
        self._replay_failures = 0
        self.write_error: str | None = None  # the failing spool's error class (/readyz)
        self._write_failures = 0
        spool.on_error = self._write_failed
        _init_give_up_metrics(metrics, self.name)
        m, name = metrics, self.name
        m.spool_bytes.labels(name).set_function(lambda: spool.bytes)
        m.spool_max_bytes.labels(name).set(spool.cfg.max_bytes)
        m.spool_batches.labels(name).set_function(lambda: spool.batches)
        m.spool_oldest_age.labels(name).set_function(lambda: spool.oldest_age_seconds)
        for reason in SPOOL_REASONS:
            m.spool_appended_flows.labels(name, reason)
            m.spool_appended_batches.labels(name, reason)
        for c in (
            m.spool_replayed_flows, m.spool_replayed_batches, m.spool_dropped_flows,
            m.spool_dropped_batches, m.spool_corrupt_records,
        ):
            c.labels(name)
        for error in diskio.ERROR_CLASSES:
            m.spool_write_errors.labels(name, error)
        m.spool_write_failing.labels(name).set(0)
        self._count_corrupt()
        if spool.open_error is not None:
            self._write_failed("open", spool.open_error)

    def live_changed(self) -> None:
        self._changed.notify()

    def update(self, cfg: DestinationConfig) -> None:
        """Replay backoff follows the new connection settings (spool settings cannot
        change live: outlet/reconfig.py)."""
        self.cfg = cfg
        self.retry = RetryPolicy.of(cfg.connection)

    # -- append -------------------------------------------------------------------------
    async def take(self, job: EncodedJob, reason: str) -> None:
        """Append to the spool, then settle: the batch is handed over, not lost."""
        spool = self.spool
        was_empty = spool.batches == 0
        warned = False
        failures = 0
        while True:
            result = await self._run_sync(spool.append, job.token, job.rows, job.native)
            self._count_vanished()
            if result.dropped_batches:
                self._count_dropped(result.dropped_batches, result.dropped_flows)
                log.warning(
                    "destination %s: spool full, dropped the %d oldest batch(es) (%d flows): "
                    "%s", self.name, result.dropped_batches, result.dropped_flows,
                    ", ".join(result.dropped_tokens[:5]),
                )
            if result.accepted:
                break
            if result.error is not None and spool.cfg.when_full == "drop-oldest":
                # Like a full spool: what cannot be kept is dropped, and counted.
                self._count_dropped(1, job.rows, "spool_error")
                self._changed.notify()
                self._settled(job, self.name, False)
                return
            # when-full: block. Hold the batch (no settle) until the drain frees room or,
            # after a write error, the retry backoff has passed.
            if not warned:
                warned = True
                log.warning(
                    "destination %s: spool %s (%d bytes), holding batch %s until it can be "
                    "written (backpressure)", self.name,
                    "full" if result.error is None else "failing", spool.bytes, job.token,
                )
            self._waiting_for_room += 1
            self._changed.notify()  # the drain replays even while the live queue is busy
            try:
                if result.error is None:
                    await self._room.wait()
                else:
                    failures += 1
                    with trio.move_on_after(self.retry.delay(failures)):
                        await self._room.wait()
            finally:
                self._waiting_for_room -= 1
        self._write_ok()
        m = self.metrics
        m.spool_appended_batches.labels(self.name, reason).inc()
        m.spool_appended_flows.labels(self.name, reason).inc(job.rows)
        if was_empty:
            log.warning(
                "destination %s: spooling batches to %s (%s)", self.name, spool.dir, reason
            )
        self._changed.notify()
        self._settled(job, self.name, False)

    def _count_dropped(self, batches: int, flows: int, reason: str = "spool_full") -> None:
        """Drops count as given up (reason spool_full or spool_error) and in the spool's
        own counters."""
        m, name = self.metrics, self.name
        m.dest_retries_exceeded_batches.labels(name, reason).inc(batches)
        m.dest_retries_exceeded_flows.labels(name, reason).inc(flows)
        m.spool_dropped_batches.labels(name).inc(batches)
        m.spool_dropped_flows.labels(name).inc(flows)

    def _count_vanished(self) -> None:
        """Batches whose segment was deleted under the spool: lost, counted as dropped."""
        seen = (self.spool.vanished_batches, self.spool.vanished_flows)
        batches, flows = seen[0] - self._vanished_seen[0], seen[1] - self._vanished_seen[1]
        if batches:
            self._count_dropped(batches, flows, "spool_error")
            self._vanished_seen = seen

    # -- disk health (called by the spool, in the thread that runs its calls) -----------
    def _write_failed(self, operation: str, exc: OSError) -> None:
        error = diskio.error_class(exc)
        self.metrics.spool_write_errors.labels(self.name, error).inc()
        self._write_failures += 1
        if self.write_error is not None:
            return
        self.write_error = error
        self.metrics.spool_write_failing.labels(self.name).set(1)
        mode = self.spool.cfg.when_full
        log.error(
            "destination %s: spool %s failed: %s; %s until the spool can write again",
            self.name, operation, diskio.describe(exc, self.spool.dir),
            "dropping (and counting) the batches it cannot keep" if mode == "drop-oldest"
            else "holding this destination's batches (backpressure)",
        )

    def _write_ok(self) -> None:
        if self.write_error is None:
            return
        log.warning(
            "destination %s: spool %s writes again (%d failed write(s) meanwhile)",
            self.name, self.spool.dir, self._write_failures,
        )
        self.write_error = None
        self._write_failures = 0
        self.metrics.spool_write_failing.labels(self.name).set(0)

    def _count_corrupt(self) -> None:
        seen = self.spool.corrupt_records
        if seen > self._corrupt_seen:
            self.metrics.spool_corrupt_records.labels(self.name).inc(seen - self._corrupt_seen)
            self._corrupt_seen = seen

    # -- replay -------------------------------------------------------------------------
    async def run(self, live: LivePath) -> None:
        """Replay spooled batches, oldest first, one at a time, with their own tokens."""
        async with trio.open_nursery() as nursery:
            if self.spool.cfg.fsync == "interval":
                nursery.start_soon(self._sync_every_interval)
            await self._drain(live)

    async def _sync_every_interval(self) -> None:
        while True:
            await trio.sleep(self.spool.cfg.fsync_interval)
            await self._run_sync(self.spool.sync_if_due)

    async def _drain(self, live: LivePath) -> None:
        spool, breaker = self.spool, live.breaker
        half = max(1, self.cfg.queue_size // 2)
        while True:
            self._count_corrupt()
            if spool.batches == 0:
                # Nothing to replay and live inserts succeed (no batch needs the spool): a
                # spool that failed is tried with one small write each time the live path
                # moves, so its state clears without an append.
                if (self.write_error is not None and live.outcomes.healthy
                        and await self._run_sync(spool.check_writable)):
                    self._write_ok()
                await self._changed.wait()
                continue
            if live.queued() >= half and not self._waiting_for_room:
                await self._changed.wait()  # live traffic first
                continue
            if not breaker.allow():  # open (probes decide) or half-open, attempt out
                await self._changed.wait()
                continue
            batch = await self._run_sync(spool.peek_oldest)
            self._count_corrupt()
            self._count_vanished()
            if batch is None:
                breaker.release()
                continue
            await self._replay(live, batch)
            if self._replay_failures:
                await trio.sleep(self.retry.delay(self._replay_failures))

    async def _replay(self, live: LivePath, batch: SpooledBatch) -> None:
        spool = self.spool
        job = EncodedJob(
            seq=-1, token=batch.token, native=batch.native, rows=batch.rows, ranges={}, repeat=True
        )
        started = time.perf_counter()
        try:
            result = await self._writer.write(job)
        except Exception as exc:
            failure = classify(exc)
            self._replay_failures += 1
            live.outcomes.failed(failure, self._replay_failures, "replay")
            if failure.retriable:
                live.breaker.record_failure()
            else:
                live.breaker.trip()
            batches, flows = await self._run_sync(spool.release, batch)
            if batches:
                self._count_dropped(batches, flows)
            return
        live.breaker.record_success()
        self._replay_failures = 0
        live.outcomes.stored(job, time.perf_counter() - started, 1)
        live.audit.note(result.comment, job.token, job.rows, "repeat")
        await self._run_sync(spool.ack_oldest, batch)
        m = self.metrics
        m.spool_replayed_batches.labels(self.name).inc()
        m.spool_replayed_flows.labels(self.name).inc(batch.rows)
        self._room.notify()
        if spool.batches == 0:
            log.info("destination %s: spool drained", self.name)
            if spool.healthy:
                self._write_ok()
