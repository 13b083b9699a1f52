"""The outlet: Kafka -> batch -> seal (ledger, encode once) -> fan out -> commit.

A chain of small parts, each given what it uses and nothing else; data and calls flow
one way:

    KafkaInput --chunks--> Batcher --cut--> Sealer --job--> FanOut --> Destination x N
        ^                 (bounded channel)  (ledger,          (register)    | on_settled
        |                                     encoder)                       v
        +---------------- commit <------------------------------------- Committer

``Outlet.run`` builds the chain from its ``Backends`` (Kafka, codec, writers: the
production ones, or fakes in the in-process tests), opens every resource in an
``AsyncExitStack`` so each closes on every path, runs the tasks in nurseries and stops
in order on SIGTERM/SIGINT (``request_stop``): stop reading, flush the open batches, let
destinations drain within the grace period, commit, close.

The batch ledger is the partitions' offset-commit metadata (outlet/offset_ledger.py),
so the group member that owns a partition next, whichever it is, rebuilds the batches
sealed before with the same tokens; an older outlet's file ledger is read once for the
upgrade (outlet/ledger.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio
from prometheus_client import CollectorRegistry

from outlet import reconfig
from outlet.batch import RebuildPlan
from outlet.batcher import Batcher
from outlet.codec import FlowCodec
from outlet.committer import Committer
from outlet.config import ConnectionConfig, DestinationConfig, KafkaConfig, OutletConfig
from outlet.destination import Destination, Fallback
from outlet.fallback import GiveUp, SpoolLane
from outlet.fanout import DestinationSet, FanOut, Opened
from outlet.kafka_client import KafkaClient
from outlet.kafka_input import Chunk, ClusterFacts, ClusterIdError, KafkaInput, RecordSource
from outlet.ledger import LegacyLedger, RunSync
from outlet.logs import set_level, setup_logging
from outlet.metrics import Metrics
from outlet.offset_ledger import KafkaLedger
from outlet.rebuild import plans_for
from outlet.sealer import BatchEncoder, Encoder, Sealer
from outlet.spool import Spool
from outlet.statedisk import StateDisk
from outlet.tokens import WriterIdentity
from outlet.writer import (
    ClickHouseWriter,
    ConnectionFor,
    ReplaceableWriter,
    TLSMetrics,
    Writer,
    probe_connection,
)

if TYPE_CHECKING:
    from outlet.httpapi import ReadyCheck

log = logging.getLogger(__name__)
config_log = logging.getLogger("outlet.config")  # with the configuration's other lines

class HttpServer(Protocol):
    """Serves /metrics, /healthz and /readyz; started once listening (outlet/httpapi.py)."""

    async def __call__(
        self, listen: str, registry: CollectorRegistry, ready: ReadyCheck, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...


async def _serve_http(
    listen: str, registry: CollectorRegistry, ready: ReadyCheck, *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    from outlet.httpapi import serve_http  # local: keeps hypercorn out of unit tests

    await serve_http(listen, registry, ready, task_status=task_status)


async def _chdb_encoder(cfg: OutletConfig) -> Encoder:
    """The codec loads its enrichment dictionaries: seconds of blocking work."""
    codec = await trio.to_thread.run_sync(
        functools.partial(
            FlowCodec,
            cfg.metadata,
            Path(cfg.state_path) / "codec",
            max_flows_per_record=cfg.clickhouse.maximum_flows_per_record,
        )
    )
    return BatchEncoder(codec, cfg.clickhouse.compression)


def check_cluster(cfg: KafkaConfig, facts: ClusterFacts) -> None:
    """Refuse to start when the brokers would refuse our ledger metadata."""
    cap = facts.metadata_max_bytes
    if cap is not None and cap < cfg.offset_metadata_max_bytes:
        raise ClusterIdError(
            f"kafka.offset-metadata-max-bytes is {cfg.offset_metadata_max_bytes} but the "
            f"brokers accept at most {cap} bytes of offset-commit metadata "
            f"(offset.metadata.max.bytes): set kafka.offset-metadata-max-bytes to {cap} or "
            "less (the batch ledger lives there, docs/dual-write.md), or raise the brokers' "
            "setting"
        )


@dataclass(frozen=True)
class Backends:
    """What the outlet talks to; production implementations unless a test says otherwise.

    Each factory opens one resource; ``Outlet.run`` closes what they return. ``disk``
    runs the blocking local-disk calls of the old ledger file and the spools: worker
    threads in production, inline in tests that need a deterministic clock
    (trio.testing.MockClock).
    """

    source: Callable[[KafkaConfig, Metrics], RecordSource] = KafkaClient
    encoder: Callable[[OutletConfig], Awaitable[Encoder]] = _chdb_encoder
    writer: Callable[[ConnectionConfig], Writer] = ClickHouseWriter
    http: HttpServer | None = _serve_http
    disk: RunSync = trio.to_thread.run_sync


@dataclass
class RunState:
    """What /readyz and the shutdown path look at."""

    stopping: bool = False
    opening: str = "starting"  # what start-up waits for, until the pipeline runs


class Rebalance:
    """The pipeline's side of a Kafka rebalance (the input's RebalanceHooks)."""

    def __init__(
        self,
        topic: str,
        batcher: Batcher,
        committer: Committer,
        ledger: KafkaLedger,
        legacy: LegacyLedger,
        grace_period: float,
        state: RunState,
    ) -> None:
        self.topic = topic
        self.batcher = batcher
        self.committer = committer
        self.ledger = ledger
        self.legacy = legacy
        self.grace_period = grace_period
        self.state = state

    def assigned(
        self,
        partitions: set[int],
        committed: dict[int, int],
        metadata: dict[int, str],
        epoch: int,
    ) -> tuple[RebuildPlan, ...]:
        """Plan the rebuild of batches sealed before and not committed, by anyone.

        The commit metadata lists them (outlet/offset_ledger.py): after a crash (ours or
        another member's), a lost assignment or a partition moving here, the re-read
        records go into batches with the original boundaries and tokens, so destinations
        deduplicate them. Plans are reserved with the commit tracker now, before any new
        batch of those partitions, so the commit watermark cannot pass them while they
        are rebuilt; the batcher opens them when it reaches the assignment.
        """
        again = {p for p in partitions if self.ledger.epoch(p) is not None}
        if again:  # without a revoke first: the old assignment's batches are handed over
            self.committer.forget(again)
        sealed = []
        for p in sorted(partitions):
            sealed += self.ledger.assigned(p, committed.get(p), metadata.get(p), epoch)
        legacy = self.legacy.pending(committed, partitions)
        plans = plans_for(self.topic, committed, sealed, legacy, self.batcher.ids(), epoch)
        for plan in plans:
            self.committer.reserve(plan.seq, plan.ranges)
        if plans:
            log.info("partitions %s: rebuilding %d batch(es) sealed before and not committed",
                     sorted(partitions), len(plans))
        return tuple(plans)

    async def revoking(self, partitions: set[int]) -> tuple[dict[int, int], dict[int, str]]:
        """Let the batches of the partitions settle (within the rebalance grace period)
        and return the commit to make before they go: their settled offsets, with the
        batches still pending listed, which the next owner rebuilds. Stopping: nothing
        is waited for (the shutdown path commits)."""
        if self.state.stopping:
            return {}, {}
        with trio.move_on_after(self.grace_period) as scope:
            await self.committer.tracker.wait_settled(partitions)
        if scope.cancelled_caught:
            log.info(
                "rebalance: batches of partitions %s not settled within the rebalance grace "
                "period; their next owner rebuilds them (same tokens)", sorted(partitions),
            )
        committable = {
            p: off for p, off in self.committer.tracker.committable().items() if p in partitions
        }
        return self.ledger.final(partitions, committable)

    def revoked(self, partitions: set[int], lost: bool) -> None:
        self.ledger.revoked(partitions)
        self.committer.forget(partitions)


@dataclass
class Parts:
    """The running chain (what ready(), reconfigure() and tests look at)."""

    kafka: KafkaInput
    batcher: Batcher
    committer: Committer
    destinations: DestinationSet
    encoder: Encoder
    rebalance: Rebalance
    ledger: KafkaLedger
    channel: tuple[trio.MemorySendChannel[Chunk], trio.MemoryReceiveChannel[Chunk]] = field(
        repr=False
    )


class ConfigSource(Protocol):
    """Where new configurations come from while the outlet runs (outlet/reload.py):
    ``run(apply)`` hands each one to ``apply``; ``poke()`` asks for a check now (SIGHUP)."""

    async def run(self, apply: Apply) -> None: ...

    def poke(self) -> None: ...


Apply = Callable[[OutletConfig], Awaitable[str]]


class Outlet:
    """Builds the chain, owns its nurseries and closes what it opened."""

    def __init__(
        self,
        cfg: OutletConfig,
        metrics: Metrics | None = None,
        backends: Backends | None = None,
        source: ConfigSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.backends = backends or Backends()
        self.source = source
        self.state = RunState()
        self.parts: Parts | None = None
        self._kafka: KafkaInput | None = None
        self._opening = trio.CancelScope()
        self._reconfiguring = trio.Lock()
        self.state_disk = StateDisk(cfg.state_path, self.metrics)

    async def _open(self, stack: contextlib.AsyncExitStack) -> Parts:
        cfg, metrics, b = self.cfg, self.metrics, self.backends
        Path(cfg.state_path).mkdir(parents=True, exist_ok=True)
        kafka = KafkaInput(cfg.kafka, metrics, b.source(cfg.kafka, metrics))
        stack.push_async_callback(kafka.aclose)
        self._kafka = kafka  # /readyz while the brokers are waited for
        self.state.opening = "waiting for the Kafka cluster id (see the log)"
        facts = await kafka.cluster()  # waits for the brokers; ClusterIdError: no start
        self.state.opening = "starting"
        check_cluster(cfg.kafka, facts)
        identity = self._scope_tokens(facts.cluster_id)
        legacy = LegacyLedger(Path(cfg.state_path), cfg.kafka.topic, cfg.kafka.consumer_group,
                              facts.cluster_id, b.disk, self.state_disk.compact_failed)
        encoder = await b.encoder(cfg)
        stack.push_async_callback(encoder.aclose)
        ledger = KafkaLedger(cfg.kafka.topic, identity.token_identity, facts.cluster_id,
                             cfg.kafka.offset_metadata_max_bytes, kafka, metrics)
        dest_cfgs = cfg.destinations()
        committer = Committer((d.name for d in dest_cfgs), legacy, metrics, ledger.epoch)
        fanout = FanOut(committer)
        destinations = DestinationSet(
            dest_cfgs,
            functools.partial(self._open_destination, committer),
            b.writer,
            fanout,
            metrics,
            cfg.clickhouse.grace_period,
        )
        sealer = Sealer(cfg.kafka.topic, ledger, encoder, fanout, metrics)
        batch = cfg.clickhouse
        batcher = Batcher(
            batch.maximum_batch_size,
            batch.maximum_wait_time,
            sealer.seal,
            batch.maximum_flows_per_record,
        )
        rebalance = Rebalance(cfg.kafka.topic, batcher, committer, ledger, legacy,
                              batch.rebalance_grace_period, self.state)
        await kafka.open(rebalance)
        channel = trio.open_memory_channel[Chunk](cfg.kafka.queue_size)
        return Parts(kafka, batcher, committer, destinations, encoder, rebalance, ledger,
                     channel)

    def _scope_tokens(self, cluster_id: str) -> WriterIdentity:
        """Every token names the Kafka cluster (read before the consumer joins the group:
        the ledger in the commit metadata names it too) and kafka.cluster-identity."""
        identity = WriterIdentity(alias=self.cfg.kafka.cluster_identity, cluster_id=cluster_id)
        alias = self.cfg.kafka.cluster_identity
        log.info(
            "deduplication tokens scoped to Kafka cluster %s%s (token identity %s)",
            cluster_id, f" + cluster-identity {alias}" if alias else "",
            identity.token_identity,
        )
        return identity

    def _open_destination(
        self, committer: Committer, cfg: DestinationConfig, stack: contextlib.AsyncExitStack
    ) -> Opened:
        """One destination and its resources (closed by ``stack``, when it is done). Each
        user of a connection gets its own writer (a ClickHouseWriter is not shared between
        threads): the live inserts, the deduplication audit's queries, the circuit's
        probes (SELECT 1 bounded by dial-timeout) and the spool replay; each is
        replaceable (live reconfiguration: outlet/fanout.py)."""
        b = self.backends
        tls = TLSMetrics(cfg.name, self.metrics)
        writers: list[ReplaceableWriter] = []

        def writer(connection: ConnectionFor | None = None) -> ReplaceableWriter:
            w = ReplaceableWriter.of(b.writer, cfg.connection, connection)
            stack.push_async_callback(w.aclose)
            tls.follow(w)
            writers.append(w)
            return w

        live, audit, check = writer(), writer(), writer()  # check: dedup_check.py
        probe = writer(probe_connection) if cfg.connection.max_retries > 0 else None
        fallback: Fallback
        if cfg.spool.enable and cfg.connection.max_retries > 0:
            spool = Spool(cfg.spool, cfg.name)
            stack.callback(spool.close)
            fallback = SpoolLane(cfg, self.metrics, spool, writer(), committer.settled, b.disk)
        else:
            fallback = GiveUp(cfg.name, self.metrics, committer.settled)
        return Opened(
            Destination(
                cfg, self.metrics, live, fallback, committer.settled, committer.wanted,
                probe=probe, audit_writer=audit, check_writer=check,
            ),
            writers,
        )

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until SIGTERM/SIGINT, request_stop() or cancellation; flush and commit on
        the way out (not on cancellation: uncommitted batches are rebuilt next time)."""
        failed: Exception | None = None
        async with trio.open_nursery() as outer:
            try:
                if self.backends.http is not None:  # up first: /readyz says why start-up waits
                    await outer.start(  # HttpListenError: the outlet does not start
                        self.backends.http, self.cfg.http_listen, self.metrics.registry,
                        self.ready)
                outer.start_soon(self._watch_signals)  # a stop while the cluster id is awaited
                async with contextlib.AsyncExitStack() as stack:
                    with self._opening:
                        self.parts = await self._open(stack)
                    if self.parts is not None:
                        try:
                            await self._run(self.parts, task_status)
                        finally:
                            self.state.stopping = True
            except Exception as exc:  # raised as is (ClusterIdError, HttpListenError): no group
                failed = exc
            outer.cancel_scope.cancel()
        if failed is not None:
            raise failed

    async def _run(self, parts: Parts, task_status: trio.TaskStatus[None]) -> None:
        send, recv = parts.channel
        async with trio.open_nursery() as services:
            await services.start(parts.kafka.run, send)
            services.start_soon(parts.committer.run, parts.ledger)
            async with trio.open_nursery() as writers:
                await writers.start(parts.destinations.run)
                if self.source is not None:
                    services.start_soon(self.source.run, self.reconfigure)
                if self.state.stopping:
                    parts.kafka.stop()
                task_status.started()
                await parts.batcher.run(recv)  # returns once stopped and flushed
                parts.destinations.close()
                with trio.move_on_after(self.cfg.clickhouse.grace_period) as grace:
                    await parts.committer.tracker.wait_settled()
                if grace.cancelled_caught:
                    log.warning("grace period over with batches pending; they will be rebuilt")
                    writers.cancel_scope.cancel()
            await parts.committer.commit_now(parts.ledger)
            services.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload_requested()
                    continue
                log.info("received %s: stop consuming, flush, commit", signal.Signals(signum).name)
                self.request_stop()
                return

    def _reload_requested(self) -> None:
        if self.source is None:
            config_log.warning("received SIGHUP: this outlet has no configuration to reload")
            return
        config_log.info("received SIGHUP: checking the configuration now")
        self.source.poke()

    # -- live reconfiguration (outlet/reconfig.py) ------------------------------------------
    async def reconfigure(self, new: OutletConfig) -> str:
        """Apply ``new`` live if every change can be; else keep running the current one.

        Returns ``applied``, ``refused`` or ``unchanged`` (counted in
        ``outlet_config_reloads_total``; ``outlet_config_outdated`` says whether the outlet
        now runs the configuration it was given).
        """
        async with self._reconfiguring:
            plan = reconfig.plan(self.cfg, new)
            m = self.metrics
            if plan.unchanged:
                m.config_outdated.set(0)
                return "unchanged"
            refused = plan.refused
            if not refused and (self.parts is None or self.state.stopping):
                refused = (reconfig.Change("", False, "the outlet is stopping"),)
            if refused:
                m.config_reloads.labels("refused").inc()
                m.config_outdated.set(1)
                config_log.error("configuration change refused, the running configuration is "
                                 "kept: %s", "; ".join(str(c) for c in refused))
                return "refused"
            assert self.parts is not None
            await self._apply(self.parts, plan, new)
            m.config_reloads.labels("applied").inc()
            m.config_outdated.set(0)
            config_log.info("configuration applied live: %s", plan.summary())
            return "applied"

    async def _apply(self, parts: Parts, plan: reconfig.Plan, new: OutletConfig) -> None:
        old, batch = self.cfg, new.clickhouse
        if new.log_format != old.log_format:
            setup_logging(new.log_level, new.log_format)
        elif new.log_level != old.log_level:
            set_level(new.log_level)
        parts.batcher.max_size = batch.maximum_batch_size
        parts.batcher.max_wait = batch.maximum_wait_time
        parts.rebalance.grace_period = batch.rebalance_grace_period
        parts.destinations.grace_period = batch.grace_period
        parts.encoder.compression = batch.compression
        primary = reconfig.primary_changes(old, new)
        updated = (primary, *plan.updated) if primary is not None else plan.updated
        await parts.destinations.change(plan.added, plan.removed, updated)
        self.cfg = new

    def request_stop(self) -> None:
        """Stop consuming; the batch in progress is flushed and committed (like SIGTERM)."""
        self.state.stopping = True
        if self.parts is not None:
            self.parts.kafka.stop()
        else:  # still opening (waiting for the cluster id): nothing read, nothing to flush
            self._opening.cancel()

    def ready(self) -> tuple[bool, str]:
        """Ready when assigned partitions and the primary's last attempt succeeded."""
        if self.parts is None:
            why = self._kafka.link_problem() if self._kafka is not None else ""
            return False, (f"waiting for the Kafka cluster id ({why})" if why
                           else self.state.opening)
        primary = self.parts.destinations.primary
        if not self.parts.kafka.ever_assigned:
            why = self.parts.kafka.link_problem()
            return False, "waiting for Kafka partition assignment" + (f" ({why})" if why else "")
        if not primary.healthy:
            return False, f"primary destination failing: {primary.last_error}"
        failing = [
            (d.name, lane.write_error)
            for d in self.parts.destinations.destinations
            if isinstance(lane := d.fallback, SpoolLane) and lane.write_error
        ]
        if len(failing) == 1:
            return True, f"ok, degraded: spool write failing on {failing[0][0]} ({failing[0][1]})"
        if failing:
            return True, f"ok, degraded: spool write failing on {len(failing)} destinations"
        return True, "ok"
