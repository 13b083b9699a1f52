"""The sealer: makes a cut batch durable and identified, encodes it once, fans it out.

``Sealer(topic, ledger, encoder, fan_out, metrics, identity)``, for each cut, in order:

1. the batch gets its deduplication token (outlet/tokens.py: the writer identity, topic
   and offset ranges; a rebuild keeps the token recorded in the ledger), and its ranges and
   token go to the ledger (durable before any insert may start), so a restart rebuilds the
   same batch under the same token; a rebuild is already there;
2. the encoder decodes, enriches and encodes the records once (outlet/codec.py, in a
   worker thread), compressed once if configured;
3. the encoded batch goes to ``fan_out`` (every destination's queue).

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

from outlet.batch import Cut, EncodedJob, SealedBatch
from outlet.codec import BAD_REASONS, CodecError, EncodedBatch, FlowCodec
from outlet.ledger import BatchLedger
from outlet.metrics import Metrics
from outlet.retry import RetryPolicy
from outlet.tokens import WriterIdentity, make_token

log = logging.getLogger(__name__)

# 5 attempts, 0.5 s initial backoff, capped at 8 s: a few seconds for a passing engine
# fault (memory, a transient chDB error) while the channel holds Kafka back.
CODEC_RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=8.0)
BAD_RECORDS_LOG_EVERY = 10.0  # seconds between two "skipped undecodable records" lines

FanOut = Callable[[EncodedJob], Awaitable[None]]


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
        ledger: BatchLedger,
        encoder: Encoder,
        fan_out: FanOut,
        metrics: Metrics,
        identity: WriterIdentity,
        codec_retry: RetryPolicy = CODEC_RETRY,
    ) -> None:
        self.topic = topic
        self.identity = identity
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

    async def seal(self, cut: Cut) -> None:
        plan = cut.plan
        batch = SealedBatch(
            seq=cut.seq,
            topic=self.topic,
            ranges=dict(cut.ranges),
            records=tuple(cut.records),
            reason=cut.reason,
            token=(
                plan.token
                if plan is not None
                else make_token(self.identity.token_identity, self.topic, cut.ranges)
            ),
        )
        if not batch.records:  # a rebuild with nothing left to collect: settle it only
            await self.fan_out(EncodedJob(batch.seq, batch.token, b"", 0, batch.ranges))
            return
        if plan is None:
            await self.ledger.record(batch.ranges, batch.token)
        self.metrics.batches_sealed.labels(batch.reason).inc()
        encoded = await self._encode(batch)
        self._count_bad(encoded.bad_reasons)
        self.metrics.flows_received.inc(encoded.rows)
        self.metrics.batch_size.observe(encoded.rows)
        job = EncodedJob(
            seq=batch.seq,
            token=batch.token,
            native=encoded.native,
            rows=encoded.rows,
            ranges=batch.ranges,
            repeat=plan is not None,
        )
        await self.fan_out(job)

    async def _encode(self, batch: SealedBatch) -> EncodedBatch:
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                encoded = await self.encoder.encode(batch.records)
            except CodecError as exc:
                if self.codec_retry.exhausted(attempt):
                    return self._quarantine(batch, attempt, exc)
                self.metrics.codec_errors.labels("retried").inc()
                log.warning(
                    "codec failed on batch %s (attempt %d of %d), retrying: %s",
                    batch.token, attempt, self.codec_retry.max_attempts, exc,
                )
                await trio.sleep(self.codec_retry.delay(attempt))
                continue
            self.metrics.encode_seconds.observe(time.perf_counter() - started)
            return encoded

    def _quarantine(self, batch: SealedBatch, attempts: int, exc: CodecError) -> EncodedBatch:
        """Give the batch up: counted, logged with its offsets, settled as empty."""
        self.metrics.codec_errors.labels("quarantined").inc()
        self.metrics.decode_errors.labels("quarantined").inc(len(batch.records))
        log.error(
            "codec failed on batch %s %d times (%s): its %d records are skipped "
            "(outlet_decode_errors_total{reason=\"quarantined\"}); they stay in Kafka at "
            "these offsets until retention",
            batch.token, attempts, exc, len(batch.records),
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
