"""chaos/alerts.py and the `alerts:` section of a scenario (pure: no Prometheus)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chaos.alerts import AlertWindow, check, render_markdown, windows
from chaos.scenario import ScenarioError, load_scenario, parse_scenario

BASE: dict[str, Any] = {
    "name": "t",
    "load": {"rate": 1000, "duration": "30s"},
    "timeline": [{"at": "10s", "action": "disable_proxy", "proxy": "azure", "for": "5s"}],
    "expect": {"destinations": {"local": {"rows": "all"}}},
}


def scenario(alerts: Any, timeline: bool = True) -> Any:
    doc = json.loads(json.dumps(BASE))
    doc["alerts"] = alerts
    if not timeline:
        doc["timeline"] = []
    return parse_scenario(doc, "test.yaml")


def problems(alerts: Any, timeline: bool = True) -> list[str]:
    with pytest.raises(ScenarioError) as ei:
        scenario(alerts, timeline)
    return ei.value.problems


def test_alerts_section_is_validated() -> None:
    ps = problems({"fire": [{"alert": "OutletAzureDown", "within": "2 min"}], "others": "x",
                   "allowed": ["Nope"], "extra": 1})
    assert any(p.startswith("alerts.fire[0].alert: unknown alert 'OutletAzureDown' (known: "
                            "OutletDown, ") for p in ps)
    assert any(p.startswith("alerts.others: expected forbid or allow") for p in ps)
    assert any(p.startswith("alerts.allowed[0]: unknown alert 'Nope'") for p in ps)
    assert any(p.startswith("alerts.extra: unknown key") for p in ps)
    ps = problems({"fire": [{"alert": "OutletDown", "within": "soon", "resolves": "yes"}]})
    assert any(p.startswith("alerts.fire[0].within: bad duration 'soon'") for p in ps)
    assert "alerts.fire[0].resolves: expected true or false, got 'yes'" in ps
    assert any("the timeline is empty" in p for p in problems(
        {"fire": [{"alert": "OutletDown"}]}, timeline=False))


def test_shipped_expectations() -> None:
    ap = load_scenario("azure-partition").alerts
    assert ap is not None and ap.others == "forbid"
    [exp] = ap.fire
    assert (exp.alert, exp.labels, exp.within, exp.resolves) == (
        "OutletAdditionalDestinationDown", (("destination", "azure"),), 120.0, True)
    steady = load_scenario("steady").alerts
    assert steady is not None and steady.fire == () and steady.others == "forbid"
    assert load_scenario("outlet-crash").alerts is None  # recorded, not checked
    assert load_scenario("azure-partition").scaled(2).alerts == ap  # `within` is not scaled


def _series(alert: str, state: str, times: list[float], **labels: str) -> dict[str, Any]:
    metric = {"__name__": "ALERTS", "alertname": alert, "alertstate": state, "run": "r",
              "instance": "127.0.0.1:1", "job": "outlet", "severity": "warning", **labels}
    return {"metric": metric, "values": [[t, "1"] for t in times]}


def test_windows_from_alerts_series() -> None:
    t0 = 1000.0
    series = [
        _series("OutletAdditionalDestinationDown", "pending", [1007, 1008, 1009, 1010],
                destination="azure"),
        _series("OutletAdditionalDestinationDown", "firing", [*range(1011, 1038)],
                destination="azure"),
        # pending only, twice
        _series("OutletConsumerLagGrowing", "pending", [1006, 1020, 1021]),
        # still firing at the end of the range
        _series("OutletDown", "firing", [1045, 1046, 1047]),
    ]
    got = windows(series, t0, end=1047.2, step=1.0)
    assert got == [
        AlertWindow("OutletConsumerLagGrowing", {"severity": "warning"}, 6.0, None, 7.0),
        AlertWindow("OutletAdditionalDestinationDown",
                    {"destination": "azure", "severity": "warning"}, 7.0, 11.0, 38.0),
        AlertWindow("OutletConsumerLagGrowing", {"severity": "warning"}, 20.0, None, 22.0),
        AlertWindow("OutletDown", {"severity": "warning"}, None, 45.0, None),
    ]


def _observed(*ws: AlertWindow) -> dict[str, Any]:
    from dataclasses import asdict

    return {"time_compression": 30, "timeline": [asdict(w) for w in ws]}


DOWN = AlertWindow("OutletAdditionalDestinationDown", {"destination": "azure"}, 7.0, 11.0, 38.0)


def test_check_fires_within_resolves_after_and_nothing_else() -> None:
    sc = scenario({"fire": [{"alert": "OutletAdditionalDestinationDown",
                             "labels": {"destination": "azure"}, "within": "10s"}],
                   "allowed": ["OutletSpoolFillingUp"]})
    spool = AlertWindow("OutletSpoolFillingUp", {"destination": "azure"}, 9.0, 29.0, 41.0)
    lag = AlertWindow("OutletConsumerLagGrowing", {}, 6.0, None, 7.0)  # pending only
    checks = check(sc, _observed(DOWN, spool, lag), (6.0, 13.5))
    assert [(c.name, c.observed, c.passed) for c in checks] == [
        ('alert OutletAdditionalDestinationDown{destination="azure"} fires',
         "firing at 11.0s (5.0s after)", True),
        ('alert OutletAdditionalDestinationDown{destination="azure"} resolves',
         "resolved at 38.0s", True),
        ("no other alert fires", "none", True),
    ]
    assert checks[2].expected == ("none besides OutletAdditionalDestinationDown, "
                                  "OutletSpoolFillingUp (allowed)")


@pytest.mark.parametrize(("ws", "failing"), [
    ((), ["fires", "resolves"]),  # never fired
    ((AlertWindow(DOWN.alert, DOWN.labels, 7.0, 17.5, 38.0),), ["fires"]),  # too late
    ((AlertWindow(DOWN.alert, DOWN.labels, 7.0, 11.0, None),), ["resolves"]),  # never resolved
    ((AlertWindow(DOWN.alert, {"destination": "central"}, 7.0, 11.0, 38.0),),
     ["fires", "resolves", "no other"]),  # another destination
    ((DOWN, AlertWindow("OutletDown", {}, 3.0, 8.0, 9.0)), ["no other"]),
])
def test_check_failures(ws: tuple[AlertWindow, ...], failing: list[str]) -> None:
    sc = scenario({"fire": [{"alert": "OutletAdditionalDestinationDown",
                             "labels": {"destination": "azure"}, "within": "10s"}]})
    failed = [c.name for c in check(sc, _observed(*ws), (6.0, 13.5)) if not c.passed]
    kinds = {"fires": "} fires", "resolves": "} resolves", "no other": "no other alert fires"}
    assert [next(k for k, v in kinds.items() if name.endswith(v)) for name in failed] == failing


def test_no_expectation_no_check_and_missing_prometheus_fails() -> None:
    assert check(parse_scenario(BASE), _observed(DOWN), (6.0, 13.5)) == []
    [c] = check(scenario({"fire": []}), None, None)
    assert not c.passed and c.observed == "no Prometheus"


def test_render_markdown() -> None:
    lines = render_markdown(_observed(DOWN))
    assert "| OutletAdditionalDestinationDown | destination=\"azure\" | 7.0s | 11.0s | 38.0s |" \
        in lines
    assert "No alert was pending or firing" in "\n".join(render_markdown(_observed()))
    assert "Not recorded" in "\n".join(render_markdown(None))
