"""Read what a destination stored: counts, sums, duplicates and losses per flow.

Always reads through the server's direct URL (never the Toxiproxy one), so the
faults a test injects cannot distort the verification.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import clickhouse_connect

from flowgen.generator import flow_id_sql_expr
from teststack.stack import ClickHouseEndpoints


@dataclass(frozen=True)
class TableStats:
    rows: int
    bytes_sum: int
    distinct_flows: int

    @property
    def duplicates(self) -> int:
        return self.rows - self.distinct_flows


def client(ch: ClickHouseEndpoints, database: str = "default") -> Any:
    return clickhouse_connect.get_client(
        dsn=ch.url,
        username=ch.username,
        password=ch.password,
        database=database,
        autogenerate_session_id=False,
    )


def table_stats(ch: ClickHouseEndpoints, database: str = "flows", where: str = "1") -> TableStats:
    """Rows, sum of Bytes and distinct flow ids (generator's unique mode)."""
    c = client(ch)
    try:
        row = c.query(
            f"SELECT count(), sum(Bytes), uniqExact({flow_id_sql_expr()}) "
            f"FROM {database}.flows WHERE {where}"
        ).result_rows[0]
    finally:
        c.close()
    return TableStats(int(row[0]), int(row[1] or 0), int(row[2]))


def count_rows(ch: ClickHouseEndpoints, database: str = "flows") -> int:
    c = client(ch)
    try:
        return int(c.command(f"SELECT count() FROM {database}.flows"))
    finally:
        c.close()


def wait_rows(
    ch: ClickHouseEndpoints, expected: int, timeout: float, database: str = "flows"
) -> int:
    """Poll until the table holds at least `expected` rows (or time runs out)."""
    deadline = time.monotonic() + timeout
    rows = 0
    while time.monotonic() < deadline:
        rows = count_rows(ch, database)
        if rows >= expected:
            return rows
        time.sleep(0.5)
    return rows


def wait_stable(
    ch: ClickHouseEndpoints, quiet: float = 3.0, timeout: float = 120, database: str = "flows"
) -> int:
    """Poll until the row count stops changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last = -1
    since = time.monotonic()
    while time.monotonic() < deadline:
        rows = count_rows(ch, database)
        if rows != last:
            last, since = rows, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return rows
        time.sleep(0.5)
    return last


def reset_table(ch: ClickHouseEndpoints, database: str = "flows") -> None:
    """Empty the flows table between tests (keeps the schema)."""
    c = client(ch)
    try:
        c.command(f"TRUNCATE TABLE IF EXISTS {database}.flows")
    finally:
        c.close()
