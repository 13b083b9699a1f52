"""Shared pieces of the orchestrator's stack tests: a site (a fresh database on the stack's
`local` ClickHouse) with the processes a test starts, and outlet entries for it."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OutletRun
from teststack import stack as stk
from teststack import verify
from teststack.orchestrator_proc import OrchestratorProcess, site_config
from teststack.outlet_proc import OutletProcess, outlet_config

PW_VAR = "LOCAL_CH_PASSWORD"
_ids = itertools.count()


@dataclass
class Site:
    """A fresh database on the stack's `local` ClickHouse, and the processes of a test."""

    ep: stk.Endpoints
    workdir: Path
    database: str
    processes: list[OrchestratorProcess | OutletProcess] = field(default_factory=list)

    @property
    def ch(self) -> stk.ClickHouseEndpoints:
        return self.ep.clickhouse["local"]

    @property
    def env(self) -> dict[str, str]:
        return {PW_VAR: self.ch.password}

    def orchestrator(self, **kwargs: Any) -> OrchestratorProcess:
        cfg = site_config(self.ch, self.database, password_var=PW_VAR, **kwargs)
        o = OrchestratorProcess(self.workdir / f"orchestrator{len(self.processes)}", cfg,
                                env=self.env)  # fmt: skip
        self.processes.append(o)
        return o

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        c = verify.client(self.ch)
        try:
            return [tuple(r) for r in c.query(sql).result_rows]
        finally:
            c.close()

    def tables(self) -> dict[str, tuple[str, str, str]]:
        rows = self.query(
            "SELECT name, engine_full, toString(metadata_modification_time), comment"
            f" FROM system.tables WHERE database = '{self.database}'"
        )
        return {str(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in rows}


@pytest.fixture
def site(stack: stk.Endpoints, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    slug = re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:30]
    s = Site(stack, tmp_path, f"site_{slug}_{next(_ids)}")
    s.query(f"DROP DATABASE IF EXISTS {s.database}")
    yield s
    for p in s.processes:
        if isinstance(p, OutletProcess):
            p.kill()
        else:
            p.stop()
    stack.toxiproxy.client().reset()


def site_entry(site: Site, topic: str, http_port: int, **kwargs: Any) -> dict[str, Any]:
    """An outlet entry writing to the site's database through the proxy, password as a
    placeholder; its kafka section only tweaks the shared one (the group)."""
    cfg = outlet_config(site.ep, state_path=str(site.workdir / "state"), http_port=http_port,
                        destinations=("local",), topic=topic, database=site.database,
                        consumer_group=f"g_{topic}", wait_time="500ms", **kwargs)  # fmt: skip
    cfg["clickhousedb"]["password"] = f"${{{PW_VAR}}}"
    cfg["kafka"] = {"consumer-group": f"g_{topic}"}
    return cfg


def outlet_run_of(site: Site, topic: str, entry: dict[str, Any]) -> OutletRun:
    return OutletRun(site.ep, site.workdir, topic, site.database, ("local",), entry)


