"""The ClickHouse objects one site's orchestrator manages, as data, and their DDL.

Per configured resolution (interval I, retention R; interval 0 is the raw table)::

    flows                  raw flows: columns, partitioning and sorting from outlet/schema.py
    flows_<I>              SummingMergeTree((Bytes, Packets)) of the aggregated columns
    flows_<I>_consumer     materialized view flows -> flows_<I> (toStartOfInterval)

``<I>`` is written as Akvorado writes a Go duration: ``1m0s``, ``5m0s``, ``1h0m0s``.
Every table has ``TTL TimeReceived + toIntervalSecond(R)`` (none when R is 0),
``ttl_only_drop_parts = 1``, a deduplication window and a comment starting with
``schema.MANAGED_MARKER``.

On a cluster (``clickhousedb.cluster``), as Akvorado does: every statement has
``ON CLUSTER``, engines are Replicated (``/clickhouse/tables/shard-{shard}/<db>/<table>``,
replica ``replica-{replica}``), and with more than one shard each table is
``<name>_local`` with a Distributed table ``<name>`` over it (the outlet inserts into
``flows``, the views read ``flows_local`` on each shard). Unlike Akvorado's ``rand()``, the
Distributed sharding key is a hash of the row: a retried insert must split the same rows
onto the same shards, or per-shard deduplication would keep a mix of both attempts.
"""

from __future__ import annotations

from dataclasses import dataclass

from outlet import schema

#: A deterministic sharding key (see the module docstring).
SHARDING_KEY = "cityHash64(ExporterAddress, SrcAddr, DstAddr, SrcPort, DstPort, Proto)"
#: Replicated tables: ClickHouse's windows are 10000 blocks (1000 before 25.9) and one
#: hour (a week before); an outlet's spool can replay a batch hours later.
REPLICATED_WINDOW_SECONDS = 7 * 24 * 3600
#: Partitioning of a resolution table whose data is kept forever.
FOREVER_PARTITION_SECONDS = 30 * 24 * 3600
#: Query settings for every DDL statement (LowCardinality(IPv6) needs the first).
DDL_SETTINGS = {"allow_suspicious_low_cardinality_types": 1}
#: On a cluster, wait for every replica to apply an ALTER.
CLUSTER_DDL_SETTINGS = {**DDL_SETTINGS, "alter_sync": 2}
#: A changed TTL applies to new parts and merges; rewriting every part at once is what
#: Akvorado avoids too.
TTL_ALTER_SETTINGS = {"materialize_ttl_after_modify": 0}


def interval_name(seconds: int) -> str:
    """Akvorado's table suffix, a Go duration: 60 -> '1m0s', 3600 -> '1h0m0s', 10 -> '10s'."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def ttl_expr(seconds: int) -> str:
    """The TTL expression as ClickHouse stores it ('' = keep forever)."""
    return f"TimeReceived + toIntervalSecond({seconds})" if seconds else ""


@dataclass(frozen=True)
class Resolution:
    """One table of flows: interval 0 is the raw table; retention 0 keeps data forever."""

    interval: int  # seconds
    ttl: int  # seconds

    @property
    def table(self) -> str:
        return (
            schema.TABLE if self.interval == 0 else f"{schema.TABLE}_{interval_name(self.interval)}"
        )


@dataclass(frozen=True)
class Layout:
    """Where the objects live: database, cluster (or ''), shard count."""

    database: str
    cluster: str = ""
    shards: int = 1

    @property
    def distributed(self) -> bool:
        return bool(self.cluster) and self.shards > 1

    def local(self, name: str) -> str:
        """The table that stores rows: ``<name>_local`` behind a Distributed table."""
        return f"{name}_local" if self.distributed else name

    def qualified(self, name: str) -> str:
        return f"{self.database}.{name}"

    @property
    def on_cluster(self) -> str:
        return schema.on_cluster(self.cluster)

    @property
    def ddl_settings(self) -> dict[str, int]:
        return CLUSTER_DDL_SETTINGS if self.cluster else DDL_SETTINGS


@dataclass(frozen=True)
class TableObject:
    """A MergeTree-family table that stores flows (raw or aggregated)."""

    definition: schema.TableDef
    resolution: Resolution

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def settings(self) -> dict[str, int]:
        return dict(self.definition.settings)


@dataclass(frozen=True)
class ViewObject:
    """A materialized view feeding a resolution table from the raw table."""

    name: str
    target: str  # table name in the same database
    select: str


@dataclass(frozen=True)
class DistributedObject:
    """A Distributed table over a local table (clusters with several shards)."""

    name: str
    local: str
    columns: tuple[tuple[str, str], ...]


SiteObject = TableObject | ViewObject | DistributedObject


def _engine(layout: Layout, table: str, variant: str, *args: str) -> str:
    if layout.cluster:
        path = f"/clickhouse/tables/shard-{{shard}}/{layout.database}/{table}"
        args = (schema.quote_string(path), schema.quote_string("replica-{replica}"), *args)
        variant = f"Replicated{variant}"
    return f"{variant}MergeTree" + (f"({', '.join(args)})" if args else "")


def _table_settings(layout: Layout) -> tuple[tuple[str, int], ...]:
    window: tuple[tuple[str, int], ...]
    if layout.cluster:
        window = (
            ("replicated_deduplication_window", schema.DEDUPLICATION_WINDOW),
            ("replicated_deduplication_window_seconds", REPLICATED_WINDOW_SECONDS),
        )
    else:
        window = (("non_replicated_deduplication_window", schema.DEDUPLICATION_WINDOW),)
    return (*window, ("ttl_only_drop_parts", 1))


def _comment(what: str) -> str:
    return f"{schema.MANAGED_MARKER}: {what}; outlet schema apply leaves it alone"


def raw_table(layout: Layout, resolution: Resolution) -> TableObject:
    name = layout.local(schema.TABLE)
    definition = schema.TableDef(
        name=name,
        engine=_engine(layout, name, ""),
        ttl=ttl_expr(resolution.ttl),
        settings=_table_settings(layout),
        comment=_comment("raw flows"),
    )
    return TableObject(definition, resolution)


def resolution_table(layout: Layout, resolution: Resolution, max_partitions: int) -> TableObject:
    name = layout.local(resolution.table)
    span = resolution.ttl // max_partitions if resolution.ttl else FOREVER_PARTITION_SECONDS
    span = max(span, resolution.interval)
    definition = schema.TableDef(
        name=name,
        columns=schema.RESOLUTION_COLUMNS,
        engine=_engine(layout, name, "Summing", f"({', '.join(schema.SUMMED_COLUMNS)})"),
        partition_by=f"toYYYYMMDDhhmmss(toStartOfInterval(TimeReceived, toIntervalSecond({span})))",
        primary_key=f"({', '.join(schema.RESOLUTION_PRIMARY_KEY)})",
        order_by=f"({', '.join(schema.RESOLUTION_SORTING_KEY)})",
        ttl=ttl_expr(resolution.ttl),
        settings=_table_settings(layout),
        comment=_comment(f"flows aggregated per {interval_name(resolution.interval)}"),
    )
    return TableObject(definition, resolution)


def consumer_view(layout: Layout, resolution: Resolution) -> ViewObject:
    columns = [name for name, _ in schema.RESOLUTION_COLUMNS if name != "TimeReceived"]
    select = (
        f"SELECT toStartOfInterval(TimeReceived, toIntervalSecond({resolution.interval}))"
        f" AS TimeReceived, {', '.join(columns)}"
        f" FROM {layout.qualified(layout.local(schema.TABLE))}"
    )
    return ViewObject(f"{resolution.table}_consumer", layout.local(resolution.table), select)


def site_objects(
    layout: Layout, resolutions: tuple[Resolution, ...], max_partitions: int
) -> list[SiteObject]:
    """Every object, in creation order (a view after its source and target tables)."""
    out: list[SiteObject] = []
    for resolution in sorted(resolutions, key=lambda r: r.interval):
        if resolution.interval == 0:
            table = raw_table(layout, resolution)
        else:
            table = resolution_table(layout, resolution, max_partitions)
        out.append(table)
        if layout.distributed:
            columns = table.definition.columns
            out.append(DistributedObject(resolution.table, table.name, columns))
        if resolution.interval:
            out.append(consumer_view(layout, resolution))
    return out


# -- statements -------------------------------------------------------------------------


def create_view_sql(layout: Layout, view: ViewObject) -> str:
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {layout.qualified(view.name)}{layout.on_cluster}"
        f" TO {layout.qualified(view.target)}"
        f" COMMENT {schema.quote_string(_comment('feeds ' + view.target))}"
        f" AS {view.select}"
    )


def drop_view_sql(layout: Layout, name: str) -> str:
    return f"DROP VIEW IF EXISTS {layout.qualified(name)}{layout.on_cluster} SYNC"


def create_distributed_sql(layout: Layout, table: DistributedObject) -> str:
    """CREATE OR REPLACE: a Distributed table holds no data of its own."""
    cols = ", ".join(f"{name} {ctype}" for name, ctype in table.columns)
    engine = ", ".join(
        (
            schema.quote_string(layout.cluster),
            schema.quote_string(layout.database),
            schema.quote_string(table.local),
            SHARDING_KEY,
        )
    )
    return (
        f"CREATE OR REPLACE TABLE {layout.qualified(table.name)}{layout.on_cluster} ({cols})"
        f" ENGINE = Distributed({engine})"
        f" COMMENT {schema.quote_string(_comment('inserts and reads over ' + table.local))}"
    )


def alter_sql(layout: Layout, table: str, action: str) -> str:
    return f"ALTER TABLE {layout.qualified(table)}{layout.on_cluster} {action}"
