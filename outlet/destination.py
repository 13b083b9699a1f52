"""One ClickHouse destination: a bounded queue of encoded batches and one writer loop.

The primary and every additional destination run this same code; only their
configuration differs (retry limit, queue size). The writer inserts batches in
order, retries with capped exponential backoff and full jitter, and reports each
batch as settled (stored or given up) to the commit tracker.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import clickhouse_connect
import trio
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from outlet import schema
from outlet.batch import EncodedJob
from outlet.config import ConnectionConfig, DestinationConfig
from outlet.metrics import Metrics

log = logging.getLogger(__name__)

# Server codes worth retrying (from the ClickHouse Kafka Connect sink, see NOTES.md):
# timeouts, network errors, too many parts/queries, unknown status of insert...
TRANSIENT_CODES = frozenset({159, 164, 202, 203, 209, 210, 241, 242, 252, 285, 319, 425, 999})
# Errors a retry cannot fix: authentication, unknown table/database/column, types.
PERMANENT_CODES = frozenset({516, 60, 81, 16, 47, 53, 70, 27, 33, 62, 192, 194, 497})

_CODE_RE = re.compile(r"Code: (\d+)")

SettleCallback = Callable[[EncodedJob, str, bool], Awaitable[None]]


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
        return InsertFailure("server", code in TRANSIENT_CODES or code not in PERMANENT_CODES, code, text)
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


class ClickHouseWriter:
    """Blocking inserts with clickhouse-connect; called from trio.to_thread.

    Several servers mean failover in order: a connection failure moves to the next.
    """

    def __init__(self, conn: ConnectionConfig) -> None:
        self.conn = conn
        self._clients: dict[str, Any] = {}
        self._current = 0

    @property
    def server(self) -> str:
        return self.conn.servers[self._current]

    def client(self) -> Any:
        """The client for the current server (created on first use)."""
        return self._client()

    def redact(self, text: str) -> str:
        return _redact(text, self.conn.password.reveal())

    def _client(self) -> Any:
        url = self.server
        client = self._clients.get(url)
        if client is None:
            tls = self.conn.tls
            kwargs: dict[str, Any] = {
                "dsn": url,
                "username": self.conn.username,
                "password": self.conn.password.reveal(),
                "database": self.conn.database,
                "connect_timeout": self.conn.dial_timeout,
                "send_receive_timeout": self.conn.insert_timeout,
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

    def insert(self, job: EncodedJob) -> int:
        """Insert one encoded batch; returns rows written as reported by the server."""
        try:
            client = self._client()
            summary = client.raw_insert(
                f"{self.conn.database}.{schema.TABLE}",
                column_names=schema.COLUMN_NAMES,
                insert_block=job.native,
                settings={
                    **schema.INSERT_SETTINGS,
                    "insert_deduplication_token": job.token,
                    "insert_deduplicate": 1,
                },
                fmt="Native",
            )
        except Exception as exc:
            failure = classify(exc)
            if failure.kind in ("connect", "timeout"):
                self._drop_client()
                self._current = (self._current + 1) % len(self.conn.servers)
            raise
        written = getattr(summary, "written_rows", None)
        return int(written) if written is not None else job.rows

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
    """A destination's queue and writer loop."""

    def __init__(self, cfg: DestinationConfig, metrics: Metrics, settle: SettleCallback) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.metrics = metrics
        self._settle = settle
        self._writer = ClickHouseWriter(cfg.connection)
        self._send, self._recv = trio.open_memory_channel[EncodedJob](cfg.queue_size)
        self.healthy = True
        self.last_error: str = ""
        self._secret = cfg.connection.password.reveal()
        for kind in ("connect", "timeout", "auth", "permanent", "server", "other"):
            metrics.dest_errors.labels(self.name, kind)
        for reason in ("retries_exceeded", "queue_full", "permanent_error"):
            metrics.dest_retries_exceeded_flows.labels(self.name, reason)
            metrics.dest_retries_exceeded_batches.labels(self.name, reason)
        metrics.dest_flows.labels(self.name)
        metrics.dest_up.labels(self.name).set(1)

    @property
    def retries_forever(self) -> bool:
        return self.cfg.connection.max_retries == 0

    async def submit(self, job: EncodedJob) -> None:
        """Queue a batch. The primary blocks when full (backpressure); others give up."""
        if self.retries_forever:
            await self._send.send(job)
        else:
            try:
                self._send.send_nowait(job)
            except trio.WouldBlock:
                await self._give_up(job, "queue_full")
                return
        self.metrics.dest_queued.labels(self.name).set(self._queued())

    def close_queue(self) -> None:
        """No more batches: the writer drains the queue and returns."""
        self._send.close()

    def _queued(self) -> int:
        return self._send.statistics().current_buffer_used

    async def run(self) -> None:
        async with self._recv:
            async for job in self._recv:
                self.metrics.dest_queued.labels(self.name).set(self._queued())
                await self._deliver(job)
        await trio.to_thread.run_sync(self._writer.close)

    async def _deliver(self, job: EncodedJob) -> None:
        conn = self.cfg.connection
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                self.metrics.dest_retries.labels(self.name).inc()
            started = time.perf_counter()
            try:
                await trio.to_thread.run_sync(self._writer.insert, job, abandon_on_cancel=True)
            except Exception as exc:
                failure = classify(exc)
                self._note_failure(failure, attempt)
                if not failure.retriable and not self.retries_forever:
                    await self._give_up(job, "permanent_error")
                    return
                if conn.max_retries and attempt >= conn.max_retries:
                    await self._give_up(job, "retries_exceeded")
                    return
                await trio.sleep(
                    backoff_delay(attempt, conn.retry_initial_backoff, conn.retry_max_backoff)
                )
                continue
            self._note_success(job, time.perf_counter() - started, attempt)
            await self._settle(job, self.name, True)
            return

    def _note_failure(self, failure: InsertFailure, attempt: int) -> None:
        self.metrics.dest_errors.labels(self.name, failure.kind).inc()
        self.metrics.dest_up.labels(self.name).set(0)
        self.healthy = False
        message = _redact(failure.message, self._secret).splitlines()[0][:300]
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
            log.info("destination %s: inserts succeed again (after %d attempts)", self.name, attempt)
        self.healthy = True

    async def _give_up(self, job: EncodedJob, reason: str) -> None:
        m = self.metrics
        m.dest_retries_exceeded_batches.labels(self.name, reason).inc()
        m.dest_retries_exceeded_flows.labels(self.name, reason).inc(job.rows)
        log.warning(
            "destination %s: gave up on batch %s (%d flows): %s", self.name, job.token, job.rows, reason
        )
        await self._settle(job, self.name, False)
