"""The orchestrator reloads its file (in process: a real API on a free port, migrations by a
fake attempt). SIGHUP against a real process: tests/orchestrator/test_reconfigure_stack.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from orchestrator.config import OrchestratorConfig, load_orchestrator_config
from orchestrator.metrics import Metrics
from orchestrator.migrations import ClickHouseManager, Outcome
from orchestrator.service import Orchestrator

ENV = {"PW": "s3cret"}
CONFIG = "/api/v0/orchestrator/configuration/outlet"


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "http": {"listen": "127.0.0.1:0"},
        "clickhousedb": {"servers": ["127.0.0.1:9"], "password": "${PW}"},
        "kafka": {"brokers": ["k:9092"]},
        "outlet": [{"log": {"level": "info"}}],
    }
    doc.update(changes)
    return doc


class Site:
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "orchestrator.yaml"
        self.migrations: list[OrchestratorConfig] = []
        self.metrics = Metrics()

    def write(self, doc: dict[str, Any] | str) -> None:
        self.path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))

    def load(self, path: Path) -> OrchestratorConfig:
        return load_orchestrator_config(path, ENV)

    def manager(self, cfg: OrchestratorConfig, metrics: Metrics) -> ClickHouseManager:
        def attempt(c: OrchestratorConfig, m: Metrics) -> Outcome:
            self.migrations.append(c)
            return Outcome(applied=0, up_to_date=8, seconds=0.0)

        return ClickHouseManager(cfg, metrics, attempt)

    def orchestrator(self) -> Orchestrator:
        return Orchestrator(self.load(self.path), self.metrics, self.path, self.load,
                            self.manager)  # fmt: skip

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def get(o: Orchestrator, index: int) -> tuple[int, str]:
    """What the API answers (its handler; the HTTP path is tested in test_api.py)."""
    served = o.api.handle("GET", f"{CONFIG}/{index}", {"headers": []})
    return served[0], served[1].decode()


async def _reloads(site: Site, steps: list[dict[str, Any] | str]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    async with trio.open_nursery() as nursery:
        o = site.orchestrator()
        await nursery.start(o.run)
        await o.clickhouse.done.wait()
        for step in steps:
            site.write(step)
            outcome = await o.reload()
            await o.clickhouse.done.wait()
            out.append((outcome, [get(o, i) for i in range(3)]))
        nursery.cancel_scope.cancel()
    return out


def test_reload_serves_new_entries_and_keeps_the_old_ones_on_error(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write(document())
    second = document(outlet=[{"log": {"level": "info"}}, {"log": {"level": "debug"}}])
    moved = document(http={"listen": "127.0.0.1:1"})
    steps: list[dict[str, Any] | str] = [second, "clickhousedb: [", moved]
    (ok, after), (bad, kept), (refused, still) = trio.run(_reloads, site, steps)
    assert ok == "applied" and [s for s, _ in after] == [200, 200, 404]
    assert "level: debug" in after[1][1]
    assert bad == "invalid" and kept == after, "an invalid file changes nothing"
    assert refused == "refused" and still == after
    assert site.value("orchestrator_config_reloads_total", outcome="applied") == 1
    assert site.value("orchestrator_config_reloads_total", outcome="invalid") == 1
    assert site.value("orchestrator_config_reloads_total", outcome="refused") == 1
    assert site.value("orchestrator_config_last_reload_successful") == 0
    assert len(site.migrations) == 1, "no ClickHouse setting changed: migrations not rerun"


def test_reload_runs_migrations_again_when_retention_changes(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write(document())
    longer = document(clickhouse={"resolutions": [{"interval": 0, "ttl": "30d"}]})
    [(outcome, _)] = trio.run(_reloads, site, [longer])
    assert outcome == "applied"
    assert [m.clickhouse.resolutions[0].ttl for m in site.migrations] == [15 * 86400,
                                                                          30 * 86400]
    assert site.value("orchestrator_config_last_reload_successful") == 1


@pytest.mark.parametrize("token", ["t0ken-1", ""])
def test_reload_changes_the_bearer_token(tmp_path: Path, token: str) -> None:
    site = Site(tmp_path)
    site.write(document())
    with_token = document(http={"listen": "127.0.0.1:0", "bearer-token": token})

    async def main() -> tuple[int, int]:
        async with trio.open_nursery() as nursery:
            o = site.orchestrator()
            await nursery.start(o.run)
            site.write(with_token)
            assert await o.reload() == "applied"
            anonymous = o.api.handle("GET", f"{CONFIG}/0", {"headers": []})[0]
            auth = [(b"authorization", f"Bearer {token}".encode())]
            authorized = o.api.handle("GET", f"{CONFIG}/0", {"headers": auth})[0]
            nursery.cancel_scope.cancel()
        return anonymous, authorized

    anonymous, authorized = trio.run(main)
    assert (anonymous, authorized) == ((401, 200) if token else (200, 200))
