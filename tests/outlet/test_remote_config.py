"""The outlet's remote configuration: URL forms, cache, start-up retry policy (in-process).

The same paths against a real orchestrator process: tests/orchestrator/test_api.py and
tests/orchestrator/test_site_stack.py.
"""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

import pytest
import trio
import trio.testing
import yaml

from outlet.config import ConfigError
from outlet.remote_config import (
    Fetched,
    FetchError,
    RemoteConfig,
    RemoteSource,
    StartupAborted,
    load_at_startup,
)

BODY = yaml.safe_dump(
    {
        "kafka": {"brokers": ["k:9092"], "consumer-group": "g1"},
        "clickhousedb": {"servers": ["c:8123"], "password": "${CH_PW}"},
    }
)


@pytest.mark.parametrize(
    ("text", "url", "index"),
    [
        ("http://orch:8080", "http://orch:8080/api/v0/orchestrator/configuration/outlet/0", 0),
        ("http://orch:8080#2", "http://orch:8080/api/v0/orchestrator/configuration/outlet/2", 2),
        ("https://orch/#1", "https://orch/api/v0/orchestrator/configuration/outlet/1", 1),
        ("http://orch:8080/custom/path#3", "http://orch:8080/custom/path/3", 3),
    ],
)
def test_source_url_forms(text: str, url: str, index: int) -> None:
    source = RemoteSource.parse(text)
    assert (source.url, source.index) == (url, index)


@pytest.mark.parametrize("text", ["http://orch:8080#x", "http://u:p@orch:8080", "ftp://orch"])
def test_bad_source_urls(text: str) -> None:
    with pytest.raises(ConfigError):
        RemoteSource.parse(text)


class Scripted(RemoteConfig):
    """fetch() replays a script: a FetchError raises, a string is a served body."""

    def __init__(self, tmp: Path, script: list[FetchError | str], **kwargs: object) -> None:
        super().__init__(RemoteSource.parse("http://orch:8080#1"), cache_dir=tmp,
                         env={"CH_PW": "s3cret"}, **kwargs)  # type: ignore[arg-type]  # fmt: skip
        self.script = list(script)
        self.calls = 0

    def fetch(self, etag: str = "") -> Fetched:
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, FetchError):
            raise item
        return Fetched(self._validate(item, self.source.text), item, "\"e1\"", time.time())


DOWN = FetchError("unreachable", "connection refused", permanent=False)


def start(remote: RemoteConfig, wait: float = 30.0) -> tuple[Fetched, bool, float]:
    errors: list[FetchError] = []

    async def main() -> tuple[Fetched, bool, float]:
        fetched, cached = await load_at_startup(remote, wait=wait, on_error=errors.append)
        return fetched, cached, trio.current_time()

    fetched, cached, now = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return fetched, cached, now


def test_retries_while_unreachable_then_caches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote = Scripted(tmp_path, [DOWN] * 12 + [BODY])
    with caplog.at_level(logging.WARNING, "outlet.config"):
        fetched, cached, elapsed = start(remote)
    assert not cached and remote.calls == 13
    assert fetched.config.clickhousedb.password.reveal() == "s3cret", "expanded by the outlet"
    assert fetched.config.kafka.consumer_group == "g1"
    # One line for the class of failure, then a reminder every 10 attempts; backoff capped.
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("(unreachable)" in line for line in lines), lines
    assert elapsed <= 12 * 30
    text = remote.cache_path.read_text()
    assert "${CH_PW}" in text and "s3cret" not in text, "the cache holds placeholders only"
    assert stat.S_IMODE(remote.cache_path.stat().st_mode) == 0o600
    assert remote.load_cache() is not None


def test_starts_from_cache_when_orchestrator_stays_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Scripted(tmp_path, [BODY])
    start(first)
    remote = Scripted(tmp_path, [DOWN])
    with caplog.at_level(logging.WARNING, "outlet.config"):
        fetched, cached, elapsed = start(remote, wait=20)
    assert cached and fetched.config.kafka.consumer_group == "g1"
    assert 20 <= elapsed < 21, "gives the orchestrator `wait` seconds, then starts"
    assert any("starting from the configuration cached" in r.getMessage() for r in caplog.records)


def test_no_cache_means_waiting_for_the_orchestrator(tmp_path: Path) -> None:
    remote = Scripted(tmp_path, [DOWN] * 40 + [BODY])
    _, cached, elapsed = start(remote, wait=5)
    assert not cached and remote.calls == 41 and elapsed > 5


@pytest.mark.parametrize("kind", ["not-found", "auth", "invalid"])
def test_permanent_failures_stop_the_start(tmp_path: Path, kind: str) -> None:
    start(Scripted(tmp_path, [BODY]))  # a cache exists, yet a permanent failure is not masked
    remote = Scripted(tmp_path, [DOWN, FetchError(kind, f"answered {kind}", permanent=True)])
    with pytest.raises(StartupAborted, match=f"answered {kind}"):
        start(remote)
    assert remote.calls == 2


def test_invalid_served_configuration_names_keys(tmp_path: Path) -> None:
    remote = Scripted(tmp_path, ["kafka: {max-poll-records: lots}\n"])
    with pytest.raises(StartupAborted) as info:
        start(remote)
    assert "kafka.max-poll-records: must be an integer" in str(info.value)
    assert "http://orch:8080#1" in str(info.value)
    assert not remote.cache_path.exists(), "a bad configuration never replaces the cache"


def test_cache_of_another_source_or_corrupt_is_ignored(tmp_path: Path) -> None:
    start(Scripted(tmp_path, [BODY]))
    other = RemoteConfig(RemoteSource.parse("http://other:8080#1"), cache_dir=tmp_path)
    assert other.load_cache() is None
    remote = Scripted(tmp_path, [BODY])
    remote.cache_path.write_text("garbage\n" + BODY)
    assert remote.load_cache() is None


def test_state_dir_replaces_the_served_state_path(tmp_path: Path) -> None:
    served = yaml.safe_dump({"state": {"path": "/elsewhere"}})
    remote = Scripted(tmp_path, [served], state_path=str(tmp_path / "state"))
    fetched, _, _ = start(remote)
    assert fetched.config.state_path == str(tmp_path / "state")
