"""Every metric the orchestrator exports, in one place (names are part of our interface).

Names follow Akvorado's orchestrator (``akvorado_orchestrator_clickhouse_...``) with our
``orchestrator_`` prefix. Each instance owns a registry (tests run several in a process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "orchestrator"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, p = self.registry, PREFIX
        # ClickHouse component (migrations)
        self.migrations_running = Gauge(
            f"{p}_clickhouse_migrations_running",
            "1 while database migrations are in progress (or waiting for ClickHouse).",
            registry=r,
        )
        self.migrations_applied = Counter(
            f"{p}_clickhouse_migrations_applied_steps",
            "Migration steps that changed something.",
            registry=r,
        )
        self.migrations_not_applied = Counter(
            f"{p}_clickhouse_migrations_notapplied_steps",
            "Migration steps found already up to date (nothing sent).",
            registry=r,
        )
        self.migration_attempts = Counter(
            f"{p}_clickhouse_migration_attempts",
            "Migration attempts (one per try, until one succeeds).",
            registry=r,
        )
        self.migration_errors = Counter(
            f"{p}_clickhouse_migration_errors",
            "Failed migration attempts by kind: connect, timeout, auth, permanent, server,"
            " schema (needs a human), other.",
            ["error"],
            registry=r,
        )
        self.migrations_done = Gauge(
            f"{p}_clickhouse_migrations_done_timestamp_seconds",
            "Unix time the last migration run completed (0 until then).",
            registry=r,
        )
        # configuration service
        self.config_requests = Counter(
            f"{p}_configuration_requests",
            "Configuration requests by service and HTTP status.",
            ["service", "status"],
            registry=r,
        )
        self.config_entries = Gauge(
            f"{p}_configuration_entries",
            "Configurations served, per service.",
            ["service"],
            registry=r,
        )
        # configuration reloads (SIGHUP)
        self.config_reloads = Counter(
            f"{p}_config_reloads",
            "Configuration file reloads (SIGHUP) by outcome: applied, refused (a change that"
            " needs a restart) or invalid; the running configuration is kept unless applied.",
            ["outcome"],
            registry=r,
        )
        self.config_reload_ok = Gauge(
            f"{p}_config_last_reload_successful",
            "1 when the last reload applied (or none was asked), 0 when it was refused or"
            " invalid: the file on disk is not what runs.",
            registry=r,
        )
        self.config_reload_ok.set(1)
        for outcome in ("applied", "refused", "invalid"):
            self.config_reloads.labels(outcome)
        for kind in ("connect", "timeout", "auth", "permanent", "server", "schema", "other"):
            self.migration_errors.labels(kind)
