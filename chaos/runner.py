"""Play a chaos scenario against the native stack and check its invariants.

One run (:func:`run_scenario`):

1. bring the stack up, or reuse a healthy one; ``POST /reset`` on Toxiproxy;
2. apply the schema (direct URLs) and empty the flows tables on both servers;
3. create a fresh topic ``chaos-<scenario>-<timestamp>`` (the stack's partition count)
   and use a fresh consumer group, so runs never see each other's data or offsets;
4. start the outlet (dual-write, every connection through Toxiproxy) and wait for
   ``/readyz``;
5. produce unique flows (``flowgen.generator`` unique mode, run id in the flow id) at the
   scenario's rate in a background thread, sample rows/metrics once a second in another,
   and play the timeline in the main thread;
6. stop the load, heal everything (Toxiproxy reset, outlet started if needed), wait until
   quiet: row counts stable on both servers and the consumer group's committed offsets
   at the high watermarks;
7. check the invariants, stop the outlet with SIGTERM, delete the topic, write
   ``reports/chaos/<scenario>/`` (see ``chaos/report.py``).

Row counts and flow ids are always read through the servers' direct URLs, never through
Toxiproxy, so the faults cannot distort the verification.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import alerts
from chaos.orchestrated import Orchestrated
from chaos.results import (
    Check,
    Event,
    RunResult,
    Sample,
    metric_value,
    reported_loss,
)
from chaos.scenario import (
    Action,
    DestinationExpectation,
    LagExpectation,
    MetricAssertion,
    MetricSelector,
    Scenario,
    ThroughputExpectation,
    format_duration,
    merge_overrides,
)
from flowgen.producer import UniqueFlowsThread
from outlet import metrics as names
from teststack import stack as stk
from teststack import tmpfs
from teststack.kafka import consumer_lag, create_topic, delete_topic
from teststack.outlet_proc import OutletProcess, free_port, outlet_config
from teststack.paths import REPORTS_DIR as _ALL_REPORTS
from teststack.runs import (
    HarnessError,
    fresh_run,
    prepare_tables,
    reuse_or_start,
    reuse_or_start_multi_dc,
)
from teststack.sampling import PeriodicSampler
from teststack.series import window_rate
from teststack.stack import Endpoints
from teststack.verify import count_rows_or_none, run_summary

log = logging.getLogger("chaos.runner")

REPORTS_DIR = _ALL_REPORTS / "chaos"
SAMPLE_INTERVAL = 1.0
QUIET_SECONDS = 4.0


class Outlet:
    """An :class:`OutletProcess` whose counters survive restarts: before each stop or
    kill the metrics are scraped and the counters (``*_total``) carried over, so totals
    over the run are the sums over the outlet's incarnations."""

    def __init__(self, proc: OutletProcess) -> None:
        self.proc = proc
        self.carry: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.exit_codes: list[int] = []
        self.paused = False
        self._lock = threading.Lock()

    def scrape(self) -> dict[str, float] | None:
        if not self.proc.alive():
            return None
        try:
            m = self.proc.metrics()
        except Exception:
            return None
        with self._lock:
            self.last = m
        return m

    def _retire(self) -> None:
        self.scrape()
        with self._lock:
            for k, v in self.last.items():
                if k.partition("{")[0].endswith("_total"):
                    self.carry[k] = self.carry.get(k, 0.0) + v
            self.last = {}

    def totals(self) -> dict[str, float]:
        """Counters summed over incarnations; gauges from the current one."""
        with self._lock:
            out = dict(self.last)
            for k, v in self.carry.items():
                out[k] = out.get(k, 0.0) + v
            return out

    def start(self) -> None:
        self.proc.start(wait_ready=True, timeout=60)

    def wait_ready(self, timeout: float = 60) -> bool:
        return self.proc.wait_ready(timeout)

    def kill(self) -> None:
        self._retire()
        self.proc.kill()
        self.exit_codes.append(-9)

    def stop(self) -> int:
        self._retire()
        rc = self.proc.stop(timeout=90)
        self.exit_codes.append(rc)
        return rc

    def pause(self) -> None:
        """SIGSTOP (a process frozen past its session timeout: a lost assignment)."""
        self.scrape()
        with self._lock:
            self.paused = True
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        with self._lock:
            self.paused = False

    def _signal(self, signum: int) -> None:
        proc = self.proc.proc
        if proc is None or proc.poll() is not None:
            raise HarnessError(f"{self.proc.name} is not running")
        os.killpg(proc.pid, signum)


class Group:
    """The run's outlet processes: one, or the members of one consumer group
    (``outlet.processes``). Outlet actions address a member (``member: 1..N``, default
    1); metrics are the sums over the members (counters over their incarnations)."""

    def __init__(self, members: list[Outlet]) -> None:
        self.members = members
        self.down: set[int] = set()  # members stopped or killed (1-based)

    def member(self, number: int | None) -> Outlet:
        return self.members[(number or 1) - 1]

    @property
    def running(self) -> bool:
        return not self.down

    def scrape(self) -> dict[str, float] | None:
        """Every running member's metrics, summed (None: none answered)."""
        scrapes = [m.scrape() if not m.paused else m.last for m in self.members]
        answered = [x for x in scrapes if x]
        return _summed(answered) if answered else None

    def totals(self) -> dict[str, float]:
        return _summed([m.totals() for m in self.members])

    def start(self) -> None:
        for m in self.members:
            m.start()

    def wait_ready(self, timeout: float = 60) -> bool:
        return all(m.wait_ready(timeout) for m in self.members)

    def stop_all(self) -> list[int | None]:
        """The final SIGTERM of every member still running (None: it was not); a member
        left paused by a failed run is resumed first."""
        for m in self.members:
            if m.paused and m.proc.alive():
                m.resume()
        return [m.stop() if m.proc.alive() else None for m in self.members]

    @property
    def log_paths(self) -> list[Path]:
        return [m.proc.log_path for m in self.members]


def _summed(scrapes: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for sc in scrapes:
        for k, v in sc.items():
            out[k] = out.get(k, 0.0) + v
    return out


# ---------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------


class LoadThread(UniqueFlowsThread):
    """Produces unique flows 0..N-1 of ``run_id`` at a changeable rate until ``duration``."""

    def __init__(self, bootstrap: str, topic: str, rate: float, duration: float, run_id: int,
                 seed: int, flows_per_record: int) -> None:
        quiet = logging.getLogger("chaos.runner.producer")  # broker restarts: no stderr flood
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        super().__init__(bootstrap, topic, run_id, rate=rate, duration=duration, seed=seed,
                         flows_per_record=flows_per_record, config={"logger": quiet},
                         name="chaos-load")


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------


class Sampler(PeriodicSampler[Sample]):
    def __init__(self, run: Run) -> None:
        super().__init__(SAMPLE_INTERVAL, name="chaos-sampler")
        self.run_ = run

    def sample(self) -> Sample:
        r = self.run_
        m = r.outlet.scrape()
        tot = r.outlet.totals() if m is not None else None
        rows = {d: count_rows_or_none(r.ep.clickhouse[d]) for d in r.sc.outlet.destinations}

        def per_dest(name: str) -> dict[str, float | None]:
            return {d: (metric_value(tot, name, destination=r.sc.metric_destination(d))
                        if tot is not None else None) for d in r.sc.outlet.destinations}

        return Sample(
            t=round(time.monotonic() - r.t0, 3),
            produced=r.load.produced if r.load else 0,
            rate=(r.load.rate or 0.0) if r.load and r.load.is_alive() else 0.0,
            rows=rows,
            written=per_dest(names.DESTINATION_FLOWS_WRITTEN_TOTAL),
            lost=per_dest(names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL),
            lag=metric_value(m, names.KAFKA_CONSUMERGROUP_LAG_MESSAGES) if m else None,
            pending=metric_value(m, names.COMMIT_PENDING_FLOWS) if m else None,
            paused=metric_value(m, names.KAFKA_PAUSED) if m else None,
            outlet_up=m is not None,
        )


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


@dataclass
class Run:
    sc: Scenario
    ep: Endpoints
    stack_dir: Path
    report_dir: Path
    outlet: Group
    topic: str
    group: str
    run_id: int
    t0: float = 0.0
    load: LoadThread | None = None
    events: list[Event] = field(default_factory=list)
    orchestrated: Orchestrated | None = None  # outlet.orchestrator: true
    spool_disk: Path | None = None  # the spools' tmpfs (outlet.spool_tmpfs)

    def tables(self) -> dict[str, tuple[str, str]]:
        """Every destination's (stack server, database): the stack's, then those the
        timeline adds."""
        out = {d: (d, "flows") for d in self.sc.outlet.destinations}
        if self.orchestrated is not None:
            out.update({d.name: (d.server, d.database)
                        for d in self.orchestrated.added.values()})
        return out

    # -- timeline ---------------------------------------------------------------------------
    def execute(self, a: Action) -> None:
        tp = self.ep.toxiproxy.client()
        p = a.params
        name = a.action
        if name == "add_toxic":
            tp.add_toxic(a.proxy or "", p["type"], p.get("attributes") or {},
                         stream=p.get("stream", "downstream"),
                         toxicity=float(p.get("toxicity", 1.0)), name=p["name"])
        elif name == "remove_toxic":
            tp.remove_toxic(a.proxy or "", p["name"])
        elif name == "disable_proxy":
            tp.disable(a.proxy or "")
        elif name == "enable_proxy":
            tp.enable(a.proxy or "")
        elif name.endswith("_outlet"):
            self._outlet_action(name, p)
        elif name == "restart_clickhouse":
            stk.restart_clickhouse(self.stack_dir, p["target"])
        elif name == "restart_kafka":
            stk.restart_kafka(self.stack_dir)
        elif name == "set_rate":
            if self.load is not None:
                self.load.rate = float(p["rate"])
        elif name in ("add_destination", "remove_destination"):
            if self.orchestrated is None:  # validated earlier
                raise HarnessError(f"{name} needs outlet.orchestrator: true")
            first = self.outlet.member(1)
            self.orchestrated.change(a, first.proc if 1 not in self.outlet.down else None)
        elif name == "fill_disk":
            assert self.spool_disk is not None  # validated: needs outlet.spool_tmpfs
            tmpfs.fill(self.spool_disk, int(p.get("leave", 0)))
        elif name == "free_disk":
            assert self.spool_disk is not None
            tmpfs.release(self.spool_disk)
        else:  # validated earlier
            raise HarnessError(f"unknown action {name}")

    def _outlet_action(self, name: str, p: dict[str, Any]) -> None:
        number = int(p.get("member") or 1)
        o = self.outlet.member(number)
        if name == "pause_outlet":
            o.pause()
        elif name == "resume_outlet":
            o.resume()
        elif name == "kill_outlet":
            if p.get("pending"):
                _wait_pending(o)
            o.kill()
            self.outlet.down.add(number)
        elif name == "stop_outlet":
            rc = o.stop()
            self.outlet.down.add(number)
            if rc != 0:
                raise HarnessError(f"outlet exited with {rc} on SIGTERM")
        elif name == "start_outlet":
            o.start()
            self.outlet.down.discard(number)
        elif name == "restart_outlet":
            self.outlet.down.add(number)
            if p.get("graceful", True):
                rc = o.stop()
                if rc != 0:
                    raise HarnessError(f"outlet exited with {rc} on SIGTERM")
            else:
                o.kill()
            o.start()
            self.outlet.down.discard(number)
        else:  # validated earlier
            raise HarnessError(f"unknown action {name}")

    def play(self, timeline: tuple[Action, ...]) -> None:
        play_timeline(timeline, self.t0, self.execute, self.events)


PENDING_WAIT = 10.0  # seconds kill_outlet(pending) waits for a batch in flight at most


def _wait_pending(o: Outlet) -> None:
    """Until the outlet holds sealed batches not committed yet (what a crash must leave
    for the partitions' next owner to rebuild), at most PENDING_WAIT: a scenario about
    rebuilds must not depend on where in a batch's short life the kill falls."""
    deadline = time.monotonic() + PENDING_WAIT
    while time.monotonic() < deadline:
        m = o.scrape()
        if m is None or m.get(names.COMMIT_PENDING_FLOWS, 0) > 0:
            return
        time.sleep(0.05)


def play_timeline(timeline: tuple[Action, ...], t0: float, execute: Callable[[Action], None],
                  events: list[Event]) -> None:
    """Execute each action at its time (seconds after ``t0``), recording what happened."""
    for a in timeline:
        delay = t0 + a.at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        started = time.monotonic() - t0
        ok, err = True, ""
        try:
            execute(a)
        except Exception as e:
            ok, err = False, f"{type(e).__name__}: {e}"
            log.error("%s: %s failed: %s", a.path, a.action, err)
        ended = time.monotonic() - t0
        params = {k: v for k, v in a.params.items()}
        events.append(Event(a.at, round(started, 3), round(ended, 3), a.action,
                            a.label, params, ok, err))
        print(f"  [{started:6.1f}s] {a.action:<18} {a.describe()}"
              + ("" if ok else f"  FAILED: {err}"), flush=True)


def wait_quiet(run: Run, timeout: float, quiet: float = QUIET_SECONDS
               ) -> tuple[bool, float, str]:
    """Until every destination's count is stable for ``quiet`` s and the group has
    committed everything. Returns (quiet?, seconds waited, last state)."""
    t0 = time.monotonic()
    last: dict[str, int | None] = {}
    since = time.monotonic()
    state = ""
    while time.monotonic() - t0 < timeout:
        rows = {d: count_rows_or_none(run.ep.clickhouse[server], database)
                for d, (server, database) in run.tables().items()}
        if rows != last or any(v is None for v in rows.values()):
            last, since = rows, time.monotonic()
        lag = consumer_lag(run.ep, run.topic, run.group)
        m = run.outlet.scrape() or {}
        spooled = metric_value(m, names.SPOOL_BATCHES) if run.sc.expect.wait_for_spool else 0
        queued = metric_value(m, names.DESTINATION_QUEUED_BATCHES)
        state = (f"rows {rows}, committed lag {lag}, queued batches {queued:g}, "
                 f"spooled batches {spooled:g}")
        if (lag == 0 and spooled == 0 and queued == 0
                and time.monotonic() - since >= quiet):
            return True, time.monotonic() - t0, state
        time.sleep(0.5)
    return False, time.monotonic() - t0, state


def throughput(samples: list[Sample], dest: str, window: tuple[float, float]
               ) -> tuple[float | None, float | None]:
    """(stored flows/s, offered flows/s) on ``dest`` during ``window``."""
    ts = [s.t for s in samples]
    return (window_rate(ts, [s.rows.get(dest) for s in samples], window),
            window_rate(ts, [float(s.produced) for s in samples], window))


def _passwords(cfg: dict[str, Any]) -> list[str]:
    """Every password of an outlet config (primary and additional destinations)."""
    out = [str(cfg.get("clickhousedb", {}).get("password") or "")]
    for extra in cfg.get("additional-clickhouses") or []:
        out.append(str((extra.get("connection") or {}).get("password") or ""))
    return [p for p in out if len(p) >= 4]


def _leaked_secrets(log_path: Path, secrets: list[str]) -> list[str]:
    """Which destination passwords appear in the log (named by position, never printed)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    return [f"password #{i + 1}" for i, s in enumerate(secrets) if s in text]


def check_invariants(run: Run, samples: list[Sample], n: int, bytes_sum: int,
                     metrics: dict[str, float], tables: dict[str, dict[str, Any]]
                     ) -> list[Check]:
    sc = run.sc
    checks: list[Check] = []
    for d, t in tables.items():
        if t["unknown_flows"] or t["foreign_rows"]:
            checks.append(Check(f"{d}: only this run's flows", "0 foreign/unknown rows",
                                f"{t['foreign_rows']} foreign, {t['unknown_flows']} unknown",
                                False))
    for e in sc.expect.destinations:
        label = sc.metric_destination(e.destination)
        reported = reported_loss(metrics, label)
        written = int(metric_value(metrics, names.DESTINATION_FLOWS_WRITTEN_TOTAL,
                                   destination=label))
        checks.extend(destination_checks(e, tables[e.destination], n, bytes_sum, reported,
                                         written))
    for tp in sc.expect.throughput:
        checks.append(throughput_check(tp, throughput(samples, tp.destination, tp.window),
                                       throughput(samples, tp.destination, tp.baseline)))
    checks.extend(metric_checks(sc.expect.metrics, metrics))
    end = run.load.t_end - run.t0 if run.load else sc.load.duration
    for lg in sc.expect.lags:
        checks.append(lag_check(lg, samples, end,
                                lambda s: (float(s.produced), s.rate or sc.load.rate)))
    return checks


Rates = tuple[float | None, float | None]  # (stored flows/s, offered flows/s)


def throughput_check(tp: ThroughputExpectation, window: Rates, baseline: Rates) -> Check:
    """Stored rate relative to the offered rate in the same window (``against: offered``:
    the rate the producer really offered; a producer short of its target lowers the bar
    with it), or that share compared with the same share in the baseline (``against:
    baseline``: a producer slowed down by a busy machine lowers both and does not count
    against the outlet; an outlet that falls behind does)."""
    (win, win_off), (base, base_off) = window, baseline
    name = (f"{tp.destination}: throughput {format_duration(tp.window[0])}-"
            f"{format_duration(tp.window[1])}")
    if tp.against == "offered":
        expected = f">= {tp.min_percent:g}% of offered (stored/offered)"
        if not (win is not None and win_off):
            return Check(name, expected, f"no data (stored {win}, offered {win_off})", False)
        pct = 100.0 * win / win_off
        return Check(name, expected, f"{pct:.1f}% (stored {win:.0f}/offered {win_off:.0f} "
                     "flows/s)", pct >= tp.min_percent)
    expected = (f">= {tp.min_percent:g}% of baseline {format_duration(tp.baseline[0])}-"
                f"{format_duration(tp.baseline[1])} (stored/offered)")
    if not (win is not None and base and win_off and base_off):
        return Check(name, expected, f"no data (window {win}, baseline {base})", False)
    # A baseline above 100% of offered is the outlet catching up on records queued
    # before the window: it could keep up, so count it as 100%.
    pct = 100.0 * (win / win_off) / min(1.0, base / base_off)
    return Check(name, expected,
                 f"{pct:.1f}% (stored {win:.0f}/offered {win_off:.0f} flows/s vs "
                 f"baseline {base:.0f}/{base_off:.0f})", pct >= tp.min_percent)


def metric_checks(assertions: tuple[MetricAssertion, ...], metrics: dict[str, float]
                  ) -> list[Check]:
    def val(x: MetricSelector | float) -> float:
        return x if isinstance(x, float) else metric_value(metrics, x)

    out = []
    for ma in assertions:
        left, right = val(ma.lhs), val(ma.rhs)
        out.append(Check(f"metric: {ma.text}", f"{ma.lhs} {ma.op} {right:g}", f"{left:g}",
                         ma.compare(left, right)))
    return out


def lag_check(lg: LagExpectation, samples: list[Sample], end: float,
              offered: Callable[[Sample], tuple[float, float]]) -> Check:
    """From ``lg.after`` to ``end``, the backlog on ``lg.destination`` (offered minus
    stored) in seconds of load; ``offered(sample)`` is (flows offered so far, rate)."""
    worst, worst_t = 0.0, None
    for s in samples:
        if not lg.after <= s.t <= end:
            continue
        stored = s.rows.get(lg.destination)
        produced, rate = offered(s)
        if stored is None or rate <= 0:
            continue
        secs = max(0, produced - stored) / rate
        if secs > worst:
            worst, worst_t = secs, s.t
    return Check(
        f"{lg.destination}: end-to-end lag after {format_duration(lg.after)}",
        f"<= {lg.max_seconds:g} s of load",
        f"{worst:.1f} s" + (f" at {worst_t:.0f}s" if worst_t is not None else ""),
        worst <= lg.max_seconds)


def destination_checks(e: DestinationExpectation, t: dict[str, Any], n: int, bytes_sum: int,
                       reported: int, written: int | None = None) -> list[Check]:
    """The per-destination invariants against what it stores (``table_summary``), with
    ``n`` flows offered to it, ``reported`` flows the outlet says it lost there and
    ``written`` the flows it says it wrote there (``rows: given``)."""
    d = e.destination
    checks: list[Check] = []
    if e.rows is not None:
        if e.rows == "all":
            want = n
            what = f"{n} (all produced)"
        elif e.rows == "all_minus_reported_loss":
            want = n - reported
            what = f"{want} ({n} produced - {reported} reported lost)"
        elif e.rows == "given":
            want = -1 if written is None else written
            what = f"{want} (what the outlet reports written there)"
        else:
            want = int(e.rows)
            what = str(want)
        checks.append(Check(f"{d}: rows", what, str(t["rows"]), t["rows"] == want))
        if e.rows == "all" and e.no_duplicates:
            checks.append(Check(f"{d}: sum(Bytes)", str(bytes_sum), str(t["bytes_sum"]),
                                t["bytes_sum"] == bytes_sum))
    if e.no_duplicates:
        checks.append(Check(f"{d}: no duplicates", "0 duplicate rows",
                            str(t["duplicates"]), t["duplicates"] == 0))
    if e.no_loss:
        checks.append(Check(f"{d}: no loss", "0 missing flows", str(t["missing"]),
                            t["missing"] == 0))
    if e.loss_equals_metric:
        checks.append(Check(f"{d}: loss equals metric",
                            f"missing == retries_exceeded_flows ({reported})",
                            f"{t['missing']} missing", t["missing"] == reported))
    if e.loss_bounded_by_metric:
        checks.append(Check(f"{d}: loss bounded by metric",
                            f"missing <= retries_exceeded_flows ({reported})",
                            f"{t['missing']} missing", t["missing"] <= reported))
    if e.min_loss is not None:
        checks.append(Check(f"{d}: fault took effect", f">= {e.min_loss} missing flows",
                            f"{t['missing']} missing", t["missing"] >= e.min_loss))
    return checks


def _reuse_or_start(stack_dir: Path, topology: str) -> bool:
    """A healthy stack of ``topology`` in ``stack_dir``, or one started; True when started."""
    if topology == stk.MULTI_DC:
        return reuse_or_start_multi_dc(stack_dir)[1]
    return reuse_or_start(stack_dir)[1]


def member_names(processes: int) -> list[str]:
    """Process names (their config and log files): ``outlet`` (member 1), then
    ``outlet-2`` .. ``outlet-N`` in a group."""
    return ["outlet", *(f"outlet-{i}" for i in range(2, processes + 1))]


def member_config(cfg: dict[str, Any], workdir: Path, index: int) -> dict[str, Any]:
    """A member's config: the run's, with a state directory (and spool paths, when set),
    and an HTTP port of its own."""
    if index == 0:
        return cfg
    extras = [
        {**x, "spool": {**x["spool"], "path": f"{x['spool']['path']}-{index + 1}"}}
        if "path" in (x.get("spool") or {}) else x
        for x in cfg.get("additional-clickhouses") or []
    ]
    return {**cfg, "state": {**cfg["state"], "path": str(workdir / f"state-{index + 1}")},
            "http": {**cfg["http"], "listen": f"127.0.0.1:{free_port()}"},
            **({"additional-clickhouses": extras} if extras else {})}


def run_scenario(sc: Scenario, stack_dir: str | Path = ".stack",
                 reports_dir: str | Path = REPORTS_DIR, *,
                 progress: Callable[[str], None] = print,
                 with_prometheus: bool = False) -> RunResult:
    """Run one (validated, already scaled) scenario; the stack must be up. Alerts are
    recorded when the stack runs Prometheus (started for ``alerts:``: chaos/alerts.py)."""
    sdir = Path(stack_dir).resolve()
    ep = Endpoints.load(sdir)
    report_dir = Path(reports_dir) / sc.name
    names = fresh_run(report_dir, "chaos", sc.name)
    workdir, topic, group, run_id = names.workdir, names.topic, names.group, names.run_id
    tp = ep.toxiproxy.client()
    tp.reset()
    prom = alerts.prometheus_for(sc, sdir, with_prometheus)
    prepare_tables(ep, workdir, sc.outlet.destinations, topic)
    create_topic(ep, topic)

    cfg = outlet_config(
        ep, state_path=str(workdir / "state"), http_port=free_port(),
        destinations=sc.outlet.destinations, consumer_group=group, topic=topic,
        batch_size=sc.outlet.batch_size, wait_time=sc.outlet.wait_time,
        azure_max_retries=sc.outlet.azure_max_retries)
    spool_disk = workdir / "spool-disk" if sc.outlet.spool_tmpfs is not None else None
    if spool_disk is not None:
        for extra in cfg.get("additional-clickhouses") or []:
            extra.setdefault("spool", {})["path"] = str(spool_disk / extra["name"])
    cfg = merge_overrides(cfg, sc.outlet_overrides)
    scrape = prom.targets(run=topic, datacenter="dc1") if prom else None
    orchestrated = Orchestrated(ep, workdir, cfg, sc, scrape) if sc.outlet.orchestrator else None
    if orchestrated is not None:
        orchestrated.prepare(topic)
        orchestrated.start()
        outlet = Group([Outlet(orchestrated.outlet_process())])
    else:
        outlet = Group([Outlet(OutletProcess(workdir, member_config(cfg, workdir, i), name=name,
                                             scrape_targets=scrape))
                        for i, name in enumerate(member_names(sc.outlet.processes))])
    run = Run(sc, ep, sdir, report_dir, outlet, topic, group, run_id, orchestrated=orchestrated,
              spool_disk=spool_disk)
    disks = contextlib.ExitStack()  # unmounted once the outlet has stopped
    info: dict[str, Any] = {
        "topic": topic, "consumer_group": group, "run_id": run_id,
        "time_scale": sc.time_scale, "rate": sc.load.rate,
        "load_duration": sc.load.duration, "stack_dir": str(sdir),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "outlet_log": ", ".join(str(p) for p in outlet.log_paths), "source": sc.source,
        "description": sc.description, "rate_origin": sc.rate_origin,
    }
    checks: list[Check] = []
    sampler = Sampler(run)
    error = ""
    n = 0
    bytes_sum = 0
    tables: dict[str, dict[str, Any]] = {}
    metrics: dict[str, float] = {}
    t_wall = time.monotonic()
    try:
        if spool_disk is not None and sc.outlet.spool_tmpfs is not None:
            disks.enter_context(tmpfs.mounted(spool_disk, sc.outlet.spool_tmpfs))
        outlet.start()
        if not outlet.wait_ready(60):
            tails = "\n".join(m.proc.log_tail(20) for m in outlet.members)
            raise HarnessError(f"outlet not ready after 60 s:\n{tails}")
        info["outlet_ready_s"] = round(time.monotonic() - t_wall, 1)
        run.t0 = time.monotonic()
        run.load = LoadThread(ep.kafka.bootstrap, topic, sc.load.rate, sc.load.duration,
                              run_id, sc.load.seed, sc.load.flows_per_record)
        run.load.start()
        sampler.start()
        progress(f"  load {sc.load.rate:g} flows/s for {format_duration(sc.load.duration)}, "
                 f"topic {topic}")
        run.play(sc.timeline)
        run.load.join()
        if run.load.stats.failed:
            raise HarnessError(f"{run.load.stats.failed} records not delivered to Kafka: "
                               f"{run.load.stats.errors[:3]}")
        if run.load.error:
            raise HarnessError(f"load generator failed: {run.load.error}")
        n, bytes_sum = run.load.produced, run.load.bytes_sum
        info["produced"] = n
        info["load_end_s"] = round(run.load.t_end - run.t0, 1)
        info["offered_flows_per_s"] = round(n / max(run.load.t_end - run.t0, 1e-3))
        # Heal whatever the timeline left broken, then wait for the pipeline to settle.
        leftover = [p.name for p in tp.proxies().values() if p.toxics or not p.enabled]
        tp.reset()
        if spool_disk is not None and (spool_disk / tmpfs.BALLAST).exists():
            tmpfs.release(spool_disk)
            leftover.append("spool disk full")
        info["healed_at_end"] = leftover
        if len(outlet.down) == len(outlet.members):  # a failed timeline step: start one
            outlet.members[0].start()
            outlet.down.discard(1)
        progress(f"  load done: {n} flows in {info['load_end_s']}s; waiting for quiet ...")
        quiet, waited, state = wait_quiet(run, sc.expect.quiesce_timeout)
        info["quiesce_s"] = round(waited, 1)
        checks.append(Check("pipeline quiet", f"within {format_duration(sc.expect.quiesce_timeout)}"
                            " (rows stable, offsets committed, queues and spool empty)",
                            f"{'quiet' if quiet else 'NOT quiet'} after {waited:.0f} s ({state})",
                            quiet))
        outlet.scrape()
        metrics = outlet.totals()
        tables = {d: run_summary(ep.clickhouse[server], run_id, n, database)
                  for d, (server, database) in run.tables().items()}
        if prom is not None:
            info["alerts"] = alerts.observe(prom, sc, topic,
                                            time.time() - (time.monotonic() - run.t0))
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        log.debug("run failed", exc_info=True)
        info["traceback"] = traceback.format_exc()
    finally:
        if run.load is not None and run.load.is_alive():
            run.load.stop()
            run.load.join(150)
        sampler.stop()
        codes = outlet.stop_all()
        disks.close()
        if orchestrated is not None:
            orchestrated.stop()
        with contextlib.suppress(Exception):
            tp.reset()
        delete_topic(ep, topic)
    info["wall_s"] = round(time.monotonic() - t_wall, 1)
    samples = sampler.samples
    if not error:
        checks.extend(check_invariants(run, samples, n, bytes_sum, metrics, tables))
        checks.extend(alerts.check(sc, info.get("alerts"), alerts.fault_span(run.events)))
        for ev in run.events:
            if not ev.ok:
                checks.append(Check(f"timeline: {ev.action} at {ev.started:.0f}s",
                                    "action succeeds", ev.error, False))
        secrets = _passwords(cfg)
        leaked = [x for path in outlet.log_paths for x in _leaked_secrets(path, secrets)]
        checks.append(Check("no password in outlet log", f"none of {len(secrets)} passwords",
                            f"{len(leaked)} found" + (f" ({', '.join(leaked)})" if leaked else ""),
                            not leaked))
        if sc.expect.clean_shutdown:
            ran = [rc for rc in codes if rc is not None]
            shown = ", ".join(str(rc) for rc in ran) or "no outlet running"
            checks.append(Check("outlet clean shutdown", "SIGTERM -> exit 0",
                                f"exit {shown}", bool(ran) and all(rc == 0 for rc in ran)))
    return finish_run(sc, checks, run.events, samples, info, tables, metrics, report_dir,
                      error)


RunOne = Callable[[Scenario, Path, Path], RunResult]


def finish_run(sc: Scenario, checks: list[Check], events: Any, samples: Any,
               info: dict[str, Any], tables: Any, metrics: Any, report_dir: Path,
               error: str) -> RunResult:
    """The result of a finished run (a harness error is a failed check) and its report;
    shared by the single-dc and multi-dc runners."""
    if error:
        lines = [ln.strip(" |") for ln in error.splitlines() if ln.strip(" |+-")]
        short = lines[0][:160] + (f" ... {lines[-1][:200]}" if len(lines) > 1 else "")
        checks.append(Check("harness", "run completes", short, False))
    result = RunResult(
        scenario=sc.name, passed=not error and all(c.passed for c in checks), checks=checks,
        events=events, samples=samples, info=info, destinations=tables, metrics=metrics,
        report_dir=report_dir, error=error)
    from chaos.report import write_report  # local: matplotlib only when reporting

    write_report(result, sc)
    return result


def run_many(scenarios: list[Scenario], stack_dir: str | Path = ".stack",
             reports_dir: str | Path = REPORTS_DIR, keep_stack: bool = False,
             with_prometheus: bool = False, *, topology: str = stk.SINGLE_DC,
             run_one: RunOne | None = None) -> list[RunResult]:
    """Bring the stack of ``topology`` up (or reuse it), run each scenario (with ``run_one``
    if given, else :func:`run_scenario`), print a verdict per run."""
    sdir = Path(stack_dir).resolve()
    started = _reuse_or_start(sdir, topology)
    results: list[RunResult] = []
    try:
        for sc in scenarios:
            print(f"=== {sc.name} (time scale {sc.time_scale:g}) ===", flush=True)
            t = time.monotonic()
            if not stk.is_healthy(sdir, topology):
                print("  stack unhealthy (a restart action may have failed): restarting it",
                      flush=True)
                stk.stop_stack(sdir)
                _reuse_or_start(sdir, topology)
            res = (run_one(sc, sdir, Path(reports_dir)) if run_one is not None
                   else run_scenario(sc, sdir, reports_dir, with_prometheus=with_prometheus))
            results.append(res)
            verdict = "PASS" if res.passed else "FAIL"
            print(f"  {verdict} {sc.name} in {time.monotonic() - t:.0f} s; report "
                  f"{res.report_dir / 'report.md'}", flush=True)
            for c in res.failures:
                print(f"  VIOLATION {c.name}: expected {c.expected}, observed {c.observed}",
                      flush=True)
    finally:
        if started and not keep_stack:
            stk.stop_stack(sdir)
    return results


def summary_json(results: list[RunResult]) -> str:
    return json.dumps([{"scenario": r.scenario, "passed": r.passed,
                        "wall_s": r.info.get("wall_s")} for r in results])
