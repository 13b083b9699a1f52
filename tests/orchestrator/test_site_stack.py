"""One site's orchestrator against the real stack: migrations on our ClickHouse servers,
outlets configured by it (real processes, real HTTP), exactly-once through the views."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from outlet import metrics as names
from tests.conftest import OutletRun
from tests.orchestrator.conftest import PW_VAR, Site, outlet_run_of, site_entry
from teststack import verify
from teststack.kafka import create_topic
from teststack.orchestrator_proc import (
    OrchestratorProcess,
    RemoteOutletProcess,
    resolution_mismatches,
)
from teststack.outlet_proc import free_port, outlet_config
from teststack.toxiproxy import Toxiproxy

pytestmark = pytest.mark.stack

CONFIG = "/api/v0/orchestrator/configuration/outlet"
RESOLUTIONS = [  # not the defaults: the configured values must be the ones applied
    {"interval": 0, "ttl": "10d"},
    {"interval": "1m", "ttl": "3d"},
    {"interval": "5m", "ttl": "30d"},
    {"interval": "1h", "ttl": "400d"},
]
DAY = 86400
_ids = itertools.count()


def steps(o: OrchestratorProcess) -> tuple[float, float]:
    m = o.metrics()
    return (m["orchestrator_clickhouse_migrations_applied_steps_total"],
            m["orchestrator_clickhouse_migrations_notapplied_steps_total"])  # fmt: skip


def test_migrations_apply_configured_ttls_and_run_twice_as_a_no_op(site: Site) -> None:
    first = site.orchestrator(resolutions=RESOLUTIONS)
    first.start()
    first.wait_ready()
    assert steps(first) == (8, 0)  # database, 4 tables, 3 views
    first.stop()
    tables = site.tables()
    assert set(tables) == {"flows", "flows_1m0s", "flows_5m0s", "flows_1h0m0s",
                           "flows_1m0s_consumer", "flows_5m0s_consumer",
                           "flows_1h0m0s_consumer"}  # fmt: skip
    for table, days in (("flows", 10), ("flows_1m0s", 3), ("flows_5m0s", 30),
                        ("flows_1h0m0s", 400)):  # fmt: skip
        engine_full, _, comment = tables[table]
        assert f"TTL TimeReceived + toIntervalSecond({days * DAY})" in engine_full, engine_full
        assert "ttl_only_drop_parts = 1" in engine_full
        assert "non_replicated_deduplication_window = 10000" in engine_full
        assert comment.startswith("managed by orchestrator")
    # The TTLs act: rows 1, 5, 20, 100 and 500 days old, inserted into the raw table.
    c = verify.client(site.ch)
    try:
        for age in (1, 5, 20, 100, 500):
            c.command(f"INSERT INTO {site.database}.flows (TimeReceived, Bytes, Packets)"
                      f" SELECT now() - toIntervalDay({age}), 1, 1 FROM numbers(10)")  # fmt: skip
        for table in ("flows", "flows_1m0s", "flows_5m0s", "flows_1h0m0s"):
            c.command(f"OPTIMIZE TABLE {site.database}.{table} FINAL")
    finally:
        c.close()
    kept = {t: site.query(f"SELECT sum(Bytes) FROM {site.database}.{t}")[0][0]
            for t in ("flows", "flows_1m0s", "flows_5m0s", "flows_1h0m0s")}  # fmt: skip
    assert kept == {"flows": 20, "flows_1m0s": 10, "flows_5m0s": 30, "flows_1h0m0s": 40}

    second = site.orchestrator(resolutions=RESOLUTIONS)
    second.start()
    second.wait_ready()
    assert steps(second) == (0, 8), "an up-to-date server gets no DDL"
    assert "0 step(s) applied, 8 already up to date" in second.log_text()
    second.stop()
    assert site.tables() == tables, "nothing was altered (same metadata times)"

    longer = [dict(r) for r in RESOLUTIONS]
    longer[0]["ttl"] = "12d"
    third = site.orchestrator(resolutions=longer)
    third.start()
    third.wait_ready()
    assert steps(third) == (1, 7)
    assert f"TTL TimeReceived + toIntervalSecond({10 * DAY}) -> TimeReceived +" in third.log_text()
    assert f"toIntervalSecond({12 * DAY})" in site.tables()["flows"][0]


def test_migrations_retried_while_clickhouse_is_down(site: Site) -> None:
    toxi = site.ep.toxiproxy.client()
    toxi.disable(site.ch.proxy)
    o = site.orchestrator(proxied=True)
    o.start()
    deadline = time.monotonic() + 30
    while o.metrics()['orchestrator_clickhouse_migration_errors_total{error="connect"}'] < 3:
        assert time.monotonic() < deadline, o.log_tail()
        time.sleep(0.2)
    ready = o.get("/readyz")
    assert ready.status == 503 and "migrations pending" in ready.body
    assert o.get(f"{CONFIG}/0").status == 200, "configurations are served meanwhile"
    toxi.enable(site.ch.proxy)
    o.wait_ready()
    attempts = o.metrics()["orchestrator_clickhouse_migration_attempts_total"]
    failures = [line for line in o.log_text().splitlines() if "migration attempt" in line]
    assert attempts >= 4 and 1 <= len(failures) <= 1 + attempts // 10, failures
    assert "(connect)" in failures[0]
    assert "flows_1h0m0s_consumer" in site.tables()


def _schema_apply(site: Site, workdir: Path) -> subprocess.CompletedProcess[str]:
    cfg = outlet_config(site.ep, state_path=str(workdir / "state"), http_port=free_port(),
                        destinations=("local",), database=site.database, proxied=False)  # fmt: skip
    path = workdir / "schema.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "outlet.cli", "schema", "apply", "--config",
                           str(path)], capture_output=True, text=True, timeout=120)  # fmt: skip


def test_outlet_schema_apply_adopted_then_refused(site: Site, tmp_path: Path) -> None:
    # A site that used `outlet schema apply` before it had an orchestrator: adopted.
    assert _schema_apply(site, tmp_path).returncode == 0
    site.query(f"INSERT INTO {site.database}.flows (TimeReceived, Bytes) VALUES (now(), 7)")
    o = site.orchestrator()
    o.start()
    o.wait_ready()
    engine_full, _, comment = site.tables()["flows"]
    assert "TTL TimeReceived + toIntervalSecond(1296000)" in engine_full  # the 15 d default
    assert comment.startswith("managed by orchestrator")
    assert site.query(f"SELECT sum(Bytes) FROM {site.database}.flows") == [(7,)]
    assert "not marked as managed (adopted)" in o.log_text()
    # From now on the outlet never alters that database.
    before = site.tables()
    refused = _schema_apply(site, tmp_path)
    assert refused.returncode == 1
    assert f"database {site.database} is managed by an orchestrator" in refused.stderr
    assert site.tables() == before


def test_outlet_configured_by_the_orchestrator_end_to_end(site: Site) -> None:
    """Starts while the orchestrator is down, runs, restarts from its cache; secrets stay
    placeholders everywhere; the aggregates match the raw table."""
    secret = site.ch.password
    topic = create_topic(site.ep, f"orch_e2e_{int(time.time())}_{next(_ids)}")
    port, http_port = free_port(), free_port()
    entry = site_entry(site, topic, http_port)
    shared_kafka = {"brokers": [site.ep.kafka.bootstrap_proxied], "topic": topic}
    url = f"http://127.0.0.1:{port}#1"
    state_dir = site.workdir / "state"
    outlet = RemoteOutletProcess(site.workdir, {"http": {"listen": f"127.0.0.1:{http_port}"}},
                                 name="remote-outlet", env=site.env, source=url,
                                 extra_args=["--state-dir", str(state_dir),
                                             "--config-wait", "3s"])  # fmt: skip
    site.processes.append(outlet)
    outlet.start(wait_ready=False)
    deadline = time.monotonic() + 30
    while "attempt 1 failed (unreachable)" not in outlet.log_tail(100_000):
        assert time.monotonic() < deadline and outlet.alive(), outlet.log_tail()
        time.sleep(0.2)
    o = site.orchestrator(listen=f"127.0.0.1:{port}", shared_kafka=shared_kafka,
                          outlets=[{"log": {"level": "warning"}}, entry])  # fmt: skip
    o.start()
    outlet.wait_http(60)
    run = outlet_run_of(site, topic, entry)
    run.produce(20_000)
    assert run.wait_rows("local", 20_000) == 20_000
    metrics = outlet.metrics()
    fetched_at = metrics[names.CONFIG_LAST_REFRESH_TIMESTAMP_SECONDS]
    assert time.time() - 120 < fetched_at <= time.time()
    assert metrics[names.CONFIG_REFRESH_ERRORS_TOTAL] >= 1
    served = [o.get(f"{CONFIG}/{i}").body for i in (0, 1)] + [o.get("/metrics").body]
    assert outlet.stop() == 0
    assert o.stop() == 0

    # The orchestrator is down: the outlet starts from its cached configuration.
    run.produce(20_000)
    restart_at = len(outlet.log_tail(100_000))
    outlet.start(wait_ready=False)
    outlet.wait_http(60)
    assert "starting from the configuration cached" in outlet.log_tail(100_000)[restart_at:]
    assert run.wait_rows("local", 40_000) == 40_000
    # The raw part commits a moment before the views' parts of the same INSERT: compare
    # once the outlet saw its inserts return.
    deadline = time.monotonic() + 30
    while outlet.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL) < 20_000:
        assert time.monotonic() < deadline, outlet.log_tail()
        time.sleep(0.2)
    assert outlet.metrics()[names.CONFIG_LAST_REFRESH_TIMESTAMP_SECONDS] == fetched_at
    stats = run.stats("local")
    assert (stats.rows, stats.duplicates, stats.bytes_sum) == (40_000, 0, run.bytes_sum)
    assert resolution_mismatches(site.ch, site.database) == {
        "flows_1m0s": [], "flows_5m0s": [], "flows_1h0m0s": []}  # fmt: skip
    outlet_metrics = "\n".join(outlet.metrics())
    assert outlet.stop() == 0

    cache = (state_dir / "orchestrator-config" / "outlet-1.yaml").read_text()
    assert f"${{{PW_VAR}}}" in cache and f"${{{PW_VAR}}}" in served[1]
    texts = {"orchestrator log": o.log_text(), "outlet log": outlet.log_tail(10_000),
             "served": "\n".join(served), "outlet metrics": outlet_metrics, "cache": cache}
    for where, text in texts.items():
        assert secret not in text, f"the ClickHouse password leaked into the {where}"


def _orchestratedoutlet_run_of(site: Site, **kwargs: Any) -> OutletRun:
    """Migrations by the orchestrator, then an outlet (local config file) writing there."""
    o = site.orchestrator()
    o.start()
    o.wait_ready()
    o.stop()
    topic = create_topic(site.ep, f"orch_dedup_{int(time.time())}_{next(_ids)}")
    cfg = outlet_config(site.ep, state_path=str(site.workdir / "state"), http_port=free_port(),
                        destinations=("local",), topic=topic, consumer_group=f"g_{topic}",
                        database=site.database, wait_time="500ms", **kwargs)  # fmt: skip
    return outlet_run_of(site, topic, cfg)


def _no_mismatch(site: Site) -> None:
    mismatches = resolution_mismatches(site.ch, site.database)
    assert mismatches == {"flows_1m0s": [], "flows_5m0s": [], "flows_1h0m0s": []}, mismatches


def test_aggregates_equal_raw_sums_after_cut_responses(site: Site) -> None:
    run = _orchestratedoutlet_run_of(site, batch_size=10_000)
    outlet = run.outlet()
    site.processes.append(outlet)
    toxi = site.ep.toxiproxy.client()
    outlet.start()
    run.produce(10_000)
    assert run.wait_rows("local", 10_000, timeout=30) == 10_000
    # stored is not answered: a batch whose response is still on its way when the cut
    # comes is retried (deduplicated) ahead of the new flows, and the cut proves nothing
    deadline = time.monotonic() + 30
    while outlet.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="primary") < 10_000:
        assert time.monotonic() < deadline, "the first 10,000 flows were never acknowledged"
        time.sleep(0.1)
    # timeout 0 on the responses: each request reaches the server whole and is stored, its
    # response never comes back, so the outlet's insert-timeout (10 s) fails the attempt
    # and it is sent again. (limit_data 0 closes the link at the server's first byte, which
    # on a loaded machine can come before the body is read: nothing stored, nothing proven.)
    toxi.add_toxic(site.ch.proxy, "timeout", {"timeout": 0}, name="cut")
    toxi.disable(site.ch.proxy)  # pooled connections predate the toxic: drop them
    toxi.enable(site.ch.proxy)
    run.produce(40_000)
    # wait (bounded) for an insert stored behind a cut response and retried: on a loaded
    # machine the first batch after the cut may take longer than any fixed pause
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (
            run.rows("local") > 10_000
            and outlet.metric(names.DESTINATION_RETRIES_TOTAL, destination="primary") > 0):
        time.sleep(0.2)
    stored_during_cut = run.rows("local")
    retried_during_cut = outlet.metric(names.DESTINATION_RETRIES_TOTAL, destination="primary")
    failed = [line for line in outlet.log_path.read_text().splitlines() if "failed (" in line]
    toxi.remove_toxic(site.ch.proxy, "cut")
    assert run.wait_rows("local", 50_000) >= 50_000
    run.wait_stable("local")
    stats = run.stats("local")
    assert (stats.rows, stats.duplicates, stats.bytes_sum) == (50_000, 0, run.bytes_sum)
    # Inserts reached the server while every response was cut, and were sent again: the
    # raw table and every view dropped the repeats.
    assert stored_during_cut > 10_000, (
        f"inserts reached the server while responses were cut ({retried_during_cut} retries;"
        f" {failed[-3:]})")
    assert outlet.metric(names.DESTINATION_RETRIES_TOTAL, destination="primary") > 0
    _no_mismatch(site)
    assert outlet.stop() == 0


def test_aggregates_equal_raw_sums_after_sigkill_rebuild(site: Site) -> None:
    run = _orchestratedoutlet_run_of(site, batch_size=10_000)
    # Slow inserts so that batches are stored but not yet committed when the outlet dies.
    toxi = Toxiproxy(site.ep.toxiproxy.api, timeout=120)
    toxi.add_toxic(site.ch.proxy, "latency", {"latency": 300}, name="slow")
    total = 100_000
    producer = threading.Thread(target=lambda: run.produce(total, rate=25_000), daemon=True)
    producer.start()
    outlet = run.outlet()
    site.processes.append(outlet)
    outlet.start()
    deadline = time.monotonic() + 60
    while run.rows("local") < 30_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    outlet.kill()
    toxi.remove_toxic(site.ch.proxy, "slow")
    producer.join()
    before_restart = run.wait_stable("local")
    outlet.start()
    assert run.wait_rows("local", total) >= total
    run.wait_stable("local")
    stats = run.stats("local")
    assert (stats.distinct_flows, stats.duplicates, stats.bytes_sum) == (total, 0, run.bytes_sum)
    rewritten = outlet.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="primary")
    assert before_restart + rewritten > total, "some rebuilt batches were stored before the kill"
    _no_mismatch(site)
    assert outlet.stop() == 0
