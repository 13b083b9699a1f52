"""Shared fixtures: a session-scoped native stack (Kafka, Toxiproxy, two ClickHouse servers).

Set STACK_DIR to reuse a running stack (`make up` then `STACK_DIR=.stack make test`); when it
is unset or unhealthy, the session starts its own stack in a temporary directory and stops
it at the end. Tests marked `stack` (or asking for the `stack` fixture) get it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos import stack as stk


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("stack"):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stk.Endpoints]:
    env_dir = os.environ.get("STACK_DIR")
    if env_dir and stk.is_healthy(env_dir):
        yield stk.Endpoints.load(env_dir)
        return
    sdir: Path = tmp_path_factory.mktemp("stack")
    timings: dict[str, float] = {}
    try:
        endpoints = stk.start_stack(sdir, timings=timings)
    except stk.StackError as e:
        pytest.fail(f"stack start failed: {e}\n{e.log_tail(40)}", pytrace=False)
    print(f"\nstack started in {timings.get('total', 0):.1f} s ({sdir})")
    try:
        yield endpoints
    finally:
        leftovers = stk.stop_stack(sdir)
        assert not leftovers, f"could not stop: {leftovers}"


@pytest.fixture(autouse=True)
def _stack_for_marked_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("stack") is not None:
        request.getfixturevalue("stack")
