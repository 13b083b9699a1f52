"""The ClickHouse component's retry loop, in-process with a fake attempt (autojump clock).

Against real servers: tests/orchestrator/test_site_stack.py.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from orchestrator.config import parse_orchestrator_config
from orchestrator.metrics import Metrics
from orchestrator.migrations import ClickHouseManager, MigrationError, Outcome

CFG = parse_orchestrator_config(
    {"clickhousedb": {"servers": ["127.0.0.1:9"], "password": "${PW}"},
     "clickhouse": {"retry-initial-backoff": "1s", "retry-max-backoff": "8s"}},
    env={"PW": "s3cret"},
)  # fmt: skip


def run(failures: list[Exception]) -> tuple[Metrics, ClickHouseManager, float]:
    metrics = Metrics()
    calls = iter(failures)

    def attempt(cfg: object, m: Metrics) -> Outcome:
        exc = next(calls, None)
        if exc is not None:
            raise exc
        return Outcome(applied=8, up_to_date=0, seconds=0.1)

    manager = ClickHouseManager(CFG, metrics, attempt)

    async def main() -> float:
        await manager.run()
        return trio.current_time()

    elapsed = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return metrics, manager, elapsed


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_retries_with_capped_backoff_until_clickhouse_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = [ConnectionRefusedError("connection refused")] * 25
    with caplog.at_level(logging.WARNING, "orchestrator.clickhouse"):
        metrics, manager, elapsed = run(down)
    assert manager.done.is_set() and manager.last_error == ""
    assert value(metrics, "orchestrator_clickhouse_migration_attempts_total") == 26
    assert value(metrics, "orchestrator_clickhouse_migration_errors_total", error="connect") == 25
    assert value(metrics, "orchestrator_clickhouse_migrations_running") == 0
    assert value(metrics, "orchestrator_clickhouse_migrations_done_timestamp_seconds") > 0
    assert elapsed <= 25 * 8, "the backoff is capped"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # the first failure, then attempts 10 and 20
    assert "s3cret" not in "\n".join(lines)


def test_a_schema_problem_is_an_error_of_its_own_kind(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[Exception] = [ConnectionRefusedError("down"), MigrationError("db.flows is X")]
    with caplog.at_level(logging.WARNING, "orchestrator.clickhouse"):
        metrics, _, _ = run(failures)
    assert value(metrics, "orchestrator_clickhouse_migration_errors_total", error="schema") == 1
    levels = [(r.levelname, "(schema)" in r.getMessage()) for r in caplog.records]
    assert levels == [("WARNING", False), ("ERROR", True)], "one line per kind of failure"
