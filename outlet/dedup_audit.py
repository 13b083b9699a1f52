"""Which inserts a destination deduplicated: read back from the server's own logs.

Why not from the insert's response: ClickHouse counts ``written_rows`` (in
``X-ClickHouse-Summary``) as rows enter the insert pipeline, before the table's sink
drops a part whose deduplication token it already holds, so a deduplicated insert
answers exactly like a stored one (measured with the ClickHouse 26.9 engine:
``tests/teststack/test_chserver.py``; ClickHouse's maintainers say so in ClickHouse
issue 60423). The server's logs do tell: each insert attempt carries a unique
``log_comment`` (its ``system.query_log`` row links it to the query id), and every part
the insert produced has a ``NewPart`` row in ``system.part_log`` with its row count and
``error = 389`` ("The part was deduplicated") when the table dropped it as a duplicate.

One audit per destination: the writer notes each successful insert; about every
``interval`` seconds one query resolves every pending insert whose parts add up to the
rows sent (the logs are flushed every 7.5 s by default, so counts lag by ~10 s) and
counts the deduplicated flows:

- ``attempt="first"``: the first attempt of a freshly sealed batch was deduplicated. The
  table already held that token: another writer sent it (a token collision between
  writers, or a foreign writer). Logged as a warning with the token;
- ``attempt="repeat"``: a retry after a failed or ambiguous attempt, a ledger rebuild or
  a spool replay was deduplicated: that is the exactly-once mechanism working (debug).

An insert whose parts do not show up within ``timeout`` while the logs are readable
(logs disabled, no SELECT grant on them) is counted as unverified. The audit is
observability only: delivery never waits for it, and a restart forgets what was pending.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from outlet.metrics import Metrics
from outlet.outage import short_cause
from outlet.retry import classify

log = logging.getLogger(__name__)

ATTEMPTS = ("first", "repeat")
MAX_PENDING = 10_000  # inserts awaiting resolution; older ones count as unverified

# Per insert (by its log_comment): rows of the parts it stored, rows of the parts the
# table dropped as duplicates (part_log.error 389).
AUDIT_SQL = """
SELECT q.comment, sumIf(p.rows, p.error = 0), sumIf(p.rows, p.error = 389)
FROM system.part_log AS p
INNER JOIN (
    SELECT query_id, any(log_comment) AS comment FROM system.query_log
    WHERE event_date >= yesterday() AND event_time >= now() - INTERVAL 30 MINUTE
      AND type = 'QueryFinish' AND query_kind = 'Insert'
      AND log_comment IN {comments:Array(String)}
    GROUP BY query_id
) AS q ON p.query_id = q.query_id
WHERE p.event_date >= yesterday() AND p.event_time >= now() - INTERVAL 30 MINUTE
  AND p.event_type = 'NewPart' AND p.database = {database:String} AND p.table = {table:String}
GROUP BY q.comment
"""

# (sql, parameters) -> rows (Writer.query).
QueryFn = Callable[[str, dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]


@dataclass(frozen=True)
class SentInsert:
    """A successful insert attempt, waiting for the server's logs to say what it stored."""

    comment: str  # the attempt's log_comment (unique)
    token: str
    rows: int
    attempt: str  # "first" | "repeat"
    sent_at: float


class DedupAudit:
    """Counts what one destination deduplicated (see the module docstring)."""

    def __init__(
        self,
        destination: str,
        database: str,
        table: str,
        query: QueryFn,
        metrics: Metrics,
        *,
        interval: float = 2.0,
        timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        redact: Callable[[str], str] = str,
        reachable: Callable[[], bool] = lambda: True,
    ) -> None:
        self.destination = destination
        self.params = {"database": database, "table": table}
        self._query = query
        self.metrics = metrics
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._redact = redact
        self._reachable = reachable  # False while the destination's circuit is open
        self._pending: OrderedDict[str, SentInsert] = OrderedDict()
        self._noted = trio.Event()
        self._last_error_log = -float("inf")
        for attempt in ATTEMPTS:
            metrics.dest_dedup_batches.labels(destination, attempt)
            metrics.dest_dedup_flows.labels(destination, attempt)
        metrics.dest_dedup_unverified.labels(destination)
        metrics.dest_dedup_pending.labels(destination).set_function(lambda: len(self._pending))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def retarget(self, database: str) -> None:
        """The destination moved (new servers or database, live reconfiguration): the
        inserts still pending were made on the old one, whose logs the audit no longer
        reads: counted unverified now (not after ``timeout``, with a misleading warning)."""
        self.params["database"] = database
        if self._pending:
            self.metrics.dest_dedup_unverified.labels(self.destination).inc(len(self._pending))
            log.info("destination %s moved: %d insert(s) made before are not checked for "
                     "deduplication (counted unverified)", self.destination, len(self._pending))
            self._pending.clear()

    def note(self, comment: str, token: str, rows: int, attempt: str) -> None:
        """A successful insert (Trio thread; never blocks)."""
        self._pending[comment] = SentInsert(comment, token, rows, attempt, self._clock())
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
            self.metrics.dest_dedup_unverified.labels(self.destination).inc()
        self._noted.set()

    async def run(self) -> None:
        """Resolve pending inserts about every `interval` seconds, until cancelled."""
        while True:
            if not self._pending:
                await self._noted.wait()
                self._noted = trio.Event()
            await trio.sleep(self.interval)
            if not self._reachable():
                continue
            comments = list(self._pending)
            try:
                rows = await self._query(AUDIT_SQL, {**self.params, "comments": comments})
            except Exception as exc:  # the destination is down, or its logs unreadable
                self._log_query_error(exc)
                continue
            self.account(rows)

    def account(self, rows: list[tuple[Any, ...]]) -> None:
        """Count resolved inserts from the audit query's rows; expire stale ones.

        An insert is resolved once its parts add up to the rows it sent: part_log rows of
        one insert can land in two flushes, and a half-flushed insert must not be counted.
        """
        for comment, stored, deduplicated in rows:
            sent = self._pending.get(str(comment))
            if sent is None or int(stored) + int(deduplicated) != sent.rows:
                continue
            del self._pending[sent.comment]
            if int(deduplicated):
                self._count(sent, int(deduplicated))
        now = self._clock()
        stale = [s for s in self._pending.values() if now - s.sent_at > self.timeout]
        for s in stale:
            del self._pending[s.comment]
        if stale:
            self.metrics.dest_dedup_unverified.labels(self.destination).inc(len(stale))
            log.warning(
                "destination %s: %d insert(s) could not be checked for deduplication: "
                "their parts are not in system.part_log/system.query_log after %.0f s "
                "(logs disabled, or no SELECT grant on them? see docs/dual-write.md)",
                self.destination, len(stale), self.timeout,
            )

    def _count(self, sent: SentInsert, flows: int) -> None:
        m = self.metrics
        m.dest_dedup_batches.labels(self.destination, sent.attempt).inc()
        m.dest_dedup_flows.labels(self.destination, sent.attempt).inc(flows)
        if sent.attempt == "first":
            log.warning(
                "destination %s: the server deduplicated %d of %d flows of batch %s on its "
                "first attempt: another writer already sent this token (a token collision "
                "or a foreign writer: check kafka.cluster-identity, docs/dual-write.md)",
                self.destination, flows, sent.rows, sent.token,
            )
        else:
            log.debug(
                "destination %s: repeat of batch %s deduplicated (%d of %d flows), as "
                "intended", self.destination, sent.token, flows, sent.rows,
            )

    def _log_query_error(self, exc: Exception) -> None:
        now = self._clock()
        if now - self._last_error_log >= 300:
            self._last_error_log = now
            failure = classify(exc)  # one short line, as the destination logs its inserts
            log.warning(
                "destination %s: deduplication audit query failed (%s, will retry): %s",
                self.destination, failure.kind, short_cause(self._redact(failure.message)),
            )
