"""The orchestrator's run loop: the configuration API and the ClickHouse component.

Both run in one nursery. The API answers from the start, before ClickHouse is reachable
(outlets get their configuration while migrations still wait for the server); /readyz
turns 200 once migrations are done. SIGTERM/SIGINT stop both and exit cleanly.
"""

from __future__ import annotations

import logging
import signal

import trio

from orchestrator.api import ConfigurationService, serve_api
from orchestrator.config import OrchestratorConfig
from orchestrator.metrics import Metrics
from orchestrator.migrations import ClickHouseManager

log = logging.getLogger("orchestrator")


class Orchestrator:
    def __init__(self, cfg: OrchestratorConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.clickhouse = ClickHouseManager(cfg, self.metrics)
        self.api = ConfigurationService(
            cfg.outlets, cfg.http.bearer_token.reveal(), self.metrics, self.ready
        )

    def ready(self) -> tuple[bool, str]:
        if self.clickhouse.done.is_set():
            return True, "migrations done"
        failure = self.clickhouse.last_failure
        return False, "migrations pending" + (f": last attempt failed ({failure})" if failure
                                              else ": in progress")

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(serve_api, self.cfg, self.api)
                auth = "bearer token required" if self.cfg.http.bearer_token else "no auth"
                log.info("api: listening on %s (%d outlet configuration(s), %s)",
                         ", ".join(binds), len(self.cfg.outlets), auth)  # fmt: skip
                nursery.start_soon(self.clickhouse.run)
                async for signum in signals:
                    log.info("orchestrator: %s received, stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
