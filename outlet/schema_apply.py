"""`outlet schema apply`: create the database and flows table on every destination."""

from __future__ import annotations

import dataclasses
import logging

from outlet import schema
from outlet.config import OutletConfig
from outlet.destination import ClickHouseWriter

log = logging.getLogger(__name__)


def apply_schema(cfg: OutletConfig) -> int:
    """Idempotent (IF NOT EXISTS); returns a process exit code."""
    failures = 0
    for dest in cfg.destinations():
        db = dest.connection.database
        # Connect to `default`: the target database may not exist yet.
        writer = ClickHouseWriter(dataclasses.replace(dest.connection, database="default"))
        try:
            client = writer.client()
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
