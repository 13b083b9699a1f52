"""Chaos at realistic rates: the load derived from what this machine can carry now.

A fixed load (2,000 flows/s in every shipped scenario) is under 1% of what one outlet
process stores: a large capacity loss would pass unnoticed. ``chaos run --rate-fraction F``
and the CI set (tests/chaos/test_chaos.py) therefore first calibrate with a backlog drain
of ``make bench-outlet``'s kind (teststack/drain.py; 1M flows produced as fast as
possible, then drained; tens of seconds) and play every single-datacenter scenario at
``F`` times the capacity it measures; the primary is judged against the rate the
producer really offered (``against: offered`` in the scenario's ``throughput``). The
calibration runs right before each scenario, so that the rate follows the machine's
load, and it measures what that scenario runs:

- the drain writes into the scenario's destinations (both servers for a dual-writing
  outlet, not only ``local``), in :data:`CALIBRATION_BATCH`-flow batches, the size the
  scenario then runs with;
- the capacity is the live one (``Calibration.capacity``): the drain's and the
  producer's time per flow added, since a scenario produces and stores at once on the
  same cores, where the calibration does one after the other.

Every figure, and the rate offered, go into every report (``info.rate_origin``,
``info.offered_flows_per_s``). docs/chaos.md#realistic-rates has the decision and the
measurements behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos.results import RunResult
from chaos.runner import RunOne, run_scenario
from chaos.scenario import MULTI_DC, Scenario
from teststack.drain import Calibration, calibrate
from teststack.stack import Endpoints

DEFAULT_FRACTION = 0.5
CALIBRATION_FLOWS = 1_000_000
# The batches of the calibration drain and of the calibrated scenario (its maximum-batch-
# size; its 500 ms maximum-wait-time cuts them smaller below 50,000 flows/s). Measured:
# the same backlog drained in 20,000-flow batches stores 20-40% less per second than in
# make bench-outlet's 50,000 (a fixed cost per batch: encode call, ledger record, insert,
# part), so a capacity measured with big batches does not hold for the scenario's.
# 25,000 is a quarter to half a second of load at the rates this machine reaches, which
# keeps the 1 Hz row counts fine enough to judge a 13 s window within 4%.
CALIBRATION_BATCH = 25_000


def calibration_origin(cal: Calibration, fraction: float) -> dict[str, Any]:
    """What a calibrated run records: the live capacity, the fraction, the drain and the
    producer's rate it comes from."""
    d = cal.drain
    return {
        "source": "calibration (teststack/drain.py: make bench-outlet's drain into the "
                  "scenario's destinations, its time per flow and the producer's added)",
        "capacity_flows_per_s": round(cal.capacity),
        "fraction": fraction,
        "rate": round(fraction * cal.capacity),
        "drain": {"destinations": list(d.destinations), "batch_size": cal.batch_size,
                  "flows": d.flows, "startup_s": round(d.startup_s, 2),
                  "seconds": round(d.seconds, 2), "flows_per_s": round(d.flows_per_s),
                  "steady_flows_per_s": round(d.steady_flows_per_s),
                  "cpu_us_per_flow": round(d.cpu_us_per_flow, 2),
                  "machine_busy": round(d.machine_busy, 2)},
        "backlog_produce_flows_per_s": round(cal.backlog_produce_flows_per_s),
        "load_average": [round(x, 2) for x in cal.load_average],
    }


def at_fixed_rate(scenarios: list[Scenario], rate: float) -> list[Scenario]:
    """Every single-dc scenario at ``rate`` flows/s (``chaos run --rate``)."""
    origin = {"source": "--rate", "rate": rate}
    return [sc if sc.topology == MULTI_DC else sc.at_rate(rate, origin) for sc in scenarios]


def at_calibrated_rate(scenarios: list[Scenario], cal: Calibration, fraction: float
                       ) -> list[Scenario]:
    """Every single-dc scenario at ``fraction`` of the calibrated capacity, in the
    calibration's batches. Multi-dc scenarios keep their file's rate (two outlets, two
    brokers and three servers share the cores that one outlet's calibration measured:
    docs/chaos.md)."""
    origin = calibration_origin(cal, fraction)
    return [sc if sc.topology == MULTI_DC
            else sc.at_rate(origin["rate"], origin, batch_size=cal.batch_size)
            for sc in scenarios]


def measure(ep: Endpoints, flows: int = CALIBRATION_FLOWS,
            progress: Callable[[str], None] = print,
            destinations: tuple[str, ...] = ("local",)) -> Calibration:
    """Run the calibration drain on the single-dc stack into ``destinations`` and say
    what it measured."""
    progress(f"calibration: draining a backlog of {flows:,} flows into "
             f"{' + '.join(destinations)} in {CALIBRATION_BATCH:,}-flow batches "
             "(make bench-outlet's drain)")
    cal = calibrate(ep, flows, CALIBRATION_BATCH, destinations)
    d = cal.drain
    progress(f"calibration: {cal.capacity:,.0f} flows/s live capacity = "
             f"{d.steady_flows_per_s:,.0f} flows/s steady drain ({d.flows_per_s:,.0f} "
             f"flows/s with {d.startup_s:.1f} s of start-up; outlet CPU "
             f"{d.cpu_us_per_flow:.2f} us/flow) with a backlog produced at "
             f"{cal.backlog_produce_flows_per_s:,.0f} flows/s, time per flow added; load "
             f"average {cal.load_average[0]:.1f}")
    return cal


def calibrated_runner(fraction: float, flows: int = CALIBRATION_FLOWS, *,
                      with_prometheus: bool = False) -> RunOne:
    """A ``run_many`` runner that calibrates right before each single-dc scenario (the
    machine's load moves within minutes: a capacity measured for the previous scenario
    can be twice what this one gets), with a drain into its destinations, and plays it
    at ``fraction`` of that."""

    def run_one(sc: Scenario, stack_dir: Path, reports_dir: Path) -> RunResult:
        # the destinations its outlet starts with (one its timeline adds is not drained)
        cal = measure(Endpoints.load(stack_dir), flows, destinations=sc.outlet.destinations)
        [at_rate] = at_calibrated_rate([sc], cal, fraction)
        return run_scenario(at_rate, stack_dir, reports_dir, with_prometheus=with_prometheus)

    return run_one
