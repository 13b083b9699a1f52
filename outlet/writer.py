"""The transport of a destination: one insert of one encoded batch, nothing more.

Retries, circuit breaking and spooling live elsewhere (outlet/retry.py,
outlet/destination.py, outlet/fallback.py), as in Vector's sinks. ``Writer`` is the
interface a destination depends on: the ClickHouse writer below in production, fakes in
the in-process tests.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import clickhouse_connect
import trio
import urllib3
from clickhouse_connect.driver.httputil import get_pool_manager_options

from outlet import linkfailure as lf
from outlet import schema
from outlet.batch import EncodedJob
from outlet.config import ConnectionConfig
from outlet.metrics import Metrics
from outlet.retry import FAILOVER_KINDS, classify
from outlet.tlsfiles import TLSFiles, track_expiry

log = logging.getLogger(__name__)

PROBE_EVERY = 30.0  # seconds between diagnostic TLS handshakes of one writer to one server


@dataclass(frozen=True)
class InsertResult:
    """What one successful insert attempt reported."""

    comment: str  # its log_comment (and query_id): finds it in the server's logs
    written_rows: int  # X-ClickHouse-Summary: rows sent, deduplicated or not


class Writer(Protocol):
    """Inserts encoded batches into one destination (any server of it)."""

    @property
    def server(self) -> str:
        """The server the next insert goes to (for logs)."""
        ...

    async def write(self, job: EncodedJob) -> InsertResult:
        """Insert the batch under its deduplication token.

        Raises on failure; outlet/retry.py classifies the exception. The result's
        ``comment`` names the attempt in the server's logs (outlet/dedup_audit.py).
        """
        ...

    async def ping(self) -> None:
        """A query that costs the server nothing but needs the link and the credentials
        (the circuit breaker's probe). Raises on failure, as write does."""
        ...

    async def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        """A read query's rows (the deduplication audit's)."""
        ...

    def redact(self, text: str) -> str:
        """`text` without the destination's secrets (error messages go to logs)."""
        ...

    async def aclose(self) -> None:
        """Release connections (also when cancelled)."""
        ...


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "******") if secret else text


class ClickHouseWriter:
    """Inserts with clickhouse-connect (blocking, so in a worker thread).

    Several servers mean failover in order: a connection failure moves to the next.

    HTTPS uses a connection pool of ours whose SSL context is built from the link's TLS
    files (outlet/tlsfiles.py): before each request (insert, probe, audit query) the files
    are checked, and when they
    changed (rotation) and load, the clients are rebuilt so that the next insert
    connects with them. A client certificate is only the transport's: the user still
    authenticates with username and password (given a client certificate,
    clickhouse-connect would switch to ClickHouse's certificate authentication and drop
    the password).
    """

    def __init__(self, conn: ConnectionConfig) -> None:
        self.conn = conn
        self._clients: dict[str, Any] = {}
        self._pools: dict[str, urllib3.PoolManager] = {}
        self._current = 0
        self.tls: TLSFiles | None = None
        if any(url.startswith("https://") for url in conn.servers):
            t = conn.tls
            self.tls = TLSFiles(t.verify, t.ca_file, t.cert_file, t.key_file,
                                f"clickhouse {conn.servers[0]}: tls")
        self.on_tls_reload: Callable[[], None] | None = None
        self._probed: dict[str, tuple[float, lf.LinkFailure | None]] = {}

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
                "send_receive_timeout": self.conn.insert_timeout,
                "compress": False,
                "autogenerate_session_id": False,
            }
            if secure and self.tls is not None:
                pool = urllib3.PoolManager(
                    ssl_context=self.tls.context,
                    **get_pool_manager_options(verify=self.tls.verify),
                )
                self._pools[url] = pool
                kwargs["pool_mgr"] = pool
            client = clickhouse_connect.get_client(**kwargs)
            self._clients[url] = client
        return client

    def _follow_rotation(self) -> None:
        """New TLS files on disk: the next connections (all of them) use them."""
        if self.tls is not None and self.tls.changed() and self.tls.refresh():
            for url in list(self._clients):
                self._drop_client(url)
            if self.on_tls_reload is not None:
                self.on_tls_reload()

    def _tls_failure(self, exc: BaseException) -> lf.LinkFailure | None:
        """The TLS reason of a failed insert; an ambiguous one (a TLS 1.3 server that
        refuses our certificate shows as an early EOF) is named by a handshake of our own
        (at most every PROBE_EVERY seconds per server)."""
        failure = lf.ssl_failure(exc)
        if failure is None or failure.reason != lf.TLS_HANDSHAKE or self.tls is None:
            return failure
        parsed = urlsplit(self.server)
        now = time.monotonic()
        cached = self._probed.get(self.server)
        if cached is None or now - cached[0] >= PROBE_EVERY:
            found = lf.probe(parsed.hostname or "", parsed.port or 8443, self.tls.context)
            cached = self._probed[self.server] = (now, found)
        return cached[1] or failure

    async def write(self, job: EncodedJob) -> InsertResult:
        return await trio.to_thread.run_sync(self.insert, job, abandon_on_cancel=True)

    async def ping(self) -> None:
        await trio.to_thread.run_sync(self.ping_sync, abandon_on_cancel=True)

    async def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await trio.to_thread.run_sync(
            self.query_sync, sql, parameters, abandon_on_cancel=True
        )
        return rows

    def insert(self, job: EncodedJob) -> InsertResult:
        """Insert one encoded batch under its deduplication token (blocking).

        Each attempt gets a unique ``log_comment`` (also its ``query_id``), which finds it
        in ``system.query_log`` and its parts in ``system.part_log``.
        """
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

    def ping_sync(self) -> None:
        self._call(lambda client: client.command("SELECT 1"))

    def query_sync(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._call(
            lambda client: client.query(sql, parameters=parameters).result_rows
        )
        return rows

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        self._follow_rotation()
        try:
            return fn(self.client())
        except Exception as exc:
            tls_failure = self._tls_failure(exc)
            failure = classify(lf.LinkError(tls_failure) if tls_failure else exc)
            if failure.kind in FAILOVER_KINDS:
                self._drop_client()
                self._current = (self._current + 1) % len(self.conn.servers)
            if tls_failure is not None:
                raise lf.LinkError(tls_failure) from exc
            raise

    def _drop_client(self, url: str | None = None) -> None:
        url = url or self.server
        client = self._clients.pop(url, None)
        pool = self._pools.pop(url, None)
        try:
            if client is not None:
                client.close()
            if pool is not None:
                pool.clear()  # ours, not the client's: close its connections too
        except Exception:  # closing a broken client must not mask the real error
            log.debug("closing client failed", exc_info=True)

    def close(self) -> None:
        for url in list(self._clients):
            self._drop_client(url)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.close)


class TLSMetrics:
    """A destination's TLS files on its metrics: the client certificate's expiry and
    ``outlet_destination_tls_reloads_total`` (its live and replay writers follow the same
    files: a new set counts once)."""

    def __init__(self, destination: str, metrics: Metrics) -> None:
        self.destination = destination
        self.metrics = metrics
        self._in_use: object = None
        metrics.dest_tls_reloads.labels(destination)

    def follow(self, writer: Writer) -> None:
        """Publish ``writer``'s TLS files from now on (a writer without any: nothing); a
        replaceable one's, and those of the transports that replace it (reconfiguration)."""
        if isinstance(writer, ReplaceableWriter):
            writer.on_replace = self.follow
            writer = writer.transport
        if not isinstance(writer, ClickHouseWriter) or writer.tls is None:
            return
        files = writer.tls
        files.where = f"destination {self.destination}: tls"
        self._in_use = files.signature
        track_expiry(self.metrics.tls_client_cert_expiry, files)
        writer.on_tls_reload = lambda: self._reloaded(files)

    def _reloaded(self, files: TLSFiles) -> None:
        track_expiry(self.metrics.tls_client_cert_expiry, files)
        if files.signature != self._in_use:
            self._in_use = files.signature
            self.metrics.dest_tls_reloads.labels(self.destination).inc()


#: The connection one user of a destination's connection gets from the destination's own.
ConnectionFor = Callable[[ConnectionConfig], ConnectionConfig]


def probe_connection(conn: ConnectionConfig) -> ConnectionConfig:
    """The circuit's probes (``SELECT 1``): bounded by dial-timeout, not insert-timeout."""
    return dataclasses.replace(conn, insert_timeout=conn.dial_timeout)


class ReplaceableWriter:
    """A Writer whose transport can be replaced between two calls (live reconfiguration:
    new credentials, TLS files, servers). ``replace`` takes effect at the next call; the
    old writer is closed then, never while one of its calls runs (one user each: a
    destination's loop, its probes, its audit, or its spool replay). ``connection`` maps
    the destination's connection to this user's (the probes' shorter timeout)."""

    def __init__(self, writer: Writer, connection: ConnectionFor | None = None) -> None:
        self._current = writer
        self._next: Writer | None = None
        self.connection: ConnectionFor = connection or _same
        self.on_replace: Callable[[Writer], None] | None = None  # TLSMetrics follows it

    @classmethod
    def of(cls, make: Callable[[ConnectionConfig], Writer], conn: ConnectionConfig,
           connection: ConnectionFor | None = None) -> ReplaceableWriter:
        """A writer made by ``make`` for this user's view of ``conn``."""
        connection = connection or _same
        return cls(make(connection(conn)), connection)

    @property
    def server(self) -> str:
        return self.transport.server

    @property
    def transport(self) -> Writer:
        """The writer the next call uses."""
        return self._next or self._current

    async def replace(self, writer: Writer) -> None:
        pending, self._next = self._next, writer
        if self.on_replace is not None:
            self.on_replace(writer)
        if pending is not None:  # replaced again before it was used
            await pending.aclose()

    async def _use(self) -> Writer:
        if self._next is not None:
            old, self._current, self._next = self._current, self._next, None
            await old.aclose()
        return self._current

    async def write(self, job: EncodedJob) -> InsertResult:
        return await (await self._use()).write(job)

    async def ping(self) -> None:
        await (await self._use()).ping()

    async def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        return await (await self._use()).query(sql, parameters)

    def redact(self, text: str) -> str:
        """Both transports' secrets (an error of the old one may still be reported)."""
        text = self._current.redact(text)
        return self._next.redact(text) if self._next is not None else text

    async def aclose(self) -> None:
        try:
            if self._next is not None:
                await self._next.aclose()
        finally:
            await self._current.aclose()


def _same(conn: ConnectionConfig) -> ConnectionConfig:
    return conn
