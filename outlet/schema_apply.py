"""`outlet schema apply`: create the database and flows table on every destination.

A destination whose database an orchestrator manages (a table there carries
``schema.MANAGED_MARKER`` in its comment) is left alone: its site's orchestrator owns
the schema (TTLs, resolution tables, cluster engines) and the outlet never alters it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from outlet import schema
from outlet.config import OutletConfig
from outlet.writer import ClickHouseWriter

log = logging.getLogger(__name__)


def managed_tables(client: Any, db: str) -> list[str]:
    """Tables of ``db`` an orchestrator marked as managed."""
    rows = client.query(
        "SELECT name FROM system.tables WHERE database = {db:String}"
        " AND startsWith(comment, {marker:String}) ORDER BY name",
        parameters={"db": db, "marker": schema.MANAGED_MARKER},
    ).result_rows
    return [str(row[0]) for row in rows]


def apply_schema(cfg: OutletConfig) -> int:
    """Idempotent (IF NOT EXISTS); returns a process exit code (1 if any destination
    failed or was refused)."""
    failures = 0
    for dest in cfg.destinations():
        db = dest.connection.database
        # Connect to `default`: the target database may not exist yet.
        writer = ClickHouseWriter(dataclasses.replace(dest.connection, database="default"))
        try:
            client = writer.client()
            managed = managed_tables(client, db)
            if managed:
                failures += 1
                log.error(
                    "schema apply refused on %s (%s): database %s is managed by an"
                    " orchestrator (%s carry the comment %r); the outlet never alters it:"
                    " change its schema through that site's orchestrator",
                    dest.name, writer.server, db, ", ".join(managed), schema.MANAGED_MARKER,
                )  # fmt: skip
                continue
            client.command(schema.create_database_sql(db))
            client.command(schema.create_table_sql(db))
            log.info("schema applied on %s (%s, database %s)", dest.name, writer.server, db)
        except Exception as exc:
            failures += 1
            log.error(
                "schema apply failed on %s (%s): %s",
                dest.name,
                writer.server,
                writer.redact(str(exc)),
            )
        finally:
            writer.close()
    return 1 if failures else 0
