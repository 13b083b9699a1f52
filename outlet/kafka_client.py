"""The librdkafka consumer behind the Kafka input (a ``RecordSource``).

We use confluent-kafka (librdkafka) through `trio.to_thread` instead of aiokafka
under trio-asyncio: measured on our machines, `consume(num_messages=...)` with
`fetch.queue.backoff.ms=10` delivers 715-808k msg/s against 350-430k for aiokafka's
`getmany`, and it releases the GIL while it waits, so the Trio loop keeps running.

Thread rule: the consumer is used by one thread at a time, never by the Trio thread.
``cluster()`` creates the consumer and reads the cluster id from the broker metadata,
``open()`` subscribes (worker threads one after another, before the poll task starts),
every later call happens inside ``poll()`` (one worker thread at a time, from the input's
poll task: consume, pause and resume, watermarks, commits) or inside the rebalance
callbacks librdkafka runs from it, and ``aclose()`` closes after the poll task ended. Why:
a librdkafka call can block behind a rebalance callback, and our callbacks wait for the
Trio thread (to settle revoked partitions), so a call from the Trio thread deadlocks and
a call from a second thread races the callback's state. Commits are therefore requests
that a poll issues before it consumes, **synchronously and in the order they were made**:
the offset-commit metadata is the batch ledger (outlet/offset_ledger.py), so an older
commit must never land after a newer one, and librdkafka retries an asynchronous commit
on its own (the retry could overtake a later commit). A synchronous commit holds the poll
thread for one round trip (and, while no coordinator is known, up to the session
timeout: Kafka is down then and there is nothing to consume). State of this class is
touched only from that thread; the Trio side learns results from what ``poll()``
returns.

``cluster()`` waits, backing off, while the brokers cannot be reached or refuse us (the
link's classes, outlet/kafka_link.py), then reads the brokers'
``offset.metadata.max.bytes``, which bounds the ledger, with a short-lived admin client.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka.admin as kafka_admin
import trio
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from outlet.config import KafkaConfig
from outlet.kafka_input import (
    Chunk,
    ClusterFacts,
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
METADATA_CAP = "offset.metadata.max.bytes"


def connection_settings(cfg: KafkaConfig) -> dict[str, Any]:
    """How to reach the brokers (any librdkafka client): servers, TLS, SASL."""
    settings: dict[str, Any] = {"bootstrap.servers": ",".join(cfg.brokers)}
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


def consumer_settings(cfg: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings derived from our config section."""
    settings: dict[str, Any] = {
        **connection_settings(cfg),
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
    return settings


AdminFactory = Callable[[dict[str, Any]], Any]


def read_metadata_cap(
    cfg: KafkaConfig, admin_factory: AdminFactory = kafka_admin.AdminClient
) -> int | None:
    """The brokers' ``offset.metadata.max.bytes`` (the smallest over the brokers), read
    with DescribeConfigs once the cluster id was read (the brokers answer us). Without that
    permission, or on any failure, None: the outlet relies on
    ``kafka.offset-metadata-max-bytes`` (an over-large value is then reported by the first
    commit: OFFSET_METADATA_TOO_LARGE)."""
    admin = admin_factory({**connection_settings(cfg), "logger": librdkafka_logger()})
    try:
        brokers = list(admin.list_topics(timeout=CLUSTER_ID_TIMEOUT).brokers)
    except KafkaException as exc:
        log.info("kafka: cannot read %s from the brokers (%s)", METADATA_CAP, exc)
        return None
    return _metadata_cap(admin, brokers)


def _metadata_cap(admin: Any, broker_ids: list[int]) -> int | None:
    resource = kafka_admin.ConfigResource  # type: ignore[attr-defined]  # not in the stubs' exports
    resources = [resource(resource.Type.BROKER, str(b)) for b in broker_ids]
    caps: list[int] = []
    try:
        for future in admin.describe_configs(resources).values():
            entry = future.result(timeout=CLUSTER_ID_TIMEOUT).get(METADATA_CAP)
            if entry is not None and entry.value is not None:
                caps.append(int(entry.value))
    except Exception as exc:  # no DescribeConfigs permission, old broker
        log.info("kafka: cannot read %s from the brokers (%s)", METADATA_CAP, exc)
        return None
    return min(caps) if caps else None


ConsumerFactory = Callable[..., Any]  # confluent_kafka.Consumer or a fake of it


class _Refused(Exception):
    """The link wants a new consumer before the cluster id could be read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KafkaClient:
    """librdkafka as a RecordSource; see the thread rule in the module docstring."""

    def __init__(
        self,
        cfg: KafkaConfig,
        metrics: Metrics,
        consumer_factory: ConsumerFactory = Consumer,
        admin_factory: AdminFactory = kafka_admin.AdminClient,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._factory = consumer_factory
        self._admin_factory = admin_factory
        self._consumer: Any = None
        self._hooks: SourceHooks | None = None
        self._assigned: set[int] = set()
        self._paused = False
        self._answered: list[CommitRequest] = []
        self._lag_base: dict[int, int] = {}  # committed offset per partition
        self._last_lag = 0.0
        self.link = KafkaLink(cfg, metrics, assigned=lambda: bool(self._assigned))

    # -- lifecycle ------------------------------------------------------------------------
    async def cluster(self) -> ClusterFacts:
        try:
            cluster_id = await self._wait_cluster_id()
        except ClusterIdError:
            await self.aclose()
            self._consumer = None
            raise
        cap = await trio.to_thread.run_sync(read_metadata_cap, self.cfg, self._admin_factory)
        return ClusterFacts(cluster_id, cap)

    async def open(self, hooks: SourceHooks) -> None:
        self._hooks = hooks
        if self._consumer is None:
            await trio.to_thread.run_sync(self._create)
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
        settings = {**consumer_settings(self.cfg), "error_cb": self.link.on_error}
        self._consumer = self._factory(
            settings, logger=quiet_connection_failures(librdkafka_logger()))
        self._paused = False

    def _subscribe(self) -> None:
        self._consumer.subscribe(
            [self.cfg.topic],
            on_assign=self._assign_cb,
            on_revoke=self._revoke_cb,
            on_lost=self._lost_cb,
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
        self._consumer = None  # commits are synchronous: none is left unanswered
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
        if request.commits:
            self._commit(request.commits)
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

    def _commit(self, requests: list[CommitRequest]) -> None:
        """Issue commits synchronously (see the thread rule): one call for them all, each
        partition with the state of the last request that names it (the requests are in
        the order they were made, each carrying its partitions' whole state)."""
        latest: dict[int, TopicPartition] = {}
        for r in requests:
            r.offsets = {p: o for p, o in r.offsets.items() if p in self._assigned}
            r.metadata = {p: m for p, m in r.metadata.items() if p in r.offsets}
            if not r.offsets:
                r.error, r.revoked = "partition not assigned any more", True
            for p, off in r.offsets.items():
                latest[p] = TopicPartition(self.cfg.topic, p, off, metadata=r.metadata.get(p, ""))
        errors: dict[int, tuple[str, int | None]] = {}
        if latest:
            try:
                results = self._consumer.commit(offsets=list(latest.values()), asynchronous=False)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                code = err.code() if isinstance(err, KafkaError) else None
                errors = {p: (str(exc), code) for p in latest}
            else:
                for tp in results or []:
                    if tp.error is not None:
                        errors[tp.partition] = (str(tp.error), tp.error.code())
        for r in requests:
            failed = [errors[p] for p in r.offsets if p in errors]
            if failed and r.error is None:
                r.error, r.code = failed[0]
            elif r.error is None:
                self._lag_base.update(r.offsets)
            self._answered.append(r)

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
        """The committed offsets and their metadata (the ledger) are read before anything
        is consumed: without them the sealed batches could not be rebuilt, so a failure
        to read them is retried (the rebalance waits, nothing is consumed meanwhile)."""
        parts = {tp.partition for tp in partitions}
        committed: dict[int, int] = {}
        metadata: dict[int, str] = {}
        for tp in self._read_committed(consumer, partitions):
            if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                committed[tp.partition] = tp.offset
                metadata[tp.partition] = tp.metadata or ""
        for p in parts:
            self._lag_base.pop(p, None)
        self._lag_base.update(committed)
        self._assigned |= parts
        self._set_pause(consumer, partitions)
        log.info("kafka: assigned partitions %s", sorted(parts))
        self.link.working("partitions assigned")
        assert self._hooks is not None
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._hooks.assigned, parts, committed, metadata)

    # librdkafka keeps a partition's pause flag across a revoke (confluent-kafka-go issue
    # 193): a partition revoked while paused and assigned back after a resume (made while
    # it was not ours) would stay paused for good. So partitions leave unpaused, and an
    # assignment sets the current state explicitly.
    def _unpause(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        if self._paused:
            consumer.resume(partitions)

    def _set_pause(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        if self._paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)

    def _read_committed(self, consumer: Any, partitions: list[TopicPartition]) -> list[Any]:
        delay = 0.5
        while True:
            try:
                return list(consumer.committed(partitions, timeout=10))
            except KafkaException as exc:
                self.metrics.kafka_errors.labels("committed").inc()
                log.warning("kafka: cannot read committed offsets on assignment (retrying): %s",
                            exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _revoke_cb(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Blocks the rebalance until the pipeline settled the revoked partitions' batches
        (within the rebalance grace period), then commits them with the batches still
        pending, so the next owner starts right after what we stored and rebuilds the
        rest. A failed commit here is harmless: the last one Kafka accepted lists every
        batch that may have been inserted."""
        parts = {tp.partition for tp in partitions}
        log.info("kafka: revoking partitions %s", sorted(parts))
        assert self._hooks is not None
        try:
            request = trio.from_thread.run(self._hooks.revoking, parts)
        except (trio.RunFinishedError, trio.Cancelled):
            request = None
        if request is not None:
            self._commit([request])
        self._unpause(consumer, partitions)
        self._assigned -= parts
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._hooks.revoked, parts)

    def _lost_cb(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """The assignment was lost (session timeout): nothing can be committed any more."""
        parts = {tp.partition for tp in partitions}
        log.warning("kafka: partitions %s lost", sorted(parts))
        self._unpause(consumer, partitions)
        self._assigned -= parts
        assert self._hooks is not None
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._hooks.lost, parts)
