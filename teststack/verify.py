"""Read what a destination stored: counts, sums, duplicates and losses per flow.

Always reads through the server's direct URL (never the Toxiproxy one), so the
faults a test injects cannot distort the verification.
"""

from __future__ import annotations

import base64
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import clickhouse_connect

from flowgen.generator import flow_id_sql_expr, flow_index_sql_expr, unique_rows_sql_filter
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


def query(ch: ClickHouseEndpoints, sql: str, timeout: float = 10.0) -> str:
    """One statement over the direct HTTP URL, the TabSeparated body back: one request,
    cheap enough to sample row counts every second."""
    auth = base64.b64encode(f"{ch.username}:{ch.password}".encode()).decode()
    req = urllib.request.Request(ch.url + "/", data=sql.encode(), method="POST",
                                 headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return str(r.read().decode())


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


def count_rows(ch: ClickHouseEndpoints, database: str = "flows", timeout: float = 10.0) -> int:
    return int(query(ch, f"SELECT count() FROM {database}.flows", timeout).strip())


def count_rows_or_none(ch: ClickHouseEndpoints, database: str = "flows") -> int | None:
    """The row count, or None while the server cannot answer (restarting, for instance)."""
    try:
        return count_rows(ch, database, timeout=5)
    except Exception:
        return None


def run_summary(ch: ClickHouseEndpoints, run_id: int, produced: int, database: str = "flows"
                ) -> dict[str, int]:
    """What one unique-flow run (``run_id``, flows ``0..produced-1``) left in the table: rows,
    distinct flow ids, duplicates, ids never produced, Bytes sum, other runs' rows, missing."""
    sql = (f"SELECT count(), uniqExact({flow_id_sql_expr()}), "
           f"countIf({flow_index_sql_expr()} >= {produced}), sum(Bytes) "
           f"FROM {database}.flows WHERE {unique_rows_sql_filter(run_id)}")
    rows, distinct, out_of_range, bytes_sum = (
        int(x) for x in query(ch, sql, timeout=60).strip().split("\t"))
    total = count_rows(ch, database, timeout=30)
    return {
        "rows": rows, "distinct_flows": distinct, "duplicates": rows - distinct,
        "unknown_flows": out_of_range, "bytes_sum": bytes_sum,
        "foreign_rows": total - rows, "missing": produced - (distinct - out_of_range),
    }


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
    query(ch, f"TRUNCATE TABLE IF EXISTS {database}.flows", timeout=30)
