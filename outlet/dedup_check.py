"""Before sending a batch again long after it was sealed: is it in the table already?

ClickHouse drops an insert whose ``insert_deduplication_token`` it still remembers, but it
forgets: a plain MergeTree keeps the last ``non_replicated_deduplication_window`` tokens
(10,000 inserts: minutes on a central server that many datacenters write to), a Replicated
table those of the last ``replicated_deduplication_window_seconds`` (3,600 s). A batch that
may be stored already and is sent again after that is stored twice. Which batches may be
stored already: one whose earlier attempt had an ambiguous outcome (outlet/retry.py), a
rebuild (its first owner may have inserted it before it crashed or lost the partition), a
spool replay that is not known to have been this process's alone (docs/spool.md), and any
batch sent long after its seal (a process paused past its session: the partition's next
owner may have rebuilt and stored it meanwhile).

``DedupCheck`` looks such a batch up, once it was sealed more than ``dedup-check.after``
ago, in the server's own log of finished queries: an insert that carried its token and
reached ``QueryFinish`` stored it (or was itself deduplicated against an earlier one that
did). Outcomes:

- ``stored``: not sent; settled as stored;
- ``absent``: sent;
- ``unknown``: the lookup cannot tell (no access to ``system.query_log``, logging disabled,
  the log rotated since the batch was sealed): ``dedup-check.when-unknown`` decides,
  ``replay`` (risk a duplicate) or ``skip`` (risk a loss, counted as given up with reason
  ``unverified``).

Each outcome counts in ``outlet_destination_dedup_checks_total{destination, outcome}``
(``stored``, ``absent``, ``unknown_replayed``, ``unknown_skipped``). A lookup that fails
because the server cannot be reached is an attempt that failed: retried like an insert.

The log is written in the background (every 7.5 s by default): a lookup is only
meaningful ``LOG_DELAY`` seconds after the batch's last attempt that may have stored it
(``attempted_at``), so ``check`` waits until then, and an answer cached before then is not
used for that batch.

Cost: one query returns every token of this writer's batches (the token's prefix: cluster
identity and topic) that finished since the oldest batch asked about; it is reused for
``REFRESH`` seconds (for batches last attempted before it was made), so a replay of
thousands of spooled batches costs a query every few seconds, not one per batch. Whether
the log reaches back far enough is asked once an hour.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from outlet.config import DedupCheckConfig
from outlet.metrics import Metrics
from outlet.retry import PERMANENT_CODES, classify

log = logging.getLogger(__name__)

REFRESH = 10.0  # seconds a lookup of finished tokens is reused for
LOG_DELAY = 8.5  # seconds for a finished query to reach system.query_log (7.5 s flushes)
COVERAGE_REFRESH = 3600.0  # seconds between two lookups of how far the log reaches back
SLACK = 60.0  # seconds before a seal time also searched (clocks of two machines)
OUTCOMES = ("stored", "absent", "unknown_replayed", "unknown_skipped")
LOG_EVERY = 300.0  # seconds between two "cannot tell" warnings

Query = Callable[[str, dict[str, Any]], Awaitable[Sequence[Sequence[Any]]]]

FINISHED_TOKENS_SQL = """
SELECT DISTINCT Settings['insert_deduplication_token']
FROM {log}
WHERE event_date >= toDate({{since:DateTime}}) AND event_time >= {{since:DateTime}}
  AND type = 'QueryFinish' AND query_kind = 'Insert'
  AND startsWith(Settings['insert_deduplication_token'], {{prefix:String}})
"""
# How far back each server's log reaches (the servers that answer, with or without rows).
LOG_REACH_SQL = """
SELECT hostName(), toUnixTimestamp(min(event_time)) FROM {log}
WHERE event_date <= toDate({{since:DateTime}}) GROUP BY hostName()
"""
HOSTS_SQL = "SELECT hostName() FROM {one}"


class Outcome(enum.Enum):
    STORED = "stored"
    ABSENT = "absent"
    UNKNOWN = "unknown"


class Verdict(enum.Enum):
    """What to do with a batch about to be sent (again): see DedupCheck.verify."""

    SEND = "send"
    STORED = "stored"  # settle it as stored, without an insert
    SKIP = "skip"  # give it up: cannot tell, and dedup-check.when-unknown is skip


def token_prefix(token: str) -> str:
    """The part of a token every batch of one writer and topic shares (outlet/tokens.py:
    everything before the ranges)."""
    return token.rsplit("/", 1)[0] + "/"


@dataclass
class _Finished:
    prefix: str
    since: float
    at: float
    tokens: set[str] = field(default_factory=set)


class DedupCheck:
    """One destination's lookups (see the module docstring)."""

    def __init__(
        self,
        destination: str,
        cfg: DedupCheckConfig,
        query: Query,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.destination = destination
        self.cfg = cfg
        self._query = query
        self.metrics = metrics
        self._clock = clock
        log_table = "system.query_log"
        one = "system.one"
        if cfg.cluster:
            log_table = f"clusterAllReplicas('{cfg.cluster}', system.query_log)"
            one = f"clusterAllReplicas('{cfg.cluster}', system.one)"
        self._finished_sql = FINISHED_TOKENS_SQL.format(log=log_table)
        self._reach_sql = LOG_REACH_SQL.format(log=log_table)
        self._hosts_sql = HOSTS_SQL.format(one=one)
        self._finished: _Finished | None = None
        self._reach: tuple[float, float] | None = None  # (logs reach back to, checked at)
        self._last_warning = -LOG_EVERY
        for outcome in OUTCOMES:
            metrics.dest_dedup_checks.labels(destination, outcome)

    def due(self, sealed_at: float, may_be_stored: bool = True) -> bool:
        """Whether a batch must be looked up before it is sent (again). A batch without a
        seal time (0: a batch of an older outlet's file ledger) is not looked up."""
        if self.cfg.after <= 0 or not may_be_stored or sealed_at <= 0:
            return False
        return self._clock() - sealed_at >= self.cfg.after

    async def verify(self, token: str, sealed_at: float, may_be_stored: bool,
                     attempted_at: float) -> Verdict:
        """Before an attempt: look the batch up if due, count the outcome, say what to do.
        `attempted_at`: Unix time of the batch's last attempt that may have stored it (or
        a later time). Raises when the server cannot be reached (a failed attempt: retry
        it)."""
        if not self.due(sealed_at, may_be_stored):
            return Verdict.SEND
        outcome = await self.check(token, sealed_at, attempted_at)
        if outcome is Outcome.STORED:
            self.count(outcome, replayed=False)
            log.info("destination %s: batch %s, sealed %.0f s ago, is stored already: not "
                     "sent again", self.destination, token, self._clock() - sealed_at)
            return Verdict.STORED
        if outcome is Outcome.UNKNOWN and self.skips_unknown:
            self.count(outcome, replayed=False)
            log.warning("destination %s: batch %s given up (cannot tell whether it is stored;"
                        " dedup-check.when-unknown is skip)", self.destination, token)
            return Verdict.SKIP
        self.count(outcome, replayed=True)
        return Verdict.SEND

    async def check(self, token: str, sealed_at: float, attempted_at: float = 0.0) -> Outcome:
        """Look the batch up, once its last attempt had time to reach the log; raises
        when the server cannot be reached (retry it)."""
        since = sealed_at - SLACK
        logged_by = attempted_at + LOG_DELAY
        wait = logged_by - self._clock()
        if wait > 0:
            await trio.sleep(wait)
        try:
            if not await self._log_reaches(since):
                return self._cannot_tell(token, "the query log does not reach back to its seal")
            finished = await self._finished_since(token_prefix(token), since, logged_by)
        except Exception as exc:
            failure = classify(exc)
            if failure.code in PERMANENT_CODES or failure.code == 497:  # access denied
                return self._cannot_tell(token, failure.message.splitlines()[0][:200])
            raise
        return Outcome.STORED if token in finished else Outcome.ABSENT

    def count(self, outcome: Outcome, replayed: bool) -> None:
        """Count what was done with a batch after its lookup."""
        label = outcome.value
        if outcome is Outcome.UNKNOWN:
            label = "unknown_replayed" if replayed else "unknown_skipped"
        self.metrics.dest_dedup_checks.labels(self.destination, label).inc()

    def now(self) -> float:
        """Unix time, as seal and attempt times are kept (injectable for tests)."""
        return self._clock()

    @property
    def skips_unknown(self) -> bool:
        return self.cfg.when_unknown == "skip"

    async def _finished_since(self, prefix: str, since: float, logged_by: float) -> set[str]:
        now = self._clock()
        cached = self._finished
        if (cached is not None and cached.prefix == prefix and cached.since <= since
                and now - cached.at < REFRESH and cached.at >= logged_by):
            return cached.tokens
        since = min(since, cached.since) if cached is not None and cached.prefix == prefix \
            and now - cached.at < COVERAGE_REFRESH else since
        rows = await self._query(self._finished_sql, {"since": int(since), "prefix": prefix})
        self._finished = _Finished(prefix, since, now, {str(r[0]) for r in rows})
        return self._finished.tokens

    async def _log_reaches(self, since: float) -> bool:
        """Whether every server's log holds queries from before `since` (it was not
        rotated past it). A positive answer holds for COVERAGE_REFRESH seconds."""
        now = self._clock()
        if (self._reach is not None and now - self._reach[1] < COVERAGE_REFRESH
                and self._reach[0] <= since):
            return True
        hosts = {str(r[0]) for r in await self._query(self._hosts_sql, {})}
        rows = await self._query(self._reach_sql, {"since": int(since)})
        reach = {str(r[0]): float(r[1]) for r in rows}
        if not hosts or any(reach.get(h, 0) <= 0 for h in hosts):
            return False
        oldest = max(reach[h] for h in hosts)
        if oldest <= since:
            self._reach = (oldest, now)
            return True
        return False

    def _cannot_tell(self, token: str, why: str) -> Outcome:
        now = self._clock()
        if now - self._last_warning >= LOG_EVERY:
            self._last_warning = now
            log.warning(
                "destination %s: cannot tell whether batch %s is stored already (%s); "
                "dedup-check.when-unknown is %s", self.destination, token, why,
                self.cfg.when_unknown,
            )
        return Outcome.UNKNOWN
