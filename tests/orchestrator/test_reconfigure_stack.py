"""Live reconfiguration through the orchestrator, against the real stack and real processes:
an additional destination added and removed under load, and an orchestrator restarted
under load (the outlet keeps running, then refuses a change that needs a restart)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from outlet import metrics as names
from tests.orchestrator.conftest import Site, outlet_run_of, site_entry
from teststack import verify
from teststack.kafka import create_topic
from teststack.orchestrator_proc import (
    OrchestratorProcess,
    RemoteOutletProcess,
    central_destination,
    site_config,
)
from teststack.outlet_proc import free_port

pytestmark = pytest.mark.stack

AZ_VAR = "CENTRAL_CH_PASSWORD"


def until(cond: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s:\n{log()}"
        time.sleep(0.2)


def _outlet(site: Site, port: int, http_port: int, env: dict[str, str] | None = None
            ) -> RemoteOutletProcess:
    outlet = RemoteOutletProcess(
        site.workdir, {"http": {"listen": f"127.0.0.1:{http_port}"}}, name="outlet",
        env={**site.env, **(env or {})}, source=f"http://127.0.0.1:{port}#0",
        extra_args=["--state-dir", str(site.workdir / "state"), "--config-refresh-interval",
                    "1s", "--config-wait", "2s"])  # fmt: skip
    site.processes.append(outlet)
    return outlet


def _site_orchestrator(site: Site, topic: str, port: int, entry: dict[str, Any]
                       ) -> OrchestratorProcess:
    shared_kafka = {"brokers": [site.ep.kafka.bootstrap_proxied], "topic": topic}
    o = site.orchestrator(listen=f"127.0.0.1:{port}", shared_kafka=shared_kafka, outlets=[entry])
    o.start()
    o.wait_ready()
    return o


def _central(site: Site, database: str) -> OrchestratorProcess:
    """The central site's orchestrator: it manages the azure server's database (30 days)."""
    azure = site.ep.clickhouse["azure"]
    verify.query(azure, f"DROP DATABASE IF EXISTS {database}")
    cfg = site_config(azure, database, password_var=AZ_VAR,
                      resolutions=[{"interval": 0, "ttl": "30d"}])  # fmt: skip
    central = OrchestratorProcess(site.workdir / "central", cfg, name="central",
                                  env={AZ_VAR: azure.password})  # fmt: skip
    site.processes.append(central)
    central.start()
    central.wait_ready()
    return central


def _reloads(outlet: RemoteOutletProcess, outcome: str) -> float:
    return outlet.metric(names.CONFIG_RELOADS_TOTAL, outcome=outcome)


def test_additional_destination_added_then_removed_live_under_load(site: Site) -> None:
    azure = site.ep.clickhouse["azure"]
    central_db = f"{site.database}_central"
    _central(site, central_db)
    topic = create_topic(site.ep, f"orch_live_{int(time.time())}")
    port, http_port = free_port(), free_port()
    entry = site_entry(site, topic, http_port, batch_size=2000)
    o = _site_orchestrator(site, topic, port, entry)
    outlet = _outlet(site, port, http_port, env={AZ_VAR: azure.password})
    outlet.start()
    run = outlet_run_of(site, topic, entry)
    total = 100_000
    producer = threading.Thread(target=run.produce, args=(total, 4000), daemon=True)
    producer.start()
    until(lambda: run.rows("local") >= 15_000, 60, "local rows", outlet.log_tail)

    entry["additional-clickhouses"] = [central_destination(azure, central_db, AZ_VAR)]
    assert o.reload() == "applied"
    until(lambda: _reloads(outlet, "applied") == 1, 30, "the outlet applying it", outlet.log_tail)
    until(lambda: verify.count_rows(azure, central_db) >= 20_000, 60, "central rows",
          outlet.log_tail)  # fmt: skip
    del entry["additional-clickhouses"]
    assert o.reload() == "applied"
    until(lambda: _reloads(outlet, "applied") == 2, 30, "the removal", outlet.log_tail)
    producer.join()
    assert run.wait_rows("local", total) == total
    until(lambda: "destination central removed: done" in outlet.log_tail(10_000), 60,
          "the removed destination to finish", outlet.log_tail)  # fmt: skip
    stored = verify.wait_stable(azure, database=central_db)

    local = run.stats("local")
    assert (local.rows, local.duplicates, local.bytes_sum) == (total, 0, run.bytes_sum)
    written = outlet.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="central")
    on_central = verify.table_stats(azure, central_db)
    assert on_central.duplicates == 0
    assert on_central.rows == stored == written, "central stores exactly what it was given"
    assert 20_000 <= on_central.rows < total - 15_000, "only batches sealed while configured"
    assert outlet.metric(names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL,
                         destination="central") == 0  # fmt: skip
    assert outlet.metric(names.SPOOL_APPENDED_FLOWS_TOTAL, destination="central") == 0
    assert f"{names.DESTINATION_UP}{{destination=\"central\"}}" not in outlet.metrics(), (
        "a removed destination's gauges go")
    text = outlet.log_tail(10_000)
    assert "destination central added" in text and "configuration applied live" in text
    assert outlet.stop() == 0


def test_orchestrator_restarted_under_load_the_outlet_keeps_running(site: Site) -> None:
    topic = create_topic(site.ep, f"orch_restart_{int(time.time())}")
    port, http_port = free_port(), free_port()
    entry = site_entry(site, topic, http_port, batch_size=5000)
    o = _site_orchestrator(site, topic, port, entry)
    outlet = _outlet(site, port, http_port)
    outlet.start()
    assert outlet.proc is not None
    pid = outlet.proc.pid
    run = outlet_run_of(site, topic, entry)
    total = 80_000
    producer = threading.Thread(target=run.produce, args=(total, 4000), daemon=True)
    producer.start()
    until(lambda: run.rows("local") >= 10_000, 60, "local rows", outlet.log_tail)
    assert o.stop() == 0
    until(lambda: outlet.metric(names.CONFIG_REFRESH_ERRORS_TOTAL) >= 3, 30,
          "failed checks", outlet.log_tail)  # fmt: skip
    down_at = run.rows("local")
    until(lambda: run.rows("local") >= down_at + 10_000, 60, "ingestion while the orchestrator"
          " is down", outlet.log_tail)  # fmt: skip
    # It comes back serving a change a running outlet cannot apply.
    entry["kafka"]["consumer-group"] = f"other_{topic}"
    o.start()
    until(lambda: _reloads(outlet, "refused") == 1, 30, "the refusal", outlet.log_tail)
    producer.join()
    assert run.wait_rows("local", total) == total
    stats = run.stats("local")
    assert (stats.rows, stats.duplicates, stats.bytes_sum) == (total, 0, run.bytes_sum)
    m = outlet.metrics()
    assert outlet.alive() and outlet.proc.pid == pid, "the same process all along"
    assert m[names.CONFIG_OUTDATED] == 1
    assert time.time() - m[names.CONFIG_LAST_REFRESH_TIMESTAMP_SECONDS] < 30, "refreshed again"
    text = outlet.log_tail(10_000)
    assert "configuration check 1 failed (unreachable)" in text
    assert "orchestrator answers again" in text
    refusals = [line for line in text.splitlines() if "configuration change refused" in line]
    assert len(refusals) == 1 and "kafka.consumer-group" in refusals[0], refusals
    assert outlet.stop() == 0
    cache = Path(site.workdir / "state" / "orchestrator-config" / "outlet-0.yaml").read_text()
    assert f"other_{topic}" in cache, "a restart applies what the orchestrator serves"


def test_credentials_changed_live_under_load(site: Site) -> None:
    """Central configured with a wrong password: every insert fails authentication and
    goes to the spool. The orchestrator then serves the right one: the outlet replaces
    the writers between inserts, its open circuit probes at once, the spool replays, and
    central ends with every flow once, without a restart."""
    azure = site.ep.clickhouse["azure"]
    central_db = f"{site.database}_central"
    _central(site, central_db)
    topic = create_topic(site.ep, f"orch_creds_{int(time.time())}")
    port, http_port = free_port(), free_port()
    entry = site_entry(site, topic, http_port, batch_size=2000)
    entry["additional-clickhouses"] = [central_destination(azure, central_db, "OLD_PW")]
    o = _site_orchestrator(site, topic, port, entry)
    wrong = "not-the-password-8d1f"
    outlet = _outlet(site, port, http_port, env={AZ_VAR: azure.password, "OLD_PW": wrong})
    outlet.start()
    assert outlet.proc is not None
    pid = outlet.proc.pid
    run = outlet_run_of(site, topic, entry)
    total = 60_000
    producer = threading.Thread(target=run.produce, args=(total, 4000), daemon=True)
    producer.start()
    until(lambda: outlet.metric(names.SPOOL_APPENDED_FLOWS_TOTAL, destination="central")
          >= 10_000, 60, "batches spooled on authentication failures", outlet.log_tail)
    assert outlet.metric(names.DESTINATION_INSERT_ERRORS_TOTAL, destination="central",
                         error="auth") > 0  # fmt: skip
    assert verify.count_rows(azure, central_db) == 0
    entry["additional-clickhouses"][0]["connection"]["password"] = f"${{{AZ_VAR}}}"
    assert o.reload() == "applied"
    until(lambda: _reloads(outlet, "applied") == 1, 30, "the new password", outlet.log_tail)
    producer.join()
    assert run.wait_rows("local", total) == total
    assert verify.wait_rows(azure, total, 90, central_db) == total
    until(lambda: outlet.metric(names.SPOOL_BATCHES, destination="central") == 0, 60,
          "the spool replayed", outlet.log_tail)  # fmt: skip
    for ch, db in ((site.ch, site.database), (azure, central_db)):
        stats = verify.table_stats(ch, db)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (total, 0, run.bytes_sum)
    assert outlet.metric(names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL,
                         destination="central") == 0  # fmt: skip
    assert outlet.alive() and outlet.proc.pid == pid, "no restart"
    assert wrong not in outlet.log_tail(100_000)
    assert not any(wrong in sample for sample in outlet.metrics())
    assert outlet.stop() == 0
