"""Issue 13 in the multi-datacenter topology (issue 10's stack), real processes throughout.

One orchestrator per site (teststack.orchestrator_proc.MultiDCSites, docs/deployment.md):
site a's and site b's each manage their datacenter's local ClickHouse (15 days of raw
flows), the central site's manages central (30 days). Each datacenter's outlet is started
from its site's orchestrator URL, writing to its local server only; under load, central
is rolled out live through both site orchestrators (their files changed, SIGHUP). Every
local server ends with every flow of its datacenter once, central with exactly the flows
each outlet reports written there (from both datacenters, none twice), every resolution
table equal to its raw table's sums, and each server with its own site's retention.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowgen.generator import FlowGenerator, GeneratorConfig, unique_rows_sql_filter
from flowgen.producer import produce
from outlet import metrics as names
from teststack import stack as stk
from teststack import verify
from teststack.orchestrator_proc import MultiDCSites, RemoteOutletProcess, resolution_mismatches

pytestmark = pytest.mark.stack

FLOWS, RATE = 40_000, 2_000  # per datacenter: 20 s of load


def until(cond: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s:\n{log()}"
        time.sleep(0.2)


def applied(outlet: RemoteOutletProcess) -> float:
    return outlet.metric(names.CONFIG_RELOADS_TOTAL, outcome="applied")


@pytest.fixture
def sites(multi_dc_stack: stk.MultiDCEndpoints, tmp_path: Path) -> Iterator[MultiDCSites]:
    stamp = f"orch_mdc_{int(time.time())}"
    s = MultiDCSites(multi_dc_stack, tmp_path, database=stamp, topic=stamp)
    for site in s.sites:
        verify.query(s.server(site), f"DROP DATABASE IF EXISTS {s.database}")
    yield s
    for outlet in s.outlets.values():
        outlet.kill()
    for o in s.orchestrators.values():
        o.stop()


def test_orchestrator_per_site_own_retention_and_central_rolled_out_live(
    sites: MultiDCSites,
) -> None:
    s, mep = sites, sites.mep
    s.start_orchestrators()
    s.start_outlets()
    gens = {dc: FlowGenerator(GeneratorConfig(seed=31 + i, run_id=30 + i, unique=True))
            for i, dc in enumerate(mep.datacenters)}  # fmt: skip
    producers = [threading.Thread(target=produce, daemon=True, args=(
        ep.kafka.bootstrap, s.topic, gens[dc].records(FLOWS), RATE))
        for dc, ep in mep.datacenters.items()]  # fmt: skip
    for t in producers:
        t.start()

    def local_rows(dc: str) -> int:
        return verify.count_rows(s.server(dc), s.database)

    until(lambda: all(local_rows(dc) >= 8_000 for dc in mep.datacenters), 90, "local rows",
          s.log_tails)  # fmt: skip
    assert s.roll_out_central() == {dc: "applied" for dc in mep.datacenters}
    until(lambda: all(applied(o) == 1 for o in s.outlets.values()), 30,
          "the outlets applying central", s.log_tails)
    for t in producers:
        t.join()

    for dc in mep.datacenters:
        assert verify.wait_rows(s.server(dc), FLOWS, 120, s.database) == FLOWS
        stats = verify.table_stats(s.server(dc), s.database)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (
            FLOWS, 0, gens[dc].expected_bytes_sum(FLOWS)), dc

    def written() -> dict[str, float]:
        return {dc: o.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="central")
                for dc, o in s.outlets.items()}  # fmt: skip

    central = mep.central
    stored = verify.wait_stable(central, quiet=5, database=s.database)
    until(lambda: sum(written().values()) == stored, 30,
          f"the outlets reporting the {stored} flows on central as written", s.log_tails)
    per_dc = written()
    assert verify.table_stats(central, s.database).duplicates == 0
    for i, dc in enumerate(mep.datacenters):
        mine = verify.table_stats(central, s.database, unique_rows_sql_filter(30 + i))
        assert mine.rows == mine.distinct_flows == per_dc[dc], dc
        # only the batches sealed once central was configured: not the first 8,000 flows
        assert 5_000 <= per_dc[dc] <= FLOWS - 8_000, (dc, per_dc[dc])
        assert s.outlets[dc].metric(names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL,
                                    destination="central") == 0  # fmt: skip
        assert s.outlets[dc].metric(names.CONFIG_RELOADS_TOTAL, outcome="refused") == 0

    # Exactly-once through the materialized views, on every server.
    for site in s.sites:
        assert resolution_mismatches(s.server(site), s.database) == {
            "flows_1m0s": [], "flows_5m0s": [], "flows_1h0m0s": []}, site

    assert [o.stop() for o in s.outlets.values()] == [0, 0]
    # Each site's retention, as its orchestrator configured it, and acting.
    for site in s.sites:
        days = 30 if site == "central" else 15
        assert s.raw_ttl_days(site) == days, site
        ch = s.server(site)
        verify.query(ch, f"INSERT INTO {s.database}.flows (TimeReceived, Bytes, Packets)"
                         " SELECT now() - toIntervalDay(20), 1, 1 FROM numbers(10)")
        verify.query(ch, f"OPTIMIZE TABLE {s.database}.flows FINAL")
        old = int(verify.query(ch, f"SELECT count() FROM {s.database}.flows"
                                   " WHERE TimeReceived < now() - INTERVAL 10 DAY"))
        assert old == (10 if site == "central" else 0), site
