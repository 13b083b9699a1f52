"""The cost of exactly-once across processes (issue 12): ``loadtest bench ledger``.

This outlet (per-partition batches, their seals committed as Kafka offset-commit metadata
before any insert) against a baseline revision of the outlet (default: the last commit
before issue 12, one batch over every partition and a local file ledger), in one run on
the same machine:

- **high rate**: each drains the same pre-produced backlog from the beginning (fresh
  consumer groups, alternated ``--rounds`` times): flows/s and outlet CPU per flow;
- **low rate**: both consume one live stream at ``--low-rate`` flows/s at the same time
  (two consumer groups on one topic, each its own database): outlet CPU per flow, inserts
  per second, parts created per second (``system.part_log``) and Kafka commits per second.

Both write to the primary only (``local``): the ledger's cost is per batch and per
partition, whatever the destinations. The baseline runs from ``git archive <ref>
outlet`` put first on its ``sys.path``; its config is the one the test stack generates.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil

from flowgen.generator import FlowGenerator, GeneratorConfig
from flowgen.producer import produce
from outlet import metrics as names
from teststack import verify
from teststack.kafka import create_topic, delete_topic
from teststack.outlet_proc import (
    OutletProcess,
    apply_schema,
    free_port,
    outlet_config,
    write_config,
)
from teststack.paths import PROJECT_ROOT
from teststack.stack import Endpoints

BASELINE = "ab2fe42"  # main before issue 12 (the multi-datacenter merge)
TARGET = 0.02  # the bound on the CPU-per-flow overhead


class BaselineOutlet(OutletProcess):
    """An outlet process of another revision: its package first on ``sys.path``."""

    source: str = ""

    def command(self) -> list[str]:
        code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from outlet.cli import main; "
                "sys.exit(main(sys.argv[1:]))")
        return [sys.executable, "-c", code, self.source, "run", "--config",
                str(self.config_path)]


def export_revision(ref: str) -> Path:
    """``outlet/`` of revision `ref` in a temporary directory (raises on an unknown ref)."""
    data = subprocess.run(["git", "archive", ref, "outlet"], cwd=PROJECT_ROOT, check=True,
                          capture_output=True).stdout
    root = Path(tempfile.mkdtemp(prefix=f"bench-ledger-{ref}-"))
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(root, filter="data")
    return root


@dataclass
class Measure:
    label: str
    flows: int
    seconds: float
    cpu_seconds: float
    inserts: float
    parts: int
    commits: float

    @property
    def cpu_us_per_flow(self) -> float:
        return self.cpu_seconds / max(1, self.flows) * 1e6

    @property
    def flows_per_s(self) -> float:
        return self.flows / self.seconds

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_us_per_flow": self.cpu_us_per_flow,
                "flows_per_s": self.flows_per_s, "inserts_per_s": self.inserts / self.seconds,
                "parts_per_s": self.parts / self.seconds,
                "commits_per_s": self.commits / self.seconds}


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def _parts(ep: Endpoints, database: str) -> int:
    c = verify.client(ep.clickhouse["local"])
    try:
        c.command("SYSTEM FLUSH LOGS")
        return int(c.query("SELECT count() FROM system.part_log WHERE database = {d:String} "
                           "AND event_type = 'NewPart'", parameters={"d": database})
                   .result_rows[0][0])
    finally:
        c.close()


class Run:
    """One outlet (this one or the baseline) over a topic, with its own group and database."""

    def __init__(self, ep: Endpoints, workdir: Path, topic: str, label: str, batch_size: int,
                 wait_time: str, baseline: Path | None) -> None:
        self.ep, self.label = ep, label
        self.database = f"bench_ledger_{label.replace('-', '_')}_{time.time_ns()}"
        cfg = outlet_config(ep, state_path=str(workdir / label / "state"),
                            http_port=free_port(), destinations=("local",), proxied=False,
                            topic=topic, consumer_group=f"bench-{label}-{time.time_ns()}",
                            database=self.database, batch_size=batch_size,
                            wait_time=wait_time)
        cfg["log"]["level"] = "warning"
        run_dir = workdir / label
        run_dir.mkdir(parents=True, exist_ok=True)
        schema = run_dir / "schema.yaml"
        apply_schema(schema, write_config(schema, cfg))
        if baseline is None:
            self.proc = OutletProcess(run_dir, cfg)
        else:
            self.proc = BaselineOutlet(run_dir, cfg)
            self.proc.source = str(baseline)
        self.started = 0.0
        self.cpu0 = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc.start(wait_ready=True)
        assert self.proc.proc is not None
        self.cpu0 = _cpu(self.proc.proc.pid)  # start-up is not per-flow work

    def rows(self) -> int:
        return verify.count_rows(self.ep.clickhouse["local"], self.database)

    def finish(self, flows: int, seconds: float | None = None) -> Measure:
        assert self.proc.proc is not None
        cpu = _cpu(self.proc.proc.pid) - self.cpu0
        m = self.proc.metrics()
        inserts = names_value(m, names.DESTINATION_BATCHES_WRITTEN_TOTAL)
        commits = names_value(m, names.KAFKA_COMMITS_TOTAL)
        elapsed = seconds if seconds is not None else time.monotonic() - self.started
        self.proc.stop()
        return Measure(self.label, flows, elapsed, cpu, inserts, _parts(self.ep, self.database),
                       commits)


def names_value(scrape: dict[str, float], name: str) -> float:
    return sum(v for k, v in scrape.items() if k.partition("{")[0] == name)


def _wait_rows(runs: list[Run], flows: int, timeout: float = 900) -> dict[str, float]:
    """Seconds from each run's start to its last row."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(runs) and time.monotonic() < deadline:
        for r in runs:
            if r.label not in done and r.rows() >= flows:
                done[r.label] = time.monotonic() - r.started
        time.sleep(0.1)
    missing = [r.label for r in runs if r.label not in done]
    if missing:
        raise RuntimeError(f"{', '.join(missing)}: not every flow stored within {timeout:g} s")
    return done


def high_rate(ep: Endpoints, workdir: Path, baseline: Path, args: argparse.Namespace
              ) -> list[Measure]:
    topic = create_topic(ep, f"bench-ledger-high-{int(time.time())}")
    try:
        gen = FlowGenerator(GeneratorConfig(seed=5, unique=True))
        produce(ep.kafka.bootstrap, topic, gen.records(args.flows))
        out: list[Measure] = []
        for i in range(args.rounds):
            for label, base in ((f"baseline{i}", baseline), (f"ledger{i}", None)):
                run = Run(ep, workdir, topic, label, args.batch_size, "1s", base)
                run.start()
                seconds = _wait_rows([run], args.flows)[label]
                out.append(run.finish(args.flows, seconds))
                _print(out[-1], "high")
        return out
    finally:
        delete_topic(ep, topic)


def low_rate(ep: Endpoints, workdir: Path, baseline: Path, args: argparse.Namespace
             ) -> list[Measure]:
    topic = create_topic(ep, f"bench-ledger-low-{int(time.time())}")
    try:
        runs = [Run(ep, workdir, topic, "baseline-low", args.batch_size, "1s", baseline),
                Run(ep, workdir, topic, "ledger-low", args.batch_size, "1s", None)]
        for r in runs:
            r.start()
        # What an outlet still does in its first seconds after /readyz (joining its group,
        # its first queries) is not per-flow work, and at 2000 flows/s it weighs: without
        # this wait the ledger measured 1.34-1.38x, with it 0.99-1.03x (same inserts).
        time.sleep(args.low_settle)
        flows = int(args.low_rate * args.low_seconds)
        gen = FlowGenerator(GeneratorConfig(seed=6, unique=True))
        producer = threading.Thread(
            target=produce, args=(ep.kafka.bootstrap, topic, gen.records(flows), args.low_rate),
            daemon=True)
        t0 = time.monotonic()
        for r in runs:  # the window is the load's, for both
            r.started = t0
            assert r.proc.proc is not None
            r.cpu0 = _cpu(r.proc.proc.pid)
        producer.start()
        producer.join()
        _wait_rows(runs, flows)
        seconds = time.monotonic() - t0
        out = [r.finish(flows, seconds) for r in runs]
        for m in out:
            _print(m, "low")
        return out
    finally:
        delete_topic(ep, topic)


def _print(m: Measure, rate: str) -> None:
    print(f"{rate:>4} {m.label:>14}: {m.flows:,} flows in {m.seconds:.1f}s = "
          f"{m.flows_per_s:,.0f} flows/s, CPU {m.cpu_us_per_flow:.2f} us/flow, "
          f"{m.inserts / m.seconds:.2f} inserts/s, {m.parts / m.seconds:.2f} parts/s, "
          f"{m.commits / m.seconds:.2f} commits/s", flush=True)


def _mean(ms: list[Measure], key: str) -> float:
    return sum(float(m.row()[key]) for m in ms) / len(ms)


def bench(ep: Endpoints, args: argparse.Namespace) -> dict[str, Any]:
    baseline = export_revision(args.baseline)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    print(f"baseline: outlet of {args.baseline} ({baseline}); this outlet: the work tree",
          flush=True)
    high = high_rate(ep, workdir, baseline, args) if args.rates != "low" else []
    low = low_rate(ep, workdir, baseline, args) if args.rates != "high" else []
    summary: dict[str, Any] = {"baseline": args.baseline,
                               "results": [m.row() for m in high + low]}
    for rate, ms in (("high", high), ("low", low)):
        if not ms:
            continue
        base = [m for m in ms if m.label.startswith("baseline")]
        new = [m for m in ms if m.label.startswith("ledger")]
        ratios = {k: _mean(new, k) / max(1e-9, _mean(base, k))
                  for k in ("cpu_us_per_flow", "flows_per_s", "inserts_per_s", "parts_per_s",
                            "commits_per_s")}
        summary[rate] = ratios
        overhead = ratios["cpu_us_per_flow"] - 1
        print(f"{rate} rate, this outlet / baseline: CPU per flow {ratios['cpu_us_per_flow']:.3f}"
              f" ({overhead:+.1%}, target < {TARGET:.0%}), flows/s {ratios['flows_per_s']:.3f},"
              f" inserts/s {ratios['inserts_per_s']:.2f}, parts/s {ratios['parts_per_s']:.2f},"
              f" commits/s {ratios['commits_per_s']:.2f}", flush=True)
    return summary


def configure(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--baseline", default=BASELINE,
                    help=f"git revision of the outlet to compare with (default: {BASELINE}, "
                         "main before issue 12)")
    ap.add_argument("--low-rate", type=float, default=2000.0,
                    help="flows/s of the low-rate run (default: 2000)")
    ap.add_argument("--low-seconds", type=float, default=30.0,
                    help="length of the low-rate load (default: 30)")
    ap.add_argument("--low-settle", type=float, default=15.0,
                    help="seconds both outlets idle after start-up before the low-rate "
                         "window (default: 15)")
    ap.add_argument("--rates", choices=("both", "high", "low"), default="both",
                    help="which part to run: the backlog drains (high), the live stream "
                         "(low) or both (default)")
