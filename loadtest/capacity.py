"""``loadtest capacity`` (``make capacity``): how many flows/s one outlet process sustains,
how to size a datacenter, scale-out through the Kafka consumer group, and the dual-write
overhead under load.

    loadtest capacity [--rates 25k,50k,...] [--step 20] [--only steps,scaleout,overhead]

1. **Steps** (Locust, dual-write): offer a staircase of rates (``--step`` seconds each) to
   one outlet process. A step is *sustained* when the backlog (Kafka high watermarks minus
   flows stored on the primary) stops growing: its slope over the step's second half stays
   under 5% of the offered rate, or the backlog stays under 2 s of traffic. Stepping stops
   at the first unsustained step, or when the producer cannot offer 90% of the target (the
   producer shares the machine: the report says which limit was hit). When the outlet fell
   behind, the backlog then drains with the producer idle: that drain rate is the outlet's
   ceiling without a producer competing for the CPU.
2. **Scale-out**: two outlet processes in one consumer group share the topic's partitions;
   one is stopped with SIGTERM half-way (its partitions are rebalanced to the other); at
   the end both destinations hold every produced flow exactly once.
3. **Overhead**: single (local) vs dual (local + azure) destination, alternating phases at
   the same offered load, then the same backlog drained at full speed by each: stored
   flows/s, outlet CPU per flow, end-to-end latency p50/p99, and the ratios.

``--time-scale F`` multiplies every phase's duration (the steps, the scale-out load, the
overhead phases at load); the saturated overhead comparison drains a backlog of
``--overhead-drain`` flows, which takes what it takes.

Writes ``reports/capacity/report.md``, ``report.json`` and plots.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from flowgen.producer import UniqueFlowsThread
from loadtest import harness as h
from loadtest.loadgen import LoadSettings
from loadtest.profile import parse_rate, step_profile
from teststack import clikit
from teststack.clikit import EXIT_FAILED, EXIT_PASSED, EXIT_USAGE, Failure, RunVerdict, Verdict
from teststack.kafka import create_topic, delete_topic, group_assignment
from teststack.paths import REPORTS_DIR
from teststack.runs import HarnessError, prepare_tables, stack_for_run
from teststack.series import rate_series
from teststack.stack import Endpoints
from teststack.summary import add_summary_dir, write_summary

REPORT_DIR = REPORTS_DIR / "capacity"
DEFAULT_RATES = (25_000, 50_000, 75_000, 100_000, 125_000, 150_000, 200_000, 250_000, 300_000)
DATACENTER_RATE = 300_000.0
HEADROOM = 0.7  # size for 70% utilisation of the sustainable rate
BOTH = ("local", "azure")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t, v) points."""
    if len(points) < 2:
        return 0.0
    mt = statistics.fmean(p[0] for p in points)
    mv = statistics.fmean(p[1] for p in points)
    den = sum((p[0] - mt) ** 2 for p in points)
    return sum((p[0] - mt) * (p[1] - mv) for p in points) / den if den else 0.0


def _producer(ep: Endpoints, topic: str, count: int, rate: float | None, run_id: int
              ) -> UniqueFlowsThread:
    """``count`` unique flows of ``run_id`` at ``rate`` (None: as fast as possible)."""
    return UniqueFlowsThread(ep.kafka.bootstrap, topic, run_id, count=count, rate=rate)


def _new_run_id(used: set[int]) -> int:
    rid = int(time.time() * 10) % 250 + 1
    while rid in used:
        rid = rid % 250 + 1
    used.add(rid)
    return rid


# --------------------------------------------------------------------------------------------
# 1. Steps
# --------------------------------------------------------------------------------------------

def run_steps(ep: Endpoints, out: Path, rates: Sequence[float], step_s: float, *,
              batch_size: int, wait_time: str, partitions: int, run_ids: set[int]
              ) -> dict[str, Any]:
    dests = BOTH
    work = out / "steps"
    work.mkdir(parents=True, exist_ok=True)
    topic = f"capacity-steps-{time.strftime('%H%M%S')}"
    prepare_tables(ep, work, dests, topic)
    create_topic(ep, topic, partitions)
    prof = step_profile(rates, step_s)
    prof_path = work / "steps-profile.yaml"
    prof_path.write_text(yaml.safe_dump({
        "name": prof.name, "description": prof.description, "interpolation": "step",
        "duration": f"{prof.duration:g}s", "points": [[f"{t:g}s", r] for t, r in prof.points]}))
    run_id = _new_run_id(run_ids)
    outlet = h.make_outlet(ep, work, name="outlet", destinations=dests, topic=topic,
                           group=f"outlet-{topic}", batch_size=batch_size, wait_time=wait_time)
    settings = LoadSettings(bootstrap=ep.kafka.bootstrap, topic=topic, profile=str(prof_path),
                            run_id=run_id, max_users=8)
    steps: list[dict[str, Any]] = []
    verdict = "not reached"
    error = ""
    drain: dict[str, Any] = {}
    checks: list[h.DestinationCheck] = []
    sampler: h.Sampler | None = None
    summary = None
    t_load0 = t_load1 = 0.0
    print(f"capacity steps: {', '.join(f'{r / 1000:g}k' for r in rates)} flows/s, "
          f"{step_s:g} s each; one outlet process, dual-write, batch {batch_size}, "
          f"wait {wait_time}, {partitions} partitions", flush=True)
    try:
        outlet.start()
        sampler = h.Sampler(ep, topic, {"outlet": outlet}, dests)
        sampler.start()
        locust = h.start_locust(settings, work)
        while locust.started_at() is None:
            if locust.proc.poll() is not None:
                raise HarnessError(f"Locust exited early; see {work / 'locust.log'}")
            time.sleep(0.1)
        t_load0 = sampler.at_wall(locust.started_at() or 0.0)
        for i, rate in enumerate(rates):
            a, b = t_load0 + i * step_s, t_load0 + (i + 1) * step_s
            while (sampler.last() or h.Sample(0, 0, {})).t < b + 0.3:
                time.sleep(0.2)
            st = _evaluate_step(sampler.samples, a, b, rate)
            steps.append(st)
            print(f"  step {rate:>9,.0f}: offered {st['offered']:>9,.0f}  stored "
                  f"{st['stored']:>9,.0f}  backlog {st['backlog_end']:>9,.0f} "
                  f"(slope {st['backlog_slope']:>+8,.0f}/s)  outlet {st['cores']:.2f} cores  "
                  f"-> {st['verdict']}", flush=True)
            if st["verdict"] != "sustained":
                verdict = st["verdict"]
                break
        rc = locust.stop()
        summary = locust.summary()
        t_load1 = sampler.at_wall(summary.ended_at)
        if not summary.ok:
            raise HarnessError(f"producer: {summary.failed} failed, {summary.undelivered} "
                                 "undelivered")
        print(f"  load stopped (locust exit {rc}): {summary.flows:,} flows; draining ...",
              flush=True)
        ok = h.wait_stored(sampler, dests, summary.flows, 300 + summary.flows / 20_000)
        time.sleep(1)
        drain = _drain_rate(sampler.samples, t_load1, summary.flows, dests[0])
        if not ok:
            raise HarnessError("not every flow stored within the timeout")
        checks = h.verify(ep, dests, run_id, summary.flows, summary.bytes_sum)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        if sampler is not None:
            sampler.stop()
        if outlet.alive():
            outlet.stop()
        delete_topic(ep, topic)
    samples = sampler.samples if sampler is not None else []
    sustained = [s for s in steps if s["verdict"] == "sustained"]
    best = max(sustained, key=lambda s: s["stored"]) if sustained else None
    result: dict[str, Any] = {
        "rates": list(rates), "step_s": step_s, "batch_size": batch_size,
        "wait_time": wait_time, "partitions": partitions, "steps": steps,
        "limit": verdict, "drain": drain, "error": error,
        "produced": summary.flows if summary is not None else None,
        "checks": [c.to_dict() for c in checks],
        "all_stored": bool(checks) and all(c.ok for c in checks),
        "sustained_flows_per_s": best["stored"] if best else None,
        "sustained_cores": best["cores"] if best else None,
        "sustained_flows_per_core": (round(best["stored"] / best["cores"])
                                     if best and best["cores"] > 0 else None),
        "sustained_cpu_us_per_flow": best["cpu_us_per_flow"] if best else None,
        "samples": [s.to_dict() for s in samples],
    }
    if samples:
        from loadtest.report import plot_lag, plot_throughput

        target = [(t_load0 + t, r) for t, r in prof.points[: len(steps)]]
        target.append((t_load0 + len(steps) * step_s, target[-1][1] if target else 0))
        plot_throughput(samples, dests, out / "steps-throughput.png", target,
                        "capacity steps: offered vs stored (one outlet process)")
        plot_lag(samples, dests, out / "steps-lag.png", "capacity steps: lag and backlog")
    return result


def _evaluate_step(samples: Sequence[h.Sample], a: float, b: float, target: float
                   ) -> dict[str, Any]:
    win = [s for s in samples if a <= s.t <= b]
    half = [s for s in win if s.t >= (a + b) / 2]
    if len(win) < 3 or len(half) < 2:
        return {"target": target, "offered": 0.0, "stored": 0.0, "backlog_end": 0.0,
                "backlog_slope": 0.0, "cores": 0.0, "cpu_us_per_flow": None,
                "verdict": "no samples"}
    s0, s1 = win[0], win[-1]
    dt = s1.t - s0.t
    offered = (s1.produced - s0.produced) / dt
    stored = (s1.stored("local") - s0.stored("local")) / dt
    cores = (s1.cpu() - s0.cpu()) / dt
    backlog = [(s.t, s.produced - s.stored("local")) for s in half]
    slope = _slope(backlog)
    end = backlog[-1][1]
    if slope <= 0.05 * offered or end <= 2.0 * offered:
        verdict = "sustained" if offered >= 0.9 * target else "producer-bound"
    else:
        verdict = "lag unbounded"
    return {"target": target, "offered": round(offered, 1), "stored": round(stored, 1),
            "backlog_end": end, "backlog_slope": round(slope, 1), "cores": round(cores, 3),
            "cpu_us_per_flow": round(cores / stored * 1e6, 2) if stored > 0 else None,
            "verdict": verdict}


def _drain_rate(samples: Sequence[h.Sample], t_end: float, produced: int, dest: str
                ) -> dict[str, Any]:
    """Stored flows/s after the producer stopped, while a backlog remained."""
    after = [s for s in samples if s.t >= t_end]
    busy = [s for s in after if s.stored(dest) < produced * 0.98]
    if len(busy) < 2:
        return {}
    first, last = busy[0], busy[-1]
    dt = last.t - first.t
    flows = last.stored(dest) - first.stored(dest)
    if dt < 2 or flows < 50_000:
        return {"note": "backlog too small to measure a drain rate"}
    cores = (last.cpu() - first.cpu()) / dt
    return {"seconds": round(dt, 1), "flows": flows, "flows_per_s": round(flows / dt, 1),
            "cores": round(cores, 3),
            "flows_per_core": round(flows / dt / cores) if cores > 0 else None}


# --------------------------------------------------------------------------------------------
# 2. Scale-out
# --------------------------------------------------------------------------------------------

def run_scaleout(ep: Endpoints, out: Path, rate: float, seconds: float, *, batch_size: int,
                 wait_time: str, partitions: int, run_ids: set[int]) -> dict[str, Any]:
    dests = BOTH
    work = out / "scaleout"
    work.mkdir(parents=True, exist_ok=True)
    topic = f"capacity-scaleout-{time.strftime('%H%M%S')}"
    group = f"outlet-{topic}"
    prepare_tables(ep, work, dests, topic)
    create_topic(ep, topic, partitions)
    run_id = _new_run_id(run_ids)
    count = int(rate * seconds)
    outlets = {n: h.make_outlet(ep, work, name=n, destinations=dests, topic=topic, group=group,
                                batch_size=batch_size, wait_time=wait_time)
               for n in ("outlet-a", "outlet-b")}
    print(f"scale-out: 2 outlet processes, group {group}, {partitions} partitions, "
          f"{count:,} flows at {rate:,.0f} flows/s; outlet-b gets SIGTERM half-way", flush=True)
    info: dict[str, Any] = {"rate": rate, "flows": count, "partitions": partitions,
                            "group": group}
    error = ""
    checks: list[h.DestinationCheck] = []
    sampler: h.Sampler | None = None
    events: list[tuple[float, str]] = []
    try:
        for o in outlets.values():
            o.start(wait_ready=False)
        for o in outlets.values():
            o.wait_http(60)
        sampler = h.Sampler(ep, topic, dict(outlets), dests)
        sampler.start()
        # Let the group settle: both members assigned before the load starts.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(group_assignment(ep, group)) == 2:
                break
            time.sleep(0.5)
        prod = _producer(ep, topic, count, rate, run_id)
        prod.start()
        t_prod0 = time.monotonic() - sampler.t0
        events.append((t_prod0, "load starts"))
        time.sleep(seconds * 0.45)
        info["assignment_before"] = group_assignment(ep, group)
        t_stop = time.monotonic() - sampler.t0
        rc = outlets["outlet-b"].stop()
        events.append((t_stop, "outlet-b SIGTERM"))
        info["outlet_b_exit"] = rc
        info["outlet_b_stop_s"] = round(time.monotonic() - sampler.t0 - t_stop, 2)
        print(f"  t={t_stop:5.1f}s outlet-b stopped (exit {rc}, "
              f"{info['outlet_b_stop_s']} s); assignment before: "
              f"{info['assignment_before']}", flush=True)
        # Rebalance: outlet-a takes every partition.
        t_rb = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            members = group_assignment(ep, group)
            if len(members) == 1 and len(members[0]) == partitions:
                t_rb = time.monotonic() - sampler.t0
                break
            time.sleep(0.25)
        info["rebalance_s"] = round(t_rb - t_stop, 2) if t_rb is not None else None
        if t_rb is not None:
            events.append((t_rb, "outlet-a owns all partitions"))
        info["assignment_after"] = group_assignment(ep, group)
        print(f"  rebalance: members' partitions {info['assignment_after']} after "
              f"{info['rebalance_s']} s", flush=True)
        prod.join()
        if prod.error:
            raise HarnessError(f"producer failed: {prod.error}")
        tot = prod.gen.totals()
        info["produced"] = tot.flows
        # The stopped outlet's last inserts (during its SIGTERM drain) happen after its last
        # scrape: count rows on the servers (the ground truth) instead of its counters.
        from teststack.verify import wait_rows

        for d in dests:
            rows = wait_rows(ep.clickhouse[d], tot.flows, 180)
            if rows < tot.flows:
                print(f"  {d}: {rows:,} rows of {tot.flows:,} after 180 s", flush=True)
        time.sleep(1)
        last = sampler.last()
        if last is not None:
            info["stored_by_outlet"] = {n: {d: o.stored.get(d, 0.0) for d in dests}
                                        for n, o in last.outlets.items()}
        checks = h.verify(ep, dests, run_id, tot.flows, tot.bytes_sum)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        if sampler is not None:
            sampler.stop()
        for o in outlets.values():
            if o.alive():
                o.stop()
        delete_topic(ep, topic)
    samples = sampler.samples if sampler is not None else []
    if samples:
        _plot_scaleout(samples, events, out / "scaleout.png")
    ok = (not error and bool(checks) and all(c.ok for c in checks)
          and info.get("outlet_b_exit") == 0 and info.get("rebalance_s") is not None)
    return {**info, "ok": ok, "error": error, "events": events,
            "checks": [c.to_dict() for c in checks],
            "samples": [s.to_dict() for s in samples]}


def _plot_scaleout(samples: Sequence[h.Sample], events: Sequence[tuple[float, str]],
                   path: Path) -> None:
    from loadtest.report import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    ts = [s.t for s in samples]
    t, r = rate_series(ts, [float(s.produced) for s in samples])
    ax.plot(t, r, color="black", lw=1.2, label="offered (Kafka)")
    for name, color in (("outlet-a", "tab:blue"), ("outlet-b", "tab:green")):
        vals = [s.outlets[name].stored.get("local", 0.0) if name in s.outlets else 0.0
                for s in samples]
        t, r = rate_series(ts, vals, span=3.0)
        ax.plot(t, r, color=color, lw=1.3, label=f"stored by {name} (local)")
    for te, label in events:
        ax.axvline(te, color="tab:red", ls=":", lw=1)
        ax.text(te, ax.get_ylim()[1] * 0.95, " " + label, fontsize=7, va="top")
    ax.set_xlabel("seconds")
    ax.set_ylabel("flows/s (3 s window)")
    ax.set_title("scale-out: two outlets in one consumer group, one stopped (SIGTERM)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# 3. Overhead: single vs dual destination
# --------------------------------------------------------------------------------------------

def _phase(ep: Endpoints, work: Path, mode: str, *, rate: float | None, count: int,
           batch_size: int, wait_time: str, partitions: int, run_ids: set[int], tag: str
           ) -> dict[str, Any]:
    """One outlet (single: local; dual: local + azure) on a fresh topic. ``rate`` set: the
    producer offers ``count`` flows at ``rate`` while the outlet runs. ``rate`` None
    (saturation): the backlog is produced first, then the outlet drains it."""
    dests: tuple[str, ...] = ("local",) if mode == "single" else BOTH
    topic = f"capacity-{tag}-{time.strftime('%H%M%S')}"
    pdir = work / tag
    pdir.mkdir(parents=True, exist_ok=True)
    prepare_tables(ep, pdir, BOTH, topic)
    create_topic(ep, topic, partitions)
    run_id = _new_run_id(run_ids)
    outlet = h.make_outlet(ep, pdir, name="outlet", destinations=dests, topic=topic,
                           group=f"outlet-{topic}", batch_size=batch_size, wait_time=wait_time)
    res: dict[str, Any] = {"mode": mode, "tag": tag, "offered_rate": rate, "flows": count}
    sampler: h.Sampler | None = None
    try:
        if rate is None:
            prod = _producer(ep, topic, count, None, run_id)
            prod.run()  # in this thread: the backlog first
            if prod.error:
                raise HarnessError(prod.error)
            outlet.start()
            sampler = h.Sampler(ep, topic, {"outlet": outlet}, dests, interval=0.25)
            sampler.base = 0  # the backlog counts as produced at t=0
            sampler.start()
            t0 = 0.0
        else:
            outlet.start()
            sampler = h.Sampler(ep, topic, {"outlet": outlet}, dests, interval=0.25)
            sampler.start()
            time.sleep(1.0)
            prod = _producer(ep, topic, count, rate, run_id)
            t0 = time.monotonic() - sampler.t0
            prod.start()
            prod.join()
            if prod.error:
                raise HarnessError(prod.error)
        tot = prod.gen.totals()
        if not h.wait_stored(sampler, dests, tot.flows, 180, progress=False):
            raise HarnessError(f"{tag}: not every flow stored within 180 s")
        time.sleep(0.6)
        sampler.stop()
        smp = sampler.samples
        ts = [s.t for s in smp]
        first = next(s for s in smp if s.t >= t0)
        # Until the primary stored everything (and, in dual mode, the second destination).
        done = next(s for s in smp if all(s.stored(d) >= tot.flows for d in dests))
        dt = done.t - first.t
        if rate is None:  # from the first stored flow: excludes the outlet's start-up
            first = next(s for s in smp if s.stored("local") > 0)
            prev = smp[max(0, smp.index(first) - 1)]
            first, dt = prev, done.t - prev.t
        cpu = done.cpu() - first.cpu()
        res.update(
            produced=tot.flows, seconds=round(dt, 2),
            stored_flows_per_s=round(tot.flows / dt, 1) if dt > 0 else None,
            cpu_s=round(cpu, 3), cpu_us_per_flow=round(cpu / tot.flows * 1e6, 3),
            cores=round(cpu / dt, 3) if dt > 0 else None,
            e2e_s={d: h.end_to_end_latency(ts, [float(s.produced) for s in smp],
                                           [s.stored(d) for s in smp]) for d in dests},
            insert_ms={d: h.latency_percentiles(done.outlets["outlet"].hist.get(d, {}),
                                                done.outlets["outlet"].hist_sum.get(d))
                       for d in dests})
        checks = h.verify(ep, dests, run_id, tot.flows, tot.bytes_sum)
        res["all_stored"] = all(c.ok for c in checks)
        res["checks"] = [c.to_dict() for c in checks]
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if outlet.alive():
            outlet.stop()
        delete_topic(ep, topic)
    return res


def run_overhead(ep: Endpoints, out: Path, rate: float, seconds: float, drain_flows: int, *,
                 rounds: int, batch_size: int, wait_time: str, partitions: int,
                 run_ids: set[int]) -> dict[str, Any]:
    work = out / "overhead"
    work.mkdir(parents=True, exist_ok=True)
    phases: list[dict[str, Any]] = []
    print(f"overhead: single vs dual, {rounds} rounds of {seconds:g} s at {rate:,.0f} flows/s "
          f"plus a {drain_flows:,}-flow backlog drained at full speed", flush=True)
    for i in range(rounds):
        order = ("single", "dual") if i % 2 == 0 else ("dual", "single")
        for mode in order:
            for kind, r, n in (("load", rate, int(rate * seconds)),
                               ("drain", None, drain_flows)):
                ph = _phase(ep, work, mode, rate=r, count=n, batch_size=batch_size,
                            wait_time=wait_time, partitions=partitions, run_ids=run_ids,
                            tag=f"{kind}-{mode}-{i + 1}")
                ph["kind"] = kind
                phases.append(ph)
                e2e = ph.get("e2e_s", {}).get("local", {})
                print(f"  {ph['tag']:<16} stored {ph.get('stored_flows_per_s') or 0:>9,.0f} "
                      f"flows/s  cpu {ph.get('cpu_us_per_flow') or 0:6.2f} µs/flow  "
                      f"e2e p50 {e2e.get('p50')} s p99 {e2e.get('p99')} s  "
                      f"{'ok' if ph.get('all_stored') else 'FAILED ' + ph.get('error', '')}",
                      flush=True)
    summary: dict[str, Any] = {}
    for kind in ("load", "drain"):
        agg: dict[str, dict[str, float | None]] = {}
        for mode in ("single", "dual"):
            sel = [p for p in phases if p["kind"] == kind and p["mode"] == mode
                   and p.get("stored_flows_per_s")]

            def med(key: str, sel: list[dict[str, Any]] = sel) -> float | None:
                vals = [float(p[key]) for p in sel if p.get(key) is not None]
                return statistics.median(vals) if vals else None

            def med_e2e(q: str, sel: list[dict[str, Any]] = sel) -> float | None:
                vals = [float(p["e2e_s"][d][q]) for p in sel for d in p["e2e_s"]
                        if p["e2e_s"][d].get(q) is not None]
                return statistics.median(vals) if vals else None

            agg[mode] = {"stored_flows_per_s": med("stored_flows_per_s"),
                         "cpu_us_per_flow": med("cpu_us_per_flow"), "cores": med("cores"),
                         "e2e_p50_s": med_e2e("p50"), "e2e_p99_s": med_e2e("p99")}
        s, d = agg["single"], agg["dual"]
        ratios: dict[str, float | None] = {}
        for key in ("stored_flows_per_s", "cpu_us_per_flow", "e2e_p50_s", "e2e_p99_s"):
            a, b = s.get(key), d.get(key)
            ratios[key] = round(b / a, 4) if a and b else None
        summary[kind] = {"single": s, "dual": d, "dual_over_single": ratios}
    load_r = summary["load"]["dual_over_single"]
    drain_r = summary["drain"]["dual_over_single"]
    summary["targets"] = {
        "throughput_dual_ge_97pct_single": _ge(drain_r.get("stored_flows_per_s"), 0.97),
        "throughput_at_load_dual_ge_97pct_single": _ge(load_r.get("stored_flows_per_s"), 0.97),
        "cpu_per_flow_within_3pct": _le(load_r.get("cpu_us_per_flow"), 1.03),
        "cpu_per_flow_within_3pct_saturated": _le(drain_r.get("cpu_us_per_flow"), 1.03),
    }
    return {"rate": rate, "seconds": seconds, "drain_flows": drain_flows, "rounds": rounds,
            "phases": phases, "summary": summary}


def _ge(v: float | None, lim: float) -> bool | None:
    return None if v is None else v >= lim


def _le(v: float | None, lim: float) -> bool | None:
    return None if v is None else v <= lim


# --------------------------------------------------------------------------------------------
# Sizing and report
# --------------------------------------------------------------------------------------------

def sizing(per_process: float | None, per_core: float | None,
           target: float = DATACENTER_RATE) -> dict[str, Any]:
    if not per_process:
        return {}
    procs = math.ceil(target / per_process)
    procs_headroom = math.ceil(target / (per_process * HEADROOM))
    # Partitions: one per process at least; twice that leaves room to scale out without
    # repartitioning (a partition is consumed by one process of the group at a time).
    return {"target_flows_per_s": target, "processes_at_100pct": procs,
            "processes_at_70pct": procs_headroom,
            "partitions_min": procs_headroom, "partitions_recommended": 2 * procs_headroom,
            "cores_at_100pct": round(target / per_core, 1) if per_core else None}


def markdown(r: dict[str, Any]) -> str:
    L: list[str] = ["# Capacity report", "", f"- {h.BOX_NOTE}",
                    f"- started {r['started_at']}; outlet maximum-batch-size "
                    f"{r['batch_size']}, maximum-wait-time {r['wait_time']}, "
                    f"{r['partitions']} partitions, direct connections (no Toxiproxy).", ""]
    st = r.get("steps")
    if st:
        L += ["## 1. One outlet process, offered rate stepped up (dual-write)", "",
              "| target flows/s | offered | stored (local) | backlog at end | backlog slope /s "
              "| outlet cores | CPU µs/flow | verdict |",
              "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for s in st["steps"]:
            L.append(f"| {s['target']:,.0f} | {s['offered']:,.0f} | {s['stored']:,.0f} | "
                     f"{s['backlog_end']:,.0f} | {s['backlog_slope']:+,.0f} | {s['cores']:.2f} "
                     f"| {s['cpu_us_per_flow'] if s['cpu_us_per_flow'] is not None else 'n/a'} "
                     f"| {s['verdict']} |")
        L += ["", f"Stepping ended: **{st['limit']}**.", ""]
        if st.get("sustained_flows_per_s"):
            L += [f"- sustained: **{st['sustained_flows_per_s']:,.0f} flows/s per outlet "
                  f"process**, using {st['sustained_cores']:.2f} cores -> "
                  f"**{st['sustained_flows_per_core']:,} flows/s per core** "
                  f"({st['sustained_cpu_us_per_flow']} µs CPU per flow)."]
        dr = st.get("drain") or {}
        if dr.get("flows_per_s"):
            L += [f"- backlog drain with the producer idle: **{dr['flows_per_s']:,.0f} flows/s** "
                  f"({dr['cores']:.2f} cores, {dr.get('flows_per_core') or 0:,} flows/s per "
                  f"core): the outlet's ceiling when it does not share the CPU with the "
                  "load generator."]
        L += [f"- all flows stored on both destinations (rows == distinct ids == produced "
              f"{st.get('produced') or 0:,}): **{'yes' if st.get('all_stored') else 'NO'}**"
              + (f" — error: `{st['error']}`" if st.get("error") else ""), "",
              "![steps](steps-throughput.png)", "", "![lag](steps-lag.png)", ""]
        if st["limit"] == "producer-bound":
            L += ["The producer (Locust, one Python process) could not offer the next step on "
                  "this box: the outlet was not saturated by the offered load. The sustained "
                  "figure is therefore a lower bound; the drain rate above measures the "
                  "outlet's ceiling.", ""]
    sz = r.get("sizing") or {}
    if sz:
        L += ["## Sizing a 300k flows/s datacenter", "",
              f"Using {sz['basis']} = {sz['per_process']:,.0f} flows/s per outlet process and "
              f"{sz['per_core'] or 0:,.0f} flows/s per core (measured here):", "",
              f"- outlet processes: {sz['processes_at_100pct']} at 100% of the measured rate, "
              f"**{sz['processes_at_70pct']} sized for 70% utilisation** (headroom for bursts "
              "and catching up after an outage)",
              f"- Kafka partitions: at least {sz['partitions_min']} (a partition is consumed by "
              f"one process of the group), **{sz['partitions_recommended']} recommended** "
              "(room to add processes without repartitioning)",
              f"- CPU: ~{sz['cores_at_100pct']} cores of outlet at 100%",
              "- Each process is one Python interpreter: size by processes, not threads. On a "
              "dedicated host (no producer, no ClickHouse on the same cores) expect more per "
              "process; re-run `make capacity` there to size precisely.", ""]
    so = r.get("scaleout")
    if so:
        L += ["## 2. Scale-out: two outlet processes in one consumer group", "",
              f"- {so['flows']:,} flows at {so['rate']:,.0f} flows/s, {so['partitions']} "
              f"partitions, group `{so['group']}`",
              f"- group members' partitions (broker's view) before the stop: "
              f"{so.get('assignment_before')}, after: {so.get('assignment_after')}",
              f"- outlet-b SIGTERM: exit {so.get('outlet_b_exit')} after "
              f"{so.get('outlet_b_stop_s')} s; outlet-a owned all partitions "
              f"{so.get('rebalance_s')} s after the stop",
              f"- stored per outlet (flows): {so.get('stored_by_outlet')}", ""]
        L += ["| destination | rows | distinct | duplicates | missing | expected | ok |",
              "|---|---:|---:|---:|---:|---:|:-:|"]
        for c in so.get("checks", []):
            L.append(f"| {c['destination']} | {c['rows']:,} | {c['distinct']:,} | "
                     f"{c['duplicates']:,} | {c['missing']:,} | {c['expected_rows']:,} | "
                     f"{'yes' if c['ok'] else '**NO**'} |")
        L += ["", f"Result: **{'no flow lost, none duplicated' if so['ok'] else 'FAILED'}**"
              + (f" — `{so['error']}`" if so.get("error") else ""), "",
              "![scaleout](scaleout.png)", ""]
    ov = r.get("overhead")
    if ov:
        s = ov["summary"]
        L += ["## 3. Dual-write overhead under load (single = local only, dual = local + "
              "azure)", "",
              f"Alternating phases, {ov['rounds']} rounds, medians. *At load*: "
              f"{ov['rate']:,.0f} flows/s offered for {ov['seconds']:g} s (below capacity: "
              "stored rate = offered rate, the CPU and latency are what differ). *Saturated*: "
              f"a {ov['drain_flows']:,}-flow backlog drained at full speed (the throughput "
              "comparison). CPU per flow = outlet process CPU seconds (psutil) / flows, from "
              "the load start (saturated: first stored flow) to the last flow stored on every "
              "destination. End-to-end latency = Kafka arrival -> insert acknowledged, FIFO "
              "approximation on 0.25 s samples (includes the batch wait).", "",
              "| | stored flows/s | CPU µs/flow | cores | e2e p50 s | e2e p99 s |",
              "|---|---:|---:|---:|---:|---:|"]
        for kind, label in (("load", "at load"), ("drain", "saturated")):
            for mode in ("single", "dual"):
                v = s[kind][mode]
                L.append(f"| {label}: {mode} | {_f(v['stored_flows_per_s'])} | "
                         f"{_f(v['cpu_us_per_flow'], 2)} | {_f(v['cores'], 2)} | "
                         f"{_f(v['e2e_p50_s'], 2)} | {_f(v['e2e_p99_s'], 2)} |")
            q = s[kind]["dual_over_single"]
            L.append(f"| **{label}: dual / single** | **{_f(q['stored_flows_per_s'], 3)}** | "
                     f"**{_f(q['cpu_us_per_flow'], 3)}** | | {_f(q['e2e_p50_s'], 3)} | "
                     f"{_f(q['e2e_p99_s'], 3)} |")
        t = s["targets"]
        L += ["", "Targets: dual throughput >= 97% of single (saturated): "
              f"**{_yn(t['throughput_dual_ge_97pct_single'])}**; outlet CPU per flow within 3% "
              f"(at load): **{_yn(t['cpu_per_flow_within_3pct'])}**, saturated: "
              f"**{_yn(t['cpu_per_flow_within_3pct_saturated'])}**.", "",
              "Per phase: `report.json` (`overhead.phases`).", ""]
    return "\n".join(L)


def _f(v: Any, nd: int = 0) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{nd}f}"


def _yn(v: bool | None) -> str:
    return "n/a" if v is None else ("met" if v else "NOT met")


DESCRIPTION = ("How many flows/s one outlet process sustains (offered rate stepped up), how "
               "to size a datacenter, scale-out with two processes in one consumer group, and "
               "the dual-write overhead at a fixed load.")
PARTS = ("steps", "scaleout", "overhead")


def configure(ap: argparse.ArgumentParser) -> None:
    ap.description = DESCRIPTION
    ap.add_argument("--rates", default=",".join(f"{r // 1000}k" for r in DEFAULT_RATES),
                    help="offered flows/s per step, comma-separated (default: %(default)s)")
    ap.add_argument("--step", type=clikit.positive_float, default=20.0, metavar="SECONDS",
                    help="seconds per step (default: 20)")
    ap.add_argument("--only", default=",".join(PARTS),
                    help="parts to run, comma-separated (default: %(default)s)")
    clikit.add_common(ap, time_scale="every phase's duration (steps, scale-out, overhead at "
                                     "load)")
    add_summary_dir(ap)
    h.add_outlet_options(ap, partitions=4)
    ap.add_argument("--scaleout-rate", type=float, default=30_000,
                    help="flows/s offered during scale-out (default: 30000)")
    ap.add_argument("--scaleout-seconds", type=float, default=30,
                    help="length of the scale-out load (default: 30)")
    ap.add_argument("--overhead-rate", type=float, default=40_000,
                    help="flows/s offered in the overhead phases at load (default: 40000)")
    ap.add_argument("--overhead-seconds", type=float, default=20,
                    help="length of each overhead phase at load (default: 20)")
    ap.add_argument("--overhead-drain", type=int, default=1_000_000,
                    help="backlog (flows) for the saturated comparison (default: 1000000)")
    ap.add_argument("--overhead-rounds", type=int, default=2,
                    help="single/dual rounds, medians reported (default: 2)")
    ap.add_argument("--datacenter-rate", type=float, default=DATACENTER_RATE,
                    help="flows/s of the datacenter to size (default: 300000)")
    ap.add_argument("--report-dir", default=str(REPORT_DIR), metavar="DIR",
                    help="where the report goes (default: reports/capacity)")
    ap.epilog = ("Report: DIR/report.md (and report.json, steps-*.png, scaleout.png). Exit "
                 "status: 0 done and scale-out lost and duplicated nothing, 1 not, 2 bad usage, "
                 "refused long run or no stack.")


def estimate_seconds(args: argparse.Namespace, parts: set[str], steps: int) -> float:
    """A rough wall-clock length of the run (for the long-run confirmation)."""
    total = 60.0
    if "steps" in parts:
        total += steps * args.step * args.time_scale + 60
    if "scaleout" in parts:
        total += args.scaleout_seconds * args.time_scale + 60
    if "overhead" in parts:
        total += args.overhead_rounds * 2 * (args.overhead_seconds * args.time_scale + 40)
    return total


def _verdict(report: dict[str, Any], out: Path) -> RunVerdict:
    failures = [Failure(f"scale-out: {c['destination']}: rows == distinct == produced",
                        f"{c['expected_rows']} rows", f"{c['rows']} rows, {c['distinct']} "
                        f"distinct") for c in (report.get("scaleout") or {}).get("checks", [])
                if not c["ok"]]
    so = report.get("scaleout")
    if so is not None and not so["ok"] and not failures:
        failures.append(Failure("scale-out", "graceful stop, rebalance, nothing lost",
                                so.get("error") or f"exit {so.get('outlet_b_exit')}, "
                                f"rebalance {so.get('rebalance_s')} s"))
    ok = not report.get("error") and not failures
    return RunVerdict("capacity", ok, str(out / "report.md"), failures=failures,
                      error=str(report.get("error", "")),
                      details={"sizing": report.get("sizing"),
                               "overhead": (report.get("overhead") or {}).get("summary")})


def _run(args: argparse.Namespace, verdict: Verdict) -> int:
    h.OUTLET_COMPRESSION = args.compression
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        verdict.error = f"unknown parts {sorted(unknown)}"
        print(f"error: {verdict.error} (known: {', '.join(PARTS)})", file=sys.stderr)
        return EXIT_USAGE
    try:
        rates = [parse_rate(r) for r in args.rates.split(",") if r.strip()]
    except ValueError as e:
        verdict.error = f"--rates: {e}"
        print(f"error: {verdict.error}", file=sys.stderr)
        return EXIT_USAGE
    if not clikit.confirm_long_run(estimate_seconds(args, parts, len(rates)),
                                   "loadtest capacity", args.yes):
        verdict.error = "refused: the run would last more than an hour (--yes)"
        return EXIT_USAGE
    ts = args.time_scale
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_ids: set[int] = set()
    report: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "batch_size": args.batch_size, "wait_time": args.wait_time,
                              "partitions": args.partitions, "time_scale": ts,
                              "box": h.BOX_NOTE}
    common: dict[str, Any] = {"batch_size": args.batch_size, "wait_time": args.wait_time,
                              "partitions": args.partitions, "run_ids": run_ids}
    try:
        with stack_for_run(args.stack_dir) as ep:
            if "steps" in parts:
                st = run_steps(ep, out, rates, args.step * ts, **common)
                report["steps"] = st
                per_proc, per_core, basis = (st.get("sustained_flows_per_s"),
                                             st.get("sustained_flows_per_core"),
                                             "the highest sustained step")
                dr = st.get("drain") or {}
                if st["limit"] == "producer-bound" and dr.get("flows_per_s"):
                    per_proc, per_core, basis = (dr["flows_per_s"], dr.get("flows_per_core"),
                                                 "the backlog drain rate (the producer could "
                                                 "not saturate the outlet)")
                sz = sizing(per_proc, per_core, args.datacenter_rate)
                if sz:
                    sz.update(basis=basis, per_process=per_proc, per_core=per_core)
                report["sizing"] = sz
                h.write_json(out / "report.json", report)
            if "scaleout" in parts:
                report["scaleout"] = run_scaleout(ep, out, args.scaleout_rate,
                                                  args.scaleout_seconds * ts, **common)
                h.write_json(out / "report.json", report)
            if "overhead" in parts:
                report["overhead"] = run_overhead(
                    ep, out, args.overhead_rate, args.overhead_seconds * ts,
                    args.overhead_drain, rounds=args.overhead_rounds, **common)
    except HarnessError as e:  # the parts report their own failures: the stack failed
        print(f"error: {e}", file=sys.stderr)
        report["error"] = verdict.error = str(e)
    h.write_json(out / "report.json", report)
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    print(f"\nreport: {out / 'report.md'}")
    if verdict.error:
        return EXIT_USAGE
    run = _verdict(report, out)
    verdict.runs.append(run)
    if args.summary_dir:
        ran = [p for p in PARTS if p in parts]
        name = "capacity" + ("" if len(ran) == len(PARTS) else "-" + "-".join(ran))
        cmd = (f"loadtest capacity --only {','.join(ran)} --time-scale {ts:g} "
               f"--scaleout-rate {args.scaleout_rate:g}")
        figures = {"passed": run.passed, **{k: _without_samples(v) for k, v in report.items()
                                            if k != "box"}}
        print(f"summary: {write_summary(args.summary_dir, name, cmd, figures)}")
    return EXIT_PASSED if run.passed else EXIT_FAILED


def _without_samples(part: Any) -> Any:
    """A report part for a summary: the 1 Hz samples stay in reports/capacity/."""
    if isinstance(part, dict):
        return {k: v for k, v in part.items() if k != "samples"}
    return part


def command(args: argparse.Namespace) -> int:
    return clikit.run_with_verdict("loadtest capacity", args, _run)


if __name__ == "__main__":
    raise SystemExit(clikit.module_main("loadtest capacity", configure, command))
