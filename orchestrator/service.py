"""The orchestrator's run loop: the configuration API and the ClickHouse component.

Both run in one nursery. The API answers from the start, before ClickHouse is reachable
(outlets get their configuration while migrations still wait for the server); /readyz
turns 200 once migrations are done. SIGTERM/SIGINT stop both and exit cleanly.

SIGHUP reloads the configuration file: it is read and validated whole first (in a worker
thread); an invalid file, or a change that needs a restart (``RESTART_KEYS``: the API's
listener), is logged and counted and changes nothing. Otherwise the new outlet entries
are served from the next request on (their ETags change, so polling outlets apply them
at their next check), the token and log settings apply at once, and when the site's
ClickHouse settings changed (retention, resolutions, server) migrations run again under
the new settings (the run in progress, if any, is cancelled; /readyz is 503 until done).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path

import trio

from orchestrator.api import ConfigurationService, serve_api
from orchestrator.config import OrchestratorConfig, load_orchestrator_config
from orchestrator.metrics import Metrics
from orchestrator.migrations import ClickHouseManager
from outlet.config import ConfigError
from outlet.confspec import changed_keys
from outlet.logs import set_level, setup_logging

log = logging.getLogger("orchestrator")

#: Keys a running orchestrator cannot change (a reload changing them is refused).
RESTART_KEYS = ("http.listen", "http.tls.")
#: Keys whose change runs the migrations again.
MIGRATION_KEYS = ("clickhousedb.", "clickhouse.")

Load = Callable[[Path], OrchestratorConfig]
Manager = Callable[[OrchestratorConfig, Metrics], ClickHouseManager]


class Orchestrator:
    def __init__(
        self,
        cfg: OrchestratorConfig,
        metrics: Metrics | None = None,
        config_path: str | Path | None = None,
        load: Load = load_orchestrator_config,
        manager: Manager = ClickHouseManager,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.config_path = Path(config_path) if config_path is not None else None
        self._load = load
        self._manager = manager
        self.clickhouse = manager(cfg, self.metrics)
        self.api = ConfigurationService(
            cfg.outlets, cfg.http.bearer_token.reveal(), self.metrics, self.ready
        )
        self._migrations = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._reloading = trio.Lock()

    def ready(self) -> tuple[bool, str]:
        if self.clickhouse.done.is_set():
            return True, "migrations done"
        failure = self.clickhouse.last_failure
        return False, "migrations pending" + (f": last attempt failed ({failure})" if failure
                                              else ": in progress")

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                binds = await nursery.start(serve_api, self.cfg, self.api)
                auth = "bearer token required" if self.cfg.http.bearer_token else "no auth"
                log.info("api: listening on %s (%d outlet configuration(s), %s)",
                         ", ".join(binds), len(self.cfg.outlets), auth)  # fmt: skip
                await nursery.start(self._migrate, self.clickhouse)
                task_status.started()
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        log.info("orchestrator: SIGHUP received, reloading %s", self.config_path)
                        await self.reload()
                        continue
                    log.info("orchestrator: %s received, stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    async def _migrate(self, manager: ClickHouseManager,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._migrations = scope
            task_status.started()
            await manager.run()

    async def reload(self) -> str:
        """Read the configuration file again and apply it (see the module docstring);
        returns ``applied``, ``refused`` or ``invalid``."""
        async with self._reloading:
            if self.config_path is None or self._nursery is None:
                log.warning("reload: no configuration file (or not running)")
                return "refused"
            try:
                new = await trio.to_thread.run_sync(self._load, self.config_path)
            except ConfigError as e:
                return self._not_applied("invalid", f"{e}")
            changed = changed_keys(self.cfg, new)
            fixed = [k for k in changed if k.startswith(RESTART_KEYS)]
            if fixed:
                return self._not_applied("refused", f"{', '.join(fixed)} cannot change while "
                                                    "the orchestrator runs: restart it")
            await self._apply(new, changed, self._nursery)
            return "applied"

    def _not_applied(self, outcome: str, why: str) -> str:
        self.metrics.config_reloads.labels(outcome).inc()
        self.metrics.config_reload_ok.set(0)
        log.error("configuration reload %s, the running configuration is kept: %s", outcome, why)
        return outcome

    async def _apply(self, new: OrchestratorConfig, changed: list[str], nursery: trio.Nursery
                     ) -> None:
        old, self.cfg = self.cfg, new
        if new.log_format != old.log_format:
            setup_logging(new.log_level, new.log_format)
        elif new.log_level != old.log_level:
            set_level(new.log_level)
        before = {s.index: s.etag for s in old.outlets}
        entries = [s.index for s in new.outlets if before.get(s.index) != s.etag]
        self.api.replace(new.outlets, new.http.bearer_token.reveal())
        migrations = any(k.startswith(MIGRATION_KEYS) for k in changed)
        if migrations:
            self._migrations.cancel()
            self.clickhouse = self._manager(new, self.metrics)
            await nursery.start(self._migrate, self.clickhouse)
        self.metrics.config_reloads.labels("applied").inc()
        self.metrics.config_reload_ok.set(1)
        log.info("configuration reloaded from %s: %d outlet configuration(s) served, changed:"
                 " %s; %s", self.config_path, len(new.outlets),
                 ", ".join(map(str, entries)) or "none",
                 "migrations run again" if migrations else "migrations unchanged")  # fmt: skip
