"""Chaos runs on the multi-dc stack: two datacenters writing into one central ClickHouse.

The users' topology (docs/dual-write.md): datacenters ``a`` and ``b`` each have their own
Kafka (the same topic name), their own local ClickHouse and their own outlet, which
writes to its local server (primary) and to the one central server. A run
(:func:`run_multi_dc_scenario`) is the single-dc run of ``chaos/runner.py`` once per
datacenter, side by side:

1. ``POST /reset`` on Toxiproxy; schema on the three servers (direct URLs); ``TRUNCATE``;
2. one fresh topic name, created in both Kafkas; one fresh consumer group;
3. both outlets started (``reports/chaos/<scenario>/outlet-<dc>/``), each through its own
   proxies (``kafka-<dc>``, ``clickhouse-local-<dc>``, ``clickhouse-central-<dc>``);
4. unique flows produced into each datacenter's Kafka at the scenario's rate, with a run
   id per datacenter, so every flow in central is known to come from ``a`` or ``b``;
5. the timeline, then heal, then quiet (three servers stable, both groups committed,
   both outlets' queues and spools empty);
6. invariants per view (``chaos.scenario.MULTI_DC_VIEWS``): ``local-<dc>`` against the
   flows offered in ``<dc>``, ``central`` against the union of both datacenters' flows,
   ``central-<dc>`` against ``<dc>``'s; any missing or duplicated flow fails. Recovery
   expectations time, after each link comes back, how long until new flows are stored.

Metrics of both outlets are merged with a ``dc`` label (``name{dc="a",...}``): selectors
without it sum over both datacenters.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.results import Check, Event, RunResult, Sample, metric_value, reported_loss
from chaos.runner import (
    QUIET_SECONDS,
    REPORTS_DIR,
    SAMPLE_INTERVAL,
    LoadThread,
    Outlet,
    _leaked_secrets,
    _passwords,
    destination_checks,
    finish_run,
    lag_check,
    metric_checks,
    play_timeline,
    run_many,
    throughput_check,
)
from chaos.scenario import MULTI_DC, Action, Scenario, format_duration, merge_overrides
from outlet import metrics as names
from teststack import stack as stk
from teststack.kafka import consumer_lag, create_topic, delete_topic
from teststack.outlet_proc import OutletProcess, free_port, outlet_config
from teststack.runs import HarnessError, fresh_run, prepare_tables
from teststack.sampling import PeriodicSampler
from teststack.series import window_rate
from teststack.stack import ClickHouseEndpoints, Endpoints, MultiDCEndpoints
from teststack.verify import count_rows_or_none, query, run_summary

SERVERS = ("local-a", "local-b", "central")
RECOVERY_POLL = 0.2  # seconds between row counts while timing a recovery
RECOVERY_GIVE_UP = 60.0  # no new flow stored by then: the recovery failed


@dataclass
class Datacenter:
    """One datacenter of the run: its view of the stack, its outlet, its load."""

    name: str
    ep: Endpoints
    outlet: Outlet
    run_id: int
    load: LoadThread | None = None
    running: bool = True


@dataclass
class Recovery:
    """After a link came back: how long until ``view`` stored flows again (``seconds``;
    replayed or live; None: not within RECOVERY_GIVE_UP), until the first flow produced
    after the link returned was stored (``first_new``), and the worst backlog of those
    new flows, in seconds of load, while the spool replays beside them (``live_lag``:
    live traffic must not wait for the replay)."""

    view: str
    proxy: str
    at: float  # seconds since the load started, when the link came back
    first_flow: dict[str, int] = field(default_factory=dict)  # per datacenter: flows before
    seconds: float | None = None
    first_new: float | None = None
    live_lag: float = 0.0


def tagged(metrics: dict[str, float], dc: str) -> dict[str, float]:
    """``name{labels}`` -> ``name{dc="<dc>",labels}``: both outlets' metrics in one dict."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        base, brace, rest = key.partition("{")
        out[f'{base}{{dc="{dc}",{rest}' if brace else f'{base}{{dc="{dc}"}}'] = value
    return out


@dataclass
class MultiRun:
    sc: Scenario
    mep: MultiDCEndpoints
    stack_dir: Path
    topic: str
    group: str
    dcs: dict[str, Datacenter]
    t0: float = 0.0
    events: list[Event] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    _watchers: list[threading.Thread] = field(default_factory=list)

    # -- what the servers hold --------------------------------------------------------------
    def server(self, name: str) -> ClickHouseEndpoints:
        if name == "central":
            return self.mep.central
        return self.dcs[name.rsplit("-", 1)[1]].ep.clickhouse["local"]

    def view_rows(self) -> dict[str, int | None]:
        """Rows per view: locals by count, central per datacenter by run id."""
        from flowgen.generator import unique_rows_sql_filter

        rows: dict[str, int | None] = {
            f"local-{dc}": count_rows_or_none(self.server(f"local-{dc}")) for dc in self.dcs}
        ifs = ", ".join(f"countIf({unique_rows_sql_filter(d.run_id)})" for d in self.dcs.values())
        counts: list[int | None] = [None] * len(self.dcs)
        with contextlib.suppress(Exception):
            counts = [int(x) for x in
                      query(self.mep.central, f"SELECT {ifs} FROM flows.flows",
                            timeout=5).split()]
        for dc, count in zip(self.dcs, counts, strict=True):
            rows[f"central-{dc}"] = count
        known = [c for c in counts if c is not None]
        rows["central"] = sum(known) if len(known) == len(counts) else None
        return rows

    # -- timeline ---------------------------------------------------------------------------
    def execute(self, a: Action) -> None:
        tp = self.mep.toxiproxy.client()
        p = a.params
        name = a.action
        dc = self.dcs.get(str(p.get("outlet", "")))
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
            self._time_recovery(a.proxy or "")
        elif name in ("kill_outlet", "stop_outlet", "start_outlet", "restart_outlet"):
            assert dc is not None  # validated
            self._outlet_action(dc, name, bool(p.get("graceful", True)))
        elif name == "restart_clickhouse":
            stk.restart_clickhouse(self.stack_dir, str(p["target"]))
        elif name == "restart_kafka":
            stk.restart_kafka(self.stack_dir, str(p["datacenter"]))
        elif name == "set_rate":
            for d in self.dcs.values():
                if d.load is not None:
                    d.load.rate = float(p["rate"])
        else:  # validated earlier
            raise HarnessError(f"unknown action {name}")

    def _outlet_action(self, dc: Datacenter, name: str, graceful: bool) -> None:
        if name in ("stop_outlet", "restart_outlet") and (name == "stop_outlet" or graceful):
            rc = dc.outlet.stop()
            dc.running = False
            if rc != 0:
                raise HarnessError(f"outlet {dc.name} exited with {rc} on SIGTERM")
        elif name in ("kill_outlet", "restart_outlet"):
            dc.outlet.kill()
            dc.running = False
        if name in ("start_outlet", "restart_outlet"):
            dc.outlet.start()
            dc.running = True

    def _time_recovery(self, proxy: str) -> None:
        """Start timing every expected recovery whose view this link carries."""
        views = {e.destination for e in self.sc.expect.recovery}
        for view in sorted(views):
            if proxy in self._proxies_of(view):
                loads = {dc: self.dcs[dc].load for dc in self.sc.view_datacenters(view)}
                produced = {dc: ld.produced if ld else 0 for dc, ld in loads.items()}
                rec = Recovery(view, proxy, round(time.monotonic() - self.t0, 3), produced)
                self.recoveries.append(rec)
                t = threading.Thread(target=self._watch, args=(rec,), daemon=True,
                                     name=f"recovery-{view}")
                t.start()
                self._watchers.append(t)

    def _proxies_of(self, view: str) -> set[str]:
        """The links a view's flows travel: the outlet's Kafka and its link to the server."""
        out: set[str] = set()
        for dc in self.sc.view_datacenters(view):
            server = "local" if view.startswith("local") else "central"
            out |= {f"kafka-{dc}", f"clickhouse-{server}-{dc}"}
        return out

    def _new_flows_stored(self, rec: Recovery) -> int | None:
        """Flows of ``rec.view`` produced after the link came back and already stored."""
        from flowgen.generator import flow_index_sql_expr, unique_rows_sql_filter

        server = self.server(rec.view if rec.view.startswith("local") else "central")
        cond = " OR ".join(
            f"({unique_rows_sql_filter(self.dcs[dc].run_id)} AND "
            f"{flow_index_sql_expr()} >= {first})" for dc, first in rec.first_flow.items())
        try:
            return int(query(server, f"SELECT countIf({cond}) FROM flows.flows", timeout=5))
        except Exception:
            return None

    def _watch(self, rec: Recovery) -> None:
        """Until the load ends: when the first new flow is stored, and the worst backlog
        of new flows (produced after the link returned minus stored) after it."""
        start = time.monotonic()
        base = self.view_rows().get(rec.view)
        loads = [self.dcs[dc].load for dc in rec.first_flow]
        rate = self.sc.load.rate * len(loads)
        while any(ld is not None and ld.is_alive() for ld in loads):
            rows = self.view_rows().get(rec.view)
            stored = self._new_flows_stored(rec)
            produced = sum(ld.produced for ld in loads if ld) - sum(rec.first_flow.values())
            elapsed = round(time.monotonic() - start, 2)
            if base is None:
                base = rows
            elif rec.seconds is None and rows is not None and rows > base:
                rec.seconds = elapsed
            if stored and rec.first_new is None:
                rec.first_new = elapsed
            if rec.first_new is not None and stored is not None:
                rec.live_lag = max(rec.live_lag, round(max(0, produced - stored) / rate, 2))
            if rec.seconds is None and elapsed > RECOVERY_GIVE_UP:
                return
            time.sleep(RECOVERY_POLL)

    def join_watchers(self) -> None:
        for t in self._watchers:
            t.join(RECOVERY_GIVE_UP + 5)


class MultiSampler(PeriodicSampler[Sample]):
    """1 Hz samples: rows per view, offered flows per datacenter, both outlets' metrics."""

    def __init__(self, run: MultiRun) -> None:
        super().__init__(SAMPLE_INTERVAL, name="chaos-sampler")
        self.run_ = run

    def sample(self) -> Sample:
        r = self.run_
        live = {dc: d.outlet.scrape() for dc, d in r.dcs.items()}
        totals = {dc: d.outlet.totals() for dc, d in r.dcs.items()}

        def per_view(name: str) -> dict[str, float | None]:
            return {v: sum(metric_value(totals[dc], name,
                                        destination=r.sc.metric_destination(v))
                           for dc in r.sc.view_datacenters(v)) for v in r.sc.views}

        def gauge(name: str) -> float | None:
            vals = [metric_value(m, name) for m in live.values() if m is not None]
            return sum(vals) if vals else None

        loads = {dc: d.load for dc, d in r.dcs.items()}
        return Sample(
            t=round(time.monotonic() - r.t0, 3),
            produced=sum(ld.produced for ld in loads.values() if ld),
            rate=sum((ld.rate or 0.0) for ld in loads.values() if ld and ld.is_alive()),
            rows=r.view_rows(),
            written=per_view(names.DESTINATION_FLOWS_WRITTEN_TOTAL),
            lost=per_view(names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL),
            lag=gauge(names.KAFKA_CONSUMERGROUP_LAG_MESSAGES),
            pending=gauge(names.COMMIT_PENDING_FLOWS),
            paused=gauge(names.KAFKA_PAUSED),
            outlet_up=all(m is not None for m in live.values()),
            produced_by={dc: ld.produced if ld else 0 for dc, ld in loads.items()},
        )


def wait_quiet(run: MultiRun, timeout: float, quiet: float = QUIET_SECONDS
               ) -> tuple[bool, float, str]:
    """Until the three servers' counts are stable for ``quiet`` s, both consumer groups
    committed everything and both outlets' queues (and spools) are empty."""
    t0 = time.monotonic()
    last: dict[str, int | None] = {}
    since = time.monotonic()
    state = ""
    while time.monotonic() - t0 < timeout:
        rows = {s: count_rows_or_none(run.server(s)) for s in SERVERS}
        if rows != last or any(v is None for v in rows.values()):
            last, since = rows, time.monotonic()
        lags = {dc: consumer_lag(d.ep, run.topic, run.group) for dc, d in run.dcs.items()}
        metrics = [d.outlet.scrape() or {} for d in run.dcs.values()]
        spooled = sum(metric_value(m, names.SPOOL_BATCHES) for m in metrics) \
            if run.sc.expect.wait_for_spool else 0
        queued = sum(metric_value(m, names.DESTINATION_QUEUED_BATCHES) for m in metrics)
        state = (f"rows {rows}, committed lag {lags}, queued batches {queued:g}, "
                 f"spooled batches {spooled:g}")
        if (all(v == 0 for v in lags.values()) and spooled == 0 and queued == 0
                and time.monotonic() - since >= quiet):
            return True, time.monotonic() - t0, state
        time.sleep(0.5)
    return False, time.monotonic() - t0, state


def view_tables(run: MultiRun, n: dict[str, int]) -> dict[str, dict[str, Any]]:
    """``run_summary`` per view; ``central`` is the sum of its per-datacenter parts (its
    foreign rows: central's rows of neither datacenter's run)."""
    out: dict[str, dict[str, Any]] = {}
    for dc, d in run.dcs.items():
        out[f"local-{dc}"] = run_summary(run.server(f"local-{dc}"), d.run_id, n[dc])
        out[f"central-{dc}"] = run_summary(run.mep.central, d.run_id, n[dc])
    parts = [out[f"central-{dc}"] for dc in run.dcs]
    union = {k: sum(p[k] for p in parts) for k in parts[0]}
    total = int(query(run.mep.central, "SELECT count() FROM flows.flows", timeout=30))
    union["foreign_rows"] = total - union["rows"]
    for dc in run.dcs:  # in central, the other datacenter's rows are not foreign
        out[f"central-{dc}"]["foreign_rows"] = union["foreign_rows"]
    out["central"] = union
    return out


def view_rate(samples: list[Sample], view: str, dcs: tuple[str, ...],
              window: tuple[float, float]) -> tuple[float | None, float | None]:
    """(stored flows/s on ``view``, flows/s offered to it) during ``window``."""
    ts = [s.t for s in samples]
    return (window_rate(ts, [s.rows.get(view) for s in samples], window),
            window_rate(ts, [float(sum(s.produced_by.get(dc, 0) for dc in dcs))
                             for s in samples], window))


def check_multi_dc(run: MultiRun, samples: list[Sample], n: dict[str, int],
                   bytes_sum: dict[str, int], metrics: dict[str, float],
                   tables: dict[str, dict[str, Any]]) -> list[Check]:
    sc = run.sc
    checks: list[Check] = []
    for server in SERVERS:
        t = tables[server]
        if t["unknown_flows"] or t["foreign_rows"]:
            checks.append(Check(f"{server}: only this run's flows", "0 foreign/unknown rows",
                                f"{t['foreign_rows']} foreign, {t['unknown_flows']} unknown",
                                False))
    for e in sc.expect.destinations:
        dcs = sc.view_datacenters(e.destination)
        label = sc.metric_destination(e.destination)
        reported = sum(reported_loss(metrics, label, dc=dc) for dc in dcs)
        checks.extend(destination_checks(e, tables[e.destination], sum(n[dc] for dc in dcs),
                                         sum(bytes_sum[dc] for dc in dcs), reported))
    for tp in sc.expect.throughput:
        dcs = sc.view_datacenters(tp.destination)
        checks.append(throughput_check(tp, view_rate(samples, tp.destination, dcs, tp.window),
                                       view_rate(samples, tp.destination, dcs, tp.baseline)))
    checks.extend(metric_checks(sc.expect.metrics, metrics))
    ends = [d.load.t_end - run.t0 for d in run.dcs.values() if d.load]
    end = min(ends) if ends else sc.load.duration
    for lg in sc.expect.lags:
        dcs = sc.view_datacenters(lg.destination)

        def offered(s: Sample, dcs: tuple[str, ...] = dcs) -> tuple[float, float]:
            return float(sum(s.produced_by.get(dc, 0) for dc in dcs)), sc.load.rate * len(dcs)

        checks.append(lag_check(lg, samples, end, offered))
    for exp in sc.expect.recovery:
        done = [r for r in run.recoveries if r.view == exp.destination]
        name = f"{exp.destination}: flows stored again after the link returns"
        if not done:
            checks.append(Check(name, f"<= {exp.max_seconds:g} s", "no link came back", False))
        for r in done:
            took = "never" if r.seconds is None else f"{r.seconds:.1f} s"
            new = "never" if r.first_new is None else f"{r.first_new:.1f} s"
            checks.append(Check(f"{name} ({r.proxy} at {r.at:.0f}s)",
                                f"within {exp.max_seconds:g} s", f"{took} (first flow produced "
                                f"after the link returned: {new})",
                                r.seconds is not None and r.seconds <= exp.max_seconds))
            if exp.max_live_lag is not None:
                checks.append(Check(
                    f"{exp.destination}: live flows not held back by the replay ({r.proxy})",
                    f"backlog of flows produced after the link returned <= "
                    f"{exp.max_live_lag:g} s of load until the load ends",
                    f"worst {r.live_lag:.1f} s",
                    r.first_new is not None and r.live_lag <= exp.max_live_lag))
    return checks


def _set_up(sc: Scenario, mep: MultiDCEndpoints, report_dir: Path
            ) -> tuple[str, str, dict[str, Datacenter], dict[str, dict[str, Any]]]:
    names = fresh_run(report_dir, "chaos", sc.name)
    names.workdir.rmdir()  # one outlet directory per datacenter instead
    mep.toxiproxy.client().reset()
    dcs: dict[str, Datacenter] = {}
    configs: dict[str, dict[str, Any]] = {}
    for i, (dc, ep) in enumerate(mep.datacenters.items()):
        workdir = report_dir / f"outlet-{dc}"
        workdir.mkdir(parents=True, exist_ok=True)
        prepare_tables(ep, workdir, sc.outlet.destinations, names.topic)  # local-dc, central
        create_topic(ep, names.topic)
        cfg = outlet_config(
            ep, state_path=str(workdir / "state"), http_port=free_port(),
            destinations=sc.outlet.destinations, consumer_group=names.group, topic=names.topic,
            batch_size=sc.outlet.batch_size, wait_time=sc.outlet.wait_time,
            azure_max_retries=sc.outlet.azure_max_retries)
        configs[dc] = merge_overrides(cfg, sc.outlet_overrides)
        run_id = (names.run_id + i - 1) % 255 + 1  # one run id per datacenter
        proc = OutletProcess(workdir, configs[dc], name="outlet")
        dcs[dc] = Datacenter(dc, ep, Outlet(proc), run_id)
    return names.topic, names.group, dcs, configs


def run_multi_dc_scenario(sc: Scenario, stack_dir: str | Path = ".stack-multi-dc",
                          reports_dir: str | Path = REPORTS_DIR, *,
                          progress: Callable[[str], None] = print) -> RunResult:
    """Run one (validated, already scaled) multi-dc scenario; the multi-dc stack must be up."""
    sdir = Path(stack_dir).resolve()
    mep = MultiDCEndpoints.load(sdir)
    report_dir = Path(reports_dir) / sc.name
    topic, group, dcs, configs = _set_up(sc, mep, report_dir)
    run = MultiRun(sc, mep, sdir, topic, group, dcs)
    info: dict[str, Any] = {
        "topology": MULTI_DC, "topic": topic, "consumer_group": group,
        "run_ids": {dc: d.run_id for dc, d in dcs.items()},
        "time_scale": sc.time_scale, "rate": sc.load.rate, "load_duration": sc.load.duration,
        "stack_dir": str(sdir), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "outlet_logs": {dc: str(d.outlet.proc.log_path) for dc, d in dcs.items()},
        "source": sc.source, "description": sc.description,
    }
    checks: list[Check] = []
    sampler = MultiSampler(run)
    error = ""
    n = {dc: 0 for dc in dcs}
    bytes_sum = {dc: 0 for dc in dcs}
    tables: dict[str, dict[str, Any]] = {}
    metrics: dict[str, float] = {}
    codes: dict[str, int | None] = {}
    t_wall = time.monotonic()
    tp = mep.toxiproxy.client()
    try:
        for d in dcs.values():
            d.outlet.start()
        for d in dcs.values():
            if not d.outlet.wait_ready(60):
                raise HarnessError(f"outlet {d.name} not ready after 60 s:\n"
                                   f"{d.outlet.proc.log_tail(20)}")
        info["outlet_ready_s"] = round(time.monotonic() - t_wall, 1)
        run.t0 = time.monotonic()
        for d in dcs.values():
            d.load = LoadThread(d.ep.kafka.bootstrap, topic, sc.load.rate, sc.load.duration,
                                d.run_id, sc.load.seed, sc.load.flows_per_record)
            d.load.start()
        sampler.start()
        progress(f"  load {sc.load.rate:g} flows/s per datacenter for "
                 f"{format_duration(sc.load.duration)}, topic {topic} in both Kafkas")
        play_timeline(sc.timeline, run.t0, run.execute, run.events)
        for d in dcs.values():
            assert d.load is not None
            d.load.join()
            if d.load.error or d.load.stats.failed:
                raise HarnessError(f"load generator of {d.name} failed: "
                                   f"{d.load.error or d.load.stats.errors[:3]}")
            n[d.name], bytes_sum[d.name] = d.load.produced, d.load.bytes_sum
        info["produced"] = dict(n)
        info["load_end_s"] = round(max(d.load.t_end for d in dcs.values() if d.load) - run.t0, 1)
        info["healed_at_end"] = [p.name for p in tp.proxies().values()
                                 if p.toxics or not p.enabled]
        tp.reset()
        for d in dcs.values():
            if not d.running:
                d.outlet.start()
                d.running = True
        progress(f"  load done: {n} flows; waiting for quiet ...")
        quiet, waited, state = wait_quiet(run, sc.expect.quiesce_timeout)
        info["quiesce_s"] = round(waited, 1)
        checks.append(Check("pipeline quiet",
                            f"within {format_duration(sc.expect.quiesce_timeout)} (rows stable, "
                            "offsets committed, queues and spools empty, both datacenters)",
                            f"{'quiet' if quiet else 'NOT quiet'} after {waited:.0f} s "
                            f"({state})", quiet))
        run.join_watchers()
        for d in dcs.values():
            d.outlet.scrape()
            metrics.update(tagged(d.outlet.totals(), d.name))
        tables = view_tables(run, n)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        info["traceback"] = traceback.format_exc()
    finally:
        for d in dcs.values():
            if d.load is not None and d.load.is_alive():
                d.load.stop()
                d.load.join(150)
        sampler.stop()
        for dc, d in dcs.items():
            codes[dc] = d.outlet.stop() if d.outlet.proc.alive() else None
        with contextlib.suppress(Exception):
            tp.reset()
        for d in dcs.values():
            delete_topic(d.ep, topic)
    info["wall_s"] = round(time.monotonic() - t_wall, 1)
    info["recoveries"] = [r.__dict__ for r in run.recoveries]
    samples = sampler.samples
    if not error:
        checks.extend(check_multi_dc(run, samples, n, bytes_sum, metrics, tables))
        for ev in run.events:
            if not ev.ok:
                checks.append(Check(f"timeline: {ev.action} at {ev.started:.0f}s",
                                    "action succeeds", ev.error, False))
        for dc, d in dcs.items():
            secrets = _passwords(configs[dc])
            leaked = _leaked_secrets(d.outlet.proc.log_path, secrets)
            checks.append(Check(f"no password in outlet {dc}'s log",
                                f"none of {len(secrets)} passwords",
                                f"{len(leaked)} found" + (f" ({', '.join(leaked)})"
                                                          if leaked else ""), not leaked))
            if sc.expect.clean_shutdown:
                checks.append(Check(f"outlet {dc} clean shutdown", "SIGTERM -> exit 0",
                                    f"exit {codes.get(dc)}", codes.get(dc) == 0))
    return finish_run(sc, checks, run.events, samples, info, tables, metrics, report_dir,
                      error)


def run_all(scenarios: list[Scenario], stack_dir: str | Path = ".stack",
            multi_dc_stack_dir: str | Path = ".stack-multi-dc",
            reports_dir: str | Path = REPORTS_DIR, keep_stack: bool = False,
            with_prometheus: bool = False) -> list[RunResult]:
    """Single-dc scenarios on the stack in ``stack_dir``, then multi-dc ones on the one in
    ``multi_dc_stack_dir``: one stack at a time (2 cores), each reused when healthy.
    ``with_prometheus`` applies to the single-dc ones (the multi-dc stack has no
    Prometheus)."""
    results: list[RunResult] = []
    single = [sc for sc in scenarios if sc.topology != MULTI_DC]
    multi = [sc for sc in scenarios if sc.topology == MULTI_DC]
    if single:
        results += run_many(single, stack_dir, reports_dir, keep_stack, with_prometheus)
    if multi:
        results += run_many(multi, multi_dc_stack_dir, reports_dir, keep_stack,
                            topology=stk.MULTI_DC, run_one=run_multi_dc_scenario)
    return results

