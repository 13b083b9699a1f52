"""Shared fixtures: a session-scoped native stack (Kafka, Toxiproxy, two ClickHouse servers).

Set STACK_DIR to reuse a running stack (`make up` then `STACK_DIR=.stack make test`); when it
is unset or unhealthy, the session starts its own stack in a temporary directory and stops
it at the end. Tests marked `stack` (or asking for the `stack` fixture) get it. When a test
marked `secure` is collected, the session's stack has the secure listeners
(teststack/secure.py; a running STACK_DIR stack without them is not reused): a run that
selects none does not pay for their start.

The multi-dc stack (`multi_dc_stack`: two Kafkas, local-a, local-b, central) is started
only by the tests that ask for it; MULTI_DC_STACK_DIR reuses a running one (`make up
TOPOLOGY=multi-dc`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from teststack import prometheus as prom
from teststack import stack as stk

SECURE_STACK = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        needs_stack = "stack" in names or "multi_dc_stack" in names or item.get_closest_marker(
            "secure")
        if needs_stack and not item.get_closest_marker("stack"):
            item.add_marker(pytest.mark.stack)
    config.stash[SECURE_STACK] = any(item.get_closest_marker("secure") for item in items)


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[stk.Endpoints]:
    secure = request.config.stash.get(SECURE_STACK, False)
    env_dir = os.environ.get("STACK_DIR")
    if env_dir and stk.is_healthy(env_dir):
        running = stk.Endpoints.load(env_dir)
        if running.secure is not None or not secure:
            yield running
            return
    sdir: Path = tmp_path_factory.mktemp("stack")
    timings: dict[str, float] = {}
    try:
        endpoints = stk.start_stack(sdir, timings=timings, secure=secure)
    except stk.StackError as e:
        pytest.fail(f"stack start failed: {e}\n{e.log_tail(40)}", pytrace=False)
    print(f"\nstack started in {timings.get('total', 0):.1f} s ({sdir}"
          f"{', secure listeners' if secure else ''})")
    try:
        yield endpoints
    finally:
        leftovers = stk.stop_stack(sdir)
        assert not leftovers, f"could not stop: {leftovers}"


@pytest.fixture(scope="session")
def multi_dc_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stk.MultiDCEndpoints]:
    env_dir = os.environ.get("MULTI_DC_STACK_DIR")
    if env_dir and stk.is_healthy(env_dir, stk.MULTI_DC):
        yield stk.MultiDCEndpoints.load(env_dir)
        return
    sdir: Path = tmp_path_factory.mktemp("multi-dc-stack")
    timings: dict[str, float] = {}
    try:
        endpoints = stk.start_multi_dc_stack(sdir, timings=timings)
    except stk.StackError as e:
        pytest.fail(f"multi-dc stack start failed: {e}\n{e.log_tail(40)}", pytrace=False)
    print(f"\nmulti-dc stack started in {timings.get('total', 0):.1f} s ({sdir})")
    try:
        yield endpoints
    finally:
        leftovers = stk.stop_stack(sdir)
        assert not leftovers, f"could not stop: {leftovers}"


@pytest.fixture(scope="session")
def prometheus(stack: stk.Endpoints) -> prom.Prometheus:
    """The session stack's Prometheus (teststack/prometheus.py), stopped with the stack."""
    try:
        return prom.start(stack.stack_dir)
    except stk.StackError as e:
        pytest.fail(f"prometheus start failed: {e}\n{e.log_tail(20)}", pytrace=False)


@pytest.fixture(autouse=True)
def _stack_for_marked_tests(request: pytest.FixtureRequest) -> None:
    # Tests on the multi-dc stack do not need the single-dc one as well.
    if (request.node.get_closest_marker("stack") is not None
            and "multi_dc_stack" not in request.fixturenames):
        request.getfixturevalue("stack")


# --- outlet runs against the stack -------------------------------------------------------

import itertools  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from flowgen.generator import FlowGenerator, GeneratorConfig  # noqa: E402
from flowgen.producer import produce  # noqa: E402
from teststack import verify  # noqa: E402
from teststack.kafka import create_topic  # noqa: E402
from teststack.outlet_proc import (  # noqa: E402
    OutletProcess,
    apply_schema,
    free_port,
    outlet_config,
)

_counter = itertools.count()


@dataclass
class OutletRun:
    """One isolated outlet run: its own topic, consumer group, databases and state."""

    ep: stk.Endpoints
    workdir: Path
    topic: str
    database: str
    destinations: tuple[str, ...]
    config: dict[str, Any]
    outlets: list[OutletProcess] = field(default_factory=list)
    produced: int = 0
    bytes_sum: int = 0

    def outlet(self, name: str = "outlet") -> OutletProcess:
        """An outlet process; a second name gets its own state dir and HTTP port."""
        config = self.config
        if self.outlets and name not in {o.name for o in self.outlets}:
            config = {**self.config, "http": {"listen": f"127.0.0.1:{free_port()}"}}
            config["state"] = {"path": str(self.workdir / f"state-{name}")}
        o = OutletProcess(self.workdir, config, name=name)
        self.outlets.append(o)
        return o

    def produce(self, count: int, rate: float | None = None, start: int | None = None) -> None:
        first = self.produced if start is None else start
        gen = FlowGenerator(GeneratorConfig(seed=7, unique=True))
        stats = produce(self.ep.kafka.bootstrap, self.topic, gen.records(count, start=first), rate)
        assert stats.failed == 0
        self.produced = max(self.produced, first + count)
        self.bytes_sum += gen.expected_bytes_sum(count, first)

    def ch(self, name: str) -> stk.ClickHouseEndpoints:
        return self.ep.clickhouse[name]

    def stats(self, name: str) -> verify.TableStats:
        return verify.table_stats(self.ch(name), self.database)

    def rows(self, name: str) -> int:
        return verify.count_rows(self.ch(name), self.database)

    def wait_rows(self, name: str, expected: int, timeout: float = 120) -> int:
        return verify.wait_rows(self.ch(name), expected, timeout, self.database)

    def wait_stable(self, name: str, quiet: float = 3.0) -> int:
        return verify.wait_stable(self.ch(name), quiet=quiet, database=self.database)


@pytest.fixture
def outlet_run(
    stack: stk.Endpoints, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OutletRun]]:
    """Factory: `outlet_run(destinations=("local", "azure"), partitions=None (the stack's),
    **outlet_config_kwargs)`."""
    runs: list[OutletRun] = []
    toxi = stack.toxiproxy.client()

    def make(destinations: tuple[str, ...] = ("local", "azure"), partitions: int | None = None,
             **kwargs: Any) -> OutletRun:
        n = next(_counter)
        slug = re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:40]
        topic = create_topic(stack, f"t{int(time.time())}_{n}_{slug}", partitions)
        database = f"db_{slug}_{n}"
        workdir = tmp_path / f"run{n}"
        workdir.mkdir()
        cfg = outlet_config(
            stack,
            state_path=str(workdir / "state"),
            http_port=free_port(),
            destinations=destinations,
            topic=topic,
            consumer_group=f"g_{topic}",
            database=database,
            **kwargs,
        )
        for name in destinations:
            c = verify.client(stack.clickhouse[name])
            try:
                c.command(f"DROP DATABASE IF EXISTS {database}")
            finally:
                c.close()
        config_path = workdir / "schema.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        apply_schema(config_path)
        run = OutletRun(stack, workdir, topic, database, destinations, cfg)
        runs.append(run)
        return run

    yield make
    for run in runs:
        for o in run.outlets:
            o.kill()
    toxi.reset()
