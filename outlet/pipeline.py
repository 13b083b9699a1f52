"""The outlet's run loop: Kafka -> batch -> encode once -> fan out -> commit.

Tasks, all owned by one nursery:
- KafkaInput.run sends record chunks into a bounded channel (backpressure);
- Batcher.run seals batches (size, wait time, rebuild of ledger batches), records
  them in the ledger, encodes each once (chDB, in a worker thread) and fans the
  same bytes out to every destination's queue;
- one Destination.run per destination inserts from its own queue, so a slow or
  partitioned additional destination never blocks the primary (its queue is
  bounded and it gives batches up instead of blocking);
- the committer commits the settled watermark to Kafka about once a second.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import lz4.frame
import numpy as np
import numpy.typing as npt
import trio

from outlet import protoscan
from outlet.batch import BatchBuilder, EncodedJob, RebuildPlan, SealedBatch
from outlet.codec import BAD_REASONS, EncodedBatch, FlowCodec
from outlet.commit import CommitTracker
from outlet.config import OutletConfig
from outlet.destination import Destination
from outlet.kafka_input import Barrier, Chunk, KafkaInput
from outlet.ledger import Ledger
from outlet.metrics import Metrics
from outlet.tokens import make_token, writer_identity

log = logging.getLogger(__name__)

COMMIT_INTERVAL = 1.0


@dataclass
class RunState:
    """What /readyz and the shutdown path look at."""

    stopping: bool = False


class Batcher:
    """Cuts record chunks into batches and fans each encoded batch out."""

    def __init__(self, outlet: Outlet) -> None:
        self.o = outlet
        self.max_size = outlet.cfg.clickhouse.maximum_batch_size
        self.max_flows_per_record = outlet.cfg.clickhouse.maximum_flows_per_record
        self.max_wait = outlet.cfg.clickhouse.maximum_wait_time
        self.current = BatchBuilder()
        self.plans: list[RebuildPlan] = []
        self._seq = 0

    def add_plans(self, committed: dict[int, int], partitions: set[int]) -> None:
        """On assignment: batches sealed earlier and not committed are rebuilt exactly.

        This covers a restart after a crash and a consumer-group rejoin after a lost
        assignment (session timeout): the re-read records go into batches with the
        original boundaries and tokens, so destinations deduplicate them. Plans are
        registered with the commit tracker now, before any new batch of those
        partitions, so the commit watermark cannot pass them while they are rebuilt.
        """
        active = {p.token for p in self.plans}
        names = {d.name for d in self.o.destinations}
        added = 0
        for entry, left in self.o.ledger.pending(committed, partitions, self.o.cluster_id):
            if entry.token in active:
                continue
            self._seq += 1
            plan = RebuildPlan(ranges=left, token=entry.token, seq=self._seq)
            self.plans.append(plan)
            self.o.tracker.register(plan.seq, plan.ranges, 0, names)
            added += 1
        if added:
            log.info("rebuilding %d batch(es) sealed before and not committed", added)

    async def run(self, recv: trio.MemoryReceiveChannel[Chunk]) -> None:
        async with recv:
            while True:
                deadline = self.current.started_at + self.max_wait if self.current else math.inf
                chunk: Chunk | None = None
                with trio.move_on_at(deadline):
                    try:
                        chunk = await recv.receive()
                    except trio.EndOfChannel:
                        break
                if chunk is None:
                    await self._seal_current("time")
                    continue
                if isinstance(chunk, Barrier):
                    await self._seal_current("rebalance")
                    chunk.sealed.set()
                    continue
                await self._add_chunk(chunk)
        await self._flush_on_shutdown()

    def _weights(self, values: list[bytes]) -> npt.NDArray[np.int64]:
        """Flows each record adds to a batch (framing only; a bad record weighs 1), so
        that ``maximum-batch-size`` bounds the flows of a batch, not its records."""
        counts, _ = protoscan.scan(values, self.max_flows_per_record, framing_only=True)
        return np.maximum(counts, 1)

    async def _add_chunk(self, chunk: Chunk) -> None:
        if self.plans:
            await self._add_chunk_with_plans(chunk)
            return
        parts, offs, vals = chunk.partitions, chunk.offsets, chunk.values
        cum: list[int] = np.concatenate(([0], np.cumsum(self._weights(vals)))).tolist()
        start, end = 0, len(vals)
        while start < end:
            cur = self.current
            if not cur.records:
                cur.started_at = trio.current_time()
            # the most records that fit; a record alone larger than a batch goes alone
            room = self.max_size - cur.flows
            stop = bisect.bisect_right(cum, cum[start] + room, start, end + 1) - 1
            if stop == start and not cur.records:
                stop = start + 1
            cur.extend(parts, offs, vals, start, stop)
            cur.flows += cum[stop] - cum[start]
            start = stop
            if cur.flows >= self.max_size or start < end:
                await self._seal_current("size")

    async def _add_chunk_with_plans(self, chunk: Chunk) -> None:
        """Slow path, only while rebuilding batches recorded before a crash."""
        parts, offs, vals = chunk.partitions, chunk.offsets, chunk.values
        weights: list[int] = self._weights(vals).tolist()
        for i in range(len(vals)):
            p, off = parts[i], offs[i]
            if self.plans and await self._route_to_plan(p, off, vals[i]):
                continue
            cur = self.current
            if cur.records and cur.flows + weights[i] > self.max_size:
                await self._seal_current("size")
                cur = self.current
            if not cur.records:
                cur.started_at = trio.current_time()
            cur.add(p, off, vals[i])
            cur.flows += weights[i]
            if cur.flows >= self.max_size:
                await self._seal_current("size")

    async def _route_to_plan(self, p: int, off: int, value: bytes) -> bool:
        routed = False
        for plan in self.plans:
            if plan.covers(p, off):
                plan.builder.add(p, off, value)
                routed = True
            plan.note(p, off)
        done = [pl for pl in self.plans if pl.complete(self.o.kafka.assigned or None)]
        for plan in done:
            self.plans.remove(plan)
            if plan.builder.records:
                await self._seal(
                    plan.builder,
                    "rebuild",
                    record=False,
                    ranges=plan.ranges,
                    seq=plan.seq,
                    token=plan.token,
                )
            else:
                for d in self.o.destinations:
                    await self.o.settle(plan.seq, d.name)
        return routed

    async def _flush_on_shutdown(self) -> None:
        await self._seal_current("shutdown")

    async def _seal_current(self, reason: str) -> None:
        """Seal the open batch (if it holds anything) and start a new one."""
        builder, self.current = self.current, BatchBuilder()
        await self._seal(builder, reason)

    async def _seal(
        self,
        builder: BatchBuilder,
        reason: str,
        record: bool = True,
        ranges: dict[int, tuple[int, int]] | None = None,
        seq: int | None = None,
        token: str | None = None,
    ) -> None:
        if not builder.records:
            return
        if seq is None:
            self._seq += 1
            seq = self._seq
        topic = self.o.cfg.kafka.topic
        ranges = dict(ranges if ranges is not None else builder.ranges)
        batch = SealedBatch(
            seq=seq,
            topic=topic,
            ranges=ranges,
            records=tuple(builder.records),
            reason=reason,
            token=token or make_token(self.o.identity, topic, ranges),
        )
        if record:
            await trio.to_thread.run_sync(self.o.ledger.record, batch.ranges, batch.token)
        self.o.metrics.batches_sealed.labels(reason).inc()
        started = time.perf_counter()
        encoded = await trio.to_thread.run_sync(self.o.encode, batch.records)
        self.o.metrics.encode_seconds.observe(time.perf_counter() - started)
        self._count_bad(encoded.bad_reasons)
        self.o.metrics.flows_received.inc(encoded.rows)
        self.o.metrics.batch_size.observe(encoded.rows)
        job = EncodedJob(
            seq=batch.seq,
            token=batch.token,
            native=encoded.native,
            rows=encoded.rows,
            ranges=batch.ranges,
            repeat=reason == "rebuild",
        )
        await self.o.fan_out(job)

    def _count_bad(self, reasons: tuple[str, ...]) -> None:
        if not reasons:
            return
        for reason in reasons:
            self.o.metrics.decode_errors.labels(reason).inc()
        self.o.log_bad_records(len(reasons))


class Outlet:
    """Owns the components and their nursery."""

    def __init__(self, cfg: OutletConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.state = RunState()
        state_dir = Path(cfg.state_path)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(state_dir, cfg.kafka.topic, cfg.kafka.consumer_group)
        self.codec = FlowCodec(
            cfg.metadata,
            state_dir / "codec",
            max_flows_per_record=cfg.clickhouse.maximum_flows_per_record,
        )
        self.tracker = CommitTracker()
        self.destinations = [Destination(d, self.metrics, self._settle) for d in cfg.destinations()]
        self.kafka = KafkaInput(
            cfg.kafka, self.metrics, on_assign=self._assigned, on_revoke=self._revoked
        )
        self.batcher = Batcher(self)
        self.cluster_id = ""  # of the Kafka cluster, read by run() before consuming
        self.identity = ""  # in every token: the cluster id (+ kafka.cluster-identity)
        self._commit_wanted = trio.Event()
        self._last_bad_log = 0.0
        self._bad_since_log = 0
        self._input_scope = trio.CancelScope()
        self._chunk_send: trio.MemorySendChannel[Chunk] | None = None
        for reason in BAD_REASONS:
            self.metrics.decode_errors.labels(reason)

    def encode(self, records: tuple[bytes, ...]) -> EncodedBatch:
        """Decode, enrich, encode and (optionally) compress, once for every destination."""
        encoded = self.codec.encode(records)
        if self.cfg.clickhouse.compression == "lz4" and encoded.native:
            native = lz4.frame.compress(
                encoded.native, block_size=lz4.frame.BLOCKSIZE_MAX4MB, store_size=False
            )
            return dataclasses.replace(encoded, native=native)
        return encoded

    # -- fan-out and settlement -------------------------------------------------
    async def fan_out(self, job: EncodedJob) -> None:
        """Hand the same encoded batch to every destination's queue."""
        names = {d.name for d in self.destinations}
        self.tracker.register(job.seq, job.ranges, job.rows, names)
        self._update_commit_gauges()
        if job.rows == 0:
            for d in self.destinations:
                await self._settle(job, d.name, True)
            return
        # Additional destinations never block (they give up when full); the primary
        # blocks when its queue is full, which is the backpressure we want.
        for d in sorted(self.destinations, key=lambda d: d.cfg.primary):
            await d.submit(job)

    async def _settle(self, job: EncodedJob, destination: str, stored: bool) -> None:
        await self.settle(job.seq, destination)

    async def settle(self, seq: int, destination: str) -> None:
        """A destination is done with a batch (stored it, or gave it up)."""
        if self.tracker.settle(seq, destination):
            self._commit_wanted.set()
        self._update_commit_gauges()

    def _update_commit_gauges(self) -> None:
        self.metrics.commit_pending_batches.set(self.tracker.pending_batches)
        self.metrics.commit_pending_flows.set(self.tracker.pending_flows)

    def _assigned(self, partitions: set[int]) -> None:
        """Partitions assigned (consume thread): plan the rebuild of uncommitted batches."""
        committed = {p: o for p, o in self.kafka.committed_at_assign.items() if p in partitions}
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self.batcher.add_plans, committed, partitions)

    def _revoked(self, partitions: set[int]) -> None:
        """Partitions are moving to another outlet (called in the consume thread).

        Blocks the rebalance until every batch holding records of those partitions is
        settled (within the grace period) and commits them from this thread, as
        librdkafka expects, so the next owner starts right after what we stored. If the
        assignment was lost instead (session timeout), the commit fails harmlessly and
        the ledger rebuilds the re-read batches with their original tokens.
        """
        if not self.state.stopping and self._chunk_send is not None:
            try:
                offsets = trio.from_thread.run(self._settle_revoked, partitions)
            except (trio.RunFinishedError, trio.Cancelled, trio.ClosedResourceError):
                offsets = {}
            if offsets:
                try:
                    self.kafka.commit(offsets, asynchronous=True)
                except Exception as exc:  # lost assignment: the ledger rebuilds instead
                    self.metrics.kafka_errors.labels("commit").inc()
                    log.warning("commit on revoke failed: %s", exc)
        self.tracker.forget_partitions(partitions)

    async def _settle_revoked(self, partitions: set[int]) -> dict[int, int]:
        assert self._chunk_send is not None
        with trio.move_on_after(self.cfg.clickhouse.grace_period) as scope:
            barrier = Barrier()
            await self._chunk_send.send(barrier)
            await barrier.sealed.wait()
            while self.tracker.pending_in(partitions):
                await trio.sleep(0.02)
        if scope.cancelled_caught:
            log.warning(
                "rebalance: batches of partitions %s not settled within the grace period; "
                "they will be rebuilt by whoever owns the partitions next",
                sorted(partitions),
            )
        return {
            p: off
            for p, off in self.tracker.committable().items()
            if p in partitions and self.kafka.committed.get(p) != off
        }

    def log_bad_records(self, count: int) -> None:
        """Rate-limited log of skipped records (at most one line per 10 s)."""
        self._bad_since_log += count
        now = time.monotonic()
        if now - self._last_bad_log >= 10:
            log.warning(
                "skipped %d undecodable Kafka record(s) since last report "
                "(see outlet_decode_errors_total)",
                self._bad_since_log,
            )
            self._last_bad_log = now
            self._bad_since_log = 0

    # -- commits ------------------------------------------------------------------
    async def _committer(self) -> None:
        while True:
            with trio.move_on_after(COMMIT_INTERVAL):
                await self._commit_wanted.wait()
            self._commit_wanted = trio.Event()
            await self.commit_now()

    async def commit_now(self) -> None:
        offsets = {
            p: off
            for p, off in self.tracker.committable().items()
            if self.kafka.committed.get(p) != off
        }
        if not offsets:
            return
        try:
            await trio.to_thread.run_sync(self.kafka.commit, offsets)
        except Exception as exc:
            self.metrics.kafka_errors.labels("commit").inc()
            log.warning("kafka commit failed (will retry): %s", exc)
            return
        await trio.to_thread.run_sync(self.ledger.compact, dict(self.kafka.committed))

    # -- lifecycle -------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until SIGTERM/SIGINT or cancellation; flush and commit on the way out."""
        from outlet.httpapi import serve_http  # local: keeps hypercorn out of unit tests

        try:
            await self._read_identity()
        except BaseException:
            await trio.to_thread.run_sync(self._close)
            raise
        async with trio.open_nursery() as outer:
            outer.start_soon(serve_http, self.cfg.http_listen, self.metrics.registry, self.ready)
            async with trio.open_nursery() as dests:
                for d in self.destinations:
                    dests.start_soon(d.run)
                commit_scope = trio.CancelScope()
                dests.start_soon(self._run_committer, commit_scope)
                await self._run_input_and_batcher(task_status)
                for d in self.destinations:
                    d.close_queue()
                with trio.move_on_after(self.cfg.clickhouse.grace_period) as grace:
                    # Destinations drain their queues and return; wait for settlement.
                    while self.tracker.pending_batches:
                        await trio.sleep(0.05)
                if grace.cancelled_caught:
                    log.warning("grace period over with batches pending; they will be rebuilt")
                    dests.cancel_scope.cancel()
                await self.commit_now()
                commit_scope.cancel()
            outer.cancel_scope.cancel()
        await trio.to_thread.run_sync(self._close)

    async def _read_identity(self) -> None:
        """The writer identity of this outlet's tokens, before anything is consumed.

        Raises ClusterIdError (the outlet does not start) when Kafka cannot tell its
        cluster id: tokens without it collide between datacenters (docs/dual-write.md).
        """
        cluster_id = await trio.to_thread.run_sync(self.kafka.cluster_id)
        self.cluster_id = cluster_id
        self.identity = writer_identity(cluster_id, self.cfg.kafka.cluster_identity)
        log.info(
            "deduplication tokens scoped to Kafka cluster %s%s (token identity %s)",
            cluster_id,
            f" + cluster-identity {self.cfg.kafka.cluster_identity}"
            if self.cfg.kafka.cluster_identity
            else "",
            self.identity,
        )

    async def _run_committer(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._committer()

    async def _run_input_and_batcher(self, task_status: trio.TaskStatus[None]) -> None:
        send, recv = trio.open_memory_channel[Chunk](self.cfg.kafka.queue_size)
        self._chunk_send = send
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                with self._input_scope:
                    await self.kafka.run(send)
                await send.aclose()

            async def batch() -> None:
                await self.batcher.run(recv)
                nursery.cancel_scope.cancel()  # stops the signal watcher

            nursery.start_soon(consume)
            nursery.start_soon(batch)
            nursery.start_soon(self._watch_signals)
            task_status.started()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: stop consuming, flush, commit", signal.Signals(signum).name)
                self.request_stop()
                return

    def request_stop(self) -> None:
        """Stop consuming; the batch in progress is flushed and committed (like SIGTERM)."""
        self.state.stopping = True
        self._input_scope.cancel()

    def _close(self) -> None:
        self.kafka.close()
        self.codec.close()
        self.ledger.close()

    def ready(self) -> tuple[bool, str]:
        """Ready when assigned partitions and the primary's last attempt succeeded."""
        primary = self.destinations[0]
        if not self.kafka.ever_assigned:
            return False, "waiting for Kafka partition assignment"
        if not primary.healthy:
            return False, f"primary destination failing: {primary.last_error}"
        return True, "ok"
