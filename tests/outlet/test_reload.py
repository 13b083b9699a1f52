"""Where a running outlet's new configurations come from: the orchestrator poller and the
file source (in process, autojump clock). The same against real processes:
tests/orchestrator/test_reconfigure_stack.py."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import pytest
import trio
import trio.testing
import yaml

from outlet import metrics as names
from outlet.config import OutletConfig
from outlet.metrics import Metrics
from outlet.reload import FileSource, OrchestratorPoller
from outlet.remote_config import Fetched, FetchError, NotModified, RemoteConfig, RemoteSource
from tests.outlet.fakes import inline


def body(group: str) -> str:
    return yaml.safe_dump({"kafka": {"consumer-group": group},
                           "clickhousedb": {"password": "${CH_PW}"}})  # fmt: skip


class Orchestrator(RemoteConfig):
    """fetch() as the orchestrator answers: 304 for the current ETag, 200 otherwise."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(RemoteSource.parse("http://orch:8080#0"), cache_dir=tmp,
                         env={"CH_PW": "s3cret"})  # fmt: skip
        self.body = body("g1")
        self.down = False
        self.requests: list[str] = []  # If-None-Match of each request

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body.encode()).hexdigest()[:8] + '"'

    def fetch(self, etag: str = "") -> Fetched:
        self.requests.append(etag)
        if self.down:
            raise FetchError("unreachable", "connection refused", permanent=False)
        if etag == self.etag:
            raise NotModified()
        try:
            config = self._validate(self.body, self.source.text)
        except FetchError as e:
            e.etag = self.etag
            raise
        return Fetched(config, self.body, self.etag, time.time())


class Applied:
    def __init__(self, outcome: str = "applied") -> None:
        self.outcome = outcome
        self.configs: list[OutletConfig] = []

    async def __call__(self, cfg: OutletConfig) -> str:
        await trio.lowlevel.checkpoint()
        self.configs.append(cfg)
        return self.outcome


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


async def polls(poller: OrchestratorPoller, apply: Applied, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await poller.run(apply)


async def test_poller_applies_each_served_configuration_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    orch, m, apply = Orchestrator(tmp_path), Metrics(), Applied("refused")
    poller = OrchestratorPoller(orch, 10, orch.etag, m, inline)
    await polls(poller, apply, 35)
    assert orch.requests == [orch.etag] * 3 and apply.configs == [], "304s: nothing to apply"
    assert time.time() - (value(m, names.CONFIG_LAST_REFRESH_TIMESTAMP_SECONDS) or 0) < 60
    assert value(m, names.CONFIG_REFRESH_INTERVAL_SECONDS) == 10, "what OutletConfigStale uses"
    orch.body = body("g2")
    await polls(poller, apply, 30)
    assert [c.kafka.consumer_group for c in apply.configs] == ["g2"], "once, though refused"
    assert apply.configs[0].clickhousedb.password.reveal() == "s3cret", "expanded here"
    cached = orch.cache_path.read_text()
    assert "g2" in cached and "${CH_PW}" in cached and "s3cret" not in cached
    before = len(orch.requests)
    poller.poke()  # SIGHUP: a check now
    await polls(poller, apply, 0.5)
    assert len(orch.requests) == before + 1


async def test_poller_rides_out_an_orchestrator_outage(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "outlet.config")
    orch, m, apply = Orchestrator(tmp_path), Metrics(), Applied()
    poller = OrchestratorPoller(orch, 1, orch.etag, m, inline)
    await polls(poller, apply, 1.5)
    refreshed = value(m, names.CONFIG_LAST_REFRESH_TIMESTAMP_SECONDS)
    orch.down = True
    await polls(poller, apply, 25.5)
    assert value(m, names.CONFIG_REFRESH_ERRORS_TOTAL) == 25
    assert value(m, names.CONFIG_LAST_REFRESH_TIMESTAMP_SECONDS) == refreshed
    failures = [r.getMessage() for r in caplog.records if "check" in r.getMessage()]
    assert len(failures) == 3, "the first failure, then a reminder every 10"
    assert "keeps running its configuration" in failures[0]
    orch.down = False
    await polls(poller, apply, 1.5)
    assert "orchestrator answers again (after 25 failed check(s))" in caplog.text
    assert apply.configs == []


async def test_invalid_served_configuration_is_reported_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    orch, m, apply = Orchestrator(tmp_path), Metrics(), Applied()
    poller = OrchestratorPoller(orch, 1, orch.etag, m, inline)
    orch.body = yaml.safe_dump({"kafka": {"max-poll-records": "lots"}})
    with caplog.at_level(logging.ERROR, "outlet.config"):
        await polls(poller, apply, 5.5)
    assert value(m, names.CONFIG_RELOADS_TOTAL, outcome="invalid") == 1
    assert value(m, names.CONFIG_OUTDATED) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "kafka.max-poll-records: must be an integer" in lines[0]
    assert "the running configuration is kept" in lines[0]
    assert apply.configs == [] and not orch.cache_path.exists()


async def test_file_source_reads_the_file_again_when_poked(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "outlet.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"consumer-group": "g1"}}))
    m, apply = Metrics(), Applied()
    source = FileSource(path, m, inline)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, apply)
        await trio.sleep(3600)
        assert apply.configs == [], "a file is read on SIGHUP only"
        path.write_text(yaml.safe_dump({"kafka": {"consumer-group": "g2"}}))
        source.poke()
        await trio.sleep(1)
        assert [c.kafka.consumer_group for c in apply.configs] == ["g2"]
        path.write_text("kafka: [")
        source.poke()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert value(m, names.CONFIG_RELOADS_TOTAL, outcome="invalid") == 1
    assert value(m, names.CONFIG_REFRESH_ERRORS_TOTAL) is None, "orchestrator metrics only"
