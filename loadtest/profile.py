"""Load profiles: offered flows/s over time, replayed by the Locust shape (docs/loadtest.md).

A profile is a YAML file in ``loadtest/profiles/``::

    name: diurnal                    # optional (default: the file name)
    description: one day of traffic  # optional
    interpolation: linear            # step (hold each point's rate) | linear (default: step)
    duration: 24h                    # profile time; default: the last point's time
    replay-duration: 60s             # wall-clock length of the replay (default: duration)
    rate-scale: 1.0                  # multiplier applied to every rate (default 1)
    generator:                       # optional GeneratorConfig overrides (see generator.py)
      exporters: 16
      ipv6-share: 0.3
    points:                          # [time, flows/s] pairs, times strictly increasing
      - [0s, 20k]                    # time: 90s, 1m30s, 1h, or HH:MM[:SS]; rate: 20000, 20k, 1.5M
      - {at: "06:00", rate: 60k}

Every key is declared once below with the config machinery of ``outlet/confspec`` (the
same kinds, duration grammar, unknown-key hints and ``key.path: problem`` errors as the
outlet's config and the chaos scenarios).

``rate_at(t)`` is the profile's rate at profile time ``t``: with ``step`` each point's rate
holds until the next point; with ``linear`` the rate moves linearly between points. After
the last point the last rate holds until ``duration``. The first point must be at 0.

The replay lasts ``replay-duration x time_scale`` wall-clock seconds: ``--time-scale`` /
``TIME_SCALE`` multiplies durations, as everywhere in the harnesses (2 = twice as long,
0.1 = a ten-times-shorter smoke run). :class:`Schedule` maps wall-clock run time to the
offered rate and the number of Locust users, without importing Locust (the unit tests
import it; importing Locust monkey-patches the process with gevent).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from flowgen.generator import generator_config
from outlet.confspec import (
    Invalid,
    Kind,
    Number,
    Problems,
    Section,
    SpecError,
    Str,
    Where,
    load_yaml,
    parse,
    parse_duration,
    setting,
    show,
)

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

Interpolation = Literal["step", "linear"]
_CLOCK = re.compile(r"^(\d{1,3}):([0-5]\d)(?::([0-5]\d(?:\.\d+)?))?$")
_RATE = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kKmM]?)$")


class ProfileError(SpecError):
    """A profile file is invalid; ``errors`` lists every problem with its location."""

    what = "profile"

    def __init__(self, errors: Sequence[str], source: str = "") -> None:
        super().__init__(errors, source)

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return where + "; ".join(self.errors)


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


class _Time(Kind[float]):
    """Profile time: a duration or ``HH:MM[:SS]``."""

    type_doc = "time (90s, 1m30s, 2h, HH:MM[:SS])"

    def __init__(self, *, positive: bool = False) -> None:
        super().__init__()
        self.positive = positive

    def convert(self, raw: object) -> float:
        try:
            t = parse_time(raw)
        except ValueError as e:
            raise Invalid(f"{show(raw)} is invalid ({e})") from None
        if self.positive and t <= 0:
            raise Invalid(f"must be > 0, got {show(raw)}")
        return t


class _Points(Kind[tuple[tuple[float, float], ...]]):
    type_doc = "list of [time, flows/s]"

    def parse(self, raw: object, at: Where, default: Any) -> tuple[tuple[float, float], ...]:
        if not isinstance(raw, list) or not raw:
            raise Invalid("a non-empty list of [time, flows/s] pairs is needed")
        points: list[tuple[float, float]] = []
        for i, pt in enumerate(raw):
            where = at.child(i)
            if isinstance(pt, dict) and set(pt) <= {"at", "rate"} and len(pt) == 2:
                t_raw, r_raw = pt["at"], pt["rate"]
            elif isinstance(pt, list | tuple) and len(pt) == 2:
                t_raw, r_raw = pt
            else:
                where.report(f"expected [time, flows/s] or {{at: time, rate: flows/s}}, "
                             f"got {pt!r}")
                continue
            try:
                t = parse_time(t_raw)
            except ValueError as e:
                where.report(f"time {t_raw!r} is invalid ({e})")
                continue
            try:
                r = parse_rate(r_raw)
            except ValueError as e:
                where.report(f"rate {r_raw!r} is invalid ({e})")
                continue
            points.append((t, r))
        return tuple(points)


class _Generator(Kind[dict[str, Any]]):
    type_doc = "mapping"

    def convert(self, raw: object) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise Invalid("must be a mapping")
        try:
            generator_config(raw)
        except (TypeError, ValueError) as e:
            raise Invalid(str(e)) from None
        return dict(raw)


class _Text(Kind[str]):
    type_doc = "text"

    def convert(self, raw: object) -> str:
        return str(raw)


@dataclass(frozen=True)
class Profile:
    """A validated load profile (times in profile seconds, rates in flows/s)."""

    name: str = setting("profile", Str(nonempty=True), default_doc="the file name")
    description: str = setting("", _Text())
    interpolation: Interpolation = setting(
        "step", Str(choices=("step", "linear"), problem="must be 'step' or 'linear', not {got}"),
        doc="step: hold each point's rate until the next; linear: move linearly between them")
    duration: float = setting(0.0, _Time(), default_doc="the last point's time",
                              doc="profile time")
    replay_duration: float = setting(
        0.0, _Time(positive=True), default_doc="`duration`",
        doc="wall-clock length of the replay (at time scale 1): profile time is compressed "
            "or stretched to fit")
    rate_scale: float = setting(1.0, Number(above=0), doc="multiplier on every rate")
    generator: Mapping[str, Any] = setting({}, _Generator(),
                                           doc="generator overrides (kebab- or snake-case)")
    points: tuple[tuple[float, float], ...] = setting(
        (), _Points(), required="a non-empty list of [time, flows/s] pairs is needed")
    time_scale: float = 1.0  # --time-scale: multiplies the replay's wall-clock duration
    source: str = ""

    __hints__: ClassVar[dict[str, str]] = {
        "time-scale": "a profile says how long its replay lasts: replay-duration (e.g. 60s); "
                      "the time scale is a command-line setting (--time-scale, TIME_SCALE) "
                      "that multiplies it",
    }

    @classmethod
    def __check__(cls, s: Section) -> None:
        raw_points = s.raw("points")
        if isinstance(raw_points, list) and len(s["points"]) < len(raw_points):
            return  # bad points already reported: their order and duration mean nothing yet
        for key, problem in _problems(s["points"], s["duration"]):
            s.report(key, problem)

    def __post_init__(self) -> None:
        if self.duration == 0 and self.points:
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
        """Seconds the replay lasts: ``replay-duration`` (default ``duration``) x time scale."""
        return (self.replay_duration or self.duration) * self.time_scale

    @property
    def speedup(self) -> float:
        """Profile seconds per wall-clock second."""
        return self.duration / self.wall_duration

    def rate_at_wall(self, run_time: float) -> float:
        return self.rate_at(run_time * self.speedup)

    def total_flows(self) -> float:
        """Flows the whole replay offers (wall-clock integral of the rate)."""
        step = max(self.duration / 200_000, 0.001 * self.speedup)
        return self.flows_between(0.0, self.duration, step) / self.speedup

    def scaled(self, time_scale: float = 1.0, rate_scale: float = 1.0) -> Profile:
        """A copy whose replay lasts ``time_scale`` times longer and offers ``rate_scale``
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
            "interpolation": self.interpolation, "duration": self.duration,
            "replay-duration": self.replay_duration or self.duration,
            "time-scale": self.time_scale, "wall-duration": self.wall_duration,
            "speedup": self.speedup, "rate-scale": self.rate_scale,
            "generator": dict(self.generator),
            "points": [[t, r] for t, r in self.points],
        }


def _problems(points: Sequence[tuple[float, float]], duration: float
              ) -> list[tuple[str, str]]:
    """(key, problem) of a profile whose points and duration are each valid."""
    if not points:
        return [("points", "at least one point is needed")]
    out: list[tuple[str, str]] = []
    if points[0][0] != 0:
        out.append(("points[0]", f"the first point must be at time 0, not {points[0][0]:g}s"))
    for i in range(1, len(points)):
        if points[i][0] <= points[i - 1][0]:
            out.append((f"points[{i}]", f"time {points[i][0]:g}s is not after the previous "
                                        f"point ({points[i - 1][0]:g}s)"))
    last = points[-1][0]
    if duration and duration < last:
        out.append(("duration", f"{duration:g}s ends before the last point ({last:g}s)"))
    elif duration == 0 and last == 0:
        out.append(("duration", "needed when the profile has a single point"))
    if all(r == 0 for _, r in points):
        out.append(("points", "every rate is 0"))
    return out


def parse_profile(data: object, name: str = "", source: str = "") -> Profile:
    """A profile from its YAML mapping; raises :class:`ProfileError` listing every problem."""
    if not isinstance(data, dict):
        raise ProfileError(["the profile must be a mapping"], source)
    problems = Problems()
    profile = parse(Profile, data, problems, defaults=Profile(name=name or "profile",
                                                               source=source))
    if problems:
        raise ProfileError(problems.errors, source)
    return profile


def load_profile(name_or_path: str | Path) -> Profile:
    """A profile by name (``loadtest/profiles/<name>.yaml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(available_profiles()) or "none"
        raise ProfileError([f"no profile {name_or_path!r} (known: {known})"])
    try:
        data, duplicates = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ProfileError([f"invalid YAML: {e}"], str(path)) from None
    if duplicates:
        raise ProfileError(duplicates, str(path))
    return parse_profile(data, name=path.stem, source=str(path))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def step_profile(rates: Sequence[float], step_seconds: float, name: str = "capacity-steps"
                 ) -> Profile:
    """A staircase: each rate held for ``step_seconds`` (used by ``loadtest capacity``)."""
    points = tuple((i * step_seconds, float(r)) for i, r in enumerate(rates))
    duration = len(rates) * step_seconds
    problems = _problems(points, duration)
    if problems:
        raise ProfileError([f"{k}: {p}" for k, p in problems])
    return Profile(name=name, interpolation="step", points=points, duration=duration,
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
