"""`chaos` command line: `chaos stack up|down|status` and `chaos run SCENARIO...`.

`chaos run` shares its vocabulary with `loadtest` (teststack/clikit.py): `--time-scale`
multiplies durations, `--stack-dir`, `--json` for the verdict, `--yes` for runs past an hour.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from teststack import clikit, prometheus, stack
from teststack.runs import HarnessError
from teststack.summary import add_summary_dir, write_summary

if TYPE_CHECKING:
    from chaos.results import RunResult
    from chaos.scenario import Scenario


def _cmd_up(args: argparse.Namespace) -> int:
    sdir = Path(args.dir).resolve()
    if stack.is_healthy(sdir, args.topology):
        print(f"{args.topology} stack already running and healthy in {sdir} "
              f"(endpoints: {sdir / 'endpoints.json'})")
        return _up_prometheus(sdir) if args.with_prometheus else 0
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    multi = args.topology == stack.MULTI_DC
    partitions = args.partitions or (2 if multi else 4)
    try:
        if multi:
            if args.secure:
                print("--secure starts with the single-dc topology only", file=sys.stderr)
                return 2
            views = stack.start_multi_dc_stack(sdir, partitions=partitions, topic=args.topic,
                                               timings=timings).datacenters
        else:
            views = {"": stack.start_stack(sdir, partitions=partitions, topic=args.topic,
                                           timings=timings, secure=args.secure)}
    except stack.StackError as e:
        print(f"stack up FAILED: component {e.component}: {e.message}", file=sys.stderr)
        if e.log_file is not None:
            print(f"--- tail of {e.log_file} ---", file=sys.stderr)
            print(e.log_tail(40), file=sys.stderr)
        print("everything that had started was stopped", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - t0
    print(f"{args.topology} stack up in {sdir}")
    for dc, endpoints in views.items():
        if dc:
            print(f"  datacenter {dc}")
        print(f"  kafka      bootstrap {endpoints.kafka.bootstrap}  proxied "
              f"{endpoints.kafka.bootstrap_proxied}  topic {endpoints.kafka.topic} "
              f"({endpoints.kafka.partitions} partitions)")
        for name, ch in endpoints.clickhouse.items():
            print(f"  clickhouse {name:<7} {ch.url}  proxied {ch.proxied_url} "
                  f"(proxy {ch.proxy})  {ch.https_url}  user {ch.username}"
                  + (f"  mTLS {ch.mtls_url}" if ch.mtls_url else ""))
        if endpoints.secure is not None:
            s = endpoints.secure
            print(f"  kafka      SASL_SSL {s.kafka_sasl_ssl} ({', '.join(s.users)})  SSL "
                  f"{s.kafka_ssl} (client certificate)  SASL_PLAINTEXT "
                  f"{s.kafka_sasl_plaintext}")
    print(f"  toxiproxy  {next(iter(views.values())).toxiproxy.api}")
    ready = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if k != "total")
    print(f"  ready after: {ready}")
    print(f"endpoints: {sdir / 'endpoints.json'}")
    print(f"start-up time: {elapsed:.1f} s")
    return _up_prometheus(sdir) if args.with_prometheus else 0


def _up_prometheus(sdir: Path) -> int:
    try:
        prom = prometheus.start(sdir)
    except stack.StackError as e:
        print(f"prometheus FAILED: {e.message}\n{e.log_tail(20)}", file=sys.stderr)
        return 1
    print(f"  prometheus {prom.url}  (rules: {prometheus.RULES_FILE.name}, every `for:` / "
          f"{prometheus.TIME_COMPRESSION}; targets: {prom.directory / 'targets'})")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    sdir = Path(args.dir).resolve()
    if not (sdir / "pids.json").exists():
        print(f"no stack running in {sdir}")
        if args.purge and sdir.exists():
            stack.stop_stack(sdir, purge=True)
        return 0
    t0 = time.monotonic()
    leftovers = stack.stop_stack(sdir, purge=args.purge)
    if leftovers:
        print(f"could not stop: {', '.join(leftovers)}", file=sys.stderr)
        return 1
    print(f"stack in {sdir} stopped in {time.monotonic() - t0:.1f} s"
          + (" (data purged)" if args.purge else " (data kept; --purge deletes it)"))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    sdir = Path(args.dir).resolve()
    statuses = stack.stack_status(sdir)
    if not statuses:
        print(f"no stack in {sdir}")
        return 1
    print(f"{'component':<18} {'pid':>8} {'alive':<6} {'health':<8} ports")
    for s in statuses:
        ports = " ".join(f"{k}={v}" for k, v in s.ports.items())
        health = "ok" if s.healthy else "DOWN"
        detail = f"  ({s.detail})" if s.detail else ""
        print(f"{s.name:<18} {s.pid or '-':>8} {'yes' if s.alive else 'no':<6} "
              f"{health:<8} {ports}{detail}")
    return 0 if all(s.alive and s.healthy for s in statuses) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chaos", description="Flow outlet chaos harness")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stack", help="native test stack (Kafka, Toxiproxy, ClickHouse)")
    st_sub = st.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", default=clikit.STACK_DIR,
                       help=f"stack directory (default: {clikit.STACK_DIR})")

    up = st_sub.add_parser("up", help="start the stack (no-op when already healthy)")
    common(up)
    up.add_argument("--topology", choices=stack.TOPOLOGIES, default=stack.SINGLE_DC,
                    help="single-dc (default: kafka, local, azure) or multi-dc (datacenters "
                         "a and b, each with its Kafka and local ClickHouse, one central)")
    up.add_argument("--partitions", type=int, default=0,
                    help="flows topic partitions (default: 4; 2 per Kafka in multi-dc)")
    up.add_argument("--topic", default="flows", help="Kafka topic to create (default: flows)")
    up.add_argument("--secure", action="store_true",
                    help="also start Kafka's SASL_SSL, SSL and SASL_PLAINTEXT listeners and "
                         "ClickHouse HTTPS ports requiring client certificates (single-dc)")
    up.add_argument("--with-prometheus", action="store_true",
                    help="also run Prometheus with the shipped alert rules (docs/operations.md)")
    up.set_defaults(func=_cmd_up)
    down = st_sub.add_parser("down", help="stop every process of the stack")
    common(down)
    down.add_argument("--purge", action="store_true", help="also delete data and logs")
    down.set_defaults(func=_cmd_down)
    status = st_sub.add_parser("status", help="show components, PIDs, ports and health")
    common(status)
    status.set_defaults(func=_cmd_status)
    _add_run_parser(sub)
    return parser


RUN_DESCRIPTION = ("Play fault scenarios (scenarios/*.yaml) against the native stack with a "
                   "real outlet in dual-write, check the delivery invariants and write a "
                   "report per scenario.")
SETUP_S = 30.0  # per scenario: set-up, outlet start, drain and quiet wait (for the estimate)


def _add_run_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`chaos run SCENARIO...`: the chaos harness (chaos/runner.py, docs/chaos.md)."""
    from chaos.rates import CALIBRATION_FLOWS
    from chaos.runner import REPORTS_DIR
    from chaos.scenario import list_scenarios

    run = sub.add_parser("run", help="run chaos scenarios and check their invariants",
                         description=RUN_DESCRIPTION)
    run.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                     help="scenario names (scenarios/NAME.yaml: " + ", ".join(list_scenarios())
                          + ") or paths")
    run.add_argument("--all", action="store_true", help="run every scenarios/*.yaml")
    clikit.add_common(run, time_scale="every timeline time and duration (load, windows)")
    run.add_argument("--multi-dc-stack-dir", default=".stack-multi-dc", metavar="DIR",
                     help="stack directory of multi-dc scenarios (default: .stack-multi-dc)")
    run.add_argument("--keep-stack", action="store_true",
                     help="leave a stack this command started running")
    run.add_argument("--reports-dir", default=str(REPORTS_DIR), metavar="DIR",
                     help="reports go to DIR/SCENARIO/ (default: reports/chaos)")
    run.add_argument("--validate", action="store_true",
                     help="only validate the scenario files")
    run.add_argument("--with-prometheus", action="store_true",
                     help="record alerts for every scenario (started anyway for scenarios "
                          "with an `alerts:` expectation)")
    rate = run.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=clikit.positive_float, default=None, metavar="FLOWS",
                      help="play every single-dc scenario at FLOWS flows/s instead of its "
                           "file's rate (set_rate steps keep their proportion)")
    rate.add_argument("--rate-fraction", type=clikit.positive_float, default=None,
                      metavar="F",
                      help="before each single-dc scenario, drain a backlog as make "
                           "bench-outlet does, into its destinations (tens of seconds), then "
                           "play it at F times the capacity measured (CI: 0.5; docs/chaos.md)")
    run.add_argument("--calibration-flows", type=int, default=CALIBRATION_FLOWS, metavar="N",
                     help=f"backlog of the --rate-fraction calibration (default: "
                          f"{CALIBRATION_FLOWS})")
    add_summary_dir(run)
    run.epilog = ("Report: DIR/SCENARIO/report.md (and report.json, timeline.png, outlet/ with "
                  "the outlet's config, state and log). Exit status: 0 every invariant held, 1 "
                  "an invariant failed or a run could not complete, 2 invalid scenario, "
                  "refused long run or no stack.")
    run.set_defaults(func=_cmd_run)


def _run(args: argparse.Namespace, verdict: clikit.Verdict) -> int:
    from chaos.scenario import ScenarioError, list_scenarios, load_scenario

    names = list_scenarios() if args.all else list(args.scenarios)
    if not names:
        verdict.error = "no scenario given"
        print(f"no scenario given (available: {', '.join(list_scenarios())})", file=sys.stderr)
        return clikit.EXIT_USAGE
    scenarios = []
    problems = []
    for name in names:
        try:
            scenarios.append(load_scenario(name).scaled(args.time_scale))
        except ScenarioError as e:
            print(e, file=sys.stderr)
            problems.append(str(e))
    if problems:
        verdict.error = "\n".join(problems)
        return clikit.EXIT_USAGE
    if args.validate:
        for sc in scenarios:
            print(f"{sc.name}: ok ({sc.topology}, {len(sc.timeline)} timeline steps, load "
                  f"{sc.load.duration:g}s at {sc.load.rate:g} flows/s)")
            verdict.runs.append(clikit.RunVerdict(sc.name, True, details={"validated": True}))
        return clikit.EXIT_PASSED
    estimate = sum(sc.end + SETUP_S for sc in scenarios)
    if not clikit.confirm_long_run(estimate, f"chaos run of {len(scenarios)} scenario(s) at "
                                   f"time scale {args.time_scale:g}", args.yes):
        verdict.error = "refused: the run would last more than an hour (--yes)"
        return clikit.EXIT_USAGE
    try:
        results = _run_scenarios(scenarios, args)
    except HarnessError as e:
        verdict.error = str(e)
        print(f"chaos run: {e}", file=sys.stderr)
        return clikit.EXIT_USAGE
    by_name = {sc.name: sc for sc in scenarios}
    for r in results:
        if args.summary_dir:
            print(f"summary: {_write_summary(args, r, by_name[r.scenario])}")
        verdict.runs.append(clikit.RunVerdict(
            r.scenario, r.passed, str(r.report_dir / "report.md"), r.info.get("wall_s"),
            clikit.failures_of(r.checks), r.error))
    failed = [r.scenario for r in results if not r.passed]
    print(f"{len(results) - len(failed)}/{len(results)} scenarios passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return clikit.EXIT_FAILED if failed else clikit.EXIT_PASSED


def _run_scenarios(scenarios: list[Scenario], args: argparse.Namespace) -> list[RunResult]:
    """Run them (chaos/multidc.py's run_all) at ``--rate``, or with ``--rate-fraction``
    each single-dc one after its own calibration (chaos/rates.py)."""
    from chaos import rates
    from chaos.multidc import run_all
    from chaos.runner import run_many

    def run(some: list[Scenario]) -> list[RunResult]:
        return run_all(some, args.stack_dir, args.multi_dc_stack_dir, args.reports_dir,
                       keep_stack=args.keep_stack, with_prometheus=args.with_prometheus)

    if args.rate is not None:
        return run(rates.at_fixed_rate(scenarios, args.rate))
    single = [sc for sc in scenarios if sc.topology != stack.MULTI_DC]
    if args.rate_fraction is None or not single:
        return run(scenarios)
    multi = [sc for sc in scenarios if sc.topology == stack.MULTI_DC]
    results = run_many(single, args.stack_dir, args.reports_dir, args.keep_stack,
                       run_one=rates.calibrated_runner(args.rate_fraction,
                                                       args.calibration_flows,
                                                       with_prometheus=args.with_prometheus))
    return results + run(multi) if multi else results


def _write_summary(args: argparse.Namespace, result: RunResult, sc: Scenario) -> Path:
    from chaos.report import summary

    cmd = f"chaos run {sc.name} --time-scale {sc.time_scale:g}"
    if args.rate_fraction is not None and sc.topology != stack.MULTI_DC:
        cmd += f" --rate-fraction {args.rate_fraction:g}"
    elif args.rate is not None and sc.topology != stack.MULTI_DC:
        cmd += f" --rate {args.rate:g}"
    return write_summary(args.summary_dir, f"chaos-{sc.name}", cmd, summary(result, sc))


def _cmd_run(args: argparse.Namespace) -> int:
    return clikit.run_with_verdict("chaos run", args, _run)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
