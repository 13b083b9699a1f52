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
"""

from __future__ import annotations

import re
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
INSERT_SETTINGS: Final[dict[str, str]] = {"throw_on_max_partitions_per_insert_block": "0"}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TTL = re.compile(
    r"^\s*(\d+)\s+(SECOND|MINUTE|HOUR|DAY|WEEK|MONTH|QUARTER|YEAR)S?\s*$", re.IGNORECASE
)


def _check_db(db: str) -> str:
    if not _IDENT.match(db):
        raise ValueError(f"invalid database name {db!r}: expected [A-Za-z_][A-Za-z0-9_]*")
    return db


def _ttl_clause(ttl: str) -> str:
    """``"30 DAY"`` / ``"90 days"`` -> ``TTL TimeReceived + INTERVAL 30 DAY``."""
    m = _TTL.match(ttl)
    if m is None:
        raise ValueError(f"invalid TTL {ttl!r}: expected '<N> <UNIT>', e.g. '30 DAY'")
    n = int(m.group(1))
    if n <= 0:
        raise ValueError(f"invalid TTL {ttl!r}: must be positive")
    return f"TTL TimeReceived + INTERVAL {n} {m.group(2).upper()}"


def create_database_sql(db: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {_check_db(db)}"


def create_table_sql(db: str, ttl: str | None = None) -> str:
    """Idempotent DDL for ``db.flows``. ``ttl`` is an interval such as ``"30 DAY"``."""
    cols = ",\n".join(f"    {name} {ctype}" for name, ctype in COLUMNS)
    lines = [
        f"CREATE TABLE IF NOT EXISTS {_check_db(db)}.{TABLE}\n(\n{cols}\n)",
        "ENGINE = MergeTree",
        f"PARTITION BY {PARTITION_BY}",
        f"ORDER BY {ORDER_BY}",
    ]
    if ttl is not None:
        lines.append(_ttl_clause(ttl))
    # allow_suspicious_low_cardinality_types is a query setting (LowCardinality(IPv6) is
    # refused without it); ClickHouse applies it to this query and does not store it.
    lines.append(
        f"SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW},"
        " allow_suspicious_low_cardinality_types = 1"
    )
    return "\n".join(lines)


def insert_sql(db: str) -> str:
    return f"INSERT INTO {_check_db(db)}.{TABLE} ({', '.join(COLUMN_NAMES)}) FORMAT Native"
