"""The sealer: makes cut batches durable and identified, encodes each once, fans them out.

``Sealer(topic, ledger, encoder, fan_out, metrics)``, for the cuts the batcher hands over
together (one partition each), in order:

1. the batches go to the ledger (outlet/offset_ledger.py: one Kafka commit of their
   partitions' metadata), durable before any insert may start, so whoever rebuilds them
   (this process restarted, or another group member) cuts the same batches under the same
   tokens; a rebuild is already there. Meanwhile the encoder works: the commit gates the
   inserts, not the encoding. A batch the ledger refuses (its partition was revoked or
   lost meanwhile) is dropped: never inserted, its records re-read by the next owner;
2. the encoder decodes, enriches and encodes the records once (outlet/codec.py, in a
   worker thread), compressed once if configured;
3. each encoded batch goes to ``fan_out`` (every destination's queue).

A codec failure (``CodecError``: the engine failed, not the input) is never fatal: the
batch is encoded again after a backoff, up to ``CODEC_RETRY.max_attempts`` attempts;
then it is quarantined: its records are counted in
``outlet_decode_errors_total{reason="quarantined"}`` (and the batch in
``outlet_codec_errors_total{outcome="quarantined"}``), logged with their Kafka offsets (they
stay readable there until retention), and the batch settles as empty so the commit moves
on. Every failed attempt counts in ``outlet_codec_errors_total{outcome="retried"}`` until
the last.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import lz4.frame
import trio

from outlet.batch import Cut, EncodedJob
from outlet.codec import BAD_REASONS, CodecError, EncodedBatch, FlowCodec
from outlet.metrics import Metrics
from outlet.offset_ledger import Sealed, ToSeal
from outlet.retry import RetryPolicy

log = logging.getLogger(__name__)

# 5 attempts, 0.5 s initial backoff, capped at 8 s: a few seconds for a passing engine
# fault (memory, a transient chDB error) while the channel holds Kafka back.
CODEC_RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=8.0)
BAD_RECORDS_LOG_EVERY = 10.0  # seconds between two "skipped undecodable records" lines

FanOut = Callable[[EncodedJob], Awaitable[None]]


class SealLedger(Protocol):
    """Where sealed batches become durable (outlet/offset_ledger.py: KafkaLedger)."""

    async def record(self, batches: list[ToSeal]) -> list[Sealed | None]: ...


class Encoder(Protocol):
    """Records -> one encoded batch for every destination."""

    compression: str  # "none" | "lz4": of the next batches (live reconfiguration sets it)

    async def encode(self, records: Sequence[bytes]) -> EncodedBatch:
        """Raises CodecError when the engine fails (not for bad records: those are
        skipped and listed in ``bad_records``)."""
        ...

    async def aclose(self) -> None: ...


class BatchEncoder:
    """The chDB codec (decode + enrich + encode) and optional LZ4, once per batch."""

    def __init__(self, codec: FlowCodec, compression: str) -> None:
        self.codec = codec
        self.compression = compression

    async def encode(self, records: Sequence[bytes]) -> EncodedBatch:
        return await trio.to_thread.run_sync(self._encode, records)

    def _encode(self, records: Sequence[bytes]) -> EncodedBatch:
        encoded = self.codec.encode(records)
        if self.compression == "lz4" and encoded.native:
            native = lz4.frame.compress(
                encoded.native, block_size=lz4.frame.BLOCKSIZE_MAX4MB, store_size=False
            )
            return dataclasses.replace(encoded, native=native)
        return encoded

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.codec.close)


class Sealer:
    """Ledger, encode once, fan out: one cut batch at a time."""

    def __init__(
        self,
        topic: str,
        ledger: SealLedger,
        encoder: Encoder,
        fan_out: FanOut,
        metrics: Metrics,
        codec_retry: RetryPolicy = CODEC_RETRY,
    ) -> None:
        self.topic = topic
        self.ledger = ledger
        self.encoder = encoder
        self.fan_out = fan_out
        self.metrics = metrics
        self.codec_retry = codec_retry
        self._last_bad_log = -BAD_RECORDS_LOG_EVERY
        self._bad_since_log = 0
        for reason in BAD_REASONS:
            metrics.decode_errors.labels(reason)
        for outcome in ("retried", "quarantined"):
            metrics.codec_errors.labels(outcome)

    async def seal(self, cuts: Sequence[Cut]) -> None:
        """Record the new batches among `cuts` (rebuilds are recorded already) while the
        first is encoded; fan each out once encoded and, if new, durable."""
        fresh = [c for c in cuts if c.plan is None and c.records]
        sealed: dict[int, Sealed | None] = {}
        recorded = trio.Event()
        async with trio.open_nursery() as nursery:
            if fresh:
                nursery.start_soon(self._record, fresh, sealed, recorded)
            for cut in cuts:
                encoded = await self._encode(cut) if cut.records else None
                if cut.plan is None:
                    await recorded.wait()
                job = self._job(cut, sealed, encoded)
                if job is not None:
                    await self.fan_out(job)

    async def _record(
        self, cuts: list[Cut], out: dict[int, Sealed | None], done: trio.Event
    ) -> None:
        batches = [ToSeal(p, c.epoch, first, last) for c in cuts for p, (first, last) in
                   c.ranges.items()]
        for cut, entry in zip(cuts, await self.ledger.record(batches), strict=True):
            out[cut.seq] = entry
        done.set()

    def _job(
        self, cut: Cut, sealed: dict[int, Sealed | None], encoded: EncodedBatch | None
    ) -> EncodedJob | None:
        plan = cut.plan
        if plan is not None:
            token, sealed_at = plan.token, plan.sealed_at
        else:
            entry = sealed.get(cut.seq)
            if entry is None:
                self.metrics.batches_aborted.inc()
                log.info("batch %s of an assignment that ended: not inserted (re-read by the "
                         "partitions' next owner)", dict(cut.ranges))
                return None
            token, sealed_at = entry.token(self.topic), entry.sealed_at
        if encoded is None:  # a rebuild with nothing left to collect: settle it only
            return EncodedJob(cut.seq, token, b"", 0, dict(cut.ranges), cut.epoch, sealed_at,
                              repeat=True)
        self.metrics.batches_sealed.labels(cut.reason).inc()
        self._count_bad(encoded.bad_reasons)
        self.metrics.flows_received.inc(encoded.rows)
        self.metrics.batch_size.observe(encoded.rows)
        return EncodedJob(
            seq=cut.seq,
            token=token,
            native=encoded.native,
            rows=encoded.rows,
            ranges=dict(cut.ranges),
            epoch=cut.epoch,
            sealed_at=sealed_at,
            repeat=plan is not None,
        )

    async def _encode(self, cut: Cut) -> EncodedBatch:
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                encoded = await self.encoder.encode(cut.records)
            except CodecError as exc:
                if self.codec_retry.exhausted(attempt):
                    return self._quarantine(cut, attempt, exc)
                self.metrics.codec_errors.labels("retried").inc()
                log.warning(
                    "codec failed on batch %s (attempt %d of %d), retrying: %s",
                    dict(cut.ranges), attempt, self.codec_retry.max_attempts, exc,
                )
                await trio.sleep(self.codec_retry.delay(attempt))
                continue
            self.metrics.encode_seconds.observe(time.perf_counter() - started)
            return encoded

    def _quarantine(self, cut: Cut, attempts: int, exc: CodecError) -> EncodedBatch:
        """Give the batch up: counted, logged with its offsets, settled as empty."""
        self.metrics.codec_errors.labels("quarantined").inc()
        self.metrics.decode_errors.labels("quarantined").inc(len(cut.records))
        log.error(
            "codec failed on batch %s %d times (%s): its %d records are skipped "
            "(outlet_decode_errors_total{reason=\"quarantined\"}); they stay in Kafka at "
            "these offsets until retention",
            dict(cut.ranges), attempts, exc, len(cut.records),
        )
        return EncodedBatch(native=b"", rows=0, bad_records=())

    def _count_bad(self, reasons: tuple[str, ...]) -> None:
        if not reasons:
            return
        for reason in reasons:
            self.metrics.decode_errors.labels(reason).inc()
        self._log_bad_records(len(reasons))

    def _log_bad_records(self, count: int) -> None:
        """Rate-limited log of skipped records (at most one line per 10 s)."""
        self._bad_since_log += count
        now = time.monotonic()
        if now - self._last_bad_log >= BAD_RECORDS_LOG_EVERY:
            log.warning(
                "skipped %d undecodable Kafka record(s) since last report "
                "(see outlet_decode_errors_total)",
                self._bad_since_log,
            )
            self._last_bad_log = now
            self._bad_since_log = 0
