"""Issue 13 in the multi-datacenter topology (issue 10's stack), real processes throughout.

One orchestrator per site: site a's and site b's each manage their datacenter's local
ClickHouse (15 days of raw flows), the central site's manages central (30 days). Each
datacenter's outlet is started from its site's orchestrator URL, writing to its local
server only; under load, central is rolled out live through both site orchestrators
(their files changed, SIGHUP), as docs/deployment.md describes. Every local server ends
with every flow of its datacenter once, central with exactly the flows each outlet
reports written there (from both datacenters, none twice), every resolution table equal
to its raw table's sums, and each server with its own site's retention.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowgen.generator import FlowGenerator, GeneratorConfig, unique_rows_sql_filter
from flowgen.producer import produce
from outlet import metrics as names
from teststack import stack as stk
from teststack import verify
from teststack.orchestrator_proc import (
    OrchestratorProcess,
    RemoteOutletProcess,
    resolution_mismatches,
    site_config,
)
from teststack.outlet_proc import free_port, outlet_config

pytestmark = pytest.mark.stack

LOCAL_PW, CENTRAL_PW = "LOCAL_CH_PASSWORD", "CENTRAL_CH_PASSWORD"
FLOWS, RATE = 40_000, 2_000  # per datacenter: 20 s of load
DAY = 86400


def resolutions(raw_days: int) -> list[dict[str, Any]]:
    """Akvorado's default resolutions, with the site's raw retention."""
    return [{"interval": 0, "ttl": f"{raw_days}d"}, {"interval": "1m", "ttl": "7d"},
            {"interval": "5m", "ttl": "90d"}, {"interval": "1h", "ttl": "360d"}]


def until(cond: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s:\n{log()}"
        time.sleep(0.2)


def applied(outlet: RemoteOutletProcess) -> float:
    return outlet.metric(names.CONFIG_RELOADS_TOTAL, outcome="applied")


def drop(ch: stk.ClickHouseEndpoints, database: str) -> None:
    verify.query(ch, f"DROP DATABASE IF EXISTS {database}")


def raw_ttl(ch: stk.ClickHouseEndpoints, database: str) -> str:
    return verify.query(ch, "SELECT engine_full FROM system.tables WHERE database ="
                            f" '{database}' AND name = 'flows'")  # fmt: skip


@pytest.fixture
def processes() -> Iterator[list[OrchestratorProcess | RemoteOutletProcess]]:
    started: list[OrchestratorProcess | RemoteOutletProcess] = []
    yield started
    for p in reversed(started):
        if isinstance(p, RemoteOutletProcess):
            p.kill()
        else:
            p.stop()


def test_orchestrator_per_site_own_retention_and_central_rolled_out_live(
    multi_dc_stack: stk.MultiDCEndpoints, tmp_path: Path,
    processes: list[OrchestratorProcess | RemoteOutletProcess],
) -> None:
    mep = multi_dc_stack
    stamp = int(time.time())
    database, topic = f"orch_mdc_{stamp}", f"orch_mdc_{stamp}"
    central = mep.central
    for ch in (central, *(ep.clickhouse["local"] for ep in mep.datacenters.values())):
        drop(ch, database)

    # The central site's orchestrator: central's schema, 30 days of raw flows, no outlets.
    central_o = OrchestratorProcess(
        tmp_path / "central", site_config(central, database, password_var=CENTRAL_PW,
                                          resolutions=resolutions(30)),
        name="orchestrator-central", env={CENTRAL_PW: central.password})  # fmt: skip
    processes.append(central_o)
    central_o.start()

    # Each datacenter's orchestrator: its local server's schema (15 days) and its outlet.
    sites: dict[str, tuple[OrchestratorProcess, dict[str, Any]]] = {}
    outlets: dict[str, RemoteOutletProcess] = {}
    for dc, ep in mep.datacenters.items():
        stk.ensure_topic(ep.kafka.bootstrap, topic, 2)
        local, http_port = ep.clickhouse["local"], free_port()
        entry = outlet_config(ep, state_path=str(tmp_path / dc / "state"), http_port=http_port,
                              destinations=("local",), topic=topic, database=database,
                              batch_size=2000, wait_time="500ms")  # fmt: skip
        entry["clickhousedb"]["password"] = f"${{{LOCAL_PW}}}"
        entry["kafka"] = {"consumer-group": f"g_{topic}_{dc}"}  # the rest is the site's
        cfg = site_config(local, database, password_var=LOCAL_PW, resolutions=resolutions(15),
                          shared_kafka={"brokers": [ep.kafka.bootstrap_proxied], "topic": topic},
                          outlets=[entry])  # fmt: skip
        o = OrchestratorProcess(tmp_path / dc, cfg, name=f"orchestrator-{dc}",
                                env={LOCAL_PW: local.password})  # fmt: skip
        processes.append(o)
        o.start()
        sites[dc] = (o, entry)
    for o in (central_o, *(o for o, _ in sites.values())):
        o.wait_ready()
    for dc, (o, entry) in sites.items():
        outlet = RemoteOutletProcess(
            tmp_path / dc, {"http": entry["http"]}, name=f"outlet-{dc}",
            env={LOCAL_PW: mep.datacenters[dc].clickhouse["local"].password,
                 CENTRAL_PW: central.password},
            source=f"{o.url}#0",
            extra_args=["--state-dir", str(tmp_path / dc / "state"),
                        "--config-refresh-interval", "1s", "--config-wait", "2s"])  # fmt: skip
        processes.append(outlet)
        outlet.start()
        outlets[dc] = outlet

    def log() -> str:
        return "\n".join(f"--- {dc}\n{o.log_tail()}" for dc, o in outlets.items())

    gens = {dc: FlowGenerator(GeneratorConfig(seed=31 + i, run_id=30 + i, unique=True))
            for i, dc in enumerate(mep.datacenters)}  # fmt: skip
    producers = [threading.Thread(target=produce, daemon=True, args=(
        ep.kafka.bootstrap, topic, gens[dc].records(FLOWS), RATE))
        for dc, ep in mep.datacenters.items()]  # fmt: skip
    for t in producers:
        t.start()

    def local_rows(dc: str) -> int:
        return verify.count_rows(mep.datacenters[dc].clickhouse["local"], database)

    until(lambda: all(local_rows(dc) >= 8_000 for dc in sites), 90, "local rows", log)
    # Roll central out live: one more destination in each site's outlet entry.
    for dc, (o, entry) in sites.items():
        view = mep.datacenters[dc].clickhouse["central"]  # through this datacenter's link
        entry["additional-clickhouses"] = [{"name": "central", "connection": {
            "servers": [view.proxied_url], "database": database, "username": view.username,
            "password": f"${{{CENTRAL_PW}}}", "max-retries": 3, "dial-timeout": "2s",
            "retry-initial-backoff": "100ms", "retry-max-backoff": "2s"}}]  # fmt: skip
        assert o.reload() == "applied"
    until(lambda: all(applied(o) == 1 for o in outlets.values()), 30,
          "the outlets applying central", log)
    for t in producers:
        t.join()

    for dc in sites:
        local = mep.datacenters[dc].clickhouse["local"]
        assert verify.wait_rows(local, FLOWS, 120, database) == FLOWS
        stats = verify.table_stats(local, database)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (
            FLOWS, 0, gens[dc].expected_bytes_sum(FLOWS)), dc
    def written() -> dict[str, float]:
        return {dc: o.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="central")
                for dc, o in outlets.items()}  # fmt: skip

    stored = verify.wait_stable(central, quiet=5, database=database)
    until(lambda: sum(written().values()) == stored, 30,
          f"the outlets reporting the {stored} flows on central as written", log)
    per_dc = written()
    assert verify.table_stats(central, database).duplicates == 0
    for i, dc in enumerate(sites):
        mine = verify.table_stats(central, database, unique_rows_sql_filter(30 + i))
        assert mine.rows == mine.distinct_flows == per_dc[dc], dc
        # only the batches sealed once central was configured: not the first 8,000 flows
        assert 5_000 <= per_dc[dc] <= FLOWS - 8_000, (dc, per_dc[dc])
        assert outlets[dc].metric(names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL,
                                  destination="central") == 0  # fmt: skip
        assert outlets[dc].metric(names.CONFIG_RELOADS_TOTAL, outcome="refused") == 0

    # Exactly-once through the materialized views, on every server.
    servers = {"central": central, **{f"local-{dc}": ep.clickhouse["local"]
                                      for dc, ep in mep.datacenters.items()}}  # fmt: skip
    for name, ch in servers.items():
        assert resolution_mismatches(ch, database) == {
            "flows_1m0s": [], "flows_5m0s": [], "flows_1h0m0s": []}, name

    for outlet in outlets.values():
        assert outlet.stop() == 0
    # Each site's retention, as its orchestrator configured it, and acting.
    for name, ch in servers.items():
        days = 30 if name == "central" else 15
        assert f"TTL TimeReceived + toIntervalSecond({days * DAY})" in raw_ttl(ch, database)
        verify.query(ch, f"INSERT INTO {database}.flows (TimeReceived, Bytes, Packets)"
                         " SELECT now() - toIntervalDay(20), 1, 1 FROM numbers(10)")
        verify.query(ch, f"OPTIMIZE TABLE {database}.flows FINAL")
        old = int(verify.query(ch, f"SELECT count() FROM {database}.flows"
                                   " WHERE TimeReceived < now() - INTERVAL 10 DAY"))
        assert old == (10 if name == "central" else 0), name
