"""Kafka input: a consumer-group member that hands chunks of records to the batcher.

We use confluent-kafka (librdkafka) through `trio.to_thread` instead of aiokafka
under trio-asyncio: measured on our machines, `consume(num_messages=...)` with
`fetch.queue.backoff.ms=10` delivers 715-808k msg/s against 350-430k for aiokafka's
`getmany`, and it releases the GIL while it waits, so the Trio loop keeps running.

Offsets are never auto-committed: the pipeline commits explicitly once a batch is
settled on every destination (see outlet/commit.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from outlet.config import KafkaConfig
from outlet.metrics import Metrics

log = logging.getLogger(__name__)

PAUSE_AFTER = 0.5  # seconds blocked on a full pipeline before pausing fetches
CLUSTER_ID_TIMEOUT = 30.0  # seconds to get the cluster id at start-up


class ClusterIdError(RuntimeError):
    """The Kafka cluster id (part of every deduplication token) cannot be determined."""


@dataclass
class Chunk:
    """Records from one consume() call, as parallel lists (cheap to build)."""

    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Barrier(Chunk):
    """No records: asks the batcher to seal its open batch now (partitions are moving)."""

    sealed: trio.Event = field(default_factory=trio.Event)


def consumer_settings(cfg: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings derived from our config section."""
    settings: dict[str, Any] = {
        "bootstrap.servers": ",".join(cfg.brokers),
        "group.id": cfg.consumer_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.queue.backoff.ms": 10,
        "fetch.wait.max.ms": max(1, int(cfg.fetch_max_wait * 1000)),
        "queued.max.messages.kbytes": 65536,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 300000,
        "socket.keepalive.enable": True,
        "reconnect.backoff.max.ms": 2000,
    }
    if cfg.tls.enable:
        settings["security.protocol"] = "SSL"
        settings["enable.ssl.certificate.verification"] = cfg.tls.verify
        if cfg.tls.ca_file:
            settings["ssl.ca.location"] = cfg.tls.ca_file
        if cfg.tls.cert_file:
            settings["ssl.certificate.location"] = cfg.tls.cert_file
        if cfg.tls.key_file:
            settings["ssl.key.location"] = cfg.tls.key_file
    if cfg.sasl.mechanism:
        settings["security.protocol"] = "SASL_SSL" if cfg.tls.enable else "SASL_PLAINTEXT"
        settings["sasl.mechanism"] = cfg.sasl.mechanism
        settings["sasl.username"] = cfg.sasl.username
        settings["sasl.password"] = cfg.sasl.password.reveal()
    return settings


AssignCallback = Callable[[set[int]], None]


class KafkaInput:
    """Consumes the flows topic and sends chunks to a bounded channel."""

    def __init__(
        self,
        cfg: KafkaConfig,
        metrics: Metrics,
        on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self.assigned: set[int] = set()
        self.ever_assigned = False
        self.committed_at_assign: dict[int, int] = {}
        self._consumer = Consumer(consumer_settings(cfg), logger=logging.getLogger("librdkafka"))
        self._consumer.subscribe([cfg.topic], on_assign=self._assign_cb, on_revoke=self._revoke_cb)
        # Every librdkafka call happens in the consume worker thread: calling the consumer
        # from the Trio thread can block it behind a rebalance callback (a deadlock seen
        # in the kafka-partition scenario). Pause state and lag are applied from there.
        self._want_paused = False
        self._paused = False
        self.committed: dict[int, int] = {}  # next offsets we committed, per partition
        self._last_lag = 0.0

    # librdkafka calls these from inside consume(), i.e. in our worker thread.
    def _assign_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        try:
            committed = consumer.committed(partitions, timeout=10)
            for tp in committed:
                if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                    self.committed_at_assign[tp.partition] = tp.offset
                else:
                    self.committed_at_assign.pop(tp.partition, None)
        except KafkaException as exc:
            log.warning("could not read committed offsets on assignment: %s", exc)
        self.assigned |= parts
        self.ever_assigned = True
        if self._paused:
            consumer.pause(partitions)
        log.info("kafka: assigned partitions %s", sorted(parts))
        if self._on_assign is not None:
            self._on_assign(parts)

    def _revoke_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        log.info("kafka: revoking partitions %s", sorted(parts))
        if self._on_revoke is not None:
            # Still assigned here: the pipeline settles and commits what it read from
            # these partitions before the next owner starts from the committed offsets.
            self._on_revoke(parts)
        self.assigned -= parts

    def cluster_id(self, timeout: float | None = None) -> str:
        """The cluster id from the broker metadata. Blocking: call it before consuming.

        Raises ClusterIdError, naming the brokers, when no broker answers within `timeout`
        (default CLUSTER_ID_TIMEOUT) or the brokers report no id (Kafka before 0.10.1,
        some Kafka-compatible services).
        """
        timeout = CLUSTER_ID_TIMEOUT if timeout is None else timeout
        brokers = ",".join(self.cfg.brokers)
        try:
            metadata = self._consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise ClusterIdError(
                f"cannot read the Kafka cluster id from kafka.brokers {brokers} within "
                f"{timeout:g} s ({exc.args[0] if exc.args else exc}); the outlet scopes its "
                "deduplication tokens with it and does not start without it"
            ) from None
        cluster_id = metadata.cluster_id
        if not cluster_id:
            raise ClusterIdError(
                f"the Kafka brokers {brokers} report no cluster id (Kafka older than 0.10.1, "
                "or a Kafka-compatible service without one); the outlet scopes its "
                "deduplication tokens with it and does not start without it"
            )
        return str(cluster_id)

    def _apply_pause(self) -> None:
        if self._want_paused == self._paused:
            return
        tps = [TopicPartition(self.cfg.topic, p) for p in sorted(self.assigned)]
        if tps:
            if self._want_paused:
                self._consumer.pause(tps)
            else:
                self._consumer.resume(tps)
        self._paused = self._want_paused

    def _consume(self, limit: int, timeout: float) -> Chunk:
        self._apply_pause()
        now = time.monotonic()
        if now - self._last_lag >= 1.0:
            self._last_lag = now
            self._update_lag()
        chunk = Chunk()
        messages = self._consumer.consume(num_messages=limit, timeout=timeout)
        parts, offs, vals = chunk.partitions, chunk.offsets, chunk.values
        nbytes = 0
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.metrics.kafka_errors.labels(err.name()).inc()
                    log.warning("kafka error: %s", err)
                continue
            value = msg.value() or b""
            parts.append(msg.partition())  # type: ignore[arg-type]
            offs.append(msg.offset())  # type: ignore[arg-type]
            vals.append(value)
            nbytes += len(value)
        self.metrics.kafka_messages.inc(len(vals))
        self.metrics.kafka_bytes.inc(nbytes)
        return chunk

    async def run(self, send: trio.MemorySendChannel[Chunk]) -> None:
        """Consume until cancelled; pause fetching while the pipeline is full."""
        limit = self.cfg.max_poll_records
        timeout = max(0.05, self.cfg.fetch_max_wait)
        async with send:
            while True:
                chunk = await trio.to_thread.run_sync(self._consume, limit, timeout)
                if not chunk:
                    continue
                await self._hand_over(send, chunk)

    async def _hand_over(self, send: trio.MemorySendChannel[Chunk], chunk: Chunk) -> None:
        with trio.move_on_after(PAUSE_AFTER):
            await send.send(chunk)
            return
        # The pipeline is full (a destination that must not lose data is down or slow):
        # pause fetching but keep polling so we stay in the consumer group.
        self._want_paused = True
        self.metrics.kafka_paused.set(1)
        log.info("kafka: pipeline full, consumption paused")
        held = [chunk]
        try:
            while held:
                with trio.move_on_after(1.0):
                    while held:
                        await send.send(held[0])
                        held.pop(0)
                if held:
                    extra = await trio.to_thread.run_sync(self._consume, 1000, 0.0)
                    if extra:
                        held.append(extra)  # fetched before the pause took effect
        finally:
            self._want_paused = False  # the next consume() resumes fetching
            self.metrics.kafka_paused.set(0)
            log.info("kafka: consumption resumed")

    def commit(self, offsets: dict[int, int], asynchronous: bool = False) -> None:
        """Commit next-offsets. Synchronous by default (call it through to_thread).

        The rebalance callback commits asynchronously: the request is queued on the
        coordinator connection ahead of the JoinGroup that follows the callback, so the
        next owner sees it, and a lost assignment (session timeout, coordinator gone)
        cannot block the callback and with it the whole consumer.
        """
        tps = [
            TopicPartition(self.cfg.topic, p, off)
            for p, off in offsets.items()
            if p in self.assigned
        ]
        if not tps:
            return
        if asynchronous:
            self._consumer.commit(offsets=tps, asynchronous=True)
        else:
            self._consumer.commit(offsets=tps, asynchronous=False)
        self.metrics.kafka_commits.inc()
        for tp in tps:
            self.committed[tp.partition] = tp.offset
            self.metrics.kafka_committed_offset.labels(str(tp.partition)).set(tp.offset)

    def _update_lag(self) -> None:
        """Refresh the consumer-lag gauge from cached high watermarks (consume thread)."""
        for p in list(self.assigned):
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.cfg.topic, p), cached=True
                )
            except KafkaException:
                continue
            if high is None or high < 0:
                continue
            base = self.committed.get(p, self.committed_at_assign.get(p, 0))
            self.metrics.kafka_lag.labels(str(p)).set(max(0, high - base))

    def close(self) -> None:
        self._consumer.close()
