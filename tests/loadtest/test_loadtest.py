"""Load-test tooling: profiles, the shape's schedule, pacing, report arithmetic, and one short
real run against the stack. Nothing here imports Locust (it monkey-patches with gevent)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from flowgen.generator import generator_config
from loadtest import harness as h
from loadtest.loadgen import LoadSettings, Pacer
from loadtest.profile import (
    ProfileError,
    Schedule,
    available_profiles,
    load_profile,
    parse_profile,
    parse_rate,
    parse_time,
    step_profile,
)
from teststack.series import rate_series


def test_parse_time_and_rate() -> None:
    assert parse_time("90s") == 90
    assert parse_time("1m30s") == 90
    assert parse_time("06:30") == 6 * 3600 + 30 * 60
    assert parse_time("24:00") == 86400
    assert parse_time(12) == 12
    assert parse_rate("20k") == 20_000
    assert parse_rate("1.5M") == 1_500_000
    assert parse_rate(300) == 300
    for bad in ("fast", "-5", "1e3x", True, None):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_step_and_linear_interpolation() -> None:
    pts = [[0, 10_000], ["10s", "20k"], ["20s", 0]]
    step = parse_profile({"points": pts, "duration": "30s"})
    assert step.interpolation == "step"
    assert step.rate_at(0) == 10_000
    assert step.rate_at(9.99) == 10_000
    assert step.rate_at(10) == 20_000
    assert step.rate_at(25) == 0
    assert step.rate_at(30) == 0 and step.rate_at(-1) == 0  # outside the profile
    lin = parse_profile({"points": pts, "interpolation": "linear", "duration": "30s"})
    assert lin.rate_at(5) == pytest.approx(15_000)
    assert lin.rate_at(15) == pytest.approx(10_000)
    assert lin.rate_at(25) == 0  # after the last point its rate holds
    assert lin.total_flows() == pytest.approx(150_000 + 100_000, rel=1e-3)


def test_time_and_rate_scale() -> None:
    p = parse_profile({"points": [{"at": "00:00", "rate": "10k"}, {"at": "12:00", "rate": "30k"}],
                       "duration": "24h", "replay-duration": "60s", "interpolation": "linear"})
    assert p.wall_duration == pytest.approx(60)
    assert p.rate_at_wall(15) == pytest.approx(20_000)  # 15 s wall = 06:00
    q = p.scaled(time_scale=0.5, rate_scale=0.5)  # the time scale multiplies durations
    assert q.wall_duration == pytest.approx(30)
    assert q.rate_at_wall(7.5) == pytest.approx(10_000)
    assert q.peak_rate == 15_000
    assert q.total_flows() == pytest.approx(p.total_flows() / 4, rel=1e-3)
    with pytest.raises(ProfileError):
        p.scaled(time_scale=0)


@pytest.mark.parametrize(("data", "message"), [
    ({"points": [[5, 100], [10, 100]]}, "first point must be at time 0"),
    ({"points": [[0, 100], [10, 100], [10, 50]]}, "is not after the previous"),
    ({"points": [[0, 100], [10, "lots"]]}, "rate 'lots' is invalid"),
    ({"points": [[0, 100], ["soon", 5]]}, "time 'soon' is invalid"),
    ({"points": [[0, 100]]}, "duration: needed"),
    ({"points": [[0, 100], [20, 5]], "duration": "10s"}, "ends before the last point"),
    ({"points": [[0, 0], [5, 0]]}, "every rate is 0"),
    ({"points": [[0, 100], [5, 1]], "interpolation": "cubic"}, "interpolation"),
    ({"points": [[0, 100], [5, 1]], "replay-duration": 0}, "replay-duration: must be > 0"),
    ({"points": [[0, 100], [5, 1]], "time-scale": 2}, "time-scale: unknown key (a profile says"),
    ({"points": [[0, 100], [5, 1]], "speed": 2}, "speed: unknown key"),
    ({"points": [[0, 100], [5, 1]], "generator": {"colour": 1}}, "unknown generator setting"),
    ({"points": [[0, 100], [5, 1]], "generator": {"ipv6-share": 2}}, "ipv6_share"),
    ({"points": [[0, 100, 3]]}, "expected [time, flows/s]"),
    ({"points": []}, "non-empty list"),
    ([1, 2], "must be a mapping"),
])
def test_validation_errors(data: Any, message: str) -> None:
    with pytest.raises(ProfileError) as ei:
        parse_profile(data, source="x.yaml")
    assert message in str(ei.value)
    assert str(ei.value).startswith("x.yaml: ")


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ProfileError) as ei:
        parse_profile({"points": [[0, "x"], ["y", 1]], "rate-scale": "big", "foo": 1})
    assert len(ei.value.errors) == 4


def test_bundled_profiles() -> None:
    names = available_profiles()
    assert {"steady", "ramp", "burst", "diurnal"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.wall_duration > 0 and p.peak_rate > 0
    d = load_profile("diurnal")
    assert d.duration == 86400 and d.wall_duration == pytest.approx(60)
    assert d.generator["exporters"] == 8
    with pytest.raises(ProfileError, match="no profile 'nope'"):
        load_profile("nope")


def test_own_profile_file(tmp_path: Path) -> None:
    f = tmp_path / "prod.yaml"
    f.write_text("points:\n  - ['00:00', 120k]\n  - ['12:00', 300k]\n"
                 "interpolation: linear\nduration: 24h\nreplay-duration: 30s\n")
    p = load_profile(f)
    assert p.name == "prod" and p.wall_duration == pytest.approx(30)


def test_schedule_ticks() -> None:
    p = parse_profile({"points": [[0, "20k"], [10, "120k"], [20, "1k"]], "duration": "30s"})
    sch = Schedule(p, flows_per_user=50_000, max_users=2)
    t = sch.tick(0)
    assert t is not None and (t.users, t.rate) == (1, 20_000)
    t = sch.tick(12)
    assert t is not None and (t.users, t.rate) == (2, 120_000)  # capped at max_users
    t = sch.tick(25)
    assert t is not None and t.users == 1 and t.spawn_rate >= 1
    assert sch.tick(30) is None
    staircase = step_profile([10, 20, 30], 5)
    assert Schedule(staircase).tick(12.0) is not None
    assert staircase.rate_at_wall(12.0) == 30 and staircase.wall_duration == 15
    with pytest.raises(ValueError):
        Schedule(p, flows_per_user=0)


def test_pacer_follows_profile() -> None:
    p = parse_profile({"points": [[0, 10_000], [1, 50_000]], "duration": "2s"})
    now = [0.0]
    pacer = Pacer(p, clock=lambda: now[0])
    produced = 0
    while now[0] < 2.0:
        produced += pacer.take(100)
        now[0] += 0.001
    assert produced == pytest.approx(60_000, rel=0.01)
    # A long stall does not turn into a burst beyond max_burst_s of the current rate.
    now[0] += 5
    got = sum(pacer.take(100) for _ in range(10_000))
    assert got == 0  # the profile is over
    pacer2 = Pacer(parse_profile({"points": [[0, 1000]], "duration": "100s"}),
                   clock=lambda: now[0])
    pacer2.start()
    now[0] += 30
    assert sum(pacer2.take(10) for _ in range(1000)) <= 1000 * pacer2.max_burst_s + 10


def test_settings_roundtrip_and_generator_config() -> None:
    s = LoadSettings(bootstrap="127.0.0.1:9", topic="t", profile="ramp", time_scale=2,
                     rate_scale=0.5, run_id=7, batch=500, producer_config={"linger.ms": 20})
    assert LoadSettings.from_env(s.to_env()) == s
    with pytest.raises(ValueError, match="BOOTSTRAP"):
        LoadSettings.from_env({})
    cfg = generator_config({"exporters": 16, "ipv6-share": 0.5}, run_id=3, unique=True)
    assert (cfg.exporters, cfg.ipv6_share, cfg.run_id, cfg.unique) == (16, 0.5, 3, True)
    with pytest.raises(ValueError, match="integer"):
        generator_config({"exporters": 2.5})


def test_histogram_quantile() -> None:
    b = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert h.histogram_quantile(0.5, b) == pytest.approx(0.1)
    assert h.histogram_quantile(0.7, b) == pytest.approx(0.3)
    assert h.histogram_quantile(0.99, b) == pytest.approx(0.95)
    assert h.histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert h.histogram_quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == 0.1
    pct = h.latency_percentiles(b, hist_sum=20.0)
    assert pct["p50"] == 100.0 and pct["mean"] == 200.0 and pct["count"] == 100


def test_end_to_end_latency_fifo() -> None:
    ts = [float(i) for i in range(11)]
    produced = [1000.0 * i for i in range(11)]
    stored = [0.0, 0.0] + [1000.0 * (i - 2) for i in range(2, 11)]  # 2 s behind
    lat = h.end_to_end_latency(ts, produced, stored, hi=8000)
    assert lat["p50"] == pytest.approx(2.0) and lat["p99"] == pytest.approx(2.0)
    t, r = rate_series(ts, produced, span=2.0)
    assert all(v == pytest.approx(1000) for v in r) and len(t) == 10


@pytest.mark.stack
@pytest.mark.slow
def test_short_steady_run(stack: Any, tmp_path: Path) -> None:
    """Steady profile scaled to 24 s at 15k flows/s: reports exist, stored == produced on
    both destinations (rows, distinct flow ids, Bytes sums)."""
    from loadtest.run import run_load

    out = tmp_path / "steady"
    report = run_load(load_profile("steady"), stack, out, time_scale=0.4, rate_scale=0.5,
                      profile_ref="steady")
    assert report["error"] == "", report["error"]
    for name in ("report.md", "report.json", "throughput.png", "lag.png", "latency.png",
                 "locust.html", "locust_stats.csv", "locust_stats_history.csv"):
        assert (out / name).exists(), name
    produced = report["produced"]["flows"]
    assert produced > 0.8 * 15_000 * 24
    checks = {c["destination"]: c for c in report["destinations_check"]}
    assert set(checks) == {"local", "azure"}
    for c in checks.values():
        assert c["rows"] == c["distinct"] == produced
        assert c["bytes_sum"] == report["produced"]["bytes_sum"]
    assert report["ok"]
    assert report["locust"]["requests"] > 0 and report["locust"]["failures"] == 0
