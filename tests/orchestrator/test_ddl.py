"""The orchestrator's DDL and reconciliation, checked against the real engine (chDB).

The cluster variants cannot run here (no Keeper, no remote shards): they are parsed by
the engine's own parser (``formatQuery``), which rejects what ClickHouse would not
accept syntactically. Standalone DDL is executed (here and in the stack tests).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import ddl
from orchestrator.config import DEFAULT_RESOLUTIONS
from orchestrator.migrations import (
    ExistingTable,
    MigrationError,
    Snapshot,
    Statement,
    reconcile,
)
from outlet import schema


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    import chdb

    with tempfile.TemporaryDirectory() as path:
        conn = chdb.connect(path)
        yield conn
        conn.close()


def run(conn: Any, sql: str) -> str:
    return str(conn.query(sql, "TabSeparatedRaw")).strip()


def format_query(conn: Any, sql: str) -> str:
    """The engine's parser: raises on anything ClickHouse would not parse."""
    return run(conn, f"SELECT formatQuerySingleLine({schema.quote_string(sql)})")


def statements(layout: ddl.Layout) -> list[Statement]:
    """Every statement a migration can send for these objects: a fresh database (creates)
    and a database in need of every kind of ALTER."""
    objects = ddl.site_objects(layout, DEFAULT_RESOLUTIONS, 50)
    fresh = reconcile(layout, objects, Snapshot(False, {}, {}))
    stale = {}
    for obj in objects:
        if isinstance(obj, ddl.TableObject):
            d = obj.definition
            engine = d.engine.split("(", 1)[0]
            stale[d.name] = ExistingTable(
                d.name, engine, f"{engine} ORDER BY x TTL TimeReceived + toIntervalSecond(1)",
                "", "", ", ".join(schema.RESOLUTION_PRIMARY_KEY), "", d.columns[:-3],
            )  # fmt: skip
        elif isinstance(obj, ddl.ViewObject):
            stale[obj.name] = ExistingTable(
                obj.name, "MaterializedView", "", "CREATE MATERIALIZED VIEW v TO db.x", "old",
                "", "", (),
            )  # fmt: skip
    altered = reconcile(layout, objects, Snapshot(True, stale, {}))
    out = []
    for _, step in fresh + altered:
        if step is not None:
            out.extend(step.statements)
    return out


def test_interval_names_follow_akvorado() -> None:
    assert [ddl.interval_name(s) for s in (10, 60, 90, 300, 3600, 5400, 86400)] == [
        "10s", "1m0s", "1m30s", "5m0s", "1h0m0s", "1h30m0s", "24h0m0s",
    ]  # fmt: skip
    assert [r.table for r in DEFAULT_RESOLUTIONS] == [
        "flows", "flows_1m0s", "flows_5m0s", "flows_1h0m0s",
    ]  # fmt: skip


def test_objects_standalone_and_on_clusters() -> None:
    def names(layout: ddl.Layout) -> list[str]:
        return [o.name for o in ddl.site_objects(layout, DEFAULT_RESOLUTIONS[:2], 50)]

    assert names(ddl.Layout("db")) == ["flows", "flows_1m0s", "flows_1m0s_consumer"]
    assert names(ddl.Layout("db", "c1", shards=1)) == names(ddl.Layout("db"))
    assert names(ddl.Layout("db", "c1", shards=3)) == [
        "flows_local", "flows", "flows_1m0s_local", "flows_1m0s", "flows_1m0s_consumer",
    ]  # fmt: skip


@pytest.mark.parametrize("shards", [1, 2])
def test_cluster_ddl_parses_with_the_engines_parser(engine: Any, shards: int) -> None:
    layout = ddl.Layout("flows_dc_a", "dc_a", shards)
    sent = statements(layout)
    assert len(sent) > 10
    for statement in sent:
        formatted = format_query(engine, statement.sql)
        assert "ON CLUSTER dc_a" in formatted, formatted
        assert statement.settings.get("alter_sync") == 2
    creates = [format_query(engine, s.sql) for s in sent if s.sql.startswith("CREATE TABLE")]
    for create in creates:
        assert "ENGINE = Replicated" in create or "ENGINE = Distributed" in create, create
        if "Replicated" in create:
            assert "/clickhouse/tables/shard-{shard}/flows_dc_a/" in create
            assert "replicated_deduplication_window = 10000" in create
            assert f"replicated_deduplication_window_seconds = {7 * 86400}" in create
    distributed = [s.sql for s in sent if "Distributed(" in s.sql]
    named = {sql.split()[4] for sql in distributed}  # CREATE OR REPLACE TABLE <name>
    tables = {f"flows_dc_a.{r.table}" for r in DEFAULT_RESOLUTIONS}
    assert named == (tables if shards > 1 else set())
    for sql in distributed:
        assert ddl.SHARDING_KEY in sql and "rand()" not in sql
        assert f"'{sql.split()[4].split('.')[1]}_local', {ddl.SHARDING_KEY}" in sql
    views = [format_query(engine, s.sql) for s in sent if "MATERIALIZED VIEW" in s.sql]
    source = "flows_dc_a.flows_local" if shards > 1 else "flows_dc_a.flows"
    assert views and all(v.endswith(f"FROM {source}") for v in views)


def test_standalone_ddl_runs_and_reconciles_to_nothing(engine: Any) -> None:
    layout = ddl.Layout("site_a")
    objects = ddl.site_objects(layout, DEFAULT_RESOLUTIONS, 50)
    for statement in statements(layout)[: len(objects) + 1]:  # the creates
        settings = ", ".join(f"{k} = {v}" for k, v in statement.settings.items())
        run(engine, f"SET {settings}")
        run(engine, statement.sql)
    tables = {}
    for row in run(engine, "SELECT name, engine, engine_full, create_table_query, as_select,"
                           " sorting_key, comment FROM system.tables WHERE database = 'site_a'"
                           " FORMAT TSVRaw").splitlines():  # fmt: skip
        name, *rest = row.split("\t")
        columns = tuple(
            tuple(line.split("\t"))
            for line in run(engine, "SELECT name, type FROM system.columns WHERE"
                                    f" database = 'site_a' AND table = '{name}'"
                                    " ORDER BY position FORMAT TSVRaw").splitlines()
        )  # fmt: skip
        tables[name] = ExistingTable(name, *rest, columns)  # type: ignore[arg-type]
    canonical = {
        o.select: format_query(engine, o.select) for o in objects if isinstance(o, ddl.ViewObject)
    }
    steps = reconcile(layout, objects, Snapshot(True, tables, canonical))
    assert [step for _, step in steps if step is not None] == []


def _existing(obj: ddl.TableObject, **changes: Any) -> ExistingTable:
    d = obj.definition
    table = ExistingTable(
        d.name, d.engine.split("(")[0],
        f"{d.engine} ORDER BY x TTL {d.ttl} SETTINGS "
        + ", ".join(f"{k} = {v}" for k, v in d.settings) + ", index_granularity = 8192",
        "", "", "TimeReceived, ExporterAddress", d.comment, d.columns,
    )  # fmt: skip
    return dataclasses.replace(table, **changes)


def _step(obj: ddl.TableObject, have: ExistingTable) -> list[str]:
    layout = ddl.Layout("db")
    steps = dict(reconcile(layout, [obj], Snapshot(True, {obj.name: have}, {})))
    step = steps[obj.name]
    return [] if step is None else [s.sql for s in step.statements]


def test_reconcile_changes_only_what_differs() -> None:
    layout = ddl.Layout("db")
    raw = ddl.raw_table(layout, ddl.Resolution(0, 86400))
    assert _step(raw, _existing(raw)) == []
    assert _step(raw, _existing(raw, engine_full=_existing(raw).engine_full.replace(
        "toIntervalSecond(86400)", "toIntervalSecond(3600)"))) == [
        "ALTER TABLE db.flows MODIFY TTL TimeReceived + toIntervalSecond(86400)"
    ]  # fmt: skip
    missing = _step(raw, _existing(raw, columns=raw.definition.columns[:-1]))
    assert missing == ["ALTER TABLE db.flows ADD COLUMN IF NOT EXISTS TCPFlags UInt16"
                       " AFTER ForwardingStatus"]  # fmt: skip


def test_reconcile_adopts_a_table_made_by_outlet_schema_apply() -> None:
    layout = ddl.Layout("db")
    raw = ddl.raw_table(layout, ddl.Resolution(0, 15 * 86400))
    made_by_outlet = _existing(
        raw,
        engine_full="MergeTree PARTITION BY toYYYYMMDD(TimeReceived) ORDER BY x SETTINGS"
        " non_replicated_deduplication_window = 10000, index_granularity = 8192",
        comment="",
    )
    assert _step(raw, made_by_outlet) == [
        "ALTER TABLE db.flows MODIFY TTL TimeReceived + toIntervalSecond(1296000)",
        "ALTER TABLE db.flows MODIFY SETTING ttl_only_drop_parts = 1",
        f"ALTER TABLE db.flows MODIFY COMMENT {schema.quote_string(raw.definition.comment)}",
    ]


def test_reconcile_appends_new_key_columns_of_an_aggregate() -> None:
    layout = ddl.Layout("db")
    agg = ddl.resolution_table(layout, ddl.Resolution(60, 86400), 50)
    without = tuple(c for c in agg.definition.columns if c[0] != "TCPFlags")
    assert _step(agg, _existing(agg, columns=without)) == [
        "ALTER TABLE db.flows_1m0s ADD COLUMN IF NOT EXISTS TCPFlags UInt16 AFTER"
        " ForwardingStatus, MODIFY ORDER BY (TimeReceived, ExporterAddress, TCPFlags)"
    ]


def test_reconcile_refuses_what_it_must_not_change() -> None:
    layout = ddl.Layout("db")
    raw = ddl.raw_table(layout, ddl.Resolution(0, 86400))
    with pytest.raises(MigrationError, match=r"db.flows is a ReplacingMergeTree table"):
        _step(raw, _existing(raw, engine="ReplacingMergeTree"))
    retyped = tuple((n, "UInt32" if n == "Bytes" else t) for n, t in raw.definition.columns)
    with pytest.raises(MigrationError, match=r"db.flows.Bytes is UInt32, expected UInt64"):
        _step(raw, _existing(raw, columns=retyped))


def _insert(conn: Any, db: str, token: str, settings: dict[str, str]) -> None:
    given = ", ".join(f"{k} = {schema.quote_string(v)}" for k, v in settings.items())
    run(conn, f"INSERT INTO {db}.flows (TimeReceived, ExporterAddress, Bytes, Packets)"
              f" SETTINGS insert_deduplicate = 1, insert_deduplication_token = '{token}', {given}"
              " SELECT now() - number * 7, '::ffff:192.0.2.1', 1000 + number, 1"
              " FROM numbers(5000)")  # fmt: skip


def test_retried_insert_is_not_counted_twice_in_aggregates(engine: Any) -> None:
    """A retry the raw table drops must be dropped by every view, even on a server whose
    default is not to (older ClickHouse): INSERT_SETTINGS carries the setting."""
    layout = ddl.Layout("dedup")
    run(engine, "SET allow_suspicious_low_cardinality_types = 1")
    run(engine, schema.create_database_sql("dedup"))
    for obj in ddl.site_objects(layout, DEFAULT_RESOLUTIONS, 50):
        if isinstance(obj, ddl.TableObject):
            run(engine, schema.create_table_ddl("dedup", obj.definition))
        elif isinstance(obj, ddl.ViewObject):
            run(engine, ddl.create_view_sql(layout, obj))
    run(engine, "SET deduplicate_blocks_in_dependent_materialized_views = 0")
    try:
        for _ in range(2):  # the same batch, same token: a retry
            _insert(engine, "dedup", "t/0:0-4999", schema.INSERT_SETTINGS)
        raw = run(engine, "SELECT count(), sum(Bytes) FROM dedup.flows")
        assert raw == "5000\t17497500"
        for table in ("flows_1m0s", "flows_5m0s", "flows_1h0m0s"):
            assert run(engine, f"SELECT sum(Bytes) FROM dedup.{table}") == "17497500", table
        # Without the setting the same retry is counted twice (the check can fail).
        no_view_dedup = {k: v for k, v in schema.INSERT_SETTINGS.items()
                         if k != "deduplicate_blocks_in_dependent_materialized_views"}  # fmt: skip
        for _ in range(2):
            _insert(engine, "dedup", "t/0:5000-9999", no_view_dedup)
        assert run(engine, "SELECT sum(Bytes) FROM dedup.flows") == str(2 * 17497500)
        assert run(engine, "SELECT sum(Bytes) FROM dedup.flows_1m0s") == str(3 * 17497500)
    finally:
        run(engine, "SET deduplicate_blocks_in_dependent_materialized_views = DEFAULT")
