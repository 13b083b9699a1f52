"""The orchestrator's ClickHouse component: bring the site's server to the wanted schema.

One attempt = inspect (system.databases, system.tables, system.columns, and the server's
own formatting of the view queries) -> reconcile (pure: what differs from ddl.py's
objects becomes a Step of statements; what matches is skipped) -> apply the steps in
order. A second run against an up-to-date server sends no DDL at all. What cannot be
changed safely (a table of another engine, a column of another type) stops the attempt
with a MigrationError naming the table: data is never dropped to make it fit.

``ClickHouseManager.run`` retries attempts with capped exponential backoff (full
jitter) until one succeeds, Akvorado-style, logging one line when the kind of failure
changes (and every 10th attempt), and reports progress in metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from orchestrator import ddl
from orchestrator.config import OrchestratorConfig
from orchestrator.metrics import Metrics
from outlet import schema
from outlet.retry import backoff_delay, classify
from outlet.writer import ClickHouseWriter

log = logging.getLogger("orchestrator.clickhouse")

_TTL_RE = re.compile(r"\bTTL (.+?)(?: SETTINGS |$)")
_SETTINGS_RE = re.compile(r"\bSETTINGS (.+)$")
_SETTING_RE = re.compile(r"(\w+) = ('(?:[^'\\]|\\.)*'|[^,]+)")
_TO_RE = re.compile(r"\bTO (\S+)")


class MigrationError(Exception):
    """The server holds something migrations must not change by themselves."""


@dataclass(frozen=True)
class ExistingTable:
    name: str
    engine: str
    engine_full: str
    create_table_query: str
    as_select: str
    sorting_key: str
    comment: str
    columns: tuple[tuple[str, str], ...]

    @property
    def ttl(self) -> str:
        m = _TTL_RE.search(self.engine_full)
        return m.group(1).strip() if m else ""

    @property
    def settings(self) -> dict[str, str]:
        m = _SETTINGS_RE.search(self.engine_full)
        if m is None:
            return {}
        return {k: v.strip().strip("'") for k, v in _SETTING_RE.findall(m.group(1))}

    @property
    def view_target(self) -> str:
        m = _TO_RE.search(self.create_table_query)
        return m.group(1).replace("`", "") if m else ""


@dataclass(frozen=True)
class Snapshot:
    """What the server holds, as far as our objects are concerned."""

    database_exists: bool
    tables: dict[str, ExistingTable]
    canonical: dict[str, str]  # a view's SELECT as we write it -> as the server stores it


@dataclass(frozen=True)
class Statement:
    sql: str
    settings: dict[str, int]


@dataclass(frozen=True)
class Step:
    """One object brought up to date: what was found different and the statements."""

    target: str
    summary: str
    statements: tuple[Statement, ...]


# -- reconcile (pure) -------------------------------------------------------------------


def _table_step(
    layout: ddl.Layout, obj: ddl.TableObject, have: ExistingTable | None
) -> Step | None:
    d = obj.definition
    settings = layout.ddl_settings
    if have is None:
        ddl_sql = schema.create_table_ddl(layout.database, d, layout.cluster)
        return Step(layout.qualified(d.name), "create table", (Statement(ddl_sql, settings),))
    wanted_engine = d.engine.split("(", 1)[0]
    if have.engine != wanted_engine:
        raise MigrationError(
            f"{layout.qualified(d.name)} is a {have.engine} table, expected {wanted_engine}:"
            " it is not changed automatically (it may hold data); rename or drop it"
            " (docs/orchestrator.md, migrations)"
        )
    found: list[str] = []
    statements: list[Statement] = []
    actions = _column_actions(layout, obj, have)
    if actions:
        found.append("missing columns")
        statements.append(Statement(ddl.alter_sql(layout, d.name, ", ".join(actions)), settings))
    if have.ttl != d.ttl:
        found.append(f"TTL {have.ttl or 'none'} -> {d.ttl or 'none'}")
        action = f"MODIFY TTL {d.ttl}" if d.ttl else "REMOVE TTL"
        statements.append(
            Statement(ddl.alter_sql(layout, d.name, action), {**settings, **ddl.TTL_ALTER_SETTINGS})
        )
    current = have.settings
    changed = [f"{k} = {v}" for k, v in d.settings if current.get(k) != str(v)]
    if changed:
        found.append("settings " + ", ".join(changed))
        statements.append(
            Statement(
                ddl.alter_sql(layout, d.name, "MODIFY SETTING " + ", ".join(changed)), settings
            )
        )
    if not have.comment.startswith(schema.MANAGED_MARKER):
        found.append("not marked as managed (adopted)")
        action = f"MODIFY COMMENT {schema.quote_string(d.comment)}"
        statements.append(Statement(ddl.alter_sql(layout, d.name, action), settings))
    if not statements:
        return None
    return Step(layout.qualified(d.name), "; ".join(found), tuple(statements))


def _column_actions(layout: ddl.Layout, obj: ddl.TableObject, have: ExistingTable) -> list[str]:
    """ADD COLUMN for what is missing (sorting-key columns of an aggregate appended to
    its key); MigrationError for a column of another type."""
    existing = dict(have.columns)
    actions: list[str] = []
    new_keys: list[str] = []
    previous = ""
    for name, ctype in obj.definition.columns:
        if name not in existing:
            where = f" AFTER {previous}" if previous else " FIRST"
            actions.append(f"ADD COLUMN IF NOT EXISTS {name} {ctype}{where}")
            if obj.resolution.interval and name in schema.RESOLUTION_SORTING_KEY:
                new_keys.append(name)
        elif existing[name] != ctype:
            raise MigrationError(
                f"{layout.qualified(obj.name)}.{name} is {existing[name]}, expected {ctype}:"
                " column types are not changed automatically"
            )
        previous = name
    if new_keys:
        actions.append(f"MODIFY ORDER BY ({have.sorting_key}, {', '.join(new_keys)})")
    return actions


def _view_step(layout: ddl.Layout, view: ddl.ViewObject, snap: Snapshot) -> Step | None:
    have = snap.tables.get(view.name)
    create = Statement(ddl.create_view_sql(layout, view), layout.ddl_settings)
    if have is None:
        return Step(layout.qualified(view.name), "create view", (create,))
    if have.engine != "MaterializedView":
        raise MigrationError(
            f"{layout.qualified(view.name)} is a {have.engine} table, expected a materialized"
            " view: rename or drop it"
        )
    same_select = have.as_select == snap.canonical.get(view.select, view.select)
    if same_select and have.view_target == layout.qualified(view.target):
        return None
    drop = Statement(ddl.drop_view_sql(layout, view.name), layout.ddl_settings)
    return Step(layout.qualified(view.name), "view query changed: recreate", (drop, create))


def _distributed_step(
    layout: ddl.Layout, table: ddl.DistributedObject, snap: Snapshot
) -> Step | None:
    have = snap.tables.get(table.name)
    wanted = snap.canonical.get(ddl.create_distributed_sql(layout, table), "")
    if have is not None and have.engine != "Distributed":
        raise MigrationError(
            f"{layout.qualified(table.name)} is a {have.engine} table, expected Distributed"
            f" over {table.local}: rename or drop it"
        )
    if have is not None and have.columns == table.columns and have.engine_full in wanted:
        return None
    what = "create distributed table" if have is None else "distributed table changed: replace"
    sql = ddl.create_distributed_sql(layout, table)
    return Step(layout.qualified(table.name), what, (Statement(sql, layout.ddl_settings),))


def reconcile(
    layout: ddl.Layout, objects: list[ddl.SiteObject], snap: Snapshot
) -> list[tuple[str, Step | None]]:
    """Per object (database first): the Step that brings it up to date, or None."""
    steps: list[tuple[str, Step | None]] = []
    db_step = None
    if not snap.database_exists:
        sql = schema.create_database_sql(layout.database, layout.cluster)
        db_step = Step(f"database {layout.database}", "create",
                       (Statement(sql, layout.ddl_settings),))  # fmt: skip
    steps.append((f"database {layout.database}", db_step))
    for obj in objects:
        if isinstance(obj, ddl.TableObject):
            step = _table_step(layout, obj, snap.tables.get(obj.name))
        elif isinstance(obj, ddl.ViewObject):
            step = _view_step(layout, obj, snap)
        else:
            step = _distributed_step(layout, obj, snap)
        steps.append((obj.name, step))
    return steps


# -- inspect and apply (blocking, run in a worker thread) -------------------------------


def canonical_forms(
    client: Any, objects: list[ddl.SiteObject], layout: ddl.Layout
) -> dict[str, str]:
    """The server's own formatting of our view queries and Distributed engines, so that
    comparing with system.tables is exact whatever the server version writes."""
    texts: list[str] = []
    for obj in objects:
        if isinstance(obj, ddl.ViewObject):
            texts.append(obj.select)
        elif isinstance(obj, ddl.DistributedObject):
            texts.append(ddl.create_distributed_sql(layout, obj))
    if not texts:
        return {}
    params = {f"q{i}": text for i, text in enumerate(texts)}
    columns = ", ".join(f"formatQuerySingleLine({{q{i}:String}})" for i in range(len(texts)))
    row = client.query(f"SELECT {columns}", parameters=params).result_rows[0]
    return dict(zip(texts, (str(v) for v in row), strict=True))


def inspect(client: Any, layout: ddl.Layout, objects: list[ddl.SiteObject]) -> Snapshot:
    db = {"db": layout.database}
    exists = bool(
        client.query(
            "SELECT count() FROM system.databases WHERE name = {db:String}", parameters=db
        ).result_rows[0][0]
    )
    tables: dict[str, ExistingTable] = {}
    if exists:
        columns: dict[str, list[tuple[str, str]]] = {}
        for table, name, ctype in client.query(
            "SELECT table, name, type FROM system.columns WHERE database = {db:String}"
            " ORDER BY table, position",
            parameters=db,
        ).result_rows:
            columns.setdefault(table, []).append((name, ctype))
        for row in client.query(
            "SELECT name, engine, engine_full, create_table_query, as_select, sorting_key,"
            " comment FROM system.tables WHERE database = {db:String}",
            parameters=db,
        ).result_rows:
            name, engine, engine_full, create, as_select, sorting_key, comment = map(str, row)
            tables[name] = ExistingTable(
                name, engine, engine_full, create, as_select, sorting_key, comment,
                tuple(columns.get(name, ())),
            )  # fmt: skip
    return Snapshot(exists, tables, canonical_forms(client, objects, layout))


def cluster_shards(client: Any, cluster: str) -> int:
    shards = int(
        client.query(
            "SELECT countDistinct(shard_num) FROM system.clusters WHERE cluster = {c:String}",
            parameters={"c": cluster},
        ).result_rows[0][0]
    )
    if shards == 0:
        raise MigrationError(f"cluster {cluster!r} is not in the server's system.clusters")
    return shards


@dataclass
class Outcome:
    applied: int
    up_to_date: int
    seconds: float


def migrate_once(cfg: OrchestratorConfig, metrics: Metrics) -> Outcome:
    """One full attempt against the server (blocking)."""
    started = time.monotonic()
    conn = dataclasses.replace(cfg.clickhousedb, database="default")
    writer = ClickHouseWriter(conn)
    try:
        client = writer.client()
        shards = cluster_shards(client, cfg.cluster) if cfg.cluster else 1
        layout = ddl.Layout(cfg.clickhousedb.database, cfg.cluster, shards)
        objects = ddl.site_objects(
            layout, cfg.clickhouse.resolutions, cfg.clickhouse.max_partitions
        )
        plan = reconcile(layout, objects, inspect(client, layout, objects))
        applied = 0
        for target, step in plan:
            if step is None:
                metrics.migrations_not_applied.inc()
                log.debug("clickhouse: %s is up to date", target)
                continue
            log.info("clickhouse: %s: %s", step.target, step.summary)
            for statement in step.statements:
                log.debug("clickhouse: %s", statement.sql)
                client.command(statement.sql, settings=statement.settings)
            metrics.migrations_applied.inc()
            applied += 1
        return Outcome(applied, len(plan) - applied, time.monotonic() - started)
    finally:
        writer.close()


class ClickHouseManager:
    """Runs migrations until they succeed once; ``done`` is set then."""

    def __init__(
        self,
        cfg: OrchestratorConfig,
        metrics: Metrics,
        attempt: Callable[[OrchestratorConfig, Metrics], Outcome] = migrate_once,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._attempt = attempt
        self.done = trio.Event()
        self.last_error = ""
        self.last_failure = ""
        self._redact = ClickHouseWriter(cfg.clickhousedb).redact

    async def run(self) -> None:
        c = self.cfg.clickhouse
        if c.skip_migrations:
            log.info("clickhouse: migrations skipped (clickhouse.skip-migrations)")
            self.done.set()
            return
        server = self.cfg.clickhousedb.servers[0]
        log.info("clickhouse: migrating database %s on %s", self.cfg.clickhousedb.database, server)
        self.metrics.migrations_running.set(1)
        attempt, last_kind = 0, ""
        while True:
            attempt += 1
            self.metrics.migration_attempts.inc()
            try:
                outcome = await trio.to_thread.run_sync(
                    self._attempt, self.cfg, self.metrics, abandon_on_cancel=True
                )
            except Exception as exc:
                kind = "schema" if isinstance(exc, MigrationError) else classify(exc).kind
                self.metrics.migration_errors.labels(kind).inc()
                self.last_error = self._redact(str(exc)).splitlines()[0][:300]
                self.last_failure = kind  # what /readyz shows: the class, never the text
                delay = backoff_delay(attempt, c.retry_initial_backoff, c.retry_max_backoff)
                if kind != last_kind or attempt % 10 == 0:
                    level = logging.ERROR if kind in ("schema", "auth") else logging.WARNING
                    log.log(level, "clickhouse: migration attempt %d failed (%s): %s;"
                            " retrying with backoff (up to %s)", attempt, kind,
                            self.last_error, f"{c.retry_max_backoff:g}s")  # fmt: skip
                last_kind = kind
                await trio.sleep(delay)
                continue
            break
        self.metrics.migrations_running.set(0)
        self.metrics.migrations_done.set(time.time())
        self.last_error = self.last_failure = ""
        log.info(
            "clickhouse: migrations done after %d attempt(s): %d step(s) applied,"
            " %d already up to date (%.1fs)",
            attempt, outcome.applied, outcome.up_to_date, outcome.seconds,
        )  # fmt: skip
        self.done.set()
