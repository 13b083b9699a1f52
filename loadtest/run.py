"""``loadtest run PROFILE`` (``make load PROFILE=name``): replay a load profile with Locust
against the stack, the outlet in dual-write (local primary + azure), and write a report.

    loadtest run steady --time-scale 0.5 --rate-scale 0.5

Steps: reuse a healthy stack in ``.stack`` (or start one and stop it afterwards); apply the
schema and empty both flows tables; create a fresh topic; start the outlet; run headless
Locust (``loadtest/locustfile.py``) while sampling the outlet's metrics and the Kafka
watermarks twice a second (live progress once a second); wait until both destinations
stored every produced flow; verify the tables (rows == distinct flow ids == produced, Bytes
sums); write ``reports/load/<profile>/``: ``report.md``, ``report.json``,
``throughput.png``, ``lag.png``, ``latency.png`` and Locust's ``locust.html``,
``locust_stats*.csv``, ``locust.json``, ``locust.log``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest import harness as h
from loadtest.loadgen import LoadSettings
from loadtest.profile import Profile, ProfileError, available_profiles, load_profile
from teststack import clikit
from teststack.clikit import EXIT_FAILED, EXIT_PASSED, EXIT_USAGE, Failure, RunVerdict, Verdict
from teststack.kafka import create_topic, delete_topic
from teststack.paths import REPORTS_DIR as _ALL_REPORTS
from teststack.runs import HarnessError, fresh_run, prepare_tables, stack_for_run
from teststack.series import rate_series
from teststack.stack import Endpoints

REPORTS_DIR = _ALL_REPORTS / "load"
DESTINATIONS = ("local", "azure")
SETUP_S = 60.0  # stack reuse, schema, outlet start and drain: for the run-length estimate


def run_load(profile: Profile, ep: Endpoints, report_dir: Path, *,
             time_scale: float = 1.0, rate_scale: float = 1.0, profile_ref: str = "",
             batch_size: int = 50_000, wait_time: str = "1s", partitions: int | None = None,
             producer_batch: int = 1000, drain_timeout: float | None = None,
             destinations: Sequence[str] = DESTINATIONS) -> dict[str, Any]:
    """One load run; returns the report dict (also written to ``report_dir``)."""
    scaled = profile.scaled(time_scale, rate_scale)
    names = fresh_run(report_dir, "load", profile.name)
    workdir, topic, group, run_id = names.workdir, names.topic, names.group, names.run_id
    nparts = partitions or ep.kafka.partitions
    prepare_tables(ep, workdir, destinations, topic)
    create_topic(ep, topic, nparts)
    outlet = h.make_outlet(ep, workdir, name="outlet", destinations=destinations, topic=topic,
                           group=group, batch_size=batch_size, wait_time=wait_time)
    settings = LoadSettings(bootstrap=ep.kafka.bootstrap, topic=topic,
                            profile=profile_ref or profile.source or profile.name,
                            time_scale=time_scale, rate_scale=rate_scale, run_id=run_id,
                            batch=producer_batch)
    info: dict[str, Any] = {
        "profile": scaled.to_dict(), "time_scale": time_scale, "rate_scale": rate_scale,
        "topic": topic, "partitions": nparts, "consumer_group": group, "run_id": run_id,
        "destinations": list(destinations), "outlet_batch_size": batch_size,
        "outlet_wait_time": wait_time, "producer_batch": producer_batch,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "box": h.BOX_NOTE,
    }
    print(f"load {profile.name}: {scaled.wall_duration:.0f} s (time scale {time_scale:g}), peak "
          f"{scaled.peak_rate:,.0f} "
          f"flows/s, ~{scaled.total_flows():,.0f} flows; topic {topic} ({nparts} partitions), "
          f"outlet dual-write {'+'.join(destinations)}", flush=True)
    sampler: h.Sampler | None = None
    locust: h.LocustRun | None = None
    error = ""
    summary = None
    checks: list[h.DestinationCheck] = []
    try:
        outlet.start()
        sampler = h.Sampler(ep, topic, {"outlet": outlet}, destinations)
        sampler.start()
        locust = h.start_locust(settings, report_dir)
        _progress(locust, sampler, scaled, destinations)
        rc = locust.wait(scaled.wall_duration + 120)
        t_load1 = time.monotonic() - sampler.t0
        summary = locust.summary()
        # The producer's own start/end (Locust imports take a few seconds before the load).
        t_load0 = sampler.at_wall(summary.started_at)
        t_load1 = sampler.at_wall(summary.ended_at)
        info.update(locust_exit=rc, load_start_s=round(t_load0, 2), load_end_s=round(t_load1, 2))
        if not summary.ok:
            raise HarnessError(f"producer: {summary.failed} failed, {summary.undelivered} "
                                 f"undelivered, {summary.pending} pending: {summary.errors[:3]}")
        timeout = drain_timeout or 120 + summary.flows / 20_000
        print(f"  load done: {summary.flows:,} flows produced in {t_load1 - t_load0:.1f} s; "
              "waiting for both destinations ...", flush=True)
        if not h.wait_stored(sampler, destinations, summary.flows, timeout):
            raise HarnessError(f"not every flow stored within {timeout:.0f} s")
        time.sleep(1.0)  # one more sample after the last insert
        checks = h.verify(ep, destinations, run_id, summary.flows, summary.bytes_sum)
    except Exception as e:  # reported, not raised: the report says what happened
        error = f"{type(e).__name__}: {e}"
        if locust is not None and locust.proc.poll() is None:
            locust.stop()
    finally:
        if sampler is not None:
            sampler.stop()
        rc_outlet = outlet.stop() if outlet.alive() else None
        info["outlet_exit"] = rc_outlet
        delete_topic(ep, topic)
    samples = sampler.samples if sampler is not None else []
    report = build_report(info, scaled, samples, summary, checks, destinations, report_dir,
                          error)
    from loadtest.report import write_load_report

    write_load_report(report, samples, report_dir)
    return report


def _progress(locust: h.LocustRun, sampler: h.Sampler, profile: Profile,
              destinations: Sequence[str]) -> None:
    """Live progress once a second until Locust exits."""
    prev: h.Sample | None = None
    while locust.proc.poll() is None:
        time.sleep(1.0)
        s = sampler.last()
        started = locust.started_at()
        if s is None or started is None:
            continue
        t_load0 = sampler.at_wall(started)
        if prev is not None and s.t > prev.t:
            dt = s.t - prev.t
            t_run = s.t - t_load0
            target = profile.rate_at_wall(t_run)
            offered = (s.produced - prev.produced) / dt
            stored = " ".join(f"{d} {(s.stored(d) - prev.stored(d)) / dt:>8,.0f}"
                              for d in destinations)
            cpu = (s.cpu() - prev.cpu()) / dt
            print(f"  [{t_run:5.0f}s] target {target:>8,.0f}  offered {offered:>8,.0f}  "
                  f"stored {stored}  lag {int(s.lag()):>8,}  outlet cpu {cpu:4.2f}",
                  flush=True)
        prev = s


def build_report(info: dict[str, Any], profile: Profile, samples: Sequence[h.Sample],
                 summary: Any, checks: Sequence[h.DestinationCheck],
                 destinations: Sequence[str], report_dir: Path, error: str) -> dict[str, Any]:
    produced = summary.flows if summary is not None else 0
    t_load0 = float(info.get("load_start_s", 0.0))
    t_load1 = float(info.get("load_end_s", samples[-1].t if samples else 0.0))
    ts = [s.t for s in samples]
    rates: dict[str, Any] = {}
    e2e: dict[str, Any] = {}
    insert: dict[str, Any] = {}
    if samples:
        last = samples[-1]
        dur = max(t_load1 - t_load0, 1e-9)
        in_load = [s for s in samples if t_load0 <= s.t <= t_load1]
        _, off_r = rate_series(ts, [float(s.produced) for s in samples])
        rates["offered_mean"] = round(produced / dur, 1)
        rates["offered_peak"] = round(max(off_r, default=0.0), 1)
        rates["target_mean"] = round(profile.total_flows() / profile.wall_duration, 1)
        rates["target_peak"] = profile.peak_rate
        for d in destinations:
            _, st_r = rate_series(ts, [s.stored(d) for s in samples])
            rates[f"stored_peak_{d}"] = round(max(st_r, default=0.0), 1)
            e2e[d] = h.end_to_end_latency(ts, [float(s.produced) for s in samples],
                                          [s.stored(d) for s in samples])
            o = last.outlets["outlet"]
            insert[d] = h.latency_percentiles(o.hist.get(d, {}), o.hist_sum.get(d))
        cpu_s = last.cpu() - samples[0].cpu()
        wall = max(last.t - samples[0].t, 1e-9)
        rates["lag_max"] = max((s.lag() for s in samples), default=0.0)
        rates["backlog_max"] = max((s.produced - s.stored(destinations[0]) for s in in_load),
                                   default=0.0)
        rates["outlet_cpu_s"] = round(cpu_s, 2)
        rates["outlet_cores_mean"] = round(cpu_s / wall, 3)
        rates["outlet_cpu_us_per_flow"] = round(cpu_s / produced * 1e6, 2) if produced else None
    ok = not error and bool(checks) and all(c.ok for c in checks)
    return {
        "ok": ok, "error": error, **info,
        "produced": summary.__dict__ if summary is not None else None,
        "destinations_check": [c.to_dict() for c in checks],
        "rates": rates, "insert_latency_ms": insert, "end_to_end_latency_s": e2e,
        "locust": h.locust_stats(report_dir),
        "samples": [s.to_dict() for s in samples],
    }


DESCRIPTION = ("Replay a load profile with Locust against the stack, the outlet in dual-write "
               "(local primary + azure), and check that every flow is stored exactly once on "
               "both destinations.")


def configure(ap: argparse.ArgumentParser) -> None:
    ap.description = DESCRIPTION
    ap.add_argument("profile", nargs="?", metavar="PROFILE",
                    help="a profile of loadtest/profiles (" + ", ".join(available_profiles())
                         + ") or the path of a YAML profile")
    ap.add_argument("--list", action="store_true", help="list the profiles and exit")
    clikit.add_common(ap, time_scale="the replay's duration")
    ap.add_argument("--rate-scale", type=clikit.positive_float, default=1.0, metavar="F",
                    help="multiply every rate by F (default: 1)")
    ap.add_argument("--reports-dir", default=str(REPORTS_DIR), metavar="DIR",
                    help="the report goes to DIR/PROFILE/ (default: reports/load)")
    h.add_outlet_options(ap)
    ap.add_argument("--producer-batch", type=int, default=1000,
                    help="flows per produced batch, one Locust request (default: 1000)")
    ap.epilog = ("Report: DIR/PROFILE/report.md (and report.json, throughput.png, lag.png, "
                 "latency.png, Locust's locust.html and CSVs). Exit status: 0 every flow stored "
                 "once on both destinations, 1 not, or the run failed, 2 bad usage, invalid "
                 "profile, refused long run or no stack.")


def _list() -> None:
    for name in available_profiles():
        p = load_profile(name)
        print(f"{name:<12} {p.wall_duration:6.0f} s  peak {p.peak_rate:>9,.0f} flows/s  "
              f"{p.description}")


def _failures(report: dict[str, Any]) -> list[Failure]:
    return [Failure(f"{c['destination']}: rows == distinct ids == produced, Bytes sum",
                    f"{c['expected_rows']} rows, Bytes {c['expected_bytes']}",
                    f"{c['rows']} rows, {c['distinct']} distinct, Bytes {c['bytes_sum']}")
            for c in report.get("destinations_check", []) if not c["ok"]]


def _run(args: argparse.Namespace, verdict: Verdict) -> int:
    if args.list or not args.profile:
        _list()
        return EXIT_PASSED if args.list else EXIT_USAGE
    try:
        profile = load_profile(args.profile)
        scaled = profile.scaled(args.time_scale, args.rate_scale)
    except ProfileError as e:
        verdict.error = str(e)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not clikit.confirm_long_run(scaled.wall_duration + SETUP_S, f"loadtest run "
                                   f"{profile.name} at time scale {args.time_scale:g}", args.yes):
        verdict.error = "refused: the run would last more than an hour (--yes)"
        return EXIT_USAGE
    h.OUTLET_COMPRESSION = args.compression
    report_dir = Path(args.reports_dir) / profile.name
    t0 = time.monotonic()
    try:
        with stack_for_run(args.stack_dir) as ep:
            report = run_load(profile, ep, report_dir, time_scale=args.time_scale,
                              rate_scale=args.rate_scale, profile_ref=args.profile,
                              batch_size=args.batch_size, wait_time=args.wait_time,
                              partitions=args.partitions, producer_batch=args.producer_batch)
    except HarnessError as e:
        verdict.error = str(e)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    md = report_dir / "report.md"
    verdict.runs.append(RunVerdict(profile.name, bool(report["ok"]), str(md),
                                   round(time.monotonic() - t0, 1), _failures(report),
                                   report["error"]))
    print(md.read_text().split("## Samples")[0])
    print(f"report: {md}")
    return EXIT_PASSED if report["ok"] else EXIT_FAILED


def command(args: argparse.Namespace) -> int:
    return clikit.run_with_verdict("loadtest run", args, _run)


if __name__ == "__main__":
    raise SystemExit(clikit.module_main("loadtest run", configure, command))
