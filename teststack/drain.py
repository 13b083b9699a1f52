"""Backlog drain: what one outlet process stores per second, measured on this machine now.

A backlog of unique flows is produced into a fresh topic first; then a real outlet process
(a subprocess, through the Toxiproxy addresses like production) drains it from the
beginning with a fresh consumer group, and the run ends when every destination holds every
flow. Two rates come out of one drain:

* ``flows_per_s``: flows over the time from the outlet's start to the last row, start-up
  (imports, chDB boot, the consumer group join) included: what ``make bench-outlet`` has
  always printed, meaningful for backlogs of millions of flows;
* ``steady_flows_per_s``: from the first stored row to the last, start-up left out: the
  outlet's drain capacity, already meaningful on a backlog of a few seconds. The chaos
  harness derives its load from it (``chaos run --rate-fraction``, docs/chaos.md), with
  a drain of its scenario's own shape (its destinations, its batches: chaos/rates.py).

CPU is the outlet process's user+system time after start-up (chDB runs in-process, so
decoding, enrichment and encoding are included; the ClickHouse servers' CPU is not).
``loadtest bench outlet|dualwrite`` (loadtest/bench.py) and the chaos calibration share it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from flowgen.generator import FlowGenerator, GeneratorConfig
from flowgen.producer import produce
from outlet.config import BatchConfig
from teststack import verify
from teststack.kafka import create_topic, delete_topic
from teststack.outlet_proc import (
    OutletProcess,
    apply_schema,
    free_port,
    outlet_config,
    write_config,
)
from teststack.stack import Endpoints

POLL_S = 0.1  # row-count polling of the drain: the steady rate's resolution
DRAIN_TIMEOUT_S = 600.0


@dataclass
class DrainResult:
    label: str
    destinations: list[str]
    flows: int
    seconds: float  # outlet start to the last row
    flows_per_s: float
    cpu_seconds: float
    cpu_us_per_flow: float
    machine_busy: float  # share of all cores busy during the drain (everything, not only us)
    startup_s: float = 0.0  # outlet start to the first stored row
    steady_flows_per_s: float = 0.0  # first stored row to the last


@dataclass
class Backlog:
    """A topic holding ``flows`` unique flows (seed 5), produced as fast as possible."""

    topic: str
    flows: int
    produce_s: float

    @property
    def produce_flows_per_s(self) -> float:
        return self.flows / self.produce_s if self.produce_s > 0 else 0.0


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def make_backlog(ep: Endpoints, flows: int, prefix: str = "bench") -> Backlog:
    topic = create_topic(ep, f"{prefix}-{time.time_ns()}")
    gen = FlowGenerator(GeneratorConfig(seed=5, unique=True))
    t0 = time.monotonic()
    produce(ep.kafka.bootstrap, topic, gen.records(flows))
    return Backlog(topic, flows, time.monotonic() - t0)


def drain(
    ep: Endpoints,
    topic: str,
    flows: int,
    destinations: tuple[str, ...],
    label: str,
    workdir: Path,
    batch_size: int,
    compression: str | None = None,
) -> DrainResult:
    """Run one outlet over the whole backlog; stop it when every destination holds every
    flow. Raises RuntimeError when they do not within :data:`DRAIN_TIMEOUT_S`."""
    database = f"bench_{label}_{int(time.time())}"
    cfg = outlet_config(
        ep,
        state_path=str(workdir / label / "state"),
        http_port=free_port(),
        destinations=destinations,
        topic=topic,
        consumer_group=f"bench-{label}-{time.time_ns()}",
        database=database,
        batch_size=batch_size,
        wait_time="1s",
        additional_extra={"spool": {"enable": False}},
        compression=compression,
    )
    cfg["log"]["level"] = "warning"
    run_dir = workdir / label
    run_dir.mkdir(parents=True, exist_ok=True)
    schema = run_dir / "schema.yaml"
    apply_schema(schema, write_config(schema, cfg))
    outlet = OutletProcess(run_dir, cfg)
    started = time.monotonic()
    outlet.start(wait_ready=True)
    assert outlet.proc is not None
    pid = outlet.proc.pid
    # Start-up (imports, chDB engine boot) is not per-flow work: leave it out of CPU/flow.
    startup_cpu = _cpu_seconds(pid)
    psutil.cpu_percent()  # start the machine-wide measurement window
    cpu = 0.0
    rows = 0
    first: tuple[float, int] | None = None  # (when, rows) of the first stored rows
    deadline = started + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        cpu = _cpu_seconds(pid) - startup_cpu
        rows = min(verify.count_rows(ep.clickhouse[d], database) for d in destinations)
        if rows and first is None:
            first = (time.monotonic(), rows)
        if rows >= flows:
            break
        time.sleep(POLL_S)
    ended = time.monotonic()
    busy = psutil.cpu_percent() / 100
    outlet.stop()
    if rows < flows or first is None:
        raise RuntimeError(f"{label}: only {rows}/{flows} flows stored\n{outlet.log_tail()}")
    seconds = ended - started
    t_first, rows_first = first
    steady = (flows - rows_first) / (ended - t_first) if ended > t_first else 0.0
    return DrainResult(label, list(destinations), flows, seconds, flows / seconds, cpu,
                       cpu / flows * 1e6, busy, t_first - started, steady)


@dataclass
class Calibration:
    """One backlog produced, then drained by one outlet process writing to ``drain.
    destinations`` in batches of ``batch_size`` flows, on this machine now."""

    drain: DrainResult
    backlog_produce_flows_per_s: float
    load_average: tuple[float, float, float]
    batch_size: int = BatchConfig().maximum_batch_size

    @property
    def capacity(self) -> float:
        """Flows/s this machine sustains producing and storing at once (a live load):
        the drain's and the producer's time per flow added, since a live load runs both
        on the same cores while the calibration runs them one after the other."""
        drain, produce = self.drain.steady_flows_per_s, self.backlog_produce_flows_per_s
        return 1 / (1 / drain + 1 / produce) if drain > 0 and produce > 0 else 0.0


def calibrate(ep: Endpoints, flows: int = 1_000_000,
              batch_size: int = BatchConfig().maximum_batch_size,
              destinations: tuple[str, ...] = ("local",)) -> Calibration:
    """Produce a backlog of ``flows`` and drain it into ``destinations`` (by default the
    settings of ``make bench-outlet``, a shorter backlog): tens of seconds on a 2-core
    machine."""
    backlog = make_backlog(ep, flows, prefix="calibrate")
    try:
        with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
            result = drain(ep, backlog.topic, flows, destinations, "calibrate", Path(tmp),
                           batch_size)
    finally:
        delete_topic(ep, backlog.topic)
    return Calibration(result, backlog.produce_flows_per_s, os.getloadavg(), batch_size)
