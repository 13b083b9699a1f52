"""Shared machinery of ``loadtest run`` and ``loadtest capacity``: outlet subprocesses, a
Locust subprocess, a 2 Hz sampler of the outlet's metrics and of Kafka, and the arithmetic
on the samples (histogram percentiles, end-to-end latency). The stack, topics, tables,
rates and metric parsing are the teststack's (shared with the chaos harness).

This module never imports Locust (Locust monkey-patches the process with gevent): Locust
runs as its own process (``python -m locust -f loadtest/locustfile.py --headless ...``), as
does each outlet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from flowgen.generator import unique_rows_sql_filter
from loadtest.loadgen import LoadSettings, RunSummary
from outlet import metrics as names
from teststack import promtext
from teststack.kafka import Watermarks
from teststack.outlet_proc import OutletProcess, destination_label, free_port, outlet_config
from teststack.paths import PROJECT_ROOT
from teststack.runs import HarnessError
from teststack.sampling import PeriodicSampler
from teststack.stack import Endpoints
from teststack.verify import TableStats, table_stats

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
BOX_NOTE = ("Measured on a 2-core machine where the Locust producer, the outlet, the Kafka "
            "broker and both ClickHouse servers (chDB) share the same two cores: absolute "
            "numbers are far below what a dedicated outlet host reaches; ratios and the method "
            "carry over.")


# clickhouse.compression for every outlet the harness starts (`--compression` of the CLIs;
# None: the outlet's default).
OUTLET_COMPRESSION: str | None = None


def add_outlet_options(ap: argparse.ArgumentParser, *, wait_time: bool = True,
                       partitions: int | bool | None = None) -> None:
    """The outlet settings every load command takes (``partitions``: the default of
    ``--partitions``, None = the stack's; False: no such option)."""
    ap.add_argument("--batch-size", type=int, default=50_000,
                    help="outlet clickhouse.maximum-batch-size (default: 50000)")
    if wait_time:
        ap.add_argument("--wait-time", default="1s",
                        help="outlet clickhouse.maximum-wait-time (default: 1s)")
    if partitions is not False:
        shown = "the stack's, 4" if partitions is None else partitions
        ap.add_argument("--partitions", type=int, default=partitions,
                        help=f"partitions of each topic (default: {shown})")
    ap.add_argument("--compression", default=None, choices=["none", "lz4"],
                    help="outlet clickhouse.compression: lz4 compresses each batch once for "
                         "every destination (default: the outlet's, lz4)")


def make_outlet(ep: Endpoints, workdir: Path, *, name: str, destinations: Sequence[str],
                topic: str, group: str, batch_size: int, wait_time: str,
                proxied: bool = False) -> OutletProcess:
    """An outlet on the direct addresses (no Toxiproxy in the data path: load tests measure
    the outlet, not the proxy), with its own state directory."""
    cfg = outlet_config(ep, state_path=str(workdir / f"{name}-state"), http_port=free_port(),
                        destinations=destinations, proxied=proxied, consumer_group=group,
                        topic=topic, batch_size=batch_size, wait_time=wait_time,
                        compression=OUTLET_COMPRESSION)
    cfg["log"] = {"level": "warning", "format": "human"}
    return OutletProcess(workdir, cfg, name=name)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------

HIST = names.DESTINATION_INSERT_DURATION_SECONDS


@dataclass
class OutletSample:
    stored: dict[str, float]  # destination name -> flows written (counter)
    received: float
    lag: float  # sum over partitions of the outlet's lag gauge
    cpu: float  # cumulative CPU seconds of the process
    alive: bool
    hist: dict[str, dict[float, float]]  # destination -> {le: cumulative count}
    hist_sum: dict[str, float]


@dataclass
class Sample:
    t: float  # seconds since the sampler's t0
    produced: int  # Kafka high watermarks minus the initial ones
    outlets: dict[str, OutletSample]

    def stored(self, dest: str) -> float:
        return sum(o.stored.get(dest, 0.0) for o in self.outlets.values())

    def lag(self) -> float:
        return sum(o.lag for o in self.outlets.values())

    def cpu(self) -> float:
        return sum(o.cpu for o in self.outlets.values())

    def to_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "produced": self.produced,
                "outlets": {n: {"stored": o.stored, "received": o.received, "lag": o.lag,
                                "cpu": round(o.cpu, 3), "alive": o.alive}
                            for n, o in self.outlets.items()}}


def scrape_outlet(o: OutletProcess, destinations: Sequence[str], cpu_base: float
                  ) -> OutletSample:
    metrics: dict[str, float] = {}
    alive = o.alive()
    if alive:
        with contextlib.suppress(OSError):
            metrics = o.metrics()
    cpu = cpu_base
    if alive and o.proc is not None:
        with contextlib.suppress(psutil.Error):
            ct = psutil.Process(o.proc.pid).cpu_times()
            cpu = ct.user + ct.system
    labels = {d: destination_label(d, destinations) for d in destinations}
    written = promtext.by_label(metrics, names.DESTINATION_FLOWS_WRITTEN_TOTAL, "destination")
    hist_sum = promtext.by_label(metrics, HIST + "_sum", "destination")
    stored = {d: written[lab] for d, lab in labels.items() if lab in written}
    hist = {d: promtext.histogram_buckets(metrics, HIST, destination=lab)
            for d, lab in labels.items()}
    hsum = {d: hist_sum[lab] for d, lab in labels.items() if lab in hist_sum}
    lag = promtext.metric_value(metrics, names.KAFKA_CONSUMERGROUP_LAG_MESSAGES)
    received = promtext.metric_value(metrics, names.FLOWS_RECEIVED_TOTAL)
    return OutletSample(stored, received, lag, cpu, alive, hist, hsum)


class Sampler(PeriodicSampler[Sample]):
    """Scrapes every outlet and the Kafka watermarks every ``interval`` seconds."""

    def __init__(self, ep: Endpoints, topic: str, outlets: dict[str, OutletProcess],
                 destinations: Sequence[str], interval: float = 0.5) -> None:
        super().__init__(interval, name="sampler")
        self.outlets = outlets
        self.destinations = list(destinations)
        self.wm = Watermarks(ep.kafka.bootstrap, topic)
        self.base = self.wm.total()
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self._cpu: dict[str, float] = {}

    def sample(self) -> Sample:
        produced = self.wm.total() - self.base
        outs = {}
        for name, o in list(self.outlets.items()):
            s = scrape_outlet(o, self.destinations, self._cpu.get(name, 0.0))
            self._cpu[name] = s.cpu
            if not s.alive and self.samples:  # keep a stopped outlet's last counters
                prev = self.samples[-1].outlets.get(name)
                if prev is not None:
                    s = OutletSample(prev.stored, prev.received, 0.0, prev.cpu, False,
                                     prev.hist, prev.hist_sum)
            outs[name] = s
        return Sample(time.monotonic() - self.t0, produced, outs)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.wm.close()

    def at_wall(self, unix_time: float) -> float:
        """Sampler time of a wall-clock (``time.time()``) instant."""
        return unix_time - self.t0_wall


# --------------------------------------------------------------------------------------------
# Locust
# --------------------------------------------------------------------------------------------

@dataclass
class LocustRun:
    proc: subprocess.Popen[bytes]
    out_dir: Path
    summary_path: Path
    started: float

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # Locust quits gracefully on SIGTERM (test_stop runs)
            try:
                return self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)

    def stop(self) -> int:
        """Early stop through the shape (a ``.stop`` file next to the summary): Locust then
        runs its normal test stop (flush, summary). SIGTERM only as a fallback."""
        if self.proc.poll() is None:
            self.summary_path.with_suffix(".stop").write_text("stop")
        return self.wait(90)

    def started_at(self) -> float | None:
        """Unix time the load started (the locustfile's test_start), once known."""
        try:
            return float(self.summary_path.with_suffix(".started").read_text())
        except (OSError, ValueError):
            return None

    def summary(self) -> RunSummary:
        if not self.summary_path.exists():
            raise HarnessError(f"Locust wrote no summary; see {self.out_dir / 'locust.log'}")
        return RunSummary.read(self.summary_path)


def start_locust(settings: LoadSettings, out_dir: Path) -> LocustRun:
    """``python -m locust -f loadtest/locustfile.py --headless`` with CSV/HTML/JSON reports
    in ``out_dir`` (``locust_stats.csv``, ``locust_stats_history.csv``, ``locust.html``,
    ``locust.json``) and its log in ``locust.log``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "producer-summary.json"
    summary.unlink(missing_ok=True)
    summary.with_suffix(".started").unlink(missing_ok=True)
    summary.with_suffix(".stop").unlink(missing_ok=True)
    env = dict(os.environ, **LoadSettings(**{**settings.__dict__,
                                             "summary": str(summary)}).to_env())
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "--csv", str(out_dir / "locust"), "--csv-full-history",
           "--html", str(out_dir / "locust.html"), "--json-file", str(out_dir / "locust"),
           "--only-summary", "--stop-timeout", "5", "--exit-code-on-error", "3"]
    log_file = (out_dir / "locust.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                            env=env, start_new_session=True)
    log_file.close()
    return LocustRun(proc, out_dir, summary, time.monotonic())


def locust_stats(out_dir: Path) -> dict[str, Any]:
    """Aggregated request stats from Locust's CSV (requests, failures, percentiles in ms)."""
    import csv

    path = out_dir / "locust_stats.csv"
    if not path.exists():
        return {}
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    if not rows:
        return {}
    row = rows[0]

    def num(k: str) -> float:
        try:
            return float(row.get(k) or 0)
        except ValueError:
            return 0.0

    return {"requests": int(num("Request Count")), "failures": int(num("Failure Count")),
            "requests_per_s": round(num("Requests/s"), 1),
            "median_ms": num("Median Response Time"),
            "avg_ms": round(num("Average Response Time"), 1), "p95_ms": num("95%"),
            "p99_ms": num("99%"), "max_ms": num("Max Response Time")}
    return {}


# --------------------------------------------------------------------------------------------
# Waiting and verifying
# --------------------------------------------------------------------------------------------

def wait_stored(sampler: Sampler, destinations: Sequence[str], expected: int, timeout: float,
                progress: bool = True) -> bool:
    """Until every destination's flows-written counter reaches ``expected``."""
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while time.monotonic() < deadline:
        s = sampler.last()
        if s is not None:
            done = all(s.stored(d) >= expected for d in destinations)
            if done:
                return True
            if progress and time.monotonic() - last_print >= 2:
                last_print = time.monotonic()
                parts = ", ".join(f"{d} {int(s.stored(d)):,}" for d in destinations)
                print(f"  draining: {parts} of {expected:,} (lag {int(s.lag()):,})",
                      flush=True)
        time.sleep(0.25)
    return False


@dataclass
class DestinationCheck:
    destination: str
    rows: int
    distinct: int
    bytes_sum: int
    expected_rows: int
    expected_bytes: int

    @property
    def ok(self) -> bool:
        return (self.rows == self.expected_rows == self.distinct
                and self.bytes_sum == self.expected_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "duplicates": self.rows - self.distinct,
                "missing": max(0, self.expected_rows - self.distinct), "ok": self.ok}


def verify(ep: Endpoints, destinations: Sequence[str], run_id: int, expected_rows: int,
           expected_bytes: int) -> list[DestinationCheck]:
    out = []
    for d in destinations:
        st: TableStats = table_stats(ep.clickhouse[d], where=unique_rows_sql_filter(run_id))
        out.append(DestinationCheck(d, st.rows, st.distinct_flows, st.bytes_sum,
                                    expected_rows, expected_bytes))
    return out


# --------------------------------------------------------------------------------------------
# Arithmetic on samples
# --------------------------------------------------------------------------------------------

def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus-style quantile from cumulative buckets {le: count} (linear within the
    bucket; None without observations; the highest finite bound if it falls in +Inf)."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def latency_percentiles(buckets: dict[float, float], hist_sum: float | None = None
                        ) -> dict[str, float | None]:
    count = max(buckets.values()) if buckets else 0.0
    out: dict[str, float | None] = {
        f"p{int(q * 100)}": _ms(histogram_quantile(q, buckets)) for q in (0.5, 0.9, 0.99)}
    out["count"] = count
    out["mean"] = _ms(hist_sum / count) if hist_sum is not None and count else None
    return out


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 1)


def crossing_times(ts: Sequence[float], cum: Sequence[float], levels: Sequence[float]
                   ) -> list[float | None]:
    """For each level (ascending), the first time the cumulative series reaches it
    (linear interpolation between samples)."""
    out: list[float | None] = []
    i = 0
    for lv in levels:
        while i < len(cum) and cum[i] < lv:
            i += 1
        if i >= len(cum):
            out.append(None)
        elif i == 0:
            out.append(ts[0])
        else:
            c0, c1 = cum[i - 1], cum[i]
            frac = (lv - c0) / (c1 - c0) if c1 > c0 else 1.0
            out.append(ts[i - 1] + (ts[i] - ts[i - 1]) * frac)
    return out


def end_to_end_latency(ts: Sequence[float], produced: Sequence[float], stored: Sequence[float],
                       lo: float = 0.0, hi: float | None = None, points: int = 400
                       ) -> dict[str, float | None]:
    """Produce -> stored latency, FIFO approximation: flow number k entered Kafka when the
    high watermarks reached k and was stored when the destination's counter reached k.
    Percentiles over ``points`` flows evenly spread over [lo, hi) of the flow numbers."""
    hi = produced[-1] if hi is None else hi
    if hi <= lo or not ts:
        return {"p50": None, "p99": None, "max": None}
    levels = [lo + (hi - lo) * (i + 0.5) / points for i in range(points)]
    t_in = crossing_times(ts, produced, levels)
    t_out = crossing_times(ts, stored, levels)
    lat = sorted(b - a for a, b in zip(t_in, t_out, strict=True)
                 if a is not None and b is not None)
    if not lat:
        return {"p50": None, "p99": None, "max": None}

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)

    return {"p50": pct(0.5), "p99": pct(0.99), "max": round(lat[-1], 2)}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
