"""Late resends of batches that may be stored already (issue 12, item 4), in-process.

A fake ClickHouse table that forgets tokens (its deduplication window passed) and keeps a
query log, as a server does: an insert whose response was lost may have stored the batch,
and once the table forgot its token only the log can tell. The destination looks such a
batch up before it sends it again, live or from the spool; the real server's log is used
by tests/outlet/test_dualwrite.py::test_dedup_check_reads_the_real_query_log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from outlet.batch import EncodedJob
from outlet.config import (
    BatchConfig,
    CircuitBreakerConfig,
    ConnectionConfig,
    DedupCheckConfig,
    DestinationConfig,
    SpoolConfig,
)
from outlet.dedup_check import LOG_DELAY, REFRESH, DedupCheck, Outcome, token_prefix
from outlet.destination import Destination
from outlet.fallback import SpoolLane
from outlet.metrics import Metrics
from outlet.spool import Spool
from outlet.writer import InsertResult
from tests.outlet.fakes import inline

NOW = 1_800_000_000.0  # the wall clock (Unix seconds) the tests start at
CUT = ("Error ('Connection aborted.', RemoteDisconnected('Remote end closed connection "
       "without response')) executing HTTP request attempt 1 (http://central:8123)")


@dataclass
class Wall:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class LoggedServer:
    """A table with a deduplication window that forgets, and the server's query log."""

    wall: Wall
    forgets: bool = False  # the window passed: a token is forgotten once stored
    cut_after_insert: int = 0  # that many next inserts store, then lose their response
    refuse: bool = False  # connections refused (nothing reaches the table)
    down_after_cut: bool = False  # the cut was the link going down: refuse from then on
    log_enabled: bool = True
    access_denied: bool = False
    rows: int = 0
    tokens: set[str] = field(default_factory=set)
    inserts: list[str] = field(default_factory=list)  # tokens, per insert that stored rows
    finished: list[tuple[float, str]] = field(default_factory=list)  # query log
    log_start: float = NOW - 86_400.0
    queries: list[str] = field(default_factory=list)

    def insert(self, job: EncodedJob) -> InsertResult:
        if self.refuse:
            raise ConnectionRefusedError("Connection refused")
        if job.token not in self.tokens:
            self.rows += job.rows
            self.inserts.append(job.token)
            if not self.forgets:
                self.tokens.add(job.token)
        if self.log_enabled:
            self.finished.append((self.wall.now, job.token))
        if self.cut_after_insert:
            self.cut_after_insert -= 1
            self.refuse = self.down_after_cut
            raise Exception(CUT)
        return InsertResult(f"c{len(self.finished)}", job.rows)

    def query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if self.refuse:
            raise ConnectionRefusedError("Connection refused")
        self.queries.append(sql)
        if self.access_denied:
            raise Exception("Code: 497. DB::Exception: outlet: Not enough privileges. "
                            "(ACCESS_DENIED)")
        if "system.part_log" in sql:  # the deduplication audit: nothing to say here
            return []
        if "FROM system.one" in sql or "system.one)" in sql:
            return [("ch1",)]
        if "min(event_time)" in sql:
            return [("ch1", int(self.log_start))] if self.log_enabled and self.finished else []
        assert "insert_deduplication_token" in sql
        return [(t,) for at, t in self.finished
                if at >= params["since"] and t.startswith(params["prefix"])]


class Writer:
    def __init__(self, server: LoggedServer) -> None:
        self._server = server
        self.server = "http://central:8123"

    async def write(self, job: EncodedJob) -> InsertResult:
        await trio.lowlevel.checkpoint()
        return self._server.insert(job)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        await trio.lowlevel.checkpoint()
        return self._server.query(sql, parameters)

    def redact(self, text: str) -> str:
        return text

    async def aclose(self) -> None:
        pass


def config(tmp_path: Path, *, primary: bool = False, when_unknown: str = "replay",
           after: float = 60.0) -> DestinationConfig:
    return DestinationConfig(
        name="primary" if primary else "central",
        primary=primary,
        connection=ConnectionConfig(
            servers=("http://central:8123",), max_retries=0 if primary else 2,
            retry_initial_backoff=0.1, retry_max_backoff=0.2, dial_timeout=1.0,
            dedup_check=DedupCheckConfig(after=after, when_unknown=when_unknown),
        ),
        batch=BatchConfig(),
        queue_size=4,
        spool=SpoolConfig(enable=not primary, path=str(tmp_path / "spool")),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=5, probe_interval=0.5,
                                             probe_max_interval=2.0),
    )


def job(seq: int, sealed_ago: float = 3600.0, repeat: bool = False) -> EncodedJob:
    return EncodedJob(seq=seq, token=f"v2:c/flows/0:{seq}00-{seq}99", native=b"\x01" * 10,
                      rows=100, ranges={0: (seq * 100, seq * 100 + 99)},
                      sealed_at=NOW - sealed_ago, repeat=repeat)


@dataclass
class Harness:
    server: LoggedServer
    dest: Destination
    spool: Spool | None
    metrics: Metrics
    settled: list[tuple[int, bool]]

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, {"destination": self.dest.name,
                                                          **labels})
        return float(v or 0.0)

    def checks(self, outcome: str) -> float:
        return self.value("outlet_destination_dedup_checks_total", outcome=outcome)


def harness(cfg: DestinationConfig, server: LoggedServer | None = None) -> Harness:
    wall = server.wall if server is not None else Wall()
    server = server or LoggedServer(wall)
    metrics = Metrics()
    settled: list[tuple[int, bool]] = []

    def settle(j: EncodedJob, name: str, stored: bool) -> None:
        settled.append((j.seq, stored))

    spool: Spool | None = None
    lane: Any
    if cfg.spool.enable:
        spool = Spool(cfg.spool, cfg.name, clock=wall)
        lane = SpoolLane(cfg, metrics, spool, Writer(server), settle, inline)
    else:
        from outlet.fallback import GiveUp
        lane = GiveUp(cfg.name, metrics, settle)
    d = Destination(cfg, metrics, Writer(server), lane, settle, probe=Writer(server),
                    audit_writer=Writer(server), check_writer=Writer(server), wall_clock=wall)
    return Harness(server, d, spool, metrics, settled)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def deliver(h: Harness, *jobs: EncodedJob, settled: int | None = None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.dest.run)
        for j in jobs:
            await h.dest.submit(j)
        await wait_for(lambda: len(h.settled) == (settled or len(jobs)))
        if h.spool is not None:
            await wait_for(lambda: h.spool is not None and h.spool.batches == 0)
        h.dest.close_queue()


async def test_a_lost_response_is_looked_up_before_the_retry(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """The insert stored the batch but its response was cut; the table forgot the token
    (its window passed): the retry would store it twice. The log says it is stored."""
    h = harness(config(tmp_path, primary=True))
    h.server.forgets, h.server.cut_after_insert = True, 1
    await deliver(h, job(1))
    assert h.settled == [(1, True)]
    assert (h.server.rows, h.server.inserts) == (100, [job(1).token]), "stored once"
    assert h.checks("stored") == 1 and h.checks("absent") == 0


async def test_no_lookup_for_a_fresh_batch_or_a_refused_connection(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """A refused connection stored nothing: its retry needs no lookup, nor does a first
    attempt, however old the seal; the retry after it stores the batch."""
    h = harness(config(tmp_path, primary=True))
    h.server.refuse = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.dest.run)
        await h.dest.submit(job(1))
        await trio.sleep(1)
        h.server.refuse = False
        await wait_for(lambda: len(h.settled) == 1)
        h.dest.close_queue()
    assert h.server.rows == 100 and h.server.queries == []
    assert sum(h.checks(o) for o in ("stored", "absent", "unknown_replayed")) == 0


async def test_a_recent_batch_relies_on_the_table(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """Sealed 10 s ago (dedup-check.after is 60 s): the table still knows the token."""
    h = harness(config(tmp_path, primary=True))
    h.server.cut_after_insert = 1
    await deliver(h, job(1, sealed_ago=10))
    assert h.server.rows == 100 and len(h.server.finished) == 2  # the retry was dropped
    assert not [q for q in h.server.queries if "query_log" in q]


async def test_an_ambiguous_spooled_batch_is_not_replayed_once_stored(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """The first attempt stored it and lost the response as the link went down; the
    retries are refused, the batch is spooled (AMBIGUOUS) and replayed after the window:
    the replay finds it in the log and only acknowledges the record."""
    h = harness(config(tmp_path))
    h.server.forgets, h.server.cut_after_insert, h.server.down_after_cut = True, 1, True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.dest.run)
        await h.dest.submit(job(1))
        await wait_for(lambda: h.spool is not None and h.spool.batches == 1)
        h.server.refuse = False
        await wait_for(lambda: h.spool is not None and h.spool.batches == 0)
        h.dest.close_queue()
    assert h.settled == [(1, False)]  # handed to the spool
    assert h.server.inserts == [job(1).token], "stored once, not replayed"
    assert h.checks("stored") == 1
    assert h.value("outlet_spool_replayed_batches_total") == 0
    assert h.value("outlet_spool_appended_batches_total", reason="retries_exceeded") == 1


async def test_an_unambiguous_spooled_batch_is_replayed_without_lookup(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    h = harness(config(tmp_path))
    h.server.refuse = True  # nothing reached the table: spooled without the flag
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.dest.run)
        await h.dest.submit(job(1))
        await wait_for(lambda: h.spool is not None and h.spool.batches == 1)
        h.server.refuse = False
        await wait_for(lambda: h.spool is not None and h.spool.batches == 0)
        h.dest.close_queue()
    assert h.server.rows == 100 and not [q for q in h.server.queries if "query_log" in q]
    assert h.value("outlet_spool_replayed_batches_total") == 1


@pytest.mark.parametrize(("when_unknown", "rows", "outcome"),
                         [("replay", 200, "unknown_replayed"), ("skip", 100, "unknown_skipped")])
async def test_when_the_log_cannot_tell(
    tmp_path: Path, clock: trio.testing.MockClock, when_unknown: str, rows: int, outcome: str
) -> None:
    """No query log: `replay` sends the batch again (a duplicate here), `skip` gives it up
    (counted as unverified)."""
    h = harness(config(tmp_path, primary=True, when_unknown=when_unknown))
    h.server.forgets, h.server.cut_after_insert, h.server.log_enabled = True, 1, False
    await deliver(h, job(1))
    assert h.server.rows == rows
    assert h.checks(outcome) == 1
    lost = h.value("outlet_destination_retries_exceeded_flows_total", reason="unverified")
    assert lost == (100 if when_unknown == "skip" else 0)
    assert h.settled == [(1, when_unknown == "replay")]


async def test_no_access_to_the_log_is_unknown_and_a_dead_server_is_a_failed_attempt(
    tmp_path: Path,
) -> None:
    wall = Wall()
    server = LoggedServer(wall, access_denied=True)
    metrics = Metrics()
    check = DedupCheck("central", DedupCheckConfig(), Writer(server).query, metrics, clock=wall)
    assert await check.check("v2:c/flows/0:0-9", NOW - 3600) is Outcome.UNKNOWN
    server.access_denied, server.refuse = False, True
    with pytest.raises(ConnectionRefusedError):
        await check.check("v2:c/flows/0:0-9", NOW - 3600)


async def test_one_lookup_serves_a_whole_replay(clock: trio.testing.MockClock) -> None:
    """Thousands of spooled batches: a query every REFRESH seconds, not one per batch;
    with `cluster` every replica's log is read."""
    wall = Wall()
    server = LoggedServer(wall)
    server.finished = [(NOW - 3000 + i, f"v2:c/flows/0:{i}-{i}") for i in range(0, 1000, 2)]
    check = DedupCheck("central", DedupCheckConfig(cluster="main"), Writer(server).query,
                       Metrics(), clock=wall)
    found = [await check.check(f"v2:c/flows/0:{i}-{i}", NOW - 3000 + i) for i in range(1000)]
    assert found == [Outcome.STORED if i % 2 == 0 else Outcome.ABSENT for i in range(1000)]
    assert len(server.queries) == 3, server.queries  # hosts, log reach, tokens
    assert all("clusterAllReplicas('main', system." in q for q in server.queries)
    wall.now += REFRESH
    await check.check("v2:c/flows/0:0-0", NOW - 3000)
    assert len(server.queries) == 4  # the tokens again; the reach is known for an hour
    assert token_prefix("v2:c/flows/0:0-0") == "v2:c/flows/"


async def test_a_log_rotated_since_the_seal_cannot_tell(clock: trio.testing.MockClock) -> None:
    wall = Wall()
    server = LoggedServer(wall, log_start=NOW - 600)
    server.finished = [(NOW - 300, "v2:c/flows/0:0-9")]
    check = DedupCheck("central", DedupCheckConfig(), Writer(server).query, Metrics(),
                       clock=wall)
    assert await check.check("v2:c/flows/0:0-9", NOW - 3600) is Outcome.UNKNOWN
    assert await check.check("v2:c/flows/0:0-9", NOW - 400) is Outcome.STORED


async def test_an_answer_from_before_the_attempt_is_not_reused(
    clock: trio.testing.MockClock,
) -> None:
    """A lookup made for one batch must not clear another whose ambiguous attempt ended
    after it: that attempt was not in the log yet. The check waits until the attempt can
    be in the log (LOG_DELAY) and asks again."""
    wall = Wall()
    server = LoggedServer(wall, finished=[(NOW - 5000, "v2:c/flows/1:0-9")])
    check = DedupCheck("central", DedupCheckConfig(), Writer(server).query, Metrics(),
                       clock=wall)
    assert await check.check("v2:c/flows/0:0-9", NOW - 3000, NOW - 100) is Outcome.ABSENT
    server.finished.append((NOW, "v2:c/flows/0:10-19"))  # stored, its response lost now
    before = trio.current_time()
    assert await check.check("v2:c/flows/0:10-19", NOW - 2990, NOW) is Outcome.STORED
    assert trio.current_time() - before >= LOG_DELAY  # waited for the log's flush
