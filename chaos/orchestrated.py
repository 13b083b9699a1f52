"""Chaos runs whose outlet is configured by an orchestrator (``outlet.orchestrator: true``).

The run's outlet configuration is served by an orchestrator process (migrations skipped:
the runner prepares the tables, as for other runs) with every password a ``${VAR}``
placeholder the outlet expands from its own environment; the outlet starts from the
orchestrator's URL and polls it (``outlet.config_refresh``). The timeline's
``add_destination`` / ``remove_destination`` change the served entry's
``additional-clickhouses``, SIGHUP the orchestrator and wait until the outlet applied the
change live (``outlet_config_reloads_total{outcome="applied"}``).

A destination the timeline adds writes to its own database (``database``, default
``flows_<name>``) on one of the stack's servers, through that server's proxy, so what it
holds is told apart from the stack destinations' tables.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.scenario import DESTINATIONS, Action, Scenario
from outlet import metrics as names
from teststack.orchestrator_proc import OrchestratorProcess, RemoteOutletProcess
from teststack.outlet_proc import OutletProcess, outlet_config, without_secrets
from teststack.prometheus import ScrapeTargets
from teststack.promtext import metric_value
from teststack.runs import HarnessError, prepare_tables
from teststack.stack import Endpoints

APPLY_TIMEOUT = 30.0  # seconds for the outlet to apply a change (it polls every second)


def password_variable(server: str) -> str:
    return f"CHAOS_{server.upper()}_PASSWORD"


@dataclass(frozen=True)
class AddedDestination:
    """A destination the timeline adds: where it writes, and its entry as served."""

    name: str
    server: str
    database: str
    entry: dict[str, Any]


def added_destinations(ep: Endpoints, sc: Scenario, state_path: str
                       ) -> dict[str, AddedDestination]:
    out: dict[str, AddedDestination] = {}
    for a in sc.timeline:
        if a.action != "add_destination":
            continue
        name, server = str(a.params["name"]), str(a.params["server"])
        database = str(a.params.get("database") or f"flows_{name}")
        cfg = outlet_config(ep, state_path=state_path, http_port=0,
                            destinations=(sc.outlet.destinations[0], server), database=database,
                            batch_size=sc.outlet.batch_size, wait_time=sc.outlet.wait_time,
                            azure_max_retries=sc.outlet.azure_max_retries)
        entry = copy.deepcopy(cfg["additional-clickhouses"][0])
        entry["name"] = name
        entry["connection"]["password"] = f"${{{password_variable(server)}}}"
        out[name] = AddedDestination(name, server, database, entry)
    return out


class Orchestrated:
    """The orchestrator of one run, its outlet process, and the timeline's changes."""

    def __init__(self, ep: Endpoints, workdir: Path, cfg: dict[str, Any], sc: Scenario,
                 scrape: ScrapeTargets | None) -> None:
        self.ep = ep
        self.workdir = workdir
        self.cfg = cfg
        self.sc = sc
        self.scrape = scrape
        self.added = added_destinations(ep, sc, str(cfg["state"]["path"]))
        # The served entry holds the placeholders of without_secrets; the outlet process
        # sets them (OutletProcess.start writes its config the same way), and those of the
        # destinations the timeline adds.
        document, _ = without_secrets(cfg)
        self.env = {password_variable(server): ep.clickhouse[server].password
                    for server in DESTINATIONS}
        self.orchestrator = OrchestratorProcess(workdir / "orchestrator", {
            "http": {"listen": "127.0.0.1:0"},
            "clickhousedb": {"servers": [ep.clickhouse["local"].url]},  # not used: no migrations
            "clickhouse": {"skip-migrations": True},
            "outlet": [document],
        })  # fmt: skip

    @property
    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = self.orchestrator.config["outlet"][0]
        return entry

    def prepare(self, topic: str) -> None:
        """The tables of the destinations the timeline adds, empty."""
        for d in self.added.values():
            prepare_tables(self.ep, self.workdir, [d.server], topic, d.database)

    def start(self) -> None:
        self.orchestrator.start()

    def outlet_process(self) -> RemoteOutletProcess:
        state = str(self.cfg["state"]["path"])
        return RemoteOutletProcess(
            self.workdir, self.cfg, env=self.env, scrape_targets=self.scrape,
            source=f"{self.orchestrator.url}#0",
            extra_args=["--state-dir", state, "--config-refresh-interval",
                        self.sc.outlet.config_refresh])  # fmt: skip

    def change(self, a: Action, outlet: OutletProcess | None) -> None:
        """Apply an add_destination / remove_destination through the orchestrator; with the
        outlet running, wait until it applied the change."""
        name = str(a.params["name"])
        current = [d for d in self.entry.get("additional-clickhouses", []) if d["name"] != name]
        if a.action == "add_destination":
            current.append(copy.deepcopy(self.added[name].entry))
        self.entry["additional-clickhouses"] = current
        before = _applied(outlet)
        outcome = self.orchestrator.reload()
        if outcome != "applied":
            raise HarnessError(f"the orchestrator did not apply the change ({outcome}):\n"
                               f"{self.orchestrator.log_tail(5)}")
        if outlet is None or before is None:
            return
        deadline = time.monotonic() + APPLY_TIMEOUT
        while (_applied(outlet) or 0) <= before:
            if time.monotonic() > deadline:
                raise HarnessError(f"the outlet did not apply {a.action} {name} within "
                                   f"{APPLY_TIMEOUT:g} s:\n{outlet.log_tail(5)}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.orchestrator.stop()


def _applied(outlet: OutletProcess | None) -> float | None:
    if outlet is None or not outlet.alive():
        return None
    try:
        return metric_value(outlet.metrics(), names.CONFIG_RELOADS_TOTAL, outcome="applied")
    except OSError:
        return None
