"""One ClickHouse destination: a bounded queue of encoded batches and one writer loop.

The primary and every additional destination run this same code; only their
configuration differs (retry limit, queue size, spool, circuit breaker). The writer
inserts batches in order, retries with capped exponential backoff and full jitter, and
reports each batch as settled (stored, spooled or given up) to the commit tracker.

Destinations that give up (``max-retries`` > 0, i.e. the additional ones) also have:
- a circuit breaker (outlet/breaker.py): after `failure-threshold` consecutive failed
  attempts no batch is sent; a probe task sends ``SELECT 1`` at a short interval that
  backs off (`probe-interval` doubling up to `probe-max-interval`; `cool-down` after a
  permanent error), and once it answers, one real attempt decides;
- with ``spool.enable``, an on-disk spool (outlet/spool.py): a batch that exhausted its
  retries, met an open circuit, a permanent error or a full queue is appended there and
  settled (handed over, not lost). A drain task replays spooled batches, oldest first,
  with their original deduplication tokens: one insert at a time, only while the circuit
  lets it and the live queue is less than half full (or a writer waits for spool room).
  With ``when-full: block`` a full spool holds the batch (and, through the full queue,
  the fan-out and Kafka consumption) until the drain frees room: nothing the drain
  needs waits on the writer, so this cannot deadlock.
The primary retries forever: its circuit never opens and it has no spool.
Every destination audits its inserts (outlet/dedup_audit.py): what the server
deduplicated is counted, and a deduplicated first attempt is logged as a collision.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import trio
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from outlet import schema
from outlet.batch import EncodedJob
from outlet.breaker import CircuitBreaker, State
from outlet.config import ConnectionConfig, DestinationConfig
from outlet.dedup_audit import DedupAudit
from outlet.metrics import Metrics
from outlet.spool import Spool, SpooledBatch

log = logging.getLogger(__name__)

# Server codes worth retrying (from the ClickHouse Kafka Connect sink, see NOTES.md):
# timeouts, network errors, too many parts/queries, unknown status of insert...
TRANSIENT_CODES = frozenset({159, 164, 202, 203, 209, 210, 241, 242, 252, 285, 319, 425, 999})
# Errors a retry cannot fix: authentication, unknown table/database/column, types.
PERMANENT_CODES = frozenset({516, 60, 81, 16, 47, 53, 70, 27, 33, 62, 192, 194, 497})

_CODE_RE = re.compile(r"Code: (\d+)")

SettleCallback = Callable[[EncodedJob, str, bool], Awaitable[None]]

# Why a batch could not be inserted live: given up (no spool) or spooled (spool).
SPOOL_REASONS = ("retries_exceeded", "queue_full", "permanent_error", "circuit_open")
# retries_exceeded flows by reason = what a destination lost; spool_full = dropped from a
# full spool (drop-oldest).
GIVE_UP_REASONS = (*SPOOL_REASONS, "spool_full")


@dataclass(frozen=True)
class InsertFailure:
    """A classified insert failure: kind (metric label), whether retrying can help."""

    kind: str
    retriable: bool
    code: int | None
    message: str


def classify(exc: BaseException) -> InsertFailure:
    """Sort an insert exception into network / timeout / transient / permanent."""
    text = str(exc)
    match = _CODE_RE.search(text)
    code = int(match.group(1)) if match else None
    if isinstance(exc, (TimeoutError, trio.TooSlowError)) or "timed out" in text.lower():
        return InsertFailure("timeout", True, code, text)
    if code == 516:
        return InsertFailure("auth", False, code, text)
    if code is not None and code in PERMANENT_CODES:
        return InsertFailure("permanent", False, code, text)
    if code is not None:
        retriable = code in TRANSIENT_CODES or code not in PERMANENT_CODES
        return InsertFailure("server", retriable, code, text)
    if isinstance(exc, (OperationalError, ConnectionError, OSError)):
        return InsertFailure("connect", True, None, text)
    if isinstance(exc, DatabaseError):
        return InsertFailure("server", True, None, text)
    return InsertFailure("other", True, None, text)


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Capped exponential backoff with full jitter (AWS style) for attempt >= 1."""
    return random.uniform(0, min(cap, initial * (2 ** min(attempt - 1, 30))))


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "******") if secret else text


@dataclass(frozen=True)
class InsertResult:
    """What one successful insert attempt reported."""

    comment: str  # its log_comment (and query_id): finds it in the server's logs
    written_rows: int  # X-ClickHouse-Summary: rows sent, deduplicated or not


class ClickHouseWriter:
    """Blocking inserts with clickhouse-connect; called from trio.to_thread.

    Several servers mean failover in order: a connection failure moves to the next.
    `timeout` overrides the connection's insert-timeout (probes use a short one).
    """

    def __init__(self, conn: ConnectionConfig, timeout: float | None = None) -> None:
        self.conn = conn
        self.timeout = conn.insert_timeout if timeout is None else timeout
        self._clients: dict[str, Any] = {}
        self._current = 0

    @property
    def server(self) -> str:
        return self.conn.servers[self._current]

    def redact(self, text: str) -> str:
        return _redact(text, self.conn.password.reveal())

    def client(self) -> Any:
        """The client for the current server (created on first use)."""
        url = self.server
        client = self._clients.get(url)
        if client is None:
            tls = self.conn.tls
            parsed = urlsplit(url)
            secure = parsed.scheme == "https"
            kwargs: dict[str, Any] = {
                # Explicit host/port/interface: a dsn alone does not select HTTPS.
                "host": parsed.hostname,
                "port": parsed.port or (8443 if secure else 8123),
                "interface": "https" if secure else "http",
                "secure": secure,
                "username": self.conn.username,
                "password": self.conn.password.reveal(),
                "database": self.conn.database,
                "connect_timeout": self.conn.dial_timeout,
                "send_receive_timeout": self.timeout,
                "compress": False,
                "autogenerate_session_id": False,
                "verify": tls.verify,
            }
            if tls.ca_file:
                kwargs["ca_cert"] = tls.ca_file
            if tls.cert_file:
                kwargs["client_cert"] = tls.cert_file
            if tls.key_file:
                kwargs["client_cert_key"] = tls.key_file
            client = clickhouse_connect.get_client(**kwargs)
            self._clients[url] = client
        return client

    def insert(self, job: EncodedJob) -> InsertResult:
        """Insert one encoded batch under its deduplication token."""
        comment = f"outlet-{uuid.uuid4().hex}"
        summary = self._call(
            lambda client: client.raw_insert(
                f"{self.conn.database}.{schema.TABLE}",
                column_names=schema.COLUMN_NAMES,
                insert_block=job.native,
                settings={
                    **schema.INSERT_SETTINGS,
                    "insert_deduplication_token": job.token,
                    "insert_deduplicate": 1,
                    "log_comment": comment,
                    "query_id": comment,
                },
                fmt="Native",
                compression=job.compression,
            )
        )
        written = getattr(summary, "written_rows", None)
        return InsertResult(comment, int(written) if written is not None else job.rows)

    def ping(self) -> None:
        """A query that costs the server nothing but needs the link and the credentials."""
        self._call(lambda client: client.command("SELECT 1"))

    def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._call(
            lambda client: client.query(sql, parameters=parameters).result_rows
        )
        return rows

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        try:
            return fn(self.client())
        except Exception as exc:
            failure = classify(exc)
            if failure.kind in ("connect", "timeout"):
                self._drop_client()
                self._current = (self._current + 1) % len(self.conn.servers)
            raise

    def _drop_client(self) -> None:
        client = self._clients.pop(self.server, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken client must not mask the real error
                log.debug("closing client failed", exc_info=True)

    def close(self) -> None:
        for url in list(self._clients):
            self._current = self.conn.servers.index(url)
            self._drop_client()


class Destination:
    """A destination's queue, writer loop and (additional destinations) spool drain."""

    def __init__(self, cfg: DestinationConfig, metrics: Metrics, settle: SettleCallback) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.metrics = metrics
        self._settle = settle
        self._writer = ClickHouseWriter(cfg.connection)
        self._send, self._recv = trio.open_memory_channel[EncodedJob](cfg.queue_size)
        self.healthy = True
        self.last_error: str = ""
        for kind in ("connect", "timeout", "auth", "permanent", "server", "other"):
            metrics.dest_errors.labels(self.name, kind)
        for reason in GIVE_UP_REASONS:
            metrics.dest_retries_exceeded_flows.labels(self.name, reason)
            metrics.dest_retries_exceeded_batches.labels(self.name, reason)
        metrics.dest_flows.labels(self.name)
        metrics.dest_up.labels(self.name).set(1)
        # The circuit gates attempts only where a batch can go elsewhere (spool, give up).
        self._gated = not self.retries_forever
        cb = cfg.circuit_breaker
        self.breaker = CircuitBreaker(
            cb.failure_threshold,
            probe_interval=cb.probe_interval,
            probe_max_interval=cb.probe_max_interval,
            cool_down=cb.cool_down,
            clock=trio.current_time,
            on_change=self._circuit_changed,
        )
        self._circuit_moved = trio.Event()  # set (and replaced) on every circuit change
        self._probe_writer = ClickHouseWriter(cfg.connection, timeout=cfg.connection.dial_timeout)
        metrics.circuit_state.labels(self.name).set(0)
        self._audit_writer = ClickHouseWriter(cfg.connection)
        self.audit = DedupAudit(
            self.name, cfg.connection.database, schema.TABLE, self._audit_writer.query,
            metrics, clock=trio.current_time, redact=self._writer.redact,
            reachable=lambda: self.breaker.state is not State.OPEN,
        )
        self.spool: Spool | None = None
        self._replay_writer: ClickHouseWriter | None = None
        self._room = trio.Event()  # set (and replaced) whenever the drain frees spool room
        self._spooled = trio.Event()  # set (and replaced) whenever a batch is spooled
        self._waiting_for_room = 0
        self._corrupt_seen = 0
        self._replay_failures = 0
        if cfg.spool.enable and self._gated:
            self._open_spool()

    def _open_spool(self) -> None:
        m, name = self.metrics, self.name
        spool = Spool(self.cfg.spool, name)
        self.spool = spool
        self._replay_writer = ClickHouseWriter(self.cfg.connection)
        m.spool_bytes.labels(name).set_function(lambda: spool.bytes)
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
        self._count_corrupt()

    @property
    def retries_forever(self) -> bool:
        return self.cfg.connection.max_retries == 0

    async def submit(self, job: EncodedJob) -> None:
        """Queue a batch. The primary blocks when full (backpressure); others spool it
        (``when-full: block`` waits for spool room) or give it up."""
        if self.retries_forever:
            await self._send.send(job)
        else:
            try:
                self._send.send_nowait(job)
            except trio.WouldBlock:
                await self._spool_or_give_up(job, "queue_full")
                return
        self.metrics.dest_queued.labels(self.name).set(self._queued())

    def close_queue(self) -> None:
        """No more batches: the writer drains the queue and returns."""
        self._send.close()

    def _queued(self) -> int:
        return self._send.statistics().current_buffer_used

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.audit.run)
                if self._gated:
                    nursery.start_soon(self._probe)
                if self.spool is not None:
                    nursery.start_soon(self._drain)
                async with self._recv:
                    async for job in self._recv:
                        self.metrics.dest_queued.labels(self.name).set(self._queued())
                        await self._deliver(job)
                nursery.cancel_scope.cancel()  # the spool stays on disk for the next run
            await trio.to_thread.run_sync(self._close)
        finally:
            if self.spool is not None:
                self.spool.close()  # idempotent; also on cancellation

    def _close(self) -> None:
        self._writer.close()
        self._probe_writer.close()
        self._audit_writer.close()
        if self._replay_writer is not None:
            self._replay_writer.close()
        if self.spool is not None:
            self.spool.close()

    async def _deliver(self, job: EncodedJob) -> None:
        conn = self.cfg.connection
        attempt = 0
        while True:
            if self._gated and not self.breaker.allow():
                await self._spool_or_give_up(job, "circuit_open")
                return
            attempt += 1
            if attempt > 1:
                self.metrics.dest_retries.labels(self.name).inc()
            started = time.perf_counter()
            try:
                result = await trio.to_thread.run_sync(
                    self._writer.insert, job, abandon_on_cancel=True
                )
            except Exception as exc:
                failure = classify(exc)
                self._note_failure(failure, attempt)
                if not failure.retriable and not self.retries_forever:
                    self.breaker.trip()
                    await self._spool_or_give_up(job, "permanent_error")
                    return
                if self._gated:
                    self.breaker.record_failure()
                if conn.max_retries and attempt >= conn.max_retries:
                    await self._spool_or_give_up(job, "retries_exceeded")
                    return
                await trio.sleep(
                    backoff_delay(attempt, conn.retry_initial_backoff, conn.retry_max_backoff)
                )
                continue
            if self._gated:
                self.breaker.record_success()
            self._note_success(job, time.perf_counter() - started, attempt)
            repeat = job.repeat or attempt > 1
            self.audit.note(result.comment, job.token, job.rows, "repeat" if repeat else "first")
            await self._settle(job, self.name, True)
            return

    # -- spool ------------------------------------------------------------------------
    async def _spool_or_give_up(self, job: EncodedJob, reason: str) -> None:
        if self.spool is None:
            await self._give_up(job, reason)
        else:
            await self._stash(job, reason)

    async def _stash(self, job: EncodedJob, reason: str) -> None:
        """Append to the spool, then settle: the batch is handed over, not lost."""
        spool = self.spool
        assert spool is not None
        m = self.metrics
        was_empty = spool.batches == 0
        waited = 0.0
        while True:
            result = await trio.to_thread.run_sync(spool.append, job.token, job.rows, job.native)
            if result.accepted:
                break
            # when-full: block. Hold the batch (no settle) until the drain frees room.
            if waited == 0.0:
                log.warning(
                    "destination %s: spool full (%d bytes), holding batch %s until "
                    "replay frees room (backpressure)", self.name, spool.bytes, job.token,
                )
            self._waiting_for_room += 1
            t0 = trio.current_time()
            try:
                with trio.move_on_after(1.0):
                    await self._room.wait()
            finally:
                self._waiting_for_room -= 1
            waited += trio.current_time() - t0
        m.spool_appended_batches.labels(self.name, reason).inc()
        m.spool_appended_flows.labels(self.name, reason).inc(job.rows)
        if result.dropped_batches:
            self._count_dropped(result.dropped_batches, result.dropped_flows)
            log.warning(
                "destination %s: spool full, dropped the %d oldest batch(es) (%d flows): %s",
                self.name, result.dropped_batches, result.dropped_flows,
                ", ".join(result.dropped_tokens[:5]),
            )
        if was_empty:
            log.warning(
                "destination %s: spooling batches to %s (%s)", self.name, spool.dir, reason
            )
        self._spooled.set()
        self._spooled = trio.Event()
        await self._settle(job, self.name, False)

    def _count_dropped(self, batches: int, flows: int) -> None:
        """Drops count as given up (reason spool_full) and in the spool's own counters."""
        m, name = self.metrics, self.name
        m.dest_retries_exceeded_batches.labels(name, "spool_full").inc(batches)
        m.dest_retries_exceeded_flows.labels(name, "spool_full").inc(flows)
        m.spool_dropped_batches.labels(name).inc(batches)
        m.spool_dropped_flows.labels(name).inc(flows)

    def _count_corrupt(self) -> None:
        if self.spool is None:
            return
        seen = self.spool.corrupt_records
        if seen > self._corrupt_seen:
            self.metrics.spool_corrupt_records.labels(self.name).inc(seen - self._corrupt_seen)
            self._corrupt_seen = seen

    async def _drain(self) -> None:
        """Replay spooled batches, oldest first, one at a time, with their own tokens."""
        spool = self.spool
        writer = self._replay_writer
        assert spool is not None and writer is not None
        conn = self.cfg.connection
        half = max(1, self.cfg.queue_size // 2)
        while True:
            self._count_corrupt()
            if spool.cfg.fsync == "interval":
                await trio.to_thread.run_sync(spool.sync_if_due)
            if spool.batches == 0:
                with trio.move_on_after(1.0):
                    await self._spooled.wait()
                continue
            if self._queued() >= half and not self._waiting_for_room:
                await trio.sleep(0.1)  # live traffic first
                continue
            if not self.breaker.allow():
                # Open (the probe task decides) or half-open with the one attempt out.
                await self._circuit_moved.wait()
                continue
            batch = await trio.to_thread.run_sync(spool.peek_oldest)
            self._count_corrupt()
            if batch is None:
                self.breaker.release()
                continue
            await self._replay(spool, writer, batch)
            if self._replay_failures:
                await trio.sleep(
                    backoff_delay(
                        self._replay_failures, conn.retry_initial_backoff, conn.retry_max_backoff
                    )
                )

    async def _replay(self, spool: Spool, writer: ClickHouseWriter, batch: SpooledBatch) -> None:
        job = EncodedJob(
            seq=-1, token=batch.token, native=batch.native, rows=batch.rows, ranges={}, repeat=True
        )
        started = time.perf_counter()
        try:
            result = await trio.to_thread.run_sync(writer.insert, job, abandon_on_cancel=True)
        except Exception as exc:
            failure = classify(exc)
            self._replay_failures += 1
            self._note_failure(failure, self._replay_failures)
            if failure.retriable:
                self.breaker.record_failure()
            else:
                self.breaker.trip()
            batches, flows = await trio.to_thread.run_sync(spool.release, batch)
            if batches:
                self._count_dropped(batches, flows)
            return
        self.breaker.record_success()
        self._replay_failures = 0
        self._note_success(job, time.perf_counter() - started, 1)
        self.audit.note(result.comment, job.token, job.rows, "repeat")
        await trio.to_thread.run_sync(spool.ack_oldest, batch)
        m = self.metrics
        m.spool_replayed_batches.labels(self.name).inc()
        m.spool_replayed_flows.labels(self.name).inc(batch.rows)
        self._room.set()
        self._room = trio.Event()
        if spool.batches == 0:
            log.info("destination %s: spool drained", self.name)

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
                    await trio.to_thread.run_sync(self._probe_writer.ping, abandon_on_cancel=True)
                except Exception as exc:
                    failure = classify(exc)
            if scope.cancelled_caught:
                failure = InsertFailure("timeout", True, None, f"probe: no answer in {timeout:g} s")
            if failure is None:
                log.info("destination %s: probe answered, trying one batch", self.name)
                self.breaker.probe_succeeded()
            elif not failure.retriable:
                log.debug("destination %s: probe failed: %s", self.name,
                          self._writer.redact(failure.message).splitlines()[0][:300])
                self.breaker.trip()
            else:
                log.debug("destination %s: probe failed: %s", self.name,
                          self._writer.redact(failure.message).splitlines()[0][:300])
                self.breaker.probe_failed()

    def _circuit_changed(self, old: State, new: State) -> None:
        self._circuit_moved.set()
        self._circuit_moved = trio.Event()
        self.metrics.circuit_state.labels(self.name).set(int(new))
        level = logging.WARNING if new is State.OPEN else logging.INFO
        log.log(
            level, "destination %s: circuit %s -> %s", self.name, old.name.lower(),
            new.name.lower().replace("_", "-"),
        )

    # -- outcome bookkeeping ------------------------------------------------------------
    def _note_failure(self, failure: InsertFailure, attempt: int) -> None:
        self.metrics.dest_errors.labels(self.name, failure.kind).inc()
        self.metrics.dest_up.labels(self.name).set(0)
        self.healthy = False
        message = self._writer.redact(failure.message).splitlines()[0][:300]
        self.last_error = message
        level = logging.ERROR if not failure.retriable else logging.WARNING
        if attempt == 1 or attempt % 10 == 0:
            log.log(
                level,
                "destination %s: insert failed (%s, attempt %d, server %s): %s",
                self.name, failure.kind, attempt, self._writer.server, message,
            )

    def _note_success(self, job: EncodedJob, seconds: float, attempt: int) -> None:
        m = self.metrics
        m.dest_flows.labels(self.name).inc(job.rows)
        m.dest_batches.labels(self.name).inc()
        m.dest_insert_seconds.labels(self.name).observe(seconds)
        m.dest_last_success.labels(self.name).set(time.time())
        m.dest_up.labels(self.name).set(1)
        if not self.healthy:
            log.info(
                "destination %s: inserts succeed again (after %d attempts)", self.name, attempt
            )
        self.healthy = True

    async def _give_up(self, job: EncodedJob, reason: str) -> None:
        m = self.metrics
        m.dest_retries_exceeded_batches.labels(self.name, reason).inc()
        m.dest_retries_exceeded_flows.labels(self.name, reason).inc(job.rows)
        log.warning(
            "destination %s: gave up on batch %s (%d flows): %s",
            self.name, job.token, job.rows, reason,
        )
        await self._settle(job, self.name, False)
