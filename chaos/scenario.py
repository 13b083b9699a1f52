"""Chaos scenario files (``scenarios/*.yaml``): format, validation and time scaling.

A scenario describes the load, the outlet configuration, a timeline of faults and the
invariants checked once the pipeline is quiet. The format is documented in
``docs/chaos.md``; :func:`load_scenario` parses and validates a file and raises
:class:`ScenarioError` listing every problem with its key path, e.g.
``timeline[2].action: unknown action 'kil_outlet' (known: add_toxic, ...)``.

Everything here is pure (no stack, no network): the runner (``chaos/runner.py``) plays
the validated :class:`Scenario`.
"""

from __future__ import annotations

import copy
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS_DIR = PROJECT_ROOT / "scenarios"

DESTINATIONS = ("local", "azure")
"""ClickHouse servers of the stack (the outlet's destinations)."""

PROXIES = {
    "local": "clickhouse-local",
    "azure": "clickhouse-azure",
    "kafka": "kafka",
    "clickhouse-local": "clickhouse-local",
    "clickhouse-azure": "clickhouse-azure",
}
"""Accepted proxy names -> Toxiproxy proxy name."""

TOXIC_ATTRIBUTES: dict[str, dict[str, bool]] = {
    # type -> {attribute: required}
    "latency": {"latency": True, "jitter": False},
    "bandwidth": {"rate": True},
    "slow_close": {"delay": True},
    "timeout": {"timeout": True},
    "reset_peer": {"timeout": False},
    "slicer": {"average_size": True, "size_variation": False, "delay": False},
    "limit_data": {"bytes": True},
}

# action -> (required params, optional params)
ACTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "add_toxic": (frozenset({"proxy", "type"}),
                  frozenset({"attributes", "stream", "toxicity", "name", "for"})),
    "remove_toxic": (frozenset({"proxy", "name"}), frozenset()),
    "disable_proxy": (frozenset({"proxy"}), frozenset({"for"})),
    "enable_proxy": (frozenset({"proxy"}), frozenset()),
    "kill_outlet": (frozenset(), frozenset({"for"})),
    "stop_outlet": (frozenset(), frozenset({"for"})),
    "start_outlet": (frozenset(), frozenset()),
    "restart_outlet": (frozenset(), frozenset({"graceful"})),
    "restart_clickhouse": (frozenset({"target"}), frozenset()),
    "restart_kafka": (frozenset(), frozenset()),
    "set_rate": (frozenset({"rate"}), frozenset()),
}
COMMON_ACTION_KEYS = frozenset({"at", "action", "label", "repeat"})

ROW_EXPECTATIONS = ("all", "all_minus_reported_loss")
DEST_EXPECT_KEYS = frozenset(
    {"rows", "no_duplicates", "no_loss", "loss_equals_metric", "loss_bounded_by_metric",
     "min_loss"}
)
COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SELECTOR = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{([^}]*)\})?\s*$")
_LABEL = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"\s*$')
_ASSERTION = re.compile(r"^(.*?)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")


class ScenarioError(ValueError):
    """A scenario file is invalid; ``problems`` lists ``path: message`` strings."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid scenario {source}:\n{lines}")


def parse_duration(value: Any) -> float:
    """``"10s"``, ``"500ms"``, ``"1m30s"``, ``"2h"`` or a number of seconds -> seconds.

    Raises ValueError with a readable message on anything else (negative, empty, ``10x``).
    """
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}: expected e.g. 10s, 500ms, 1m30s")
    if isinstance(value, int | float):
        if value < 0 or math.isnan(value) or math.isinf(value):
            raise ValueError(f"bad duration {value!r}: must be a finite number >= 0")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"bad duration {value!r}: expected e.g. 10s, 500ms, 1m30s")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"bad duration {value!r}: expected e.g. 10s, 500ms, 1m30s")
    return total


def format_duration(seconds: float) -> str:
    if seconds >= 1 and abs(seconds - round(seconds)) < 1e-9:
        return f"{round(seconds)}s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSelector:
    """``name{label="value",...}``: the sum of the matching samples."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.labels:
            return self.name
        inner = ",".join(f'{k}="{v}"' for k, v in self.labels)
        return f"{self.name}{{{inner}}}"


@dataclass(frozen=True)
class MetricAssertion:
    """``lhs OP rhs`` where each side is a metric selector or a number."""

    text: str
    lhs: MetricSelector | float
    op: str
    rhs: MetricSelector | float

    def compare(self, left: float, right: float) -> bool:
        return COMPARATORS[self.op](left, right)


@dataclass(frozen=True)
class Action:
    """One timeline step. ``at`` in seconds from the start of the load."""

    at: float
    action: str
    params: dict[str, Any]
    label: str
    path: str  # e.g. "timeline[3]" (with "+for"/"#repeat" suffixes for generated steps)

    @property
    def proxy(self) -> str | None:
        p = self.params.get("proxy")
        return PROXIES.get(p) if isinstance(p, str) else None

    def describe(self) -> str:
        bits = [self.action]
        if self.proxy:
            bits.append(self.proxy)
        if self.action == "add_toxic":
            bits.append(str(self.params.get("type")))
            attrs = self.params.get("attributes") or {}
            if attrs:
                bits.append(",".join(f"{k}={v}" for k, v in attrs.items()))
        if self.action in ("restart_clickhouse",):
            bits.append(str(self.params.get("target")))
        if self.action == "set_rate":
            bits.append(f"{self.params.get('rate')}/s")
        return " ".join(bits)


@dataclass(frozen=True)
class Load:
    rate: float  # flows/s
    duration: float  # seconds
    flows_per_record: int = 1
    seed: int = 1


@dataclass(frozen=True)
class OutletSettings:
    destinations: tuple[str, ...] = ("local", "azure")
    batch_size: int = 5000
    wait_time: str = "500ms"
    azure_max_retries: int = 3


@dataclass(frozen=True)
class DestinationExpectation:
    destination: str
    rows: str | int | None = None  # "all" | "all_minus_reported_loss" | exact int
    no_duplicates: bool = False
    no_loss: bool = False
    loss_equals_metric: bool = False
    loss_bounded_by_metric: bool = False
    min_loss: int | None = None  # at least this many flows missing (fault really bit)


@dataclass(frozen=True)
class ThroughputExpectation:
    destination: str
    window: tuple[float, float]
    baseline: tuple[float, float]
    min_percent: float
    path: str


@dataclass(frozen=True)
class LagExpectation:
    """From ``after`` (timeline time) to the end of the load, the end-to-end backlog
    (flows produced and not yet stored on ``destination``) stays below ``max_seconds``
    of load."""

    after: float
    max_seconds: float
    destination: str = "local"


@dataclass(frozen=True)
class Expectations:
    destinations: tuple[DestinationExpectation, ...] = ()
    throughput: tuple[ThroughputExpectation, ...] = ()
    metrics: tuple[MetricAssertion, ...] = ()
    lag: LagExpectation | None = None
    clean_shutdown: bool = True
    quiesce_timeout: float = 120.0
    wait_for_spool: bool = True


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    load: Load
    outlet: OutletSettings
    outlet_overrides: dict[str, Any]
    timeline: tuple[Action, ...]
    expect: Expectations
    source: str = ""
    time_scale: float = 1.0

    @property
    def end(self) -> float:
        """Seconds until the load and the timeline are both over."""
        last = max((a.at for a in self.timeline), default=0.0)
        return max(self.load.duration, last)

    def metric_destination(self, dest: str) -> str:
        """Label the outlet uses for a stack destination (the primary is ``primary``)."""
        return "primary" if dest == self.outlet.destinations[0] else dest

    def scaled(self, factor: float) -> Scenario:
        """Timeline times and durations multiplied by ``factor`` (toxic attributes,
        rates and recovery limits are properties of the system and are kept)."""
        if factor <= 0:
            raise ValueError("time scale must be > 0")
        if factor == 1.0:
            return self
        timeline = tuple(replace(a, at=a.at * factor) for a in self.timeline)
        exp = self.expect
        throughput = tuple(
            replace(t, window=(t.window[0] * factor, t.window[1] * factor),
                    baseline=(t.baseline[0] * factor, t.baseline[1] * factor))
            for t in exp.throughput
        )
        lag = replace(exp.lag, after=exp.lag.after * factor) if exp.lag else None
        return replace(
            self,
            load=replace(self.load, duration=self.load.duration * factor),
            timeline=timeline,
            expect=replace(exp, throughput=throughput, lag=lag),
            time_scale=self.time_scale * factor,
        )

    def fault_windows(self) -> list[tuple[float, float | None, str]]:
        """(start, end or None when instantaneous/unhealed, label) of each planned fault."""
        return planned_windows(self.timeline)


def planned_windows(timeline: tuple[Action, ...] | list[Action]
                    ) -> list[tuple[float, float | None, str]]:
    """Pair fault starts with their ends: disable/enable per proxy, add/remove per toxic,
    kill|stop/start of the outlet. Instantaneous actions give (t, None, label)."""
    out: list[tuple[float, float | None, str]] = []
    open_: dict[tuple[str, str], tuple[float, str]] = {}
    for a in sorted(timeline, key=lambda a: a.at):
        if a.action == "disable_proxy":
            open_[("proxy", a.proxy or "")] = (a.at, a.label)
        elif a.action == "enable_proxy":
            start = open_.pop(("proxy", a.proxy or ""), None)
            if start:
                out.append((start[0], a.at, start[1]))
        elif a.action == "add_toxic":
            open_[("toxic", f"{a.proxy}/{a.params.get('name')}")] = (a.at, a.label)
        elif a.action == "remove_toxic":
            start = open_.pop(("toxic", f"{a.proxy}/{a.params.get('name')}"), None)
            if start:
                out.append((start[0], a.at, start[1]))
        elif a.action in ("kill_outlet", "stop_outlet"):
            open_[("outlet", "")] = (a.at, a.label)
        elif a.action == "start_outlet":
            start = open_.pop(("outlet", ""), None)
            if start:
                out.append((start[0], a.at, start[1]))
        elif a.action != "set_rate":
            out.append((a.at, None, a.label))
    for t_open, label in open_.values():
        out.append((t_open, float("inf"), label))
    return sorted(out, key=lambda w: w[0])


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------


def known_metric_names() -> set[str] | None:
    """Metric sample names the outlet exports (None if the outlet cannot be imported)."""
    try:
        from outlet.metrics import Metrics
    except Exception:
        return None
    names: set[str] = set()
    for family in Metrics().registry.collect():
        base = family.name
        if family.type == "counter":
            names |= {base + "_total", base + "_created"}
        elif family.type == "histogram":
            names |= {base + "_bucket", base + "_count", base + "_sum", base + "_created"}
        else:
            names.add(base)
    return names


def resolve_metric_name(name: str, known: set[str] | None) -> str | None:
    """Exact name, or with the ``outlet_`` / ``outlet_destination_`` prefix."""
    candidates = [name, f"outlet_{name}", f"outlet_destination_{name}"]
    if known is None:
        return name
    for c in candidates:
        if c in known:
            return c
    return None


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self._known_metrics: set[str] | bool | None = False

    def err(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}" if path else msg)

    # -- scalar helpers -------------------------------------------------------------------
    def duration(self, value: Any, path: str, default: float | None = None) -> float | None:
        if value is None:
            if default is None:
                self.err(path, "required duration is missing")
            return default
        try:
            return parse_duration(value)
        except ValueError as e:
            self.err(path, str(e))
            return default

    def number(self, value: Any, path: str, *, minimum: float | None = None,
               maximum: float | None = None, integer: bool = False) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.err(path, f"expected a number, got {value!r}")
            return None
        if integer and not float(value).is_integer():
            self.err(path, f"expected an integer, got {value!r}")
            return None
        if minimum is not None and value < minimum:
            self.err(path, f"must be >= {minimum:g}, got {value!r}")
            return None
        if maximum is not None and value > maximum:
            self.err(path, f"must be <= {maximum:g}, got {value!r}")
            return None
        return float(value)

    def mapping(self, value: Any, path: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.err(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        return value

    def unknown_keys(self, data: Mapping[str, Any], allowed: set[str] | frozenset[str],
                     path: str) -> None:
        for key in data:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                self.err(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def destination(self, value: Any, path: str) -> str | None:
        if value not in DESTINATIONS:
            self.err(path, f"unknown destination {value!r} (known: {', '.join(DESTINATIONS)})")
            return None
        return str(value)

    def window(self, value: Any, path: str) -> tuple[float, float] | None:
        if not isinstance(value, list | tuple) or len(value) != 2:
            self.err(path, f"expected [start, end], got {value!r}")
            return None
        a = self.duration(value[0], f"{path}[0]", -1.0)
        b = self.duration(value[1], f"{path}[1]", -1.0)
        if a is None or b is None or a < 0 or b < 0:
            return None
        if b <= a:
            self.err(path, f"window end must be after its start, got {value!r}")
            return None
        return (a, b)

    # -- metrics ------------------------------------------------------------------------
    def metric_operand(self, text: str, path: str) -> MetricSelector | float | None:
        try:
            return float(text)
        except ValueError:
            pass
        m = _SELECTOR.match(text)
        if not m:
            self.err(path, f"cannot parse metric selector {text!r} "
                           '(expected name{label="value"} or a number)')
            return None
        labels: list[tuple[str, str]] = []
        if m.group(3) and m.group(3).strip():
            for part in m.group(3).split(","):
                lm = _LABEL.match(part)
                if not lm:
                    self.err(path, f'bad label matcher {part.strip()!r} (expected key="value")')
                    return None
                labels.append((lm.group(1), lm.group(2)))
        if self._known_metrics is False:
            self._known_metrics = known_metric_names()
        known = self._known_metrics if isinstance(self._known_metrics, set) else None
        name = resolve_metric_name(m.group(1), known)
        if name is None:
            self.err(path, f"unknown metric {m.group(1)!r} (not exported by the outlet; "
                           "see outlet/metrics.py)")
            return None
        for k, v in labels:
            if k == "destination" and v not in ("primary", *DESTINATIONS[1:]):
                self.err(path, f'unknown destination label {v!r} (the primary is "primary", '
                               f'additional ones by name: {", ".join(DESTINATIONS[1:])})')
                return None
        return MetricSelector(name, tuple(labels))

    def metric_assertion(self, value: Any, path: str) -> MetricAssertion | None:
        if not isinstance(value, str):
            self.err(path, f"expected a string like 'name{{label=\"v\"}} > 0', got {value!r}")
            return None
        m = _ASSERTION.match(value)
        if not m:
            self.err(path, f"cannot parse assertion {value!r} (expected LHS OP RHS with OP one "
                           f"of {', '.join(COMPARATORS)})")
            return None
        lhs = self.metric_operand(m.group(1), path)
        rhs = self.metric_operand(m.group(3), path)
        if lhs is None or rhs is None:
            return None
        return MetricAssertion(value, lhs, m.group(2), rhs)

    # -- actions --------------------------------------------------------------------------
    def action(self, raw: Any, path: str) -> list[Action]:
        if not isinstance(raw, dict):
            self.err(path, f"expected a mapping with 'at' and 'action', got {raw!r}")
            return []
        name = raw.get("action")
        if name is None:
            self.err(f"{path}.action", "missing")
            return []
        if name not in ACTIONS:
            self.err(f"{path}.action",
                     f"unknown action {name!r} (known: {', '.join(sorted(ACTIONS))})")
            return []
        at = self.duration(raw.get("at"), f"{path}.at")
        required, optional = ACTIONS[name]
        params = {k: v for k, v in raw.items() if k not in COMMON_ACTION_KEYS}
        before = len(self.problems)
        for key in required - params.keys():
            self.err(f"{path}.{key}", f"required by action {name}")
        self.unknown_keys(params, required | optional, path)
        ok = len(self.problems) == before
        if "proxy" in params and params["proxy"] not in PROXIES:
            self.err(f"{path}.proxy", f"unknown proxy {params['proxy']!r} "
                                      f"(known: {', '.join(sorted(PROXIES))})")
            ok = False
        if name == "add_toxic":
            ok &= self._toxic(params, path)
        if (name == "restart_clickhouse" and "target" in params
                and params["target"] not in DESTINATIONS):
            self.err(f"{path}.target", f"unknown target {params['target']!r} "
                                       f"(known: {', '.join(DESTINATIONS)})")
            ok = False
        if name == "set_rate" and "rate" in params:
            ok &= self.number(params["rate"], f"{path}.rate", minimum=0) is not None
        if name == "restart_outlet" and not isinstance(params.get("graceful", True), bool):
            self.err(f"{path}.graceful", "expected true or false")
            ok = False
        hold = None
        if "for" in params:
            hold = self.duration(params.pop("for"), f"{path}.for")
            if hold is not None and hold <= 0:
                self.err(f"{path}.for", "must be > 0")
                hold = None
        label = raw.get("label")
        if label is not None and not isinstance(label, str):
            self.err(f"{path}.label", "expected a string")
            label = None
        repeat = self.mapping(raw.get("repeat"), f"{path}.repeat")
        self.unknown_keys(repeat, {"count", "every"}, f"{path}.repeat")
        count, every = 1, 0.0
        if repeat:
            c = self.number(repeat.get("count"), f"{path}.repeat.count", minimum=1,
                            integer=True)
            e = self.duration(repeat.get("every"), f"{path}.repeat.every")
            if c is None or e is None:
                ok = False
            else:
                count, every = int(c), e
                if e <= 0:
                    self.err(f"{path}.repeat.every", "must be > 0")
                    ok = False
                elif hold is not None and hold >= e:
                    self.err(f"{path}.for",
                             f"must be shorter than repeat.every ({repeat['every']})")
                    ok = False
        if not ok or at is None:
            return []
        if name == "add_toxic" and "name" not in params:
            params["name"] = f"{params['type']}_{params.get('stream', 'downstream')}"
        base = Action(at, name, params, label or "", path)
        base = replace(base, label=label or base.describe())
        out: list[Action] = []
        for i in range(count):
            sfx = f"#{i + 1}" if count > 1 else ""
            start = at + i * every
            out.append(replace(base, at=start, path=path + sfx))
            if hold is not None:
                out.append(self._undo(base, start + hold, path + sfx + "+for"))
        return out

    def _undo(self, a: Action, at: float, path: str) -> Action:
        if a.action == "add_toxic":
            return Action(at, "remove_toxic", {"proxy": a.params["proxy"],
                                               "name": a.params["name"]}, a.label, path)
        if a.action == "disable_proxy":
            return Action(at, "enable_proxy", {"proxy": a.params["proxy"]}, a.label, path)
        return Action(at, "start_outlet", {}, a.label, path)  # kill/stop_outlet

    def _toxic(self, params: dict[str, Any], path: str) -> bool:
        ok = True
        ttype = params.get("type")
        if ttype not in TOXIC_ATTRIBUTES:
            self.err(f"{path}.type", f"unknown toxic type {ttype!r} "
                                     f"(known: {', '.join(sorted(TOXIC_ATTRIBUTES))})")
            return False
        attrs = self.mapping(params.get("attributes"), f"{path}.attributes")
        spec = TOXIC_ATTRIBUTES[ttype]
        for key in attrs:
            if key not in spec:
                self.err(f"{path}.attributes.{key}",
                         f"unknown attribute for {ttype} (known: {', '.join(spec)})")
                ok = False
            elif self.number(attrs[key], f"{path}.attributes.{key}", minimum=0,
                             integer=True) is None:
                ok = False
        for key, required in spec.items():
            if required and key not in attrs:
                self.err(f"{path}.attributes.{key}", f"required by toxic {ttype}")
                ok = False
        stream = params.get("stream", "downstream")
        if stream not in ("upstream", "downstream"):
            self.err(f"{path}.stream", f"must be upstream or downstream, got {stream!r}")
            ok = False
        if "toxicity" in params and self.number(params["toxicity"], f"{path}.toxicity",
                                                minimum=0, maximum=1) is None:
            ok = False
        if "name" in params and not (isinstance(params["name"], str) and params["name"]):
            self.err(f"{path}.name", "expected a non-empty string")
            ok = False
        return ok

    # -- timeline consistency -------------------------------------------------------------
    def check_timeline(self, actions: list[Action], load_end: float) -> None:
        outlet_up = True
        proxies_down: set[str] = set()
        toxics: dict[tuple[str, str], str] = {}
        for a in sorted(actions, key=lambda a: a.at):
            if a.action in ("kill_outlet", "stop_outlet", "restart_outlet"):
                if not outlet_up:
                    self.err(a.path, f"{a.action} at {format_duration(a.at)}: the outlet is "
                                     "not running then")
                outlet_up = a.action == "restart_outlet"
            elif a.action == "start_outlet":
                if outlet_up:
                    self.err(a.path, f"start_outlet at {format_duration(a.at)}: the outlet is "
                                     "already running")
                outlet_up = True
            elif a.action == "disable_proxy":
                proxies_down.add(a.proxy or "")
            elif a.action == "enable_proxy":
                proxies_down.discard(a.proxy or "")
            elif a.action == "add_toxic":
                key = (a.proxy or "", str(a.params["name"]))
                if key in toxics:
                    self.err(a.path, f"toxic {key[1]!r} already present on {key[0]} "
                                     f"(added by {toxics[key]})")
                toxics[key] = a.path
            elif a.action == "remove_toxic":
                key = (a.proxy or "", str(a.params["name"]))
                if toxics.pop(key, None) is None:
                    self.err(a.path, f"remove_toxic: no toxic {key[1]!r} on {key[0]} at "
                                     f"{format_duration(a.at)}")
        if not outlet_up:
            self.err("timeline", "the outlet is stopped at the end of the timeline: add a "
                                 "start_outlet step (or use 'for:')")

    # -- whole file -------------------------------------------------------------------------
    def scenario(self, data: Any, default_name: str) -> Scenario | None:
        if not isinstance(data, dict):
            self.err("", f"expected a mapping at the top level, got {type(data).__name__}")
            return None
        self.unknown_keys(data, {"name", "description", "load", "outlet", "outlet_overrides",
                                 "timeline", "expect"}, "")
        name = data.get("name", default_name)
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
            self.err("name", f"expected a lowercase slug like azure-partition, got {name!r}")
            name = default_name
        description = str(data.get("description", "")).strip()

        raw_load = self.mapping(data.get("load"), "load")
        self.unknown_keys(raw_load, {"rate", "duration", "flows_per_record", "seed", "unique"},
                          "load")
        rate = self.number(raw_load.get("rate", 2000), "load.rate", minimum=1)
        duration = self.duration(raw_load.get("duration"), "load.duration")
        fpr = self.number(raw_load.get("flows_per_record", 1), "load.flows_per_record",
                          minimum=1, integer=True)
        seed = self.number(raw_load.get("seed", 1), "load.seed", minimum=0, integer=True)
        if raw_load.get("unique", True) is not True:
            self.err("load.unique", "must be true: every flow is unique so that losses and "
                                    "duplicates are detectable per flow")
        if duration is not None and duration <= 0:
            self.err("load.duration", "must be > 0")
        load = Load(rate or 1.0, duration or 1.0, int(fpr or 1), int(seed or 0))

        raw_outlet = self.mapping(data.get("outlet"), "outlet")
        self.unknown_keys(raw_outlet, {"destinations", "batch_size", "wait_time",
                                       "azure_max_retries"}, "outlet")
        dests = raw_outlet.get("destinations", ["local", "azure"])
        if (not isinstance(dests, list) or not dests
                or len(set(dests)) != len(dests)):
            self.err("outlet.destinations", f"expected a list of distinct destinations, "
                                            f"got {dests!r}")
            dests = ["local", "azure"]
        for i, d in enumerate(dests):
            self.destination(d, f"outlet.destinations[{i}]")
        batch = self.number(raw_outlet.get("batch_size", 5000), "outlet.batch_size", minimum=1,
                            integer=True)
        wait = raw_outlet.get("wait_time", "500ms")
        self.duration(wait, "outlet.wait_time")
        retries = self.number(raw_outlet.get("azure_max_retries", 3), "outlet.azure_max_retries",
                              minimum=0, integer=True)
        outlet = OutletSettings(tuple(dests), int(batch or 5000), str(wait), int(retries or 0))

        overrides = self.mapping(data.get("outlet_overrides"), "outlet_overrides")

        raw_timeline = data.get("timeline") or []
        actions: list[Action] = []
        if not isinstance(raw_timeline, list):
            self.err("timeline", "expected a list of actions")
        else:
            for i, raw in enumerate(raw_timeline):
                actions.extend(self.action(raw, f"timeline[{i}]"))
        for a in actions:
            if a.proxy and a.proxy != "kafka":
                d = a.proxy.removeprefix("clickhouse-")
                if d not in dests:
                    self.err(a.path, f"proxy {a.proxy} is not in front of a destination of "
                                     f"this run (outlet.destinations: {dests})")
            if a.action == "restart_clickhouse" and a.params.get("target") not in dests:
                self.err(a.path, f"target {a.params.get('target')!r} is not a destination of "
                                 "this run")
        self.check_timeline(actions, load.duration)

        expect = self.expectations(self.mapping(data.get("expect"), "expect"), tuple(dests),
                                   actions, load)
        if self.problems or expect is None:
            return None
        return Scenario(
            name=name, description=description, load=load, outlet=outlet,
            outlet_overrides=overrides, timeline=tuple(sorted(actions, key=lambda a: a.at)),
            expect=expect, source=self.source,
        )

    def expectations(self, raw: dict[str, Any], dests: tuple[str, ...],
                     actions: list[Action], load: Load) -> Expectations | None:
        self.unknown_keys(raw, {"destinations", "throughput", "metrics", "lag", "clean_shutdown",
                                "quiesce_timeout", "wait_for_spool"}, "expect")
        dest_exp: list[DestinationExpectation] = []
        for dname, spec in self.mapping(raw.get("destinations"), "expect.destinations").items():
            p = f"expect.destinations.{dname}"
            if self.destination(dname, p) is None:
                continue
            if dname not in dests:
                self.err(p, f"not a destination of this run (outlet.destinations: {list(dests)})")
                continue
            spec = self.mapping(spec, p)
            self.unknown_keys(spec, DEST_EXPECT_KEYS, p)
            rows = spec.get("rows")
            if rows is not None and rows not in ROW_EXPECTATIONS and not (
                    isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0):
                self.err(f"{p}.rows", f"expected one of {', '.join(ROW_EXPECTATIONS)} or a "
                                      f"count, got {rows!r}")
            flags = {}
            for key in ("no_duplicates", "no_loss", "loss_equals_metric",
                        "loss_bounded_by_metric"):
                v = spec.get(key, False)
                if not isinstance(v, bool):
                    self.err(f"{p}.{key}", f"expected true or false, got {v!r}")
                flags[key] = bool(v)
            min_loss = spec.get("min_loss")
            if min_loss is not None:
                self.number(min_loss, f"{p}.min_loss", minimum=0, integer=True)
            if dname == dests[0] and (rows == "all_minus_reported_loss"
                                      or flags["loss_equals_metric"]):
                self.err(p, "the primary never gives up on a batch: expect rows: all")
            if flags["no_loss"] and (rows == "all_minus_reported_loss" or min_loss):
                self.err(p, "no_loss contradicts rows: all_minus_reported_loss / min_loss")
            dest_exp.append(DestinationExpectation(
                dname, rows, flags["no_duplicates"], flags["no_loss"],
                flags["loss_equals_metric"], flags["loss_bounded_by_metric"],
                int(min_loss) if isinstance(min_loss, int) else None))

        first_fault = min((a.at for a in actions), default=load.duration)
        throughput: list[ThroughputExpectation] = []
        raw_tp = raw.get("throughput") or []
        if not isinstance(raw_tp, list):
            self.err("expect.throughput", "expected a list")
            raw_tp = []
        for i, item in enumerate(raw_tp):
            p = f"expect.throughput[{i}]"
            item = self.mapping(item, p)
            self.unknown_keys(item, {"destination", "window", "baseline", "min_percent"}, p)
            d = self.destination(item.get("destination", dests[0]), f"{p}.destination")
            win = self.window(item.get("window"), f"{p}.window")
            base = (self.window(item["baseline"], f"{p}.baseline") if "baseline" in item
                    else (min(3.0, first_fault / 2), first_fault))
            pct = self.number(item.get("min_percent"), f"{p}.min_percent", minimum=0,
                              maximum=1000)
            if win and win[1] > load.duration:
                self.err(f"{p}.window", f"ends after the load ({format_duration(load.duration)})")
            if base and (base[1] - base[0]) < 2:
                self.err(f"{p}.baseline", "must span at least 2 s (first fault too early? give "
                                          "an explicit baseline: [start, end])")
            if d and win and base and pct is not None:
                throughput.append(ThroughputExpectation(d, win, base, pct, p))

        metrics: list[MetricAssertion] = []
        raw_m = raw.get("metrics") or []
        if not isinstance(raw_m, list):
            self.err("expect.metrics", "expected a list of assertions")
            raw_m = []
        for i, item in enumerate(raw_m):
            ma = self.metric_assertion(item, f"expect.metrics[{i}]")
            if ma:
                metrics.append(ma)

        lag = None
        if raw.get("lag") is not None:
            rl = self.mapping(raw["lag"], "expect.lag")
            self.unknown_keys(rl, {"after", "max_seconds", "destination"}, "expect.lag")
            last = max((a.at for a in actions), default=0.0)
            after = self.duration(rl.get("after"), "expect.lag.after", last)
            mx = self.number(rl.get("max_seconds"), "expect.lag.max_seconds", minimum=0)
            d = self.destination(rl.get("destination", dests[0]), "expect.lag.destination")
            if after is not None and after >= load.duration:
                self.err("expect.lag.after", "must be before the end of the load "
                                             f"({format_duration(load.duration)})")
            if after is not None and mx is not None and d:
                lag = LagExpectation(after, mx, d)
        cs = raw.get("clean_shutdown", True)
        if not isinstance(cs, bool):
            self.err("expect.clean_shutdown", "expected true or false")
        qt = self.duration(raw.get("quiesce_timeout"), "expect.quiesce_timeout", 120.0)
        ws = raw.get("wait_for_spool", True)
        if not isinstance(ws, bool):
            self.err("expect.wait_for_spool", "expected true or false")
        if not dest_exp and not throughput and not metrics and lag is None:
            self.err("expect", "no invariant to check: a scenario must expect something")
        return Expectations(tuple(dest_exp), tuple(throughput), tuple(metrics), lag, bool(cs),
                            qt or 120.0, bool(ws))


def parse_scenario(data: Any, source: str = "<string>", default_name: str = "scenario"
                   ) -> Scenario:
    """Validate an already-loaded YAML document."""
    p = _Parser(source)
    sc = p.scenario(data, default_name)
    if sc is None:
        raise ScenarioError(source, p.problems or ["invalid scenario"])
    return sc


def parse_scenario_text(text: str, source: str = "<string>", default_name: str = "scenario"
                        ) -> Scenario:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ScenarioError(source, [f"YAML syntax error: {e}"]) from None
    return parse_scenario(data, source, default_name)


def scenario_path(name_or_path: str | Path) -> Path:
    """``azure-partition`` -> ``scenarios/azure-partition.yaml``; paths are kept."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SCENARIOS_DIR / f"{name_or_path}.yaml"


def load_scenario(name_or_path: str | Path) -> Scenario:
    path = scenario_path(name_or_path)
    try:
        text = path.read_text()
    except OSError as e:
        known = ", ".join(list_scenarios()) or "none"
        raise ScenarioError(str(path), [f"cannot read: {e.strerror} (scenarios: {known})"]
                            ) from None
    return parse_scenario_text(text, str(path), path.stem)


def list_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml"))


def merge_overrides(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base``.

    Lists of named mappings (``additional-clickhouses``) can be addressed by name:
    ``{"additional-clickhouses": {"azure": {"connection": {"password": "x"}}}}``.
    ``null`` deletes a key.
    """
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        cur = out.get(key)
        if value is None:
            out.pop(key, None)
        elif isinstance(cur, dict) and isinstance(value, Mapping):
            out[key] = merge_overrides(cur, value)
        elif (isinstance(cur, list) and isinstance(value, Mapping)
              and all(isinstance(i, dict) and "name" in i for i in cur)):
            items = {i["name"]: i for i in cur}
            for name, sub in value.items():
                if name not in items:
                    raise ValueError(f"outlet_overrides.{key}: no item named {name!r} "
                                     f"(have: {', '.join(items)})")
                items[name].update(merge_overrides(items[name], sub))
            out[key] = list(items.values())
        else:
            out[key] = copy.deepcopy(value)
    return out
