"""One ClickHouse destination: a bounded queue of encoded batches and one writer loop.

``Destination(config, metrics, writer, fallback, on_settled, probe=, audit_writer=)``: the
primary and every
additional destination run this same code; only their configuration differs (retry
limit, queue size, spool, circuit breaker). The loop inserts batches in order through its
``Writer`` (outlet/writer.py: transport only), retries as ``RetryPolicy`` says
(outlet/retry.py: classification and backoff), and reports each batch as settled
(stored, spooled or given up) through ``on_settled``; it never calls back into the
pipeline otherwise.

Destinations that give up (``max-retries`` > 0, i.e. the additional ones) also have:
- a circuit breaker (outlet/breaker.py): after `failure-threshold` consecutive failed
  attempts no batch is sent; a probe task sends ``SELECT 1`` (through ``probe``, a
  connection of its own) at a short interval that backs off (`probe-interval` doubling up
  to `probe-max-interval`; `cool-down` after a permanent error), and once it answers, one
  real attempt (a live batch's or the spool's) decides;
- a fallback (outlet/fallback.py) for a batch that exhausted its retries, met an open
  circuit, a permanent error or a full queue: ``GiveUp`` (counted as lost there) or
  ``SpoolLane`` (appended to the on-disk spool and replayed later).
The primary retries forever and blocks when its queue is full (backpressure): its
circuit never opens and it never falls back.

Every destination audits its inserts (outlet/dedup_audit.py, through ``audit_writer``):
what the server deduplicated is counted by attempt (``first``: a freshly sealed batch,
logged as a collision; ``repeat``: a retry, rebuild or replay, as intended).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from outlet import schema
from outlet.batch import EncodedJob
from outlet.breaker import CircuitBreaker, State
from outlet.config import DestinationConfig
from outlet.dedup_audit import DedupAudit
from outlet.metrics import Metrics
from outlet.notify import Notifier
from outlet.outage import OutageLog, short_cause
from outlet.retry import ERROR_KINDS, InsertFailure, RetryPolicy, classify
from outlet.writer import Writer

log = logging.getLogger(__name__)

Settled = Callable[[EncodedJob, str, bool], None]  # (batch, destination, stored there)


class Outcomes:
    """A destination's health: per-attempt metrics and logs, and what /readyz reports."""

    def __init__(self, name: str, metrics: Metrics, writer: Writer) -> None:
        self.name = name
        self.metrics = metrics
        self._writer = writer
        self.healthy = True
        self.last_error = ""
        self._unclassified: set[int] = set()
        self._outage = OutageLog(name)
        self.state: Callable[[], str] = str  # what the destination does while it is down
        for kind in ERROR_KINDS:
            metrics.dest_errors.labels(name, kind)
        metrics.dest_flows.labels(name)
        metrics.dest_up.labels(name).set(1)

    def failed(self, failure: InsertFailure, attempt: int, what: str = "insert") -> None:
        self.metrics.dest_errors.labels(self.name, failure.kind).inc()
        self.metrics.dest_up.labels(self.name).set(0)
        self.healthy = False
        message = self._writer.redact(failure.message)
        # /readyz shows this to anyone who reaches the port: the class and the code only.
        self.last_error = failure.kind + (f" (code {failure.code})" if failure.code else "")
        level = logging.ERROR if not failure.retriable else logging.WARNING
        self._outage.failed(what, failure.kind, attempt, self._writer.server,
                            short_cause(message), level, self.state)
        if not failure.classified and failure.code not in self._unclassified:
            self._unclassified.add(failure.code or 0)
            log.error(
                "destination %s: ClickHouse error code %s is not classified; retried as "
                "transient (outlet/retry.py lists the codes)", self.name, failure.code,
            )

    def stored(self, job: EncodedJob, seconds: float, attempt: int) -> None:
        m = self.metrics
        m.dest_flows.labels(self.name).inc(job.rows)
        m.dest_batches.labels(self.name).inc()
        m.dest_insert_seconds.labels(self.name).observe(seconds)
        m.dest_last_success.labels(self.name).set(time.time())
        m.dest_up.labels(self.name).set(1)
        self._outage.recovered()
        self.healthy = True


@dataclass(frozen=True)
class LivePath:
    """What a fallback's background task may see of its destination's live inserts."""

    breaker: CircuitBreaker
    outcomes: Outcomes
    queued: Callable[[], int]  # batches waiting in the live queue
    audit: DedupAudit  # notes what a replay stored (outlet/dedup_audit.py)


class Fallback(Protocol):
    """Where a batch goes when it cannot be inserted live (outlet/fallback.py)."""

    async def take(self, job: EncodedJob, reason: str) -> None:
        """Take the batch over and settle it (spooled or given up)."""
        ...

    async def run(self, live: LivePath) -> None:
        """Background work (replaying the spool) for as long as the destination runs."""
        ...

    def live_changed(self) -> None:
        """The live queue shrank or the circuit changed state."""
        ...

    def update(self, cfg: DestinationConfig) -> None:
        """New settings of the same destination (live reconfiguration)."""
        ...


class Destination:
    """A destination's queue and writer loop; its fallback runs beside it."""

    def __init__(
        self,
        cfg: DestinationConfig,
        metrics: Metrics,
        writer: Writer,
        fallback: Fallback,
        on_settled: Settled,
        *,
        probe: Writer | None = None,
        audit_writer: Writer | None = None,
    ) -> None:
        """`probe` and `audit_writer` are connections of their own (default: `writer`,
        for fakes; a ClickHouseWriter must not be used by two threads at once)."""
        self.cfg = cfg
        self.name = cfg.name
        self.metrics = metrics
        self.writer = writer
        self.fallback = fallback
        self._settled = on_settled
        self.retry = RetryPolicy.of(cfg.connection)
        self._send, self._recv = trio.open_memory_channel[EncodedJob](cfg.queue_size)
        self.outcomes = Outcomes(self.name, metrics, writer)
        # The circuit gates attempts only where a batch can go elsewhere (spool, give up).
        self._gated = not self.retry.forever
        cb = cfg.circuit_breaker
        self.breaker = CircuitBreaker(
            cb.failure_threshold,
            probe_interval=cb.probe_interval,
            probe_max_interval=cb.probe_max_interval,
            cool_down=cb.cool_down,
            clock=trio.current_time,  # the clock of the Trio timeouts that wait for it
            on_change=self._circuit_changed,
        )
        self._circuit_moved = Notifier()
        self._probe_writer = probe or writer
        metrics.circuit_state.labels(self.name).set(0)
        self.outcomes.state = self._outage_state
        self._retire_at = math.inf  # removed from the configuration: drain until then
        self._retiring = Notifier()
        audit_writer = audit_writer or writer
        self.audit = DedupAudit(
            self.name, cfg.connection.database, schema.TABLE, audit_writer.query, metrics,
            clock=trio.current_time, redact=writer.redact,
            reachable=lambda: self.breaker.state is not State.OPEN,
        )

    def _outage_state(self) -> str:
        """What the destination does while down, for the periodic summary."""
        if not self._gated:
            return "retrying forever (consumption pauses when the queue is full)"
        state = f"circuit {self.breaker.state.name.lower().replace('_', '-')}"
        spool = getattr(self.fallback, "spool", None)
        if spool is not None:
            state += f", spool {spool.batches} batches ({spool.bytes:,} bytes)"
        return state

    @property
    def healthy(self) -> bool:
        return self.outcomes.healthy

    @property
    def last_error(self) -> str:
        return self.outcomes.last_error

    async def submit(self, job: EncodedJob) -> None:
        """Queue a batch. The primary blocks when full (backpressure); others hand it to
        their fallback (a spool with ``when-full: block`` waits for room)."""
        if self.retry.forever:
            await self._send.send(job)
        else:
            try:
                self._send.send_nowait(job)
            except trio.WouldBlock:
                await self.fallback.take(job, "queue_full")
                return
        self.metrics.dest_queued.labels(self.name).set(self._queued())

    def close_queue(self) -> None:
        """No more batches: the writer drains the queue and returns."""
        self._send.close()

    def update(self, cfg: DestinationConfig) -> None:
        """New settings of this destination (live reconfiguration, outlet/reconfig.py): the
        retry policy from the next attempt, circuit thresholds and probe intervals from the
        next failure; the deduplication audit follows a new server or database; an open
        circuit probes at once with new connection settings (new credentials may fix
        what tripped it). The writers are replaced by whoever made them, before this
        (outlet/fanout.py)."""
        old = self.cfg.connection
        moved = (cfg.connection.servers, cfg.connection.database) != (old.servers, old.database)
        self.cfg = cfg
        self.retry = RetryPolicy.of(cfg.connection)
        cb = cfg.circuit_breaker
        self.breaker.failure_threshold = cb.failure_threshold
        self.breaker.probe_interval = cb.probe_interval
        self.breaker.probe_max_interval = cb.probe_max_interval
        self.breaker.cool_down = cb.cool_down
        self.fallback.update(cfg)
        if moved:
            self.audit.retarget(cfg.connection.database)
        if cfg.connection != old:  # what opened the circuit may be fixed: probe now
            self.breaker.connection_changed()
            self._circuit_moved.notify()

    def retire(self, within: float) -> None:
        """Removed from the configuration: no more batches; the queued ones are inserted
        for ``within`` seconds, then each batch not stored yet goes to the fallback
        (reason ``removed``) instead of another attempt. An attempt in flight at the
        deadline ends as usual (its ``insert-timeout`` bounds it)."""
        self._retire_at = trio.current_time() + within
        self._send.close()
        self._retiring.notify()

    def _retired(self) -> bool:
        return trio.current_time() >= self._retire_at

    async def _backoff(self, delay: float) -> None:
        """Sleep ``delay`` between attempts, or until the retirement deadline."""
        with trio.move_on_after(delay):
            while not self._retired():
                with trio.move_on_at(self._retire_at):
                    await self._retiring.wait()

    def _queued(self) -> int:
        return self._send.statistics().current_buffer_used

    @property
    def queued(self) -> int:
        """Batches waiting in the queue."""
        return self._queued()

    async def run(self) -> None:
        """Insert queued batches until the queue is closed and drained."""
        live = LivePath(self.breaker, self.outcomes, self._queued, self.audit)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.fallback.run, live)
            nursery.start_soon(self.audit.run)
            if self._gated:
                nursery.start_soon(self._probe)
            async with self._recv:
                async for job in self._recv:
                    self.metrics.dest_queued.labels(self.name).set(self._queued())
                    self.fallback.live_changed()
                    await self._deliver(job)
            nursery.cancel_scope.cancel()  # the spool stays on disk for the next run

    async def _deliver(self, job: EncodedJob) -> None:
        attempt = 0
        while True:
            if self._retired():
                await self.fallback.take(job, "removed")
                return
            if self._gated and not self.breaker.allow():
                await self.fallback.take(job, "circuit_open")
                return
            attempt += 1
            if attempt > 1:
                self.metrics.dest_retries.labels(self.name).inc()
            started = time.perf_counter()
            try:
                result = await self.writer.write(job)
            except Exception as exc:
                failure = classify(exc)
                self.outcomes.failed(failure, attempt)
                if not failure.retriable and self._gated:
                    self.breaker.trip()
                    await self.fallback.take(job, "permanent_error")
                    return
                if self._gated:
                    self.breaker.record_failure()
                if self.retry.exhausted(attempt):
                    await self.fallback.take(job, "retries_exceeded")
                    return
                await self._backoff(self.retry.delay(attempt))
                continue
            if self._gated:
                self.breaker.record_success()
            self.outcomes.stored(job, time.perf_counter() - started, attempt)
            repeat = job.repeat or attempt > 1
            self.audit.note(result.comment, job.token, job.rows, "repeat" if repeat else "first")
            self._settled(job, self.name, True)
            return

    async def _probe(self) -> None:
        """While the circuit is open, probe the server cheaply until it answers.

        The breaker says when (a short interval that backs off); the probe is a
        ``SELECT 1`` bounded by dial-timeout, never a batch. Success turns the circuit
        half-open: the next real attempt (the spool drain's, or a live batch's) decides.
        """
        timeout = self.cfg.connection.dial_timeout + 1.0
        while True:
            wait = self.breaker.retry_after()
            if wait == float("inf"):  # closed, half-open, or a probe is out
                await self._circuit_moved.wait()
                continue
            if wait > 0:
                with trio.move_on_after(wait):
                    await self._circuit_moved.wait()  # a real attempt may close it first
                continue
            if not self.breaker.begin_probe():
                continue
            failure: InsertFailure | None = None
            with trio.move_on_after(timeout) as scope:
                try:
                    await self._probe_writer.ping()
                except Exception as exc:
                    failure = classify(exc)
            if scope.cancelled_caught:
                failure = InsertFailure("timeout", True, None, f"probe: no answer in {timeout:g} s")
            if failure is None:
                log.info("destination %s: probe answered, trying one batch", self.name)
                self.breaker.probe_succeeded()
                continue
            log.debug(
                "destination %s: probe failed: %s", self.name,
                (self.writer.redact(failure.message).splitlines() or [""])[0][:300],
            )
            if failure.retriable:
                self.breaker.probe_failed()
            else:
                self.breaker.trip()

    def _circuit_changed(self, old: State, new: State) -> None:
        self._circuit_moved.notify()
        self.metrics.circuit_state.labels(self.name).set(int(new))
        # Probes (open <-> half-open) are attempts, logged as such: only the edges here.
        level = (logging.WARNING if old is State.CLOSED else
                 logging.INFO if new is State.CLOSED else logging.DEBUG)
        log.log(
            level, "destination %s: circuit %s -> %s", self.name,
            old.name.lower().replace("_", "-"), new.name.lower().replace("_", "-"),
        )
        self.fallback.live_changed()
