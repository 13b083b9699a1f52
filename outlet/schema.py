"""The flows table: the ONLY place its DDL and column list live.

Akvorado-style columns (see ../shared/NOTES.md). Everything that writes or reads the
table (the codec producing Native blocks, the writer, ``outlet schema apply``, tests)
takes the column names and types from here.

Design notes:
- ``PARTITION BY toYYYYMMDD(TimeReceived)``: a batch normally spans one or two days, so
  an insert creates one or two parts. A batch whose timestamps span many days (bogus
  exporter clocks) creates one part per day; ClickHouse refuses inserts touching more
  than ``max_partitions_per_insert_block`` (default 100) partitions, which would turn
  such a batch into a poison batch retried forever. ``INSERT_SETTINGS`` turns that
  refusal into a warning; writers should send these settings with every insert.
- ``ExporterAddress LowCardinality(IPv6)`` (as in Akvorado) needs the query setting
  ``allow_suspicious_low_cardinality_types = 1`` in CREATE: it is in the DDL's SETTINGS.
- ``non_replicated_deduplication_window``: plain MergeTree deduplicates retried inserts
  (``insert_deduplication_token``) only when this is > 0; exactly-once retries rely on it.
- Resolution tables (``flows_1m0s``, ...; created by the orchestrator, not by
  ``outlet schema apply``) are fed by materialized views. A retried insert is dropped by
  the views only with ``deduplicate_blocks_in_dependent_materialized_views = 1`` (an
  insert setting, below) *and* a deduplication window on the view's target table (a
  table setting): without either, a retry that ``flows`` ignores is counted twice in the
  aggregates (measured on ClickHouse 26.9).
- Tables the orchestrator manages carry ``MANAGED_MARKER`` in their comment; ``outlet
  schema apply`` refuses to touch a database holding one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

TABLE: Final = "flows"

_BOUNDARY: Final = "Enum8('undefined' = 0, 'external' = 1, 'internal' = 2)"
_LC_STRING: Final = "LowCardinality(String)"

COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("TimeReceived", "DateTime"),
    ("SamplingRate", "UInt64"),
    ("ExporterAddress", "LowCardinality(IPv6)"),
    ("ExporterName", _LC_STRING),
    ("ExporterGroup", _LC_STRING),
    ("ExporterRole", _LC_STRING),
    ("ExporterSite", _LC_STRING),
    ("ExporterRegion", _LC_STRING),
    ("ExporterTenant", _LC_STRING),
    ("SrcAddr", "IPv6"),
    ("DstAddr", "IPv6"),
    ("SrcAS", "UInt32"),
    ("DstAS", "UInt32"),
    ("SrcNetName", _LC_STRING),
    ("DstNetName", _LC_STRING),
    ("SrcNetRole", _LC_STRING),
    ("DstNetRole", _LC_STRING),
    ("SrcNetSite", _LC_STRING),
    ("DstNetSite", _LC_STRING),
    ("SrcNetRegion", _LC_STRING),
    ("DstNetRegion", _LC_STRING),
    ("SrcNetTenant", _LC_STRING),
    ("DstNetTenant", _LC_STRING),
    ("SrcNetMask", "UInt8"),
    ("DstNetMask", "UInt8"),
    ("InIf", "UInt32"),
    ("OutIf", "UInt32"),
    ("InIfName", _LC_STRING),
    ("OutIfName", _LC_STRING),
    ("InIfDescription", _LC_STRING),
    ("OutIfDescription", _LC_STRING),
    ("InIfSpeed", "UInt32"),
    ("OutIfSpeed", "UInt32"),
    ("InIfBoundary", _BOUNDARY),
    ("OutIfBoundary", _BOUNDARY),
    ("EType", "UInt32"),
    ("Proto", "UInt32"),
    ("SrcPort", "UInt16"),
    ("DstPort", "UInt16"),
    ("Bytes", "UInt64"),
    ("Packets", "UInt64"),
    ("ForwardingStatus", "UInt32"),
    ("TCPFlags", "UInt16"),
)

COLUMN_NAMES: Final[tuple[str, ...]] = tuple(name for name, _ in COLUMNS)

PARTITION_BY: Final = "toYYYYMMDD(TimeReceived)"
ORDER_BY: Final = "(toStartOfFiveMinutes(TimeReceived), ExporterAddress, InIfName, OutIfName)"
DEDUPLICATION_WINDOW: Final = 10000

#: Settings a writer should send with every INSERT into the flows table (see module doc).
#: ``insert_distributed_sync``: on a cluster ``flows`` is a Distributed table; a
#: synchronous insert returns only once every shard stored its rows, with the token, so a
#: retry is deduplicated shard by shard (a background insert would acknowledge a local
#: queue). Ignored by plain tables. The name every release knows (22.x and later; 23.12
#: added the alias ``distributed_foreground_insert``).
INSERT_SETTINGS: Final[dict[str, str]] = {
    "throw_on_max_partitions_per_insert_block": "0",
    "deduplicate_blocks_in_dependent_materialized_views": "1",
    "insert_distributed_sync": "1",
}

#: The comment prefix of every table an orchestrator manages (``outlet schema apply``
#: refuses to alter such a database: its site's orchestrator owns the schema).
MANAGED_MARKER: Final = "managed by orchestrator"

# -- resolution tables (aggregates fed by materialized views; see orchestrator/ddl.py) --
#: Columns only the raw table keeps (per-flow detail, as Akvorado's ClickHouseMainOnly).
MAIN_ONLY_COLUMNS: Final = frozenset(
    {"SrcAddr", "DstAddr", "SrcNetMask", "DstNetMask", "SrcPort", "DstPort"}
)
#: What a resolution table sums (SummingMergeTree columns).
SUMMED_COLUMNS: Final = ("Bytes", "Packets")
#: A resolution table's primary key (Akvorado's order).
RESOLUTION_PRIMARY_KEY: Final = (
    "TimeReceived", "ExporterAddress", "EType", "Proto", "InIfName", "SrcAS",
    "ForwardingStatus", "OutIfName", "DstAS", "SamplingRate",
)  # fmt: skip
#: Aggregated columns outside the sorting key: attributes that follow from a key column
#: (exporter and interface attributes), and the sums.
NOT_SORTING_KEY_COLUMNS: Final = frozenset(
    {
        "ExporterName", "ExporterGroup", "ExporterRole", "ExporterSite", "ExporterRegion",
        "ExporterTenant", "InIf", "OutIf", "InIfDescription", "OutIfDescription",
        "InIfSpeed", "OutIfSpeed", "InIfBoundary", "OutIfBoundary", *SUMMED_COLUMNS,
    }
)  # fmt: skip
#: The columns of a resolution table, in the raw table's order.
RESOLUTION_COLUMNS: Final[tuple[tuple[str, str], ...]] = tuple(
    (name, ctype) for name, ctype in COLUMNS if name not in MAIN_ONLY_COLUMNS
)
#: A resolution table's sorting key: the primary key, then every other aggregated column
#: that is a dimension.
RESOLUTION_SORTING_KEY: Final[tuple[str, ...]] = RESOLUTION_PRIMARY_KEY + tuple(
    name
    for name, _ in RESOLUTION_COLUMNS
    if name not in NOT_SORTING_KEY_COLUMNS and name not in RESOLUTION_PRIMARY_KEY
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TTL = re.compile(
    r"^\s*(\d+)\s+(SECOND|MINUTE|HOUR|DAY|WEEK|MONTH|QUARTER|YEAR)S?\s*$", re.IGNORECASE
)


def check_identifier(name: str, what: str = "database") -> str:
    """``name`` if it is a plain identifier (safe to splice into DDL), else ValueError."""
    if not _IDENT.match(name):
        raise ValueError(f"invalid {what} name {name!r}: expected [A-Za-z_][A-Za-z0-9_]*")
    return name


def on_cluster(cluster: str) -> str:
    """The ``ON CLUSTER`` clause of a DDL statement ('' without a cluster)."""
    return f" ON CLUSTER {quote_string(cluster)}" if cluster else ""


def quote_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class TableDef:
    """What CREATE TABLE needs for a table of flows: the raw table (the defaults, which
    ``outlet schema apply`` creates) or an aggregate/replicated variant (the orchestrator).
    """

    name: str = TABLE
    columns: tuple[tuple[str, str], ...] = COLUMNS
    engine: str = "MergeTree"
    partition_by: str = PARTITION_BY
    primary_key: str = ""
    order_by: str = ORDER_BY
    ttl: str = ""  # a TTL expression; '' = keep forever
    settings: tuple[tuple[str, int], ...] = (
        ("non_replicated_deduplication_window", DEDUPLICATION_WINDOW),
    )
    comment: str = ""


def create_database_sql(db: str, cluster: str = "") -> str:
    return f"CREATE DATABASE IF NOT EXISTS {check_identifier(db)}{on_cluster(cluster)}"


def create_table_ddl(db: str, table: TableDef, cluster: str = "") -> str:
    """Idempotent (IF NOT EXISTS) CREATE TABLE for ``db.<table.name>``."""
    cols = ",\n".join(f"    {name} {ctype}" for name, ctype in table.columns)
    name = check_identifier(table.name, "table")
    lines = [
        f"CREATE TABLE IF NOT EXISTS {check_identifier(db)}.{name}{on_cluster(cluster)}"
        f"\n(\n{cols}\n)",
        f"ENGINE = {table.engine}",
        f"PARTITION BY {table.partition_by}",
    ]
    if table.primary_key:
        lines.append(f"PRIMARY KEY {table.primary_key}")
    lines.append(f"ORDER BY {table.order_by}")
    if table.ttl:
        lines.append(f"TTL {table.ttl}")
    # allow_suspicious_low_cardinality_types is a query setting (LowCardinality(IPv6) is
    # refused without it); ClickHouse applies it to this query and does not store it.
    settings = [f"{k} = {v}" for k, v in table.settings]
    settings.append("allow_suspicious_low_cardinality_types = 1")
    lines.append("SETTINGS " + ", ".join(settings))
    if table.comment:
        lines.append(f"COMMENT {quote_string(table.comment)}")
    return "\n".join(lines)


def _ttl_expr(ttl: str) -> str:
    """``"30 DAY"`` / ``"90 days"`` -> ``TimeReceived + INTERVAL 30 DAY``."""
    m = _TTL.match(ttl)
    if m is None:
        raise ValueError(f"invalid TTL {ttl!r}: expected '<N> <UNIT>', e.g. '30 DAY'")
    n = int(m.group(1))
    if n <= 0:
        raise ValueError(f"invalid TTL {ttl!r}: must be positive")
    return f"TimeReceived + INTERVAL {n} {m.group(2).upper()}"


def create_table_sql(db: str, ttl: str | None = None) -> str:
    """Idempotent DDL for ``db.flows`` as ``outlet schema apply`` creates it. ``ttl`` is an
    interval such as ``"30 DAY"``."""
    return create_table_ddl(db, TableDef(ttl=_ttl_expr(ttl) if ttl is not None else ""))


def insert_sql(db: str) -> str:
    return f"INSERT INTO {check_identifier(db)}.{TABLE} ({', '.join(COLUMN_NAMES)}) FORMAT Native"
