"""Issue 10 against the real multi-dc stack: two datacenters, one central ClickHouse.

Each datacenter has its own Kafka (its own cluster id) with a topic of the same name, its
own local ClickHouse and its own outlet writing to its local server and to central. Before
tokens were scoped to the Kafka cluster, two datacenters whose batches covered the same
offsets sent the same token to central, and central dropped the second one as a repeat.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowgen.generator import FlowGenerator, GeneratorConfig, unique_rows_sql_filter
from flowgen.producer import produce
from teststack import stack as stk
from teststack import verify
from teststack.outlet_proc import OutletProcess, apply_schema, free_port, outlet_config

pytestmark = pytest.mark.stack

FLOWS = 200_000


def recreate_topic(ep: stk.Endpoints, topic: str, partitions: int) -> None:
    """Delete the topic if it exists (a reused stack) and create it empty."""
    admin = stk._admin(ep.kafka.bootstrap)
    if topic in admin.list_topics(timeout=10).topics:
        admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
        deadline = time.monotonic() + 30
        while topic in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
            time.sleep(0.2)
    stk.ensure_topic(ep.kafka.bootstrap, topic, partitions)


def new_database(mep: stk.MultiDCEndpoints, name: str) -> None:
    servers = [mep.central, *(ep.clickhouse["local"] for ep in mep.datacenters.values())]
    for ch in servers:
        c = verify.client(ch)
        try:
            c.command(f"DROP DATABASE IF EXISTS {name}")
        finally:
            c.close()


def start_outlet(ep: stk.Endpoints, workdir: Path, *, topic: str, group: str, database: str,
                 destinations: tuple[str, ...] = ("local", "central"), name: str = "outlet",
                 **kw: Any) -> OutletProcess:
    cfg = outlet_config(ep, state_path=str(workdir / f"state-{name}"), http_port=free_port(),
                        destinations=destinations, topic=topic, consumer_group=group,
                        database=database, **kw)
    workdir.mkdir(parents=True, exist_ok=True)
    schema = workdir / f"schema-{name}.yaml"
    schema.write_text(yaml.safe_dump(cfg))
    apply_schema(schema)
    outlet = OutletProcess(workdir, cfg, name=name)
    outlet.start()
    return outlet


def wait_audited(outlet: OutletProcess, timeout: float = 30) -> None:
    """Until the deduplication audit has read every insert back from the servers' logs."""
    deadline = time.monotonic() + timeout
    while outlet.metric("outlet_destination_deduplication_pending_batches") > 0:
        assert time.monotonic() < deadline, "deduplication audit still pending"
        time.sleep(0.5)


def wait_stable_at(ch: stk.ClickHouseEndpoints, database: str, least: int,
                   timeout: float = 180) -> int:
    """Rows once at least `least` are there and the count stops moving (3 s)."""
    verify.wait_rows(ch, least, timeout, database)
    return verify.wait_stable(ch, quiet=3.0, database=database)


def test_two_datacenters_same_topic_one_partition_central_holds_both(
    multi_dc_stack: stk.MultiDCEndpoints, tmp_path: Path
) -> None:
    """The reproduction of issue 10: 200,000 different flows into each datacenter's topic
    `flows` (one partition), dual-write to each local server and to central. Both
    datacenters cut the same batches (offsets 0-49999, 50000-99999, ...); with tokens that
    do not name the Kafka cluster central kept 200,000 rows and every metric said all was
    written. Central must hold all 400,000, each once."""
    mep, database = multi_dc_stack, "db_multidc_repro"
    new_database(mep, database)
    outlets: dict[str, OutletProcess] = {}
    for i, ep in enumerate(mep.datacenters.values()):
        recreate_topic(ep, "flows", 1)
        gen = FlowGenerator(GeneratorConfig(seed=7 + i, run_id=10 + i, unique=True))
        assert produce(ep.kafka.bootstrap, "flows", gen.records(FLOWS)).failed == 0
    try:
        for dc, ep in mep.datacenters.items():
            outlets[dc] = start_outlet(ep, tmp_path / dc, topic="flows", group=f"repro-{dc}",
                                       database=database)
        for ep in mep.datacenters.values():
            assert wait_stable_at(ep.clickhouse["local"], database, FLOWS) == FLOWS
        assert wait_stable_at(mep.central, database, 2 * FLOWS, timeout=120) == 2 * FLOWS
        central = verify.table_stats(mep.central, database)
        assert (central.rows, central.duplicates) == (2 * FLOWS, 0)
        for i, dc in enumerate(mep.datacenters):
            mine = verify.table_stats(mep.central, database, unique_rows_sql_filter(10 + i))
            assert (mine.rows, mine.distinct_flows) == (FLOWS, FLOWS), dc
        for dc, outlet in outlets.items():
            wait_audited(outlet)
            flows = outlet.metric("outlet_destination_flows_written_total",
                                  destination="central")
            assert flows == FLOWS, dc
            assert outlet.metric("outlet_destination_deduplicated_batches_total",
                                 destination="central", attempt="first") == 0, dc
            assert outlet.metric("outlet_destination_deduplication_unverified_batches_total",
                                 destination="central") == 0, dc
        ids = {dc: re.search(r"token identity (\S+)\)", o.log_path.read_text())
               for dc, o in outlets.items()}
        assert all(ids.values()) and len({m.group(1) for m in ids.values() if m}) == 2
        for o in outlets.values():
            assert o.stop() == 0
    finally:
        for o in outlets.values():
            o.kill()


def test_a_foreign_writer_of_the_same_tokens_is_counted_and_logged(
    multi_dc_stack: stk.MultiDCEndpoints, tmp_path: Path
) -> None:
    """Deduplication made visible: a second deployment (another consumer group) reading
    the same topic of the same cluster into the same central table sends the same tokens;
    central drops its batches, and that outlet counts them as deduplicated on their *first*
    attempt and logs each token (a collision or a foreign writer, not a retry)."""
    mep, database = multi_dc_stack, "db_multidc_foreign"
    ep = mep.datacenters["a"]
    topic = f"foreign-{int(time.time())}"
    new_database(mep, database)
    stk.ensure_topic(ep.kafka.bootstrap, topic, 1)
    n = 60_000
    gen = FlowGenerator(GeneratorConfig(seed=3, run_id=30, unique=True))
    assert produce(ep.kafka.bootstrap, topic, gen.records(n)).failed == 0
    common = {"topic": topic, "database": database, "destinations": ("central",),
              "batch_size": 20_000}
    first = start_outlet(ep, tmp_path, group="first", name="first", **common)
    try:
        assert wait_stable_at(mep.central, database, n) == n
        second = start_outlet(ep, tmp_path, group="second", name="second", **common)
        try:
            deadline = time.monotonic() + 60
            flows = 0.0
            while time.monotonic() < deadline and flows < n:
                time.sleep(0.5)
                flows = second.metric("outlet_destination_deduplicated_flows_total",
                                      destination="primary", attempt="first")
            assert flows == n
            wait_audited(second)
            wait_audited(first)
            assert second.metric("outlet_destination_deduplicated_batches_total",
                                 destination="primary", attempt="first") == 3
            assert verify.count_rows(mep.central, database) == n  # nothing stored twice
            assert first.metric("outlet_destination_deduplicated_batches_total",
                                destination="primary") == 0
            log = second.log_path.read_text()
            warnings = [ln for ln in log.splitlines()
                        if "WARNING" in ln and "on its first attempt" in ln]
            assert len(warnings) == 3 and all(f"/{topic}/0:" in w for w in warnings)
            assert second.stop() == 0
        finally:
            second.kill()
        assert first.stop() == 0
    finally:
        first.kill()
