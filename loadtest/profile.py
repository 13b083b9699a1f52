"""Load profiles: offered flows/s over time, replayed by the Locust shape (docs/loadtest.md).

A profile is a YAML file in ``loadtest/profiles/``::

    name: diurnal                    # optional (default: the file name)
    description: one day of traffic  # optional
    interpolation: linear            # step (hold each point's rate) | linear (default: step)
    time-scale: 1440                 # profile seconds per wall-clock second (24 h -> 60 s)
    rate-scale: 1.0                  # multiplier applied to every rate (default 1)
    duration: 24h                    # profile time; default: the last point's time
    generator:                       # optional GeneratorConfig overrides (see generator.py)
      exporters: 16
      ipv6-share: 0.3
    points:                          # [time, flows/s] pairs, times strictly increasing
      - [0s, 20k]                    # time: 90s, 1m30s, 1h, or HH:MM[:SS]; rate: 20000, 20k, 1.5M
      - {at: "06:00", rate: 60k}

``rate_at(t)`` is the profile's rate at profile time ``t``: with ``step`` each point's rate
holds until the next point; with ``linear`` the rate moves linearly between points. After
the last point the last rate holds until ``duration``. The first point must be at 0.

The wall-clock run lasts ``duration / time_scale``; :class:`Schedule` maps wall-clock run
time to the offered rate and the number of Locust users, without importing Locust (the unit
tests import it; importing Locust monkey-patches the process with gevent).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from flowgen.generator import generator_config
from outlet.config import parse_duration

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

Interpolation = Literal["step", "linear"]
_KEYS = ("name", "description", "interpolation", "time-scale", "rate-scale", "duration",
         "generator", "points")
_CLOCK = re.compile(r"^(\d{1,3}):([0-5]\d)(?::([0-5]\d(?:\.\d+)?))?$")
_RATE = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kKmM]?)$")


class ProfileError(ValueError):
    """A profile file is invalid; ``errors`` lists every problem with its location."""

    def __init__(self, errors: Sequence[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.errors))


def parse_time(v: object) -> float:
    """Profile time in seconds: ``90``, ``90s``, ``1m30s``, ``2h``, ``"06:30"`` (HH:MM[:SS])."""
    if isinstance(v, str):
        m = _CLOCK.match(v.strip())
        if m:
            return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3) or 0)
    return parse_duration(v)


def parse_rate(v: object) -> float:
    """Flows/s: ``20000``, ``2.5e4``, ``"20k"``, ``"1.5M"``. Must be finite and >= 0."""
    if isinstance(v, bool):
        raise ValueError("not a rate")
    if isinstance(v, int | float):
        rate = float(v)
    elif isinstance(v, str):
        m = _RATE.match(v.strip())
        if not m:
            raise ValueError("not a rate (use 20000, 20k or 1.5M)")
        rate = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    else:
        raise ValueError("not a rate")
    if not math.isfinite(rate) or rate < 0:
        raise ValueError("rate must be finite and >= 0")
    return rate


@dataclass(frozen=True)
class Profile:
    """A validated load profile (times in profile seconds, rates in flows/s)."""

    name: str
    points: tuple[tuple[float, float], ...]
    interpolation: Interpolation = "step"
    time_scale: float = 1.0
    rate_scale: float = 1.0
    duration: float = 0.0  # profile seconds; 0 -> last point's time
    description: str = ""
    generator: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        errors = _validate(self)
        if errors:
            raise ProfileError(errors, self.source)
        if self.duration == 0:
            object.__setattr__(self, "duration", self.points[-1][0])

    # -- profile time --------------------------------------------------------------------
    def rate_at(self, t: float) -> float:
        """Offered flows/s at profile time ``t`` (rate-scale applied); 0 outside [0, duration)."""
        if t < 0 or t >= self.duration:
            return 0.0
        pts = self.points
        lo, hi = 0, len(pts)
        while hi - lo > 1:  # last point with time <= t
            mid = (lo + hi) // 2
            if pts[mid][0] <= t:
                lo = mid
            else:
                hi = mid
        t0, r0 = pts[lo]
        if self.interpolation == "linear" and lo + 1 < len(pts):
            t1, r1 = pts[lo + 1]
            r0 = r0 + (r1 - r0) * (t - t0) / (t1 - t0)
        return r0 * self.rate_scale

    def flows_between(self, a: float, b: float, step: float = 0.01) -> float:
        """Flows offered between profile times a and b (numeric integral, ~exact)."""
        if b <= a:
            return 0.0
        n = max(1, math.ceil((b - a) / step))
        h = (b - a) / n
        return sum(self.rate_at(a + (i + 0.5) * h) for i in range(n)) * h

    @property
    def peak_rate(self) -> float:
        return max(r for _, r in self.points) * self.rate_scale

    # -- wall-clock time -----------------------------------------------------------------
    @property
    def wall_duration(self) -> float:
        """Seconds the replay lasts."""
        return self.duration / self.time_scale

    def rate_at_wall(self, run_time: float) -> float:
        return self.rate_at(run_time * self.time_scale)

    def total_flows(self) -> float:
        """Flows the whole replay offers (wall-clock integral of the rate)."""
        step = max(self.duration / 200_000, 0.001 * self.time_scale)
        return self.flows_between(0.0, self.duration, step) / self.time_scale

    def scaled(self, time_scale: float = 1.0, rate_scale: float = 1.0) -> Profile:
        """A copy whose replay runs ``time_scale`` times faster and offers ``rate_scale``
        times the flows/s."""
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise ProfileError(["time scale must be > 0"], self.source)
        if not (rate_scale > 0 and math.isfinite(rate_scale)):
            raise ProfileError(["rate scale must be > 0"], self.source)
        return replace(self, time_scale=self.time_scale * time_scale,
                       rate_scale=self.rate_scale * rate_scale)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description,
            "interpolation": self.interpolation, "time-scale": self.time_scale,
            "rate-scale": self.rate_scale, "duration": self.duration,
            "generator": dict(self.generator),
            "points": [[t, r] for t, r in self.points],
        }


def _validate(p: Profile) -> list[str]:
    errors: list[str] = []
    if p.interpolation not in ("step", "linear"):
        errors.append(f"interpolation: must be 'step' or 'linear', not {p.interpolation!r}")
    if not (p.time_scale > 0 and math.isfinite(p.time_scale)):
        errors.append("time-scale: must be > 0")
    if not (p.rate_scale > 0 and math.isfinite(p.rate_scale)):
        errors.append("rate-scale: must be > 0")
    if not p.points:
        errors.append("points: at least one point is needed")
        return errors
    if p.points[0][0] != 0:
        errors.append(f"points[0]: the first point must be at time 0, not {p.points[0][0]:g}s")
    for i in range(1, len(p.points)):
        if p.points[i][0] <= p.points[i - 1][0]:
            errors.append(f"points[{i}]: time {p.points[i][0]:g}s is not after the previous "
                          f"point ({p.points[i - 1][0]:g}s)")
    last = p.points[-1][0]
    if p.duration < 0 or not math.isfinite(p.duration):
        errors.append("duration: must be >= 0")
    elif p.duration and p.duration < last:
        errors.append(f"duration: {p.duration:g}s ends before the last point ({last:g}s)")
    elif p.duration == 0 and last == 0:
        errors.append("duration: needed when the profile has a single point")
    if all(r == 0 for _, r in p.points):
        errors.append("points: every rate is 0")
    return errors


def parse_profile(data: object, name: str = "", source: str = "") -> Profile:
    """A profile from its YAML mapping; raises :class:`ProfileError` listing every problem."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ProfileError(["the profile must be a mapping"], source)
    for key in data:
        if key not in _KEYS:
            errors.append(f"{key}: unknown key (known: {', '.join(_KEYS)})")

    def num(key: str, default: float, parser: Any = float) -> float:
        if key not in data:
            return default
        try:
            v = parser(data[key])
            if isinstance(data[key], bool):
                raise ValueError
            return float(v)
        except (TypeError, ValueError) as e:
            errors.append(f"{key}: {data[key]!r} is invalid" + (f" ({e})" if str(e) else ""))
            return default

    time_scale = num("time-scale", 1.0)
    rate_scale = num("rate-scale", 1.0)
    duration = num("duration", 0.0, parse_time)
    interpolation = data.get("interpolation", "step")
    generator = data.get("generator") or {}
    if not isinstance(generator, dict):
        errors.append("generator: must be a mapping")
        generator = {}
    else:
        try:
            generator_config(generator)
        except (TypeError, ValueError) as e:
            errors.append(f"generator: {e}")
    points: list[tuple[float, float]] = []
    raw = data.get("points")
    if not isinstance(raw, list) or not raw:
        errors.append("points: a non-empty list of [time, flows/s] pairs is needed")
        raw = []
    for i, pt in enumerate(raw):
        if isinstance(pt, dict) and set(pt) <= {"at", "rate"} and len(pt) == 2:
            at, rate = pt["at"], pt["rate"]
        elif isinstance(pt, list | tuple) and len(pt) == 2:
            at, rate = pt
        else:
            errors.append(f"points[{i}]: expected [time, flows/s] or {{at: time, rate: "
                          f"flows/s}}, got {pt!r}")
            continue
        try:
            t = parse_time(at)
        except ValueError as e:
            errors.append(f"points[{i}]: time {at!r} is invalid ({e})")
            continue
        try:
            r = parse_rate(rate)
        except ValueError as e:
            errors.append(f"points[{i}]: rate {rate!r} is invalid ({e})")
            continue
        points.append((t, r))
    if errors:
        raise ProfileError(errors, source)
    return Profile(
        name=str(data.get("name") or name or "profile"),
        description=str(data.get("description") or ""),
        interpolation=interpolation, time_scale=time_scale, rate_scale=rate_scale,
        duration=duration, generator=dict(generator), points=tuple(points), source=source)


def load_profile(name_or_path: str | Path) -> Profile:
    """A profile by name (``loadtest/profiles/<name>.yaml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(available_profiles()) or "none"
        raise ProfileError([f"no profile {name_or_path!r} (known: {known})"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ProfileError([f"invalid YAML: {e}"], str(path)) from None
    return parse_profile(data, name=path.stem, source=str(path))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def step_profile(rates: Sequence[float], step_seconds: float, name: str = "capacity-steps"
                 ) -> Profile:
    """A staircase: each rate held for ``step_seconds`` (used by ``make capacity``)."""
    return Profile(name=name, interpolation="step",
                   points=tuple((i * step_seconds, float(r)) for i, r in enumerate(rates)),
                   duration=len(rates) * step_seconds,
                   description=f"{len(rates)} steps of {step_seconds:g} s")


# --------------------------------------------------------------------------------------------
# The shape's logic (Locust-free)
# --------------------------------------------------------------------------------------------

DEFAULT_FLOWS_PER_USER = 50_000.0
DEFAULT_MAX_USERS = 8


@dataclass(frozen=True)
class Tick:
    users: int
    spawn_rate: float
    rate: float  # target flows/s now


@dataclass(frozen=True)
class Schedule:
    """Maps wall-clock run time to (users, spawn rate, flows/s) for the LoadTestShape.

    One user per ``flows_per_user`` flows/s (at least 1, at most ``max_users``); all users
    draw from one shared pacing bucket, so the offered rate follows the profile whatever the
    user count (users add producers and concurrency, they do not add rate)."""

    profile: Profile
    flows_per_user: float = DEFAULT_FLOWS_PER_USER
    max_users: int = DEFAULT_MAX_USERS

    def __post_init__(self) -> None:
        if self.flows_per_user <= 0:
            raise ValueError("flows_per_user must be > 0")
        if self.max_users < 1:
            raise ValueError("max_users must be >= 1")

    def users_for(self, rate: float) -> int:
        return max(1, min(self.max_users, math.ceil(rate / self.flows_per_user)))

    def tick(self, run_time: float) -> Tick | None:
        """None once the profile is over (Locust then stops the test)."""
        if run_time >= self.profile.wall_duration:
            return None
        rate = self.profile.rate_at_wall(run_time)
        users = self.users_for(rate)
        return Tick(users=users, spawn_rate=float(max(users, 1)), rate=rate)
