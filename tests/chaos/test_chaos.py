"""Chaos harness: scenario validation (pure) and one real run against the stack."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaos.scenario import (
    ScenarioError,
    list_scenarios,
    load_scenario,
    merge_overrides,
    parse_duration,
    parse_scenario,
    planned_windows,
)
from outlet import metrics as names

MINIMAL: dict[str, Any] = {
    "name": "t",
    "load": {"rate": 1000, "duration": "30s"},
    "timeline": [{"at": "10s", "action": "disable_proxy", "proxy": "azure", "for": "5s"}],
    "expect": {"destinations": {"local": {"rows": "all", "no_duplicates": True}}},
}


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as ei:
        parse_scenario(doc, "test.yaml")
    return ei.value.problems


def with_action(**action: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(MINIMAL))
    doc["timeline"] = [action]
    return doc


# -- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0), ("500ms", 0.5), ("1m30s", 90.0), ("2h", 7200.0), (3, 3.0), ("1.5s", 1.5),
])
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10x", "", "s", "-5s", "10 parsecs", True, None, [1], -1])
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


# -- validation errors carry the key path ----------------------------------------------


def test_minimal_is_valid_and_for_expands_to_a_pair() -> None:
    sc = parse_scenario(MINIMAL)
    assert [(a.at, a.action) for a in sc.timeline] == [(10.0, "disable_proxy"),
                                                        (15.0, "enable_proxy")]
    assert sc.timeline[0].proxy == "clickhouse-azure"
    assert planned_windows(sc.timeline) == [(10.0, 15.0, "disable_proxy clickhouse-azure")]


def test_unknown_action() -> None:
    [p] = problems(with_action(at="5s", action="kil_outlet"))
    assert p.startswith("timeline[0].action: unknown action 'kil_outlet'")
    assert "kill_outlet" in p


def test_bad_duration_path() -> None:
    [p] = problems(with_action(at="5 sec", action="restart_kafka"))
    assert p.startswith("timeline[0].at: bad duration '5 sec'")


def test_unknown_proxy_target_destination() -> None:
    ps = problems(with_action(at="5s", action="disable_proxy", proxy="gcp"))
    assert any(p.startswith("timeline[0].proxy: unknown proxy 'gcp'") for p in ps)
    ps = problems(with_action(at="5s", action="restart_clickhouse", target="gcp"))
    assert any(p.startswith("timeline[0].target: unknown target 'gcp'") for p in ps)
    doc = json.loads(json.dumps(MINIMAL))
    doc["expect"] = {"destinations": {"gcp": {"rows": "all"}}}
    ps = problems(doc)
    assert any(p.startswith("expect.destinations.gcp: unknown destination 'gcp'") for p in ps)


def test_toxic_validation() -> None:
    ps = problems(with_action(at="5s", action="add_toxic", proxy="azure", type="lag"))
    assert any(p.startswith("timeline[0].type: unknown toxic type 'lag'") for p in ps)
    ps = problems(with_action(at="5s", action="add_toxic", proxy="azure", type="latency",
                              attributes={"latencyy": 5}, stream="sideways", toxicity=2))
    assert "timeline[0].attributes.latencyy: unknown attribute for latency (known: latency, " \
           "jitter)" in ps
    assert "timeline[0].attributes.latency: required by toxic latency" in ps
    assert any(p.startswith("timeline[0].stream: must be upstream or downstream") for p in ps)
    assert any(p.startswith("timeline[0].toxicity: must be <= 1") for p in ps)


def test_missing_and_unknown_keys() -> None:
    ps = problems(with_action(at="5s", action="add_toxic", type="latency",
                              attributes={"latency": 1}, colour="red"))
    assert "timeline[0].proxy: required by action add_toxic" in ps
    assert any(p.startswith("timeline[0].colour: unknown key") for p in ps)
    doc = json.loads(json.dumps(MINIMAL))
    doc["lod"] = {}
    assert any(p.startswith("lod: unknown key") for p in problems(doc))


def test_timeline_consistency() -> None:
    ps = problems(with_action(at="5s", action="kill_outlet"))
    assert any("outlet is stopped at the end of the timeline" in p for p in ps)
    ps = problems(with_action(at="5s", action="start_outlet"))
    assert any("already running" in p for p in ps)
    ps = problems(with_action(at="5s", action="remove_toxic", proxy="azure", name="x"))
    assert any("no toxic 'x' on clickhouse-azure" in p for p in ps)


def test_group_members_and_pauses() -> None:
    group = {**MINIMAL, "outlet": {"processes": 3}}
    killed = {**group, "timeline": [{"at": "5s", "action": "kill_outlet", "member": 2}]}
    parse_scenario(killed)  # valid: a member may stay down, its partitions move
    everyone = {**group, "timeline": [{"at": "5s", "action": "kill_outlet", "member": m}
                                      for m in (1, 2, 3)]}
    assert any("stopped at the end" in p for p in problems(everyone))
    ps = problems({**group, "timeline": [{"at": "5s", "action": "kill_outlet", "member": 4}]})
    assert any("member: no member 4 (outlet.processes: 3)" in p for p in ps)
    alone = {**MINIMAL, "timeline": [{"at": "5s", "action": "kill_outlet", "member": 1}]}
    assert any("stopped at the end" in p for p in problems(alone))
    paused = {**group, "timeline": [{"at": "5s", "action": "pause_outlet", "member": 1}]}
    assert any("paused at the end" in p for p in problems(paused))
    sc = parse_scenario({**group, "timeline": [
        {"at": "5s", "action": "pause_outlet", "member": 1, "for": "15s"}]})
    assert [(a.at, a.action, a.params) for a in sc.timeline] == [
        (5.0, "pause_outlet", {"member": 1}), (20.0, "resume_outlet", {"member": 1})]
    assert sc.outlet.processes == 3


def test_expectation_validation() -> None:
    doc = json.loads(json.dumps(MINIMAL))
    doc["expect"] = {
        "destinations": {"local": {"rows": "most", "no_duplicates": "yes"},
                         "azure": {"loss_equals_metric": True}},
        "metrics": ['nonexistent_metric{destination="azure"} > 0',
                    'retries_exceeded_flows_total{destination="gcp"} > 0',
                    "retries_exceeded_flows_total >> 0"],
        "throughput": [{"destination": "local", "window": ["20s", "10s"], "min_percent": 95}],
    }
    ps = problems(doc)
    assert any(p.startswith("expect.destinations.local.rows: expected one of all") for p in ps)
    assert any(p.startswith("expect.destinations.local.no_duplicates: expected true") for p in ps)
    assert any(p.startswith("expect.metrics[0]: unknown metric 'nonexistent_metric'")
               for p in ps)
    assert any(p.startswith("expect.metrics[1]: unknown destination label 'gcp'") for p in ps)
    assert any(p.startswith("expect.metrics[2]:") for p in ps)
    assert any(p.startswith("expect.throughput[0].window: window end must be after")
               for p in ps)


def test_contradictions_and_null_defaults() -> None:
    doc = json.loads(json.dumps(MINIMAL))
    doc["expect"]["destinations"]["azure"] = {"no_loss": True, "min_loss": 3}
    assert problems(doc) == ["expect.destinations.azure: no_loss contradicts rows: "
                             "all_minus_reported_loss / min_loss"]
    doc = json.loads(json.dumps(MINIMAL))
    doc["load"]["rate"] = None  # null takes the default, as in the outlet's config
    assert parse_scenario(doc).load.rate == 2000
    doc["lod"] = {}
    assert "lod: unknown key (did you mean 'load'?)" in problems(doc)


def test_destinations_added_through_the_orchestrator() -> None:
    add = {"at": "5s", "action": "add_destination", "name": "extra", "server": "azure"}
    remove = {"at": "9s", "action": "remove_destination", "name": "extra"}
    doc = json.loads(json.dumps(MINIMAL))
    doc["timeline"] = [add, remove]
    doc["expect"]["destinations"]["extra"] = {"rows": "given", "no_duplicates": True}
    doc["expect"]["metrics"] = ['flows_written_total{destination="extra"} > 0']
    assert any("needs outlet.orchestrator: true" in p for p in problems(doc))
    doc["outlet"] = {"orchestrator": True}
    sc = parse_scenario(doc)
    assert [e.destination for e in sc.expect.destinations] == ["local", "extra"]
    assert sc.fault_windows() == [(5.0, 9.0, "add_destination extra")]
    doc["timeline"] = [remove, {**add, "at": "10s", "server": "gcp"}]
    doc["expect"]["destinations"]["local"] = {"rows": "given"}
    ps = problems(doc)
    assert any("remove_destination: no destination 'extra' added before 9s" in p for p in ps)
    assert any(p.startswith("timeline[1].server: unknown server 'gcp'") for p in ps)
    assert "expect.destinations.local.rows: given is for a destination the timeline adds" in ps
    doc["timeline"] = [add, {**add, "at": "6s"}]
    doc["expect"]["destinations"] = {"extra": {"rows": "all"}}
    ps = problems(doc)
    assert any("destination 'extra' is already configured at 6s" in p for p in ps)
    assert any(p.startswith("expect.destinations.extra.rows: a destination the timeline adds")
               for p in ps)


def test_primary_never_loses() -> None:
    doc = json.loads(json.dumps(MINIMAL))
    doc["expect"] = {"destinations": {"local": {"rows": "all_minus_reported_loss"}}}
    assert any("the primary never gives up" in p for p in problems(doc))


def test_metric_short_names_resolve() -> None:
    doc = json.loads(json.dumps(MINIMAL))
    doc["expect"]["metrics"] = ['retries_exceeded_flows_total{destination="azure"} > 0']
    [ma] = parse_scenario(doc).expect.metrics
    assert str(ma.lhs) == 'outlet_destination_retries_exceeded_flows_total{destination="azure"}'
    assert ma.compare(1, 0) and not ma.compare(0, 0)


def test_repeat_and_time_scale() -> None:
    doc = with_action(at="10s", action="disable_proxy", proxy="azure", label="flap",
                      **{"for": "2s", "repeat": {"count": 3, "every": "5s"}})
    doc["expect"]["throughput"] = [{"destination": "local", "window": ["10s", "25s"],
                                    "baseline": ["2s", "10s"], "min_percent": 95}]
    sc = parse_scenario(doc)
    assert [a.at for a in sc.timeline] == [10, 12, 15, 17, 20, 22]
    assert len(planned_windows(sc.timeline)) == 3
    s2 = sc.scaled(2)
    assert [a.at for a in s2.timeline] == [20, 24, 30, 34, 40, 44]
    assert s2.load.duration == 60 and s2.load.rate == sc.load.rate
    assert s2.expect.throughput[0].window == (20, 50)
    assert s2.expect.throughput[0].baseline == (4, 20)
    doc["timeline"][0]["for"] = "6s"
    assert any("must be shorter than repeat.every" in p for p in problems(doc))


def test_merge_overrides_by_name() -> None:
    base = {"a": {"b": 1, "c": 2}, "additional-clickhouses": [
        {"name": "azure", "connection": {"password": "good", "database": "flows"}}]}
    out = merge_overrides(base, {"a": {"c": 3}, "additional-clickhouses": {
        "azure": {"connection": {"password": "bad"}}}})
    assert out["a"] == {"b": 1, "c": 3}
    assert out["additional-clickhouses"][0]["connection"] == {"password": "bad",
                                                             "database": "flows"}
    assert base["additional-clickhouses"][0]["connection"]["password"] == "good"
    with pytest.raises(ValueError, match="no item named 'gcp'"):
        merge_overrides(base, {"additional-clickhouses": {"gcp": {}}})


def test_yaml_syntax_error_is_a_scenario_error(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("load: [1,\n")
    with pytest.raises(ScenarioError, match="YAML syntax error"):
        load_scenario(f)


def test_shipped_scenarios_are_valid_and_short() -> None:
    names = list_scenarios()
    for required in ("azure-partition", "azure-latency", "azure-bandwidth", "azure-flapping",
                     "azure-reset-mid-insert", "azure-blackhole", "azure-auth-failure",
                     "local-outage", "both-down", "slow-local", "outlet-crash",
                     "outlet-graceful-restart", "clickhouse-restart", "kafka-restart",
                     "orchestrator-reconfigure"):
        assert required in names
    for name in names:
        sc = load_scenario(name)
        assert sc.name == name
        assert sc.end <= 120, f"{name} lasts {sc.end} s by default"


MULTI_DC: dict[str, Any] = {
    "name": "m",
    "topology": "multi-dc",
    "load": {"rate": 500, "duration": "30s"},
    "timeline": [{"at": "10s", "action": "disable_proxy", "proxy": "central-a", "for": "5s"}],
    "expect": {"destinations": {"central": {"rows": "all", "no_duplicates": True}},
               "recovery": [{"destination": "central-a", "max_seconds": 5}]},
}


def multi_dc(**action: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(MULTI_DC))
    doc["timeline"] = [action]
    return doc


def test_multi_dc_scenario_views_proxies_and_outlets() -> None:
    sc = parse_scenario(MULTI_DC)
    assert sc.topology == "multi-dc" and sc.outlet.destinations == ("local", "central")
    assert sc.timeline[0].proxy == "clickhouse-central-a"  # a's link to central only
    assert sc.views == ("local-a", "local-b", "central", "central-a", "central-b")
    assert sc.view_datacenters("central") == ("a", "b")
    assert sc.view_datacenters("local-b") == ("b",)
    assert (sc.metric_destination("local-a"), sc.metric_destination("central-b")) == (
        "primary", "central")
    doc = multi_dc(at="5s", action="kill_outlet", outlet="a", **{"for": "3s"})
    doc["expect"].pop("recovery")
    crash = parse_scenario(doc)
    assert [(a.action, a.params) for a in crash.timeline] == [
        ("kill_outlet", {"outlet": "a"}), ("start_outlet", {"outlet": "a"})]
    assert planned_windows(crash.timeline)[0][:2] == (5.0, 8.0)


def test_multi_dc_validation() -> None:
    ps = problems(multi_dc(at="5s", action="kill_outlet"))
    assert any(p.startswith("timeline[0].outlet: required in multi-dc scenarios") for p in ps)
    ps = problems(multi_dc(at="5s", action="disable_proxy", proxy="azure"))
    assert any(p.startswith("timeline[0].proxy: not a multi-dc proxy") for p in ps)
    ps = problems(multi_dc(at="5s", action="restart_kafka"))
    assert any(p.startswith("timeline[0].datacenter: required") for p in ps)
    ps = problems(multi_dc(at="5s", action="restart_clickhouse", target="azure"))
    assert any(p.startswith("timeline[0].target: unknown target 'azure'") for p in ps)
    doc = json.loads(json.dumps(MULTI_DC))
    doc["expect"]["destinations"] = {"local": {"rows": "all"},
                                     "local-a": {"rows": "all_minus_reported_loss"}}
    doc["expect"]["metrics"] = ['retries_exceeded_flows_total{dc="c"} == 0']
    ps = problems(doc)
    assert any(p.startswith("expect.destinations.local: unknown destination") for p in ps)
    assert any("the primary never gives up" in p for p in ps)
    assert any(p.startswith("expect.metrics[0]: label dc='c'") for p in ps)
    # single-dc scenarios take neither the multi-dc parameters nor its proxies/recovery
    ps = problems(with_action(at="5s", action="kill_outlet", outlet="a", **{"for": "1s"}))
    assert any(p.startswith("timeline[0].outlet: only in multi-dc") for p in ps)
    ps = problems(with_action(at="5s", action="disable_proxy", proxy="central-a"))
    assert any("multi-dc proxy" in p for p in ps)
    doc = json.loads(json.dumps(MINIMAL))
    doc["expect"]["recovery"] = [{"destination": "azure", "max_seconds": 5}]
    assert any(p.startswith("expect.recovery[0]: checked in multi-dc") for p in problems(doc))


def test_lag_expectations_may_be_listed() -> None:
    doc = json.loads(json.dumps(MULTI_DC))
    doc["expect"]["lag"] = [{"destination": "central-a", "after": "2s", "max_seconds": 5},
                            {"destination": "central-b", "after": "2s", "max_seconds": 5}]
    sc = parse_scenario(doc).scaled(2)
    assert [(lg.destination, lg.after) for lg in sc.expect.lags] == [("central-a", 4.0),
                                                                       ("central-b", 4.0)]
    assert sc.expect.lag == sc.expect.lags[0]


def test_multi_dc_metrics_are_told_apart_by_datacenter() -> None:
    from chaos.multidc import tagged
    from chaos.results import metric_value, reported_loss

    a = tagged({'outlet_destination_retries_exceeded_flows_total{destination="central",'
                'reason="queue_full"}': 3.0, "outlet_flows_received_total": 10.0}, "a")
    b = tagged({'outlet_destination_retries_exceeded_flows_total{destination="central",'
                'reason="queue_full"}': 4.0}, "b")
    merged = {**a, **b}
    assert reported_loss(merged, "central") == 7
    assert reported_loss(merged, "central", dc="a") == 3
    assert metric_value(merged, "outlet_flows_received_total", dc="a") == 10


# -- report rendering (no stack) --------------------------------------------------------


def test_report_rendering(tmp_path: Path) -> None:
    from chaos.report import write_report
    from chaos.results import Check, Event, RunResult, Sample

    sc = load_scenario("azure-partition")
    samples = [Sample(t=float(t), produced=2000 * t, rate=2000, rows={
        "local": 2000 * t, "azure": 2000 * min(t, 12)}, written={"local": None, "azure": None},
        lost={"local": 0, "azure": 0}, lag=100.0, pending=0.0, paused=0.0, outlet_up=True)
        for t in range(0, 46)]
    res = RunResult(
        scenario=sc.name, passed=False,
        checks=[Check("azure: rows", "10", "9", False), Check("local: rows", "5", "5", True)],
        events=[Event(12, 12.0, 12.01, "disable_proxy", "azure partitioned",
                      {"proxy": "azure"}, True),
                Event(27, 27.0, 27.01, "enable_proxy", "azure partitioned",
                      {"proxy": "azure"}, True)],
        samples=samples, info={"load_end_s": 45.0, "produced": 90000},
        destinations={"local": {"rows": 5, "distinct_flows": 5, "duplicates": 0,
                                "missing": 0}},
        metrics={'outlet_destination_retries_exceeded_flows_total{destination="azure",'
                 'reason="retries_exceeded"}': 7.0},
        report_dir=tmp_path / sc.name)
    out = write_report(res, sc)
    md = (out / "report.md").read_text()
    assert "| azure: rows | 10 | 9 | **FAIL** |" in md
    assert json.loads((out / "report.json").read_text())["checks"][0]["passed"] is False
    assert (out / "timeline.png").stat().st_size > 10_000


def test_fill_disk_needs_the_spool_tmpfs_and_undoes_itself() -> None:
    doc = with_action(at="5s", action="fill_disk", disk="spool", **{"for": "3s"})
    [p] = problems(doc)
    assert p.startswith("timeline[0].disk: the spool disk is a tmpfs only with "
                        "outlet.spool_tmpfs")
    doc["outlet"] = {"spool_tmpfs": "4MiB"}
    sc = parse_scenario(doc)
    assert sc.outlet.spool_tmpfs == 4 << 20
    assert [(a.at, a.action) for a in sc.timeline] == [(5.0, "fill_disk"), (8.0, "free_disk")]
    assert planned_windows(sc.timeline) == [(5.0, 8.0, "fill_disk spool")]
    [p] = problems({**doc, "timeline": [{"at": "5s", "action": "fill_disk", "disk": "state"}]})
    assert p.startswith("timeline[0].disk: must be spool")


# -- one real run -----------------------------------------------------------------------

# The representative set `make test` runs (docs/chaos.md): a cloud partition, an outlet
# crash under load, a broker restart, a lost assignment and the spool's disk filling up
# (root: a tmpfs). The first four run at half the live capacity this machine measures just
# before, with a drain in the scenario's shape (the `chaos_rate` fixture, chaos/rates.py);
# the partition runs at full length: the primary is judged over its 13 s window against
# the rate offered, and a shorter window would let a 1 s stall of this shared machine
# count. spool-disk-full keeps its file's rate: its 4 MiB tmpfs is sized for it (a disk
# fault, not a throughput test).
CI_SCENARIOS = [
    ("azure-partition", 1.0),
    ("outlet-crash", 0.5),
    ("kafka-restart", 1.0),
    ("kafka-partition", 1.0),
    ("group-crash-reassign", 1.0),  # issue 12: three processes in a group, one SIGKILLed
    ("spool-disk-full", 1.0),
]
CI_RATE_FRACTION = 0.5
# group-crash-reassign keeps its file's rate: three outlet processes share the machine,
# and what it proves (a crash's batches rebuilt by the others) does not depend on the rate.
AT_FILE_RATE = {"spool-disk-full", "group-crash-reassign"}


@pytest.fixture
def chaos_rate(stack: Any) -> Any:
    """The calibration of a CI chaos run, taken when called: a short drain of make
    bench-outlet's kind (1M flows, tens of seconds) on the session stack into the
    scenario's destinations, right before the scenario (this machine's load moves within
    minutes)."""
    from chaos.rates import measure

    def calibrate(sc: Any) -> Any:
        cal = measure(stack, destinations=sc.outlet.destinations)
        assert cal.capacity > 0 and cal.drain.flows == 1_000_000
        assert tuple(cal.drain.destinations) == sc.outlet.destinations
        return cal

    return calibrate


def test_at_rate_scales_the_load_and_the_batches() -> None:
    sc = parse_scenario(with_action(at="5s", action="set_rate", rate=500))
    fast = sc.at_rate(100_000, {"source": "test"})
    assert fast.load.rate == 100_000 and sc.load.rate == 1000
    assert fast.timeline[0].params["rate"] == 50_000  # set_rate keeps its proportion
    assert fast.outlet.batch_size == 25_000  # a quarter of a second of load ...
    assert sc.at_rate(400_000).outlet.batch_size == 50_000  # ... at most the default
    assert sc.at_rate(2000).outlet.batch_size == sc.outlet.batch_size == 5000  # never shrinks
    assert fast.rate_origin == {"file_rate": 1000, "source": "test"}
    assert fast.scaled(0.5).load.rate == 100_000  # a time scale keeps the rate
    # a fault that stops the primary: its catch-up at this rate is not the file's lag bound
    crash = load_scenario("outlet-crash")
    assert crash.stops_the_primary() and crash.expect.lags
    fast_crash = crash.at_rate(100_000)
    assert not fast_crash.expect.lags
    assert fast_crash.rate_origin and fast_crash.rate_origin["lag_not_checked"] == [
        "local: <= 5 s after 35s"]
    assert crash.at_rate(1000).expect.lags  # slower than the file: kept
    partition = load_scenario("azure-partition")  # the primary must not lag at all
    assert not partition.stops_the_primary() and partition.at_rate(100_000).expect.lags


def test_calibrated_rate_applies_to_single_dc_scenarios_only() -> None:
    from chaos.rates import at_calibrated_rate, at_fixed_rate
    from teststack.drain import Calibration, DrainResult

    drain = DrainResult("calibrate", ["local", "azure"], 1_000_000, 12.0, 83_333.0, 3.0, 3.0,
                        0.9, startup_s=4.0, steady_flows_per_s=120_000.0)
    cal = Calibration(drain, 360_000.0, (3.0, 2.0, 1.0), batch_size=25_000)
    # live: draining at 120,000 and producing at 360,000 flows/s on the same cores
    assert cal.capacity == pytest.approx(90_000)
    single, multi = load_scenario("azure-partition"), load_scenario(MULTI_DC_CI[0])
    fast, same = at_calibrated_rate([single, multi], cal, 0.5)
    assert fast.load.rate == 45_000 and same is multi
    assert fast.outlet.batch_size == 25_000  # the batches the capacity was measured with
    assert fast.rate_origin is not None
    assert (fast.rate_origin["capacity_flows_per_s"], fast.rate_origin["fraction"],
            fast.rate_origin["drain"]["startup_s"]) == (90_000, 0.5, 4.0)
    assert (fast.rate_origin["drain"]["destinations"],
            fast.rate_origin["drain"]["batch_size"]) == (["local", "azure"], 25_000)
    [fixed] = at_fixed_rate([single], 10_000)
    assert fixed.load.rate == 10_000 and fixed.rate_origin == {
        "file_rate": 2000, "source": "--rate", "rate": 10_000}


def test_calibration_drains_what_the_scenario_runs(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """A dual-writing scenario is calibrated with a dual-write drain in the batches it then
    runs with, and the producer's time per flow counts: half of a drain into local alone,
    in make bench-outlet's 50,000-flow batches, was more than this machine sustains live
    in azure-partition, and even with an outlet writing to local alone (the producer, the
    broker, the outlet and the servers on two cores: docs/chaos.md#realistic-rates)."""
    from chaos import rates
    from teststack.drain import Calibration, DrainResult

    drained: list[tuple[tuple[str, ...], int]] = []
    played: list[Any] = []

    def calibrate(ep: Any, flows: int, batch_size: int, destinations: tuple[str, ...]
                  ) -> Calibration:
        drained.append((destinations, batch_size))
        result = DrainResult("calibrate", list(destinations), flows, 10.0, 1e5, 3.0, 3.0, 0.9,
                             startup_s=4.0, steady_flows_per_s=100_000.0)
        return Calibration(result, 300_000.0, (1.0, 1.0, 1.0), batch_size)

    def run_scenario(sc: Any, stack_dir: Path, reports_dir: Path, **_: Any) -> Any:
        played.append(sc)
        return "result"

    monkeypatch.setattr(rates, "calibrate", calibrate)
    monkeypatch.setattr(rates, "run_scenario", run_scenario)
    monkeypatch.setattr(rates.Endpoints, "load", staticmethod(lambda _: None))
    run_one = rates.calibrated_runner(0.5, 1_000_000)
    lone = parse_scenario({**MINIMAL, "timeline": [], "outlet": {"destinations": ["local"]},
                           "name": "lone"})
    for sc in (load_scenario("azure-partition"), lone):
        assert run_one(sc, tmp_path, tmp_path) == "result"
    assert drained == [(("local", "azure"), rates.CALIBRATION_BATCH),
                       (("local",), rates.CALIBRATION_BATCH)]
    # half of 1 / (1/100,000 + 1/300,000): 75,000 flows/s live
    assert [(sc.load.rate, sc.outlet.batch_size) for sc in played] == [
        (37_500, rates.CALIBRATION_BATCH)] * 2


def test_throughput_against_offered() -> None:
    from chaos.runner import throughput_check

    doc = json.loads(json.dumps(MINIMAL))
    doc["expect"]["throughput"] = [{"window": ["12s", "15s"], "against": "offered",
                                    "min_percent": 95}]
    [tp] = parse_scenario(doc).expect.throughput
    assert tp.destination == "local" and tp.against == "offered"
    # a baseline that fell behind as much no longer excuses the window
    c = throughput_check(tp, (90_000.0, 100_000.0), (90_000.0, 100_000.0))
    assert not c.passed and c.observed.startswith("90.0% (stored 90000/offered 100000")
    assert throughput_check(tp, (96_000.0, 100_000.0), (None, None)).passed
    relative = replace(tp, against="baseline")
    assert throughput_check(relative, (90_000.0, 100_000.0), (90_000.0, 100_000.0)).passed
    doc["expect"]["throughput"][0]["against"] = "produced"
    assert any(p.startswith("expect.throughput[0].against: unknown throughput reference")
               for p in problems(doc))


@pytest.mark.stack
@pytest.mark.timeout(420)
@pytest.mark.parametrize(("name", "scale"), CI_SCENARIOS, ids=[n for n, _ in CI_SCENARIOS])
def test_scenario_end_to_end(stack: Any, prometheus: Any, chaos_rate: Any, tmp_path: Path,
                             name: str, scale: float) -> None:
    from chaos.rates import at_calibrated_rate
    from chaos.runner import run_scenario
    from teststack import tmpfs

    sc = load_scenario(name).scaled(scale)
    if sc.outlet.spool_tmpfs is not None and (why := tmpfs.unavailable()):
        pytest.skip(f"{name}: {why}")
    cal = chaos_rate(sc) if name not in AT_FILE_RATE else None
    if cal is not None:
        [sc] = at_calibrated_rate([sc], cal, CI_RATE_FRACTION)
    t0 = time.monotonic()
    res = run_scenario(sc, stack.stack_dir, tmp_path)
    offered = res.info.get("offered_flows_per_s") or 0
    capacity = cal.capacity if cal is not None else 0.0
    print(f"{name} at time scale {scale}: {time.monotonic() - t0:.0f} s; rate "
          f"{sc.load.rate:,.0f} flows/s"
          + (f" = {CI_RATE_FRACTION} x {capacity:,.0f} (live capacity of the calibration), offered "
             f"{offered:,} flows/s = {offered / capacity:.2f} of it" if cal else ""))
    failures = [f"{c.name}: expected {c.expected}, observed {c.observed}"
                for c in res.failures]
    assert res.passed, "\n".join(failures) + f"\n{res.error}"
    report = tmp_path / sc.name
    assert (report / "timeline.png").exists()
    data = json.loads((report / "report.json").read_text())
    assert data["passed"] and data["info"]["produced"] > 0
    assert data["info"]["offered_flows_per_s"] == offered > 0
    if cal is not None:
        origin = data["info"]["rate_origin"]  # both numbers recorded in the report
        assert origin["fraction"] == CI_RATE_FRACTION
        assert origin["rate"] == round(CI_RATE_FRACTION * capacity) == sc.load.rate
        assert origin["capacity_flows_per_s"] == round(capacity)
        assert origin["drain"]["destinations"] == list(sc.outlet.destinations)
        assert sc.outlet.batch_size == origin["drain"]["batch_size"] == cal.batch_size
    if name.startswith("azure"):
        # the partition really bit (azure's data itself is kept by the spool)
        assert any(
            k.startswith(names.DESTINATION_INSERT_ERRORS_TOTAL) and "azure" in k and v > 0
            for k, v in data["metrics"].items()
        )
    outlet_cfg = yaml.safe_load((report / "outlet" / "outlet.yaml").read_text())
    assert outlet_cfg["kafka"]["topic"] == data["info"]["topic"]
    assert outlet_cfg["clickhouse"]["maximum-batch-size"] == sc.outlet.batch_size
    observed = data["info"]["alerts"]  # every CI scenario records its alert timeline
    assert observed["run"] == data["info"]["topic"]
    if name == "azure-partition":
        checks = {c["name"]: c for c in data["checks"]}
        # the primary judged against the rate really offered during the partition
        [during] = [c for n, c in checks.items() if n.startswith("local: throughput")]
        assert during["passed"] and "of offered" in during["expected"]
        # `alerts:` in the scenario: the additional-destination alert fired and resolved
        fired = 'alert OutletAdditionalDestinationDown{destination="azure"} fires'
        assert checks[fired]["passed"] and checks["no other alert fires"]["passed"]
        assert "| OutletAdditionalDestinationDown |" in (report / "report.md").read_text()
        print("alert timeline:", json.dumps(observed["timeline"]))
        _dashboard_returns_data(prometheus, observed, outlet_cfg["http"]["listen"])
    if name == "spool-disk-full":
        # the disk really filled up, the outlet never went down, and it said so once
        checks = {c["name"]: c for c in data["checks"]}
        assert checks["outlet clean shutdown"]["passed"]
        assert checks['alert OutletSpoolWriteFailing{destination="azure"} fires']["passed"]
        log = (report / "outlet" / "outlet.log").read_text()
        assert log.count("spool append failed") == 1 and "ENOSPC" in log
        assert not (report / "outlet" / "spool-disk").is_mount()


def _dashboard_returns_data(prometheus: Any, observed: dict[str, Any], instance: str) -> None:
    """Every dashboard query parses and returns data for this run's outlet."""
    import re

    from chaos.scenario import known_metric_names
    from tests.deploy.conftest import NOT_YET_EXPORTED, ORCHESTRATOR_ONLY, metric_names
    from tests.deploy.dashboard import evaluate, variable_values

    # Grafana escapes regex characters of a variable's value for PromQL's strings
    instance_re = re.escape(instance).replace("\\", "\\\\")
    offered = variable_values(prometheus, {"datacenter": "dc1"})
    assert "dc1" in offered["datacenter"] and instance in offered["instance"], offered
    results = evaluate(prometheus, {"datacenter": "dc1", "instance": instance_re},
                       observed["start"], observed["end"])
    absent = NOT_YET_EXPORTED | ORCHESTRATOR_ONLY
    assert not absent & (known_metric_names() or set()) - ORCHESTRATOR_ONLY
    for r in results:
        print(f"dashboard: {r.series:3d} series {r.points:5d} points  {r.where}")
    assert not [r for r in results if r.error], [(r.where, r.error) for r in results if r.error]
    empty = [r.where for r in results if not r.points and not metric_names(r.expr) & absent]
    assert not empty, f"panels without data: {empty}"
    # what the outlet does not export here must really be absent (not a broken query)
    assert all(not r.points for r in results if metric_names(r.expr) & absent)


# `make test` runs one multi-dc scenario (the others join `make chaos-all`): datacenter a's
# link to central cut under load while b's stays up (issue 10), at half its length.
MULTI_DC_CI = ("multidc-dc-a-link-partition", 0.5)


@pytest.mark.timeout(300)
def test_multi_dc_scenario_end_to_end(multi_dc_stack: Any, tmp_path: Path) -> None:
    from chaos.multidc import run_multi_dc_scenario

    name, scale = MULTI_DC_CI
    sc = load_scenario(name).scaled(scale)
    t0 = time.monotonic()
    res = run_multi_dc_scenario(sc, multi_dc_stack.stack_dir, tmp_path)
    print(f"{name} at time scale {scale}: {time.monotonic() - t0:.0f} s")
    failures = [f"{c.name}: expected {c.expected}, observed {c.observed}"
                for c in res.failures]
    assert res.passed, "\n".join(failures) + f"\n{res.error}"
    data = json.loads((tmp_path / sc.name / "report.json").read_text())
    assert set(data["destinations"]) == {"local-a", "local-b", "central", "central-a",
                                         "central-b"}
    assert data["destinations"]["central"]["rows"] == sum(data["info"]["produced"].values())
    [recovery] = data["info"]["recoveries"]
    assert recovery["view"] == "central-a" and recovery["seconds"] <= 5
    for dc in ("a", "b"):
        cfg = yaml.safe_load((tmp_path / sc.name / f"outlet-{dc}" / "outlet.yaml").read_text())
        assert cfg["kafka"]["topic"] == data["info"]["topic"]  # the same topic name in both


def test_destinations_are_added_in_single_dc_scenarios_only() -> None:
    doc = multi_dc(at="5s", action="add_destination", name="extra", server="local")
    doc["outlet"] = {"orchestrator": True}
    assert any("add_destination: single-dc scenarios only" in p for p in problems(doc))


def test_kill_outlet_pending_waits_for_a_batch_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """group-crash-reassign proves rebuilds: its kill waits until the victim holds sealed,
    uncommitted batches (once in four runs there was none at 15 s, and the scenario then
    proved nothing), bounded by PENDING_WAIT."""
    from chaos import runner

    class Victim:
        def __init__(self, pending: list[float]) -> None:
            self.pending = pending
            self.scrapes = 0

        def scrape(self) -> dict[str, float]:
            self.scrapes += 1
            value = self.pending[min(self.scrapes, len(self.pending)) - 1]
            return {names.COMMIT_PENDING_FLOWS: value}

    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    busy = Victim([0, 0, 0, 5000])
    runner._wait_pending(busy)  # type: ignore[arg-type]
    assert busy.scrapes == 4
    clock = iter(range(0, 1000))
    monkeypatch.setattr(runner.time, "monotonic", lambda: float(next(clock)))
    idle = Victim([0])
    runner._wait_pending(idle)  # type: ignore[arg-type]
    assert idle.scrapes == runner.PENDING_WAIT - 1
    kill = next(a for a in load_scenario("group-crash-reassign").timeline
                if a.action == "kill_outlet")
    assert kill.params["pending"] is True
