"""A destination's writer, probe and deduplication audit, in-process against a fake server.

The fake stands in for ClickHouse behind the ``Writer`` interface (inserts with tokens, a
deduplication log, the part and query logs the audit reads, a link that can be cut); the
spool is the real one (its disk calls inline), and Trio's mock clock makes the circuit
breaker's seconds pass instantly. The same behaviour is proven against the real stack by
the multi-datacenter chaos scenarios.
"""

from __future__ import annotations

import math
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
    DestinationConfig,
    SpoolConfig,
)
from outlet.destination import Destination
from outlet.fallback import SpoolLane
from outlet.metrics import Metrics
from outlet.spool import Spool
from outlet.writer import InsertResult
from tests.outlet.fakes import inline


@dataclass
class FakeServer:
    """One ClickHouse table with insert deduplication, and its logs."""

    up: bool = True
    tokens: set[str] = field(default_factory=set)
    rows: int = 0
    inserts: list[tuple[float, str]] = field(default_factory=list)  # (trio time, token)
    pings: list[float] = field(default_factory=list)
    log: dict[str, tuple[int, int]] = field(default_factory=dict)  # comment -> stored, dedup
    counter: int = 0

    @staticmethod
    def now() -> float:
        return trio.current_time()

    def insert(self, job: EncodedJob) -> InsertResult:
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        self.counter += 1
        comment = f"c{self.counter}"
        self.inserts.append((self.now(), job.token))
        if job.token in self.tokens:
            self.log[comment] = (0, job.rows)
        else:
            self.tokens.add(job.token)
            self.rows += job.rows
            self.log[comment] = (job.rows, 0)
        return InsertResult(comment, job.rows)  # like ClickHouse: rows sent, dedup or not

    def query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        assert "system.part_log" in sql
        return [(c, *self.log[c]) for c in params["comments"] if c in self.log]


class FakeWriter:
    """A Writer of the FakeServer (one per connection, as the pipeline makes them)."""

    def __init__(self, server: FakeServer) -> None:
        self._server = server
        self.server = "http://central:8123"

    async def write(self, job: EncodedJob) -> InsertResult:
        await trio.lowlevel.checkpoint()
        return self._server.insert(job)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()
        self._server.pings.append(self._server.now())
        if not self._server.up:
            raise ConnectionRefusedError("connection refused")

    async def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        await trio.lowlevel.checkpoint()
        return self._server.query(sql, parameters)

    def redact(self, text: str) -> str:
        return text

    async def aclose(self) -> None:
        pass


def destination_config(tmp_path: Path, *, primary: bool = False) -> DestinationConfig:
    return DestinationConfig(
        name="primary" if primary else "central",
        primary=primary,
        connection=ConnectionConfig(
            servers=("http://central:8123",), max_retries=0 if primary else 2,
            retry_initial_backoff=0.1, retry_max_backoff=0.2, dial_timeout=1.0,
        ),
        batch=BatchConfig(),
        queue_size=4,
        spool=SpoolConfig(enable=not primary, path=str(tmp_path / "spool")),
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=2, probe_interval=0.5, probe_max_interval=2.0
        ),
    )


def job(seq: int, token: str | None = None, repeat: bool = False) -> EncodedJob:
    return EncodedJob(seq=seq, token=token or f"v2:c/flows/0:{seq}00-{seq}99",
                      native=b"\x01" * 10, rows=100, ranges={0: (seq * 100, seq * 100 + 99)},
                      repeat=repeat)


def make_destination(
    cfg: DestinationConfig, server: FakeServer, metrics: Metrics,
    settled: list[tuple[int, bool]],
) -> tuple[Destination, Spool]:
    """As the pipeline builds an additional destination with a spool."""

    def settle(j: EncodedJob, name: str, stored: bool) -> None:
        settled.append((j.seq, stored))

    spool = Spool(cfg.spool, cfg.name)
    lane = SpoolLane(cfg, metrics, spool, FakeWriter(server), settle, inline)
    d = Destination(cfg, metrics, FakeWriter(server), lane, settle,
                    probe=FakeWriter(server), audit_writer=FakeWriter(server))
    return d, spool


@dataclass
class Harness:
    server: FakeServer
    dest: Destination
    spool: Spool
    metrics: Metrics
    settled: list[tuple[int, bool]]

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, {"destination": "central", **labels})
        return float(v or 0.0)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    server = FakeServer()
    settled: list[tuple[int, bool]] = []
    metrics = Metrics()
    d, spool = make_destination(destination_config(tmp_path), server, metrics, settled)
    return Harness(server, d, spool, metrics, settled)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """pytest-trio runs the test on this clock (no threads here: jump at once)."""
    return trio.testing.MockClock(autojump_threshold=0)


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_link_back_flows_again_within_the_probe_cap(
    harness: Harness, clock: trio.testing.MockClock
) -> None:
    server, d = harness.server, harness.dest
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.run)
        server.up = False
        for i in range(1, 4):  # fail, retry, circuit opens, the rest is spooled
            await d.submit(job(i))
        await wait_for(lambda: len(harness.settled) == 3)
        assert harness.settled == [(1, False), (2, False), (3, False)]
        assert harness.spool.batches == 3
        await trio.sleep(60)  # a minute-long outage: cheap probes, no batch
        probes_during_outage = len(server.pings)
        assert 28 <= probes_during_outage <= 33  # 0.5 s, 1 s, then every 2 s
        assert server.inserts == []
        link_back = trio.current_time()
        server.up = True
        await wait_for(lambda: bool(server.inserts))
        assert server.inserts[0][0] - link_back <= 2.5  # probe cap + one insert
        await wait_for(lambda: harness.spool.batches == 0)
        await d.submit(job(4))  # live traffic flows again
        await wait_for(lambda: server.rows == 400)
        assert len(server.tokens) == 4
        d.close_queue()
    assert harness.value("outlet_spool_replayed_batches_total") == 3


async def test_dead_destination_gets_no_batch_until_a_probe_answers(
    harness: Harness, clock: trio.testing.MockClock
) -> None:
    server, d = harness.server, harness.dest
    server.up = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.run)
        await d.submit(job(1))
        await wait_for(lambda: len(harness.settled) == 1)
        attempts = harness.value("outlet_destination_insert_errors_total", error="connect")
        for i in range(2, 30):  # live batches keep coming while the circuit is open
            await d.submit(job(i))
            await trio.sleep(1)
        assert harness.value("outlet_destination_insert_errors_total", error="connect") \
            == attempts  # no insert attempt while open: all spooled at once
        d.close_queue()


async def test_first_attempt_deduplicated_is_a_collision_and_a_repeat_is_not(
    harness: Harness, clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, d = harness.server, harness.dest
    server.tokens.add("v2:c/flows/0:100-199")  # another writer already sent this token
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.run)
        await d.submit(job(1))  # collides: deduplicated on its first attempt
        await d.submit(job(2))
        await d.submit(job(2, repeat=True))  # a ledger rebuild of batch 2: deduplicated
        await d.submit(job(3, repeat=True))  # a rebuild the server never had: stored
        await wait_for(lambda: d.audit.pending == 0 and len(harness.settled) == 4)
        d.close_queue()
    assert server.rows == 200
    assert harness.value("outlet_destination_deduplicated_batches_total", attempt="first") == 1
    assert harness.value("outlet_destination_deduplicated_flows_total", attempt="first") == 100
    assert harness.value("outlet_destination_deduplicated_batches_total", attempt="repeat") == 1
    assert harness.value("outlet_destination_deduplicated_flows_total", attempt="repeat") == 100
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("v2:c/flows/0:100-199" in w and "first attempt" in w for w in warnings)
    assert not any("0:200-299" in w for w in warnings)


async def test_unreadable_logs_count_as_unverified(
    harness: Harness, clock: trio.testing.MockClock
) -> None:
    server, d = harness.server, harness.dest
    server.query = lambda sql, params: []  # type: ignore[method-assign]  # logs disabled
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.run)
        await d.submit(job(1))
        await trio.sleep(100)
        assert d.audit.pending == 1  # still waiting for the logs
        await trio.sleep(30)  # past the audit's 120 s
        assert d.audit.pending == 0
        assert harness.value("outlet_destination_deduplication_unverified_batches_total") == 1
        d.close_queue()


def test_audit_waits_for_every_part_of_an_insert() -> None:
    """part_log rows of one insert can land in two flushes: count only complete inserts."""
    from outlet.dedup_audit import DedupAudit

    async def no_rows(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return []

    m = Metrics()
    audit = DedupAudit("central", "flows", "flows", no_rows, m, clock=lambda: 0.0)
    audit.note("c1", "tok", 100, "first")
    audit.account([("c1", 0, 40)])  # one of two parts flushed
    assert audit.pending == 1
    assert m.registry.get_sample_value("outlet_destination_deduplicated_flows_total",
                                       {"destination": "central", "attempt": "first"}) == 0
    audit.account([("c1", 60, 40)])  # partial dedup: one part stored, one dropped
    assert audit.pending == 0
    assert m.registry.get_sample_value("outlet_destination_deduplicated_flows_total",
                                       {"destination": "central", "attempt": "first"}) == 40
    assert not math.isnan(m.registry.get_sample_value(
        "outlet_destination_deduplicated_batches_total",
        {"destination": "central", "attempt": "first"}) or 0)


async def test_audit_keeps_waiting_while_the_server_is_unreachable(
    harness: Harness, clock: trio.testing.MockClock
) -> None:
    server, d = harness.server, harness.dest
    server.tokens.add(job(1).token)  # a collision the audit must still see, late
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.run)
        server.query = lambda sql, params: (_ for _ in ()).throw(  # type: ignore[method-assign]
            ConnectionRefusedError("link down"))
        await d.submit(job(1))
        await trio.sleep(300)  # longer than the audit timeout, but the logs were unreadable
        assert d.audit.pending == 1
        del server.query  # the link is back
        await trio.sleep(5)
        assert d.audit.pending == 0
        d.close_queue()
    assert harness.value("outlet_destination_deduplicated_batches_total", attempt="first") == 1
    assert harness.value("outlet_destination_deduplication_unverified_batches_total") == 0


async def test_spooled_batch_of_an_older_outlet_replays_under_its_stored_token(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """Spool records carry their token: a batch an outlet before token version 2 spooled
    is replayed with that (version-1) token, so a destination that already has it drops it."""
    cfg = destination_config(tmp_path)
    old = Spool(cfg.spool, cfg.name)
    assert old.append("flows/0:0-99", 100, b"\x01" * 10).accepted
    assert old.append("flows/0:100-199", 100, b"\x01" * 10).accepted
    old.close()
    server = FakeServer(tokens={"flows/0:0-99"})  # stored before the outage ended
    metrics = Metrics()
    d, spool = make_destination(cfg, server, metrics, [])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.run)
        await wait_for(lambda: spool.batches == 0 and d.audit.pending == 0)
        d.close_queue()
    assert [t for _, t in server.inserts] == ["flows/0:0-99", "flows/0:100-199"]
    assert server.rows == 100
    dedup = metrics.registry.get_sample_value(
        "outlet_destination_deduplicated_batches_total",
        {"destination": "central", "attempt": "repeat"})
    assert dedup == 1
