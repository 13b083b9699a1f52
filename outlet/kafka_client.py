"""The librdkafka consumer behind the Kafka input (a ``RecordSource``).

We use confluent-kafka (librdkafka) through `trio.to_thread` instead of aiokafka
under trio-asyncio: measured on our machines, `consume(num_messages=...)` with
`fetch.queue.backoff.ms=10` delivers 715-808k msg/s against 350-430k for aiokafka's
`getmany`, and it releases the GIL while it waits, so the Trio loop keeps running.

Thread rule: the consumer is used by one thread at a time, never by the Trio thread.
``open()`` creates the consumer, reads the cluster id from the broker metadata and
subscribes (worker threads one after another, before the poll task starts), every later
call happens inside ``poll()`` (one worker thread at a time, from the input's poll task:
consume, pause and resume, watermarks, commits) or inside the rebalance callbacks
librdkafka runs from it, and ``aclose()`` closes after the poll task ended. Why: a
librdkafka call can block behind a rebalance callback, and our callbacks wait for the
Trio thread (to settle revoked partitions), so a call from the Trio thread deadlocks and
a call from a second thread races the callback's state. Commits are therefore
asynchronous requests issued at the start of a poll (``on_commit`` answers them in a
later one); a sync commit would also hold up the consumer during a Kafka outage. State
of this class is touched only from that thread; the Trio side learns results from what
``poll()`` returns.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from outlet.config import KafkaConfig
from outlet.kafka_input import (
    Chunk,
    ClusterIdError,
    CommitRequest,
    Polled,
    PollRequest,
    SourceHooks,
)
from outlet.kafka_link import BACKOFF, KafkaLink, quiet_connection_failures
from outlet.logs import librdkafka_logger
from outlet.metrics import Metrics

log = logging.getLogger(__name__)

LAG_EVERY = 1.0  # seconds between consumer-lag gauge refreshes
# Consume errors that are connection failures: reported once per class by the link.
LINK_ERRORS = frozenset({"_AUTHENTICATION", "_SSL", "_TRANSPORT"})
CLUSTER_ID_TIMEOUT = 10.0  # seconds one metadata request for the cluster id may take
CLUSTER_ID_BACKOFF = (1.0, 30.0)  # first and longest wait between two such requests


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


ConsumerFactory = Callable[..., Any]  # confluent_kafka.Consumer or a fake of it


class _Refused(Exception):
    """The link wants a new consumer before the cluster id could be read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KafkaClient:
    """librdkafka as a RecordSource; see the thread rule in the module docstring."""

    def __init__(
        self, cfg: KafkaConfig, metrics: Metrics, consumer_factory: ConsumerFactory = Consumer
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._factory = consumer_factory
        self._consumer: Any = None
        self._hooks: SourceHooks | None = None
        self._assigned: set[int] = set()
        self._paused = False
        self._in_flight: deque[CommitRequest] = deque()
        self._answered: list[CommitRequest] = []
        self._lag_base: dict[int, int] = {}  # committed offset per partition
        self._last_lag = 0.0
        self.link = KafkaLink(cfg, metrics, assigned=lambda: bool(self._assigned))
        self._cluster_id: str | None = None

    @property
    def cluster_id(self) -> str | None:
        return self._cluster_id

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self, hooks: SourceHooks) -> None:
        self._hooks = hooks
        try:
            self._cluster_id = await self._wait_cluster_id()
        except ClusterIdError:
            await self.aclose()
            self._consumer = None
            raise
        await trio.to_thread.run_sync(self._subscribe)

    async def _wait_cluster_id(self) -> str:
        """Asks the brokers until they answer: the outlet never exits into a crash loop for
        a cause that can heal; brokers that report no id cannot (ClusterIdError).

        Brokers that cannot be reached (no answer within CLUSTER_ID_TIMEOUT) are asked
        again after 1 s doubling to 30 s, logged once per distinct error. Brokers that
        refuse us (credentials, mechanism, certificates: the link logs the class once and
        counts each attempt) get a new consumer after the link's backoff, so that
        librdkafka does not retry every 50 ms meanwhile; rotated TLS files at once.
        """
        wait, longest = CLUSTER_ID_BACKOFF
        last = ""
        while True:
            if self._consumer is None:
                await trio.to_thread.run_sync(self._create)
            try:
                cluster_id = await trio.to_thread.run_sync(
                    self._read_cluster_id, CLUSTER_ID_TIMEOUT
                )
            except _Refused as refused:
                await trio.to_thread.run_sync(self._consumer.close)
                self._consumer = None
                self.metrics.kafka_consumer_restarts.labels(refused.reason).inc()
                if refused.reason == BACKOFF:
                    await trio.sleep(self.link.backoff())
                continue
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                name = err.name() if isinstance(err, KafkaError) else type(exc).__name__
                self.metrics.kafka_errors.labels(name).inc()
                if name != last:
                    last = name
                    log.warning(
                        "cannot read the Kafka cluster id from kafka.brokers %s (%s); the "
                        "outlet scopes its deduplication tokens with it and consumes nothing "
                        "until the brokers answer; retrying with backoff up to %g s",
                        ",".join(self.cfg.brokers), name, longest,
                    )
                await trio.sleep(wait)
                wait = min(wait * 2, longest)
                continue
            if last:
                log.info("Kafka cluster id read from kafka.brokers after retries")
            self.link.working("cluster id read")
            return cluster_id

    def _create(self) -> None:
        settings = {**consumer_settings(self.cfg), "on_commit": self._on_commit,
                    "error_cb": self.link.on_error}
        self._consumer = self._factory(
            settings, logger=quiet_connection_failures(librdkafka_logger()))
        self._paused = False

    def _subscribe(self) -> None:
        self._consumer.subscribe(
            [self.cfg.topic], on_assign=self._assign_cb, on_revoke=self._revoke_cb
        )

    def _read_cluster_id(self, timeout: float) -> str:
        """The cluster id from the broker metadata, before anything is consumed.

        KafkaException when no broker answers within `timeout`; ClusterIdError, naming the
        brokers, when they report no id (Kafka before 0.10.1, some Kafka-compatible
        services): retrying cannot help there; _Refused when the link wants a new consumer
        (a failure that needs action, rotated files). Asks in slices of up to a second,
        serving librdkafka's error callbacks between (metadata requests do not), so that
        the link learns why no broker answers (the first slices are shorter: a refusal is
        acted on after an attempt or two).
        """
        deadline = time.monotonic() + timeout
        wait = 0.1  # doubling to 1 s
        while True:
            try:
                metadata = self._consumer.list_topics(
                    timeout=max(0.01, min(wait, deadline - time.monotonic())))
                break
            except KafkaException:
                wait = min(1.0, wait * 2)
                self._consumer.poll(0)  # error_cb: the link classifies, counts and logs
                reason = self.link.restart_due()
                if reason is not None:
                    raise _Refused(reason) from None
                if time.monotonic() >= deadline:
                    raise
        cluster_id = metadata.cluster_id
        if not cluster_id:
            raise ClusterIdError(
                f"the Kafka brokers {','.join(self.cfg.brokers)} report no cluster id (Kafka "
                "older than 0.10.1, or a Kafka-compatible service without one); the outlet "
                "scopes its deduplication tokens with it and does not start without it"
            )
        return str(cluster_id)

    async def aclose(self) -> None:
        """Leave the group (the revoke callback runs once more, stopping)."""
        if self._consumer is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._consumer.close)

    def failure_reason(self) -> str:
        return self.link.failure_reason()

    async def _restart(self, reason: str) -> None:
        """Recreate the consumer: after a failure that needs action, once a backoff delay
        passed; after a rotation of kafka.tls files, at once (outlet/kafka_link.py).
        Closing revokes our partitions first (settled and committed, as in any rebalance)."""
        self.metrics.kafka_consumer_restarts.labels(reason).inc()
        await trio.to_thread.run_sync(self._consumer.close)  # the revoke callback commits
        self._consumer = None
        for request in self._in_flight:  # the old consumer will never answer them
            request.error = f"the consumer was recreated ({reason}) before the broker answered"
            self._answered.append(request)
        self._in_flight.clear()
        if reason == BACKOFF:
            delay = self.link.backoff()
            log.debug("kafka: consumer closed, next attempt in %.1fs (backoff)", delay)
            await trio.sleep(delay)
        else:
            log.info("kafka: reconnecting with the new TLS files (the consumer rejoins "
                     "its group)")
        await trio.to_thread.run_sync(self._create)  # the cluster id is known: not re-read
        await trio.to_thread.run_sync(self._subscribe)

    # -- poll (worker thread) -------------------------------------------------------------
    async def poll(self, request: PollRequest) -> Polled:
        reason = self.link.restart_due()
        if reason is not None:
            await self._restart(reason)
        return await trio.to_thread.run_sync(self._poll, request)

    def _poll(self, request: PollRequest) -> Polled:
        self._apply_pause(request.paused)
        for commit in request.commits:
            self._commit(commit)
        now = time.monotonic()
        if now - self._last_lag >= LAG_EVERY:
            self._last_lag = now
            self._update_lag()
        chunk = Chunk()
        messages = self._consumer.consume(num_messages=request.limit, timeout=request.timeout)
        parts, offs, vals = chunk.partitions, chunk.offsets, chunk.values
        nbytes = 0
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.metrics.kafka_errors.labels(err.name()).inc()
                    if err.name() in LINK_ERRORS:
                        self.link.on_error(err)
                    else:
                        log.warning("kafka error: %s", err)
                continue
            value = msg.value() or b""
            parts.append(msg.partition())
            offs.append(msg.offset())
            vals.append(value)
            nbytes += len(value)
        self.metrics.kafka_messages.inc(len(vals))
        self.metrics.kafka_bytes.inc(nbytes)
        if vals:
            self.link.working("receiving records")
        answered, self._answered = self._answered, []
        return Polled(chunk, answered)

    def _apply_pause(self, paused: bool) -> None:
        if paused == self._paused:
            return
        tps = [TopicPartition(self.cfg.topic, p) for p in sorted(self._assigned)]
        if tps:
            if paused:
                self._consumer.pause(tps)
            else:
                self._consumer.resume(tps)
        self._paused = paused

    def _commit(self, request: CommitRequest) -> None:
        """Issue an asynchronous commit; `_on_commit` answers it during a later poll."""
        tps = [
            TopicPartition(self.cfg.topic, p, off)
            for p, off in request.offsets.items()
            if p in self._assigned
        ]
        request.offsets = {tp.partition: tp.offset for tp in tps}
        if not tps:
            self._answered.append(request)
            return
        try:
            self._consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            request.error = str(exc)
            self._answered.append(request)
            return
        self._in_flight.append(request)

    def _on_commit(self, err: Any, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to one asynchronous commit (served inside consume())."""
        key = {(tp.partition, tp.offset) for tp in partitions}
        request = next((r for r in self._in_flight if set(r.offsets.items()) == key), None)
        if request is None:
            log.debug("kafka: answer to a commit we did not make: %s", sorted(key))
            return
        self._in_flight.remove(request)
        failed = [tp for tp in partitions if tp.error is not None]
        if err is not None or failed:
            request.error = str(err if err is not None else failed[0].error)
        else:
            self._lag_base.update(request.offsets)
        self._answered.append(request)

    def _update_lag(self) -> None:
        """Refresh the consumer-lag gauge from cached high watermarks."""
        for p in self._assigned:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.cfg.topic, p), cached=True
                )
            except KafkaException:
                continue
            if high is None or high < 0:
                continue
            base = self._lag_base.get(p, 0)
            self.metrics.kafka_lag.labels(str(p)).set(max(0, high - base))

    # -- rebalance callbacks (inside consume(), same thread) --------------------------------
    def _assign_cb(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        committed: dict[int, int] = {}
        try:
            for tp in consumer.committed(partitions, timeout=10):
                if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                    committed[tp.partition] = tp.offset
        except KafkaException as exc:
            log.warning("could not read committed offsets on assignment: %s", exc)
        for p in parts:
            self._lag_base.pop(p, None)
        self._lag_base.update(committed)
        self._assigned |= parts
        if self._paused:
            consumer.pause(partitions)
        log.info("kafka: assigned partitions %s", sorted(parts))
        self.link.working("partitions assigned")
        assert self._hooks is not None
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._hooks.assigned, parts, committed)

    def _revoke_cb(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Blocks the rebalance until the pipeline settled the revoked partitions' batches
        (within the grace period), then commits them, so the next owner starts right after
        what we stored. Asynchronously: the request is queued on the coordinator connection
        ahead of the JoinGroup that follows, and a lost assignment (session timeout,
        coordinator gone) cannot block the callback; its commit then fails harmlessly and
        the ledger rebuilds the re-read batches under their original tokens."""
        parts = {tp.partition for tp in partitions}
        log.info("kafka: revoking partitions %s", sorted(parts))
        assert self._hooks is not None
        try:
            request = trio.from_thread.run(self._hooks.revoking, parts)
        except (trio.RunFinishedError, trio.Cancelled):
            request = None
        if request is not None:
            self._commit(request)
        self._assigned -= parts
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._hooks.revoked, parts)
