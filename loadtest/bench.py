"""Backlog-drain benchmarks: ``loadtest bench outlet|dualwrite`` (``make bench-outlet``,
``make bench-dualwrite``).

Both pre-produce one backlog of unique flows into a fresh topic, then let a real
outlet process (a subprocess, through the Toxiproxy addresses like production) drain
it from the beginning with a fresh consumer group (teststack/drain.py, shared with the
chaos harness's calibration). Throughput is flows stored on the primary divided by the
time from the outlet's start to the last row, and the steady rate from the first stored
row to the last (start-up left out); CPU is the outlet process's user+system time (chDB
runs in-process, so decoding, enrichment and encoding are included; the ClickHouse
servers' CPU is not). Ratios are measured in one run on the same machine so that machine
noise largely cancels out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from loadtest import harness as h
from teststack import clikit
from teststack.clikit import EXIT_FAILED, EXIT_PASSED, EXIT_USAGE, RunVerdict, Verdict
from teststack.drain import DrainResult, drain, make_backlog
from teststack.kafka import delete_topic
from teststack.runs import HarnessError, stack_for_run
from teststack.stack import Endpoints
from teststack.summary import add_summary_dir, write_summary

DESCRIPTION = ("Backlog-drain benchmarks: a real outlet process drains a pre-produced backlog "
               "of unique flows; prints flows/s and outlet CPU per flow (outlet), or the "
               "dual/single ratios measured in one run (dualwrite).")


def configure(ap: argparse.ArgumentParser) -> None:
    ap.description = DESCRIPTION
    ap.add_argument("mode", choices=["outlet", "dualwrite", "codec"],
                    help="outlet: one destination; dualwrite: single and dual alternated; "
                         "codec: the codec alone, in-process (its options: 'loadtest bench "
                         "codec --help', loadtest/bench_codec.py)")
    ap.add_argument("--flows", type=int, default=2_000_000,
                    help="backlog size in flows (default: 2000000)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="dualwrite: alternate single/dual N times (default: 1; make uses 2)")
    h.add_outlet_options(ap, wait_time=False, partitions=False)
    clikit.add_stack_dir(ap)
    clikit.add_json(ap, "the results")
    add_summary_dir(ap)
    ap.epilog = ("No report file: the numbers are printed (and in --json). Exit status: 0 "
                 "measured, 1 a drain did not store every flow, 2 bad usage or no stack.")


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    with stack_for_run(args.stack_dir) as ep:
        backlog = make_backlog(ep, args.flows)
        print(f"backlog: {args.flows:,} flows produced in {backlog.produce_s:.1f}s "
              f"({backlog.produce_flows_per_s:,.0f} flows/s)", flush=True)
        try:
            summary = _drains(ep, backlog.topic, args)
        finally:
            delete_topic(ep, backlog.topic)
        summary["backlog_produce_flows_per_s"] = round(backlog.produce_flows_per_s)
        return summary


def _drains(ep: Endpoints, topic: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    results: list[DrainResult] = []
    plan: list[tuple[str, tuple[str, ...]]] = [("single", ("local",))]
    if args.mode == "dualwrite":
        plan = []
        for i in range(args.rounds):
            plan += [(f"single{i}", ("local",)), (f"dual{i}", ("local", "azure"))]
    for label, dests in plan:
        r = drain(ep, topic, args.flows, dests, label, workdir, args.batch_size,
                  args.compression)
        results.append(r)
        print(f"{label:>8}: {r.flows:,} flows in {r.seconds:.2f}s = {r.flows_per_s:,.0f} "
              f"flows/s ({r.steady_flows_per_s:,.0f} flows/s after the first row at "
              f"{r.startup_s:.1f}s), outlet CPU {r.cpu_us_per_flow:.2f} us/flow, machine "
              f"{r.machine_busy:.0%} busy ({psutil.cpu_count()} cores)", flush=True)
    summary: dict[str, Any] = {"results": [asdict(r) for r in results]}
    if args.mode == "dualwrite":
        single = [r for r in results if r.destinations == ["local"]]
        dual = [r for r in results if len(r.destinations) == 2]
        s_rate = sum(r.flows_per_s for r in single) / len(single)
        d_rate = sum(r.flows_per_s for r in dual) / len(dual)
        s_cpu = sum(r.cpu_us_per_flow for r in single) / len(single)
        d_cpu = sum(r.cpu_us_per_flow for r in dual) / len(dual)
        summary.update(throughput_ratio=d_rate / s_rate, cpu_ratio=d_cpu / s_cpu)
        print(f"dual/single throughput: {d_rate / s_rate:.3f} (target >= 0.97); CPU per flow: "
              f"{d_cpu / s_cpu:.3f} (dual {d_cpu:.2f} vs single {s_cpu:.2f} us)")
        if min(r.machine_busy for r in results) > 0.8:
            print("note: the machine was saturated in both modes; the second ClickHouse "
                  "server's ingest shares these cores, so the throughput ratio includes the "
                  "cost of the extra server, not only the outlet's (see CPU per flow)")
    else:
        r = results[0]
        print(f"target: <= 3 us outlet CPU per flow; measured {r.cpu_us_per_flow:.2f} us")
    return summary


def _run(args: argparse.Namespace, verdict: Verdict) -> int:
    t0 = time.monotonic()
    try:
        summary = _bench(args)
    except HarnessError as e:
        verdict.error = str(e)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:  # a drain did not store every flow
        verdict.runs.append(RunVerdict(f"bench-{args.mode}", False, error=str(e)))
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    verdict.runs.append(RunVerdict(f"bench-{args.mode}", True,
                                   wall_s=round(time.monotonic() - t0, 1), details=summary))
    if args.summary_dir:
        path = write_summary(args.summary_dir, f"bench-{args.mode}", reproduce(args), summary)
        print(f"summary: {path}")
    return EXIT_PASSED


def reproduce(args: argparse.Namespace) -> str:
    """The command line that repeats this benchmark."""
    cmd = f"loadtest bench {args.mode} --flows {args.flows} --batch-size {args.batch_size}"
    if args.mode == "dualwrite":
        cmd += f" --rounds {args.rounds}"
    return cmd + (f" --compression {args.compression}" if args.compression else "")


def command(args: argparse.Namespace) -> int:
    return clikit.run_with_verdict(f"loadtest bench {args.mode}", args, _run)


if __name__ == "__main__":
    if sys.argv[1:2] == ["codec"]:
        from loadtest import bench_codec

        raise SystemExit(bench_codec.main(sys.argv[2:]))
    raise SystemExit(clikit.module_main("loadtest bench", configure, command))
