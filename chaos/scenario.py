"""Chaos scenario files (``scenarios/*.yaml``): format, validation and time scaling.

A scenario describes the load, the outlet configuration, a timeline of faults and the
invariants checked once the pipeline is quiet. The format is documented in
``docs/chaos.md``; every key is declared once below with the config machinery of
``outlet/confspec`` (the same kinds, duration grammar, unknown-key hints and ``key.path:
problem`` errors as the outlet's config). :func:`load_scenario` parses and validates a
file and raises :class:`ScenarioError` listing every problem with its key path, e.g.
``timeline[2].action: unknown action 'kil_outlet' (known: add_toxic, ...)``.

Everything here is pure (no stack, no network): the runner (``chaos/runner.py``) plays
the validated :class:`Scenario`.
"""

from __future__ import annotations

import copy
import difflib
import operator
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import yaml

from outlet.config import BatchConfig
from outlet.confspec import (
    AnyMapping,
    Bool,
    Duration,
    Int,
    Invalid,
    Key,
    Kind,
    ListOf,
    Nested,
    Number,
    Problems,
    Section,
    Size,
    SpecError,
    Str,
    Where,
    load_yaml,
    parse,
    parse_mapping,
    section,
    setting,
    show,
)
from outlet.confspec import format_duration as format_duration  # the one grammar, re-exported
from outlet.confspec import parse_duration as parse_duration
from teststack.outlet_proc import destination_label
from teststack.paths import PROJECT_ROOT
from teststack.prometheus import alert_names
from teststack.toxiproxy import STREAMS, TOXIC_ATTRIBUTES

SCENARIOS_DIR = PROJECT_ROOT / "scenarios"

DESTINATIONS = ("local", "azure")
"""ClickHouse servers of the stack (the outlet's destinations)."""

SINGLE_DC, MULTI_DC = "single-dc", "multi-dc"
DATACENTERS = ("a", "b")
MULTI_DC_VIEWS = ("local-a", "local-b", "central", "central-a", "central-b")
"""What a multi-dc scenario checks: each datacenter's local server (against the flows
offered in that datacenter), ``central`` (against the union of both datacenters' flows)
and ``central-<dc>`` (the flows of one datacenter in central)."""
MULTI_DC_SERVERS = ("local-a", "local-b", "central")
MULTI_DC_DESTINATIONS = ("local", "central")  # of each multi-dc outlet: primary, additional

PROXIES = {
    "local": "clickhouse-local",
    "azure": "clickhouse-azure",
    "kafka": "kafka",
    "clickhouse-local": "clickhouse-local",
    "clickhouse-azure": "clickhouse-azure",
    **{f"{name}-{dc}": f"{prefix}{name}-{dc}" for dc in DATACENTERS
       for name, prefix in (("local", "clickhouse-"), ("central", "clickhouse-"), ("kafka", ""))},
    **{f"clickhouse-{name}-{dc}": f"clickhouse-{name}-{dc}" for dc in DATACENTERS
       for name in ("local", "central")},
}
"""Accepted proxy names -> Toxiproxy proxy name (multi-dc: ``central-a`` is datacenter a's
link to central, ``kafka-b`` datacenter b's outlet's link to its Kafka)."""
MULTI_DC_PROXIES = frozenset(v for v in PROXIES.values() if v[-2:] in ("-a", "-b"))

MAX_SCALED_BATCH = BatchConfig().maximum_batch_size  # the outlet's default (50,000)
SCALED_BATCH_SECONDS = 0.25  # at_rate(): batches of a quarter of a second of load
ROW_EXPECTATIONS = ("all", "all_minus_reported_loss", "given")
"""``given``: a destination added by the timeline stores exactly the flows the outlet
reports written there (what it was given while configured)."""
COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}

_SELECTOR = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{([^}]*)\})?\s*$")
_LABEL = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"\s*$')
_ASSERTION = re.compile(r"^(.*?)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")


class ScenarioError(SpecError):
    """A scenario file is invalid; ``problems`` lists ``path: message`` strings."""

    what = "scenario"

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(problems, source)
        self.problems = self.errors

    def __str__(self) -> str:
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid scenario {self.source}:\n{lines}"


# ---------------------------------------------------------------------------------------
# Kinds of the scenario format
# ---------------------------------------------------------------------------------------

_DURATION_WORDS = "expected e.g. 10s, 500ms, 1m30s"
DURATION = Duration(problem="bad duration {got}: " + _DURATION_WORDS)
POSITIVE = Duration(positive=True, problem="bad duration {got}: must be > 0, " + _DURATION_WORDS)
BOOL = Bool(strings=False, problem="expected true or false, got {got}")


def _one_of(choices: Mapping[str, Any] | tuple[str, ...], what: str) -> Str:
    names = tuple(choices)
    return Str(choices=names, problem=f"unknown {what} {{got}} (known: {', '.join(names)})")


# Destinations and views of either topology; each scenario's own are checked in context.
DESTINATION = _one_of((*DESTINATIONS, *MULTI_DC_VIEWS), "destination")
PROXY = _one_of(PROXIES, "proxy")
DATACENTER = _one_of(DATACENTERS, "datacenter")
MAX_PROCESSES = 6
MEMBER = Int(1, MAX_PROCESSES)
TOPOLOGY = _one_of((SINGLE_DC, MULTI_DC), "topology")


class _DurationText(Kind[str]):
    """A duration kept as written (it goes into the generated outlet config)."""

    type_doc = "duration"

    def convert(self, raw: object) -> str:
        DURATION.parse(raw, Where("", Problems()), 0.0)
        return str(raw)


class _Destinations(Kind[tuple[str, ...]]):
    type_doc = "list of destinations"

    def parse(self, raw: object, at: Where, default: tuple[str, ...]) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw or len(set(map(str, raw))) != len(raw):
            raise Invalid(f"expected a list of distinct destinations, got {show(raw)}")
        out = []
        for i, d in enumerate(raw):
            try:
                out.append(DESTINATION.parse(d, at.child(i), ""))
            except Invalid as e:
                at.child(i).report(str(e))
        return tuple(out) if len(out) == len(raw) else default


class _Window(Kind[tuple[float, float]]):
    """``[start, end]``: two durations, end after start."""

    type_doc = "[start, end]"

    def parse(self, raw: object, at: Where, default: tuple[float, float]
              ) -> tuple[float, float]:
        if not isinstance(raw, list | tuple) or len(raw) != 2:
            raise Invalid(f"expected [start, end], got {show(raw)}")
        try:
            a = DURATION.parse(raw[0], at.child(0), 0.0)
            b = DURATION.parse(raw[1], at.child(1), 0.0)
        except Invalid as e:
            raise Invalid(str(e)) from None
        if b <= a:
            raise Invalid(f"window end must be after its start, got {show(raw)}")
        return (a, b)


class _Rows(Kind["str | int | None"]):
    type_doc = "all, all_minus_reported_loss, given or a count"

    def convert(self, raw: object) -> str | int:
        if raw in ROW_EXPECTATIONS or (isinstance(raw, int) and not isinstance(raw, bool)
                                       and raw >= 0):
            return raw
        raise Invalid(f"expected one of {', '.join(ROW_EXPECTATIONS)} or a count, got {show(raw)}")


# ---------------------------------------------------------------------------------------
# Model: every key of a scenario file
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
        for key in ("outlet", "datacenter", "member"):  # whose outlet / Kafka
            if key in self.params:
                bits.append(f"{key} {self.params[key]}")
        if self.action == "set_rate":
            bits.append(f"{self.params.get('rate')}/s")
        if self.action in ("add_destination", "remove_destination"):
            bits.append(str(self.params.get("name")))
        if self.action in ("fill_disk", "free_disk"):
            bits.append(str(self.params.get("disk")))
        return " ".join(bits)


@dataclass(frozen=True)
class Load:
    __key_style__ = "snake"

    rate: float = setting(2000.0, Number(lo=1), doc="flows/s")
    duration: float = setting(1.0, POSITIVE, required=True, doc="how long the load runs")
    flows_per_record: int = setting(1, Int(1))
    seed: int = setting(1, Int(0), doc="the flow set is deterministic")

    __inputs__: ClassVar[dict[str, Key]] = {"unique": Key(BOOL, True)}

    @classmethod
    def __check__(cls, s: Section) -> None:
        if s.given("unique") and s.raw("unique") is not True:
            s.report("unique", "must be true: every flow is unique so that losses and "
                               "duplicates are detectable per flow")


@dataclass(frozen=True)
class OutletSettings:
    __key_style__ = "snake"

    destinations: tuple[str, ...] = setting(("local", "azure"), _Destinations(),
                                            doc="the first one is the primary")
    batch_size: int = setting(5000, Int(1))
    wait_time: str = setting("500ms", _DurationText())
    azure_max_retries: int = setting(3, Int(0),
                                     doc="max-retries of the additional destinations")
    processes: int = setting(1, Int(1, MAX_PROCESSES),
                             doc="outlet processes in one consumer group (single-dc); "
                                 "outlet actions name one with `member: 1..N`")
    orchestrator: bool = setting(
        False, BOOL, doc="the outlet runs from an orchestrator's URL (add_destination and "
                         "remove_destination change what the orchestrator serves)")
    config_refresh: str = setting("1s", _DurationText(),
                                  doc="the outlet's --config-refresh-interval (orchestrator)")
    spool_tmpfs: int | None = setting(
        None, Size(), default_doc="none: the spools live under the state directory",
        doc="the additional destinations' spools on a tmpfs of this size (root only), which "
            "fill_disk fills")


@dataclass(frozen=True)
class DestinationExpectation:
    __key_style__ = "snake"

    destination: str  # the mapping key
    rows: str | int | None = setting(None, _Rows())  # "all" | "all_minus_reported_loss" | int
    no_duplicates: bool = setting(False, BOOL)
    no_loss: bool = setting(False, BOOL)
    loss_equals_metric: bool = setting(False, BOOL)
    loss_bounded_by_metric: bool = setting(False, BOOL)
    min_loss: int | None = setting(None, Int(0))  # at least this many flows missing

    @classmethod
    def __check__(cls, s: Section) -> None:
        if s["no_loss"] and (s["rows"] == "all_minus_reported_loss" or s["min_loss"]):
            s.report("", "no_loss contradicts rows: all_minus_reported_loss / min_loss")


_NO_BASELINE = (-1.0, -1.0)
THROUGHPUT_REFERENCES = ("baseline", "offered")


@dataclass(frozen=True)
class ThroughputExpectation:
    __key_style__ = "snake"

    destination: str = setting("", DESTINATION, default_doc="the primary")
    window: tuple[float, float] = setting((0.0, 0.0), _Window(), required=True)
    baseline: tuple[float, float] = setting(
        _NO_BASELINE, _Window(), default_doc="from 3 s (or half the first fault time) to it")
    min_percent: float = setting(0.0, Number(lo=0, hi=1000), required=True)
    against: str = setting(
        "baseline", _one_of(THROUGHPUT_REFERENCES, "throughput reference"),
        doc="baseline: stored/offered in the window relative to the same share in the "
            "baseline; offered: stored/offered in the window itself (the rate the producer "
            "really offered)")
    path: str = ""


@dataclass(frozen=True)
class LagExpectation:
    """From ``after`` (timeline time) to the end of the load, the end-to-end backlog
    (flows produced and not yet stored on ``destination``) stays below ``max_seconds``
    of load."""

    __key_style__ = "snake"

    after: float = setting(-1.0, DURATION, default_doc="the last timeline action")
    max_seconds: float = setting(0.0, Number(lo=0), required=True)
    destination: str = setting("", DESTINATION, default_doc="the primary")


class _Assertion(Kind[MetricAssertion]):
    """``LHS OP RHS``: each side a number or ``name{label="value"}`` (names checked against
    the metrics the outlet exports)."""

    type_doc = "assertion"

    def parse(self, raw: object, at: Where, default: Any) -> MetricAssertion:
        if not isinstance(raw, str):
            raise Invalid(f"expected a string like 'name{{label=\"v\"}} > 0', got {show(raw)}")
        m = _ASSERTION.match(raw)
        if not m:
            raise Invalid(f"cannot parse assertion {raw!r} (expected LHS OP RHS with OP one of "
                          f"{', '.join(COMPARATORS)})")
        return MetricAssertion(raw, _operand(m.group(1)), m.group(2), _operand(m.group(3)))


def _operand(text: str) -> MetricSelector | float:
    try:
        return float(text)
    except ValueError:
        pass
    m = _SELECTOR.match(text)
    if not m:
        raise Invalid(f'cannot parse metric selector {text!r} (expected name{{label="value"}} '
                      "or a number)")
    labels: list[tuple[str, str]] = []
    if m.group(3) and m.group(3).strip():
        for part in m.group(3).split(","):
            lm = _LABEL.match(part)
            if not lm:
                raise Invalid(f'bad label matcher {part.strip()!r} (expected key="value")')
            labels.append((lm.group(1), lm.group(2)))
    name = resolve_metric_name(m.group(1), _known_metrics())
    if name is None:
        raise Invalid(f"unknown metric {m.group(1)!r} (not exported by the outlet; see "
                      "outlet/metrics.py)")
    for k, v in labels:  # the topology's own labels are checked in context (_Expect)
        if k == "destination" and v not in ("primary", *DESTINATIONS[1:], "central",
                                                     *_ADDED.get()):
            raise Invalid(f'unknown destination label {v!r} (the primary is "primary", '
                          f'additional ones by name: {", ".join(DESTINATIONS[1:])}, or '
                          'central in multi-dc scenarios)')
    return MetricSelector(name, tuple(labels))


#: Destinations the timeline adds (add_destination), while ``expect`` is parsed: they may
#: be expected and named in metric labels like the stack's destinations.
_ADDED: ContextVar[tuple[str, ...]] = ContextVar("added_destinations", default=())


class _Lags(Kind[tuple[LagExpectation, ...]]):
    """``lag``: one expectation, or a list of them (one per destination)."""

    type_doc = "mapping, or a list of them"

    def parse(self, raw: object, at: Where, default: Any) -> tuple[LagExpectation, ...]:
        items = raw if isinstance(raw, list) else [raw]
        return tuple(parse(LagExpectation, item, at.problems,
                           path=at.child(i).path if isinstance(raw, list) else at.path)
                     for i, item in enumerate(items))


@dataclass(frozen=True)
class RecoveryExpectation:
    """Multi-dc: each time a link on ``destination``'s path comes back (``enable_proxy``),
    flows are stored there again within ``max_seconds``; with ``max_live_lag``, the flows
    produced after the link returned never fall that many seconds of load behind while
    the spool replays (live traffic is not starved by the replay)."""

    __key_style__ = "snake"

    destination: str = setting("", DESTINATION, required=True)
    max_seconds: float = setting(0.0, Number(lo=0), required=True)
    max_live_lag: float | None = setting(None, Number(lo=0))


class _DestinationExpectations(Kind[tuple[DestinationExpectation, ...]]):
    type_doc = "mapping of destination -> expectations"

    def parse(self, raw: object, at: Where, default: Any) -> tuple[DestinationExpectation, ...]:
        if not isinstance(raw, dict):
            raise Invalid(f"expected a mapping, got {type(raw).__name__}")
        out = []
        for name, spec in raw.items():
            where = at.child(name)
            try:
                if name not in _ADDED.get():
                    DESTINATION.parse(name, where, "")
            except Invalid as e:
                where.report(str(e))
                continue
            out.append(parse(DestinationExpectation, spec, at.problems, path=where.path,
                             defaults=DestinationExpectation(str(name))))
        return tuple(out)


@dataclass(frozen=True)
class Expectations:
    __key_style__ = "snake"

    destinations: tuple[DestinationExpectation, ...] = setting((), _DestinationExpectations())
    throughput: tuple[ThroughputExpectation, ...] = setting(
        (), ListOf(Nested(ThroughputExpectation)))
    metrics: tuple[MetricAssertion, ...] = setting((), ListOf(_Assertion()))
    lags: tuple[LagExpectation, ...] = setting((), _Lags(), yaml="lag")
    clean_shutdown: bool = setting(True, BOOL, doc="the final SIGTERM must exit 0")
    quiesce_timeout: float = setting(120.0, POSITIVE)
    wait_for_spool: bool = setting(True, BOOL)
    recovery: tuple[RecoveryExpectation, ...] = setting(
        (), ListOf(Nested(RecoveryExpectation)), doc="multi-dc: after each link returns")

    @property
    def lag(self) -> LagExpectation | None:
        """The first lag expectation (most scenarios have one)."""
        return self.lags[0] if self.lags else None


# ---------------------------------------------------------------------------------------
# The timeline: actions and their parameters
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repeat:
    __key_style__ = "snake"

    count: int = setting(1, Int(1), required=True)
    every: float = setting(1.0, POSITIVE, required=True)


STREAM = Str(choices=STREAMS, problem="must be upstream or downstream, got {got}")
DESTINATION_NAME = Str(pattern=r"[a-z0-9_]{1,40}",
                       pattern_msg="expected a destination name ([a-z0-9_], at most 40)")
SERVER = _one_of(DESTINATIONS, "server")
IDENTIFIER = Str(pattern=r"[A-Za-z_][A-Za-z0-9_]*", pattern_msg="expected a database name")
TOXIC_TYPE = _one_of(TOXIC_ATTRIBUTES, "toxic type")
_NAME = Str(nonempty=True, problem="expected a non-empty string, got {got}")
DISKS = ("spool",)  # what fill_disk can fill: the spools' tmpfs (outlet.spool_tmpfs)
DISK = Str(choices=DISKS, problem="must be spool (the tmpfs of outlet.spool_tmpfs), got {got}")
_LEAVE = Size()

COMMON_ACTION_KEYS: dict[str, Key] = {
    "at": Key(DURATION, required=True, doc="seconds since the load started"),
    "action": Key(Str()),
    "label": Key(Str(problem="expected a string, got {got}"), doc="shown in the plot and report"),
    "repeat": Key(Nested(Repeat), doc="repeat the step (and its undo)"),
}


def _params(action: str, required: Mapping[str, Kind[Any]],
            optional: Mapping[str, Kind[Any]] | None = None) -> dict[str, Key]:
    keys = {k: Key(kind, required=f"required by action {action}") for k, kind in required.items()}
    return {**keys, **{k: Key(kind) for k, kind in (optional or {}).items()}}


ACTIONS: dict[str, dict[str, Key]] = {
    "add_toxic": _params("add_toxic", {"proxy": PROXY, "type": TOXIC_TYPE},
                         {"attributes": AnyMapping(), "stream": STREAM,
                          "toxicity": Number(lo=0, hi=1), "name": _NAME, "for": POSITIVE}),
    "remove_toxic": _params("remove_toxic", {"proxy": PROXY, "name": _NAME}),
    "disable_proxy": _params("disable_proxy", {"proxy": PROXY}, {"for": POSITIVE}),
    "enable_proxy": _params("enable_proxy", {"proxy": PROXY}),
    "kill_outlet": _params("kill_outlet", {}, {"for": POSITIVE, "outlet": DATACENTER,
                                              "member": MEMBER, "pending": BOOL}),
    "stop_outlet": _params("stop_outlet", {}, {"for": POSITIVE, "outlet": DATACENTER,
                                              "member": MEMBER}),
    "start_outlet": _params("start_outlet", {}, {"outlet": DATACENTER, "member": MEMBER}),
    "restart_outlet": _params("restart_outlet", {}, {"graceful": BOOL, "outlet": DATACENTER,
                                                     "member": MEMBER}),
    "pause_outlet": _params("pause_outlet", {}, {"for": POSITIVE, "member": MEMBER}),
    "resume_outlet": _params("resume_outlet", {}, {"member": MEMBER}),
    "restart_clickhouse": _params(
        "restart_clickhouse", {"target": _one_of((*DESTINATIONS, *MULTI_DC_SERVERS), "target")}),
    "restart_kafka": _params("restart_kafka", {}, {"datacenter": DATACENTER}),
    "set_rate": _params("set_rate", {"rate": Number(lo=0)}),
    "add_destination": _params("add_destination", {"name": DESTINATION_NAME, "server": SERVER},
                               {"database": IDENTIFIER}),
    "remove_destination": _params("remove_destination", {"name": DESTINATION_NAME}),
    "fill_disk": _params("fill_disk", {"disk": DISK}, {"leave": _LEAVE, "for": POSITIVE}),
    "free_disk": _params("free_disk", {"disk": DISK}),
}
"""action -> its parameters (besides ``COMMON_ACTION_KEYS``). Multi-dc: outlet actions
name the outlet (``outlet: a|b``), ``restart_kafka`` the datacenter. A group
(``outlet.processes`` > 1): outlet actions name the member (``member: 1..N``, default 1)."""


def _toxic_attributes(ttype: str, raw: object, at: Where) -> None:
    spec = {k: Key(Int(0), required=f"required by toxic {ttype}" if req else False)
            for k, req in TOXIC_ATTRIBUTES[ttype].items()}
    parse_mapping(spec, raw, at,
                  unknown=lambda k, known: f"unknown attribute for {ttype} (known: "
                                           f"{', '.join(known)})")


def _unknown_action(name: object) -> str:
    close = difflib.get_close_matches(str(name), list(ACTIONS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown action {name!r} ({hint}known: {', '.join(sorted(ACTIONS))})"


def _actions(raw: object, at: Where) -> list[Action]:
    """One timeline item as its actions: repeats and the undo of ``for:`` expanded."""
    if not isinstance(raw, dict):
        at.report(f"expected a mapping with 'at' and 'action', got {raw!r}")
        return []
    name = raw.get("action")
    if name is None:
        at.child("action").report("missing")
        return []
    if not isinstance(name, str) or name not in ACTIONS:
        at.child("action").report(_unknown_action(name))
        return []
    before = len(at.problems)
    values = parse_mapping({**COMMON_ACTION_KEYS, **ACTIONS[name]}, raw, at)
    params = {k: v for k, v in raw.items() if k not in COMMON_ACTION_KEYS}
    if name == "add_toxic" and "type" in values:
        _toxic_attributes(values["type"], raw.get("attributes"), at.child("attributes"))
    hold: float | None = values.get("for")
    params.pop("for", None)
    repeat: Repeat | None = values.get("repeat")
    if repeat is not None and hold is not None and hold >= repeat.every:
        at.child("for").report(
            f"must be shorter than repeat.every ({format_duration(repeat.every)})")
    if len(at.problems) > before or "at" not in values:
        return []
    if name == "add_toxic" and "name" not in params:
        params["name"] = f"{params['type']}_{params.get('stream', 'downstream')}"
    label = values.get("label") or ""
    base = Action(values["at"], name, params, label, at.path)
    base = replace(base, label=label or base.describe())
    count, every = (repeat.count, repeat.every) if repeat is not None else (1, 0.0)
    out: list[Action] = []
    for i in range(count):
        sfx = f"#{i + 1}" if count > 1 else ""
        start = base.at + i * every
        out.append(replace(base, at=start, path=at.path + sfx))
        if hold is not None:
            out.append(_undo(base, start + hold, at.path + sfx + "+for"))
    return out


def _undo(a: Action, at: float, path: str) -> Action:
    if a.action == "add_toxic":
        return Action(at, "remove_toxic", {"proxy": a.params["proxy"],
                                           "name": a.params["name"]}, a.label, path)
    if a.action == "disable_proxy":
        return Action(at, "enable_proxy", {"proxy": a.params["proxy"]}, a.label, path)
    if a.action == "fill_disk":
        return Action(at, "free_disk", {"disk": a.params["disk"]}, a.label, path)
    whose: dict[str, Any] = {k: a.params[k] for k in ("outlet", "member") if k in a.params}
    if a.action == "pause_outlet":
        return Action(at, "resume_outlet", whose, a.label, path)
    return Action(at, "start_outlet", whose, a.label, path)  # kill/stop_outlet


def _check_timeline(actions: list[Action], problems: Problems, processes: int = 1) -> None:
    """The outlets, proxies and toxics must be in a state each action can apply to. In a
    group (``processes`` > 1) members may stay down at the end (a crash not restarted:
    their partitions move), as long as one runs."""
    down: set[str] = set()  # outlets not running ("" single-dc, a datacenter, a member)
    paused: set[str] = set()
    toxics: dict[tuple[str, str], str] = {}
    configured: set[str] = set()
    for a in sorted(actions, key=lambda a: a.at):
        who = str(a.params.get("outlet", a.params.get("member", "")))
        if processes > 1 and not who:
            who = "1"
        if a.action == "add_destination":
            name = str(a.params["name"])
            if name in configured or name in ("primary", *DESTINATIONS):
                problems.add(a.path, f"destination {name!r} is already configured at "
                                     f"{format_duration(a.at)}")
            configured.add(name)
        elif a.action == "remove_destination":
            name = str(a.params["name"])
            if name not in configured:
                problems.add(a.path, f"remove_destination: no destination {name!r} added "
                                     f"before {format_duration(a.at)}")
            configured.discard(name)
        if a.action == "pause_outlet":
            if who in down or who in paused:
                problems.add(a.path, f"pause_outlet at {format_duration(a.at)}: the outlet is "
                                     "not running then")
            paused.add(who)
        elif a.action == "resume_outlet":
            if who not in paused:
                problems.add(a.path, f"resume_outlet at {format_duration(a.at)}: the outlet "
                                     "is not paused")
            paused.discard(who)
        elif a.action in ("kill_outlet", "stop_outlet", "restart_outlet"):
            if who in down or who in paused:
                problems.add(a.path, f"{a.action} at {format_duration(a.at)}: the outlet is "
                                     "not running then")
            if a.action != "restart_outlet":
                down.add(who)
        elif a.action == "start_outlet":
            if who not in down:
                problems.add(a.path, f"start_outlet at {format_duration(a.at)}: the outlet is "
                                     "already running")
            down.discard(who)
        elif a.action == "add_toxic":
            key = (a.proxy or "", str(a.params["name"]))
            if key in toxics:
                problems.add(a.path, f"toxic {key[1]!r} already present on {key[0]} "
                                     f"(added by {toxics[key]})")
            toxics[key] = a.path
        elif a.action == "remove_toxic":
            key = (a.proxy or "", str(a.params["name"]))
            if toxics.pop(key, None) is None:
                problems.add(a.path, f"remove_toxic: no toxic {key[1]!r} on {key[0]} at "
                                     f"{format_duration(a.at)}")
    if paused:
        problems.add("timeline", "an outlet is paused at the end of the timeline: add a "
                                 "resume_outlet step (or use 'for:')")
    if down and (processes == 1 or len(down) >= processes):
        problems.add("timeline", "the outlet is stopped at the end of the timeline: add a "
                                 "start_outlet step (or use 'for:')")


def _check_topology(a: Action, multi_dc: bool, problems: Problems) -> None:
    """Multi-dc: outlet actions name the outlet, restart_kafka the datacenter, and proxies
    and servers are the multi-dc ones; single-dc scenarios take neither."""
    key = "datacenter" if a.action == "restart_kafka" else "outlet"
    wants = a.action == "restart_kafka" or a.action.endswith("_outlet")
    proxy = PROXIES.get(str(a.params.get("proxy")))
    target = a.params.get("target")
    if not multi_dc:
        if key in a.params:
            problems.add(f"{a.path}.{key}", "only in multi-dc scenarios (topology: multi-dc)")
        if proxy in MULTI_DC_PROXIES:
            problems.add(f"{a.path}.proxy", f"proxy {a.params['proxy']!r} is a multi-dc proxy")
        if target is not None and target not in DESTINATIONS:
            problems.add(f"{a.path}.target", f"unknown target {target!r} (known: "
                                              f"{', '.join(DESTINATIONS)})")
        return
    if wants and key not in a.params:
        problems.add(f"{a.path}.{key}", f"required in multi-dc scenarios: one of "
                                        f"{', '.join(DATACENTERS)}")
    if proxy is not None and proxy not in MULTI_DC_PROXIES:
        known = sorted(k for k, v in PROXIES.items() if v in MULTI_DC_PROXIES)
        problems.add(f"{a.path}.proxy", f"not a multi-dc proxy: {a.params['proxy']!r} "
                                        f"(known: {', '.join(known)})")
    if target is not None and target not in MULTI_DC_SERVERS:
        problems.add(f"{a.path}.target", f"unknown target {target!r} (known: "
                                          f"{', '.join(MULTI_DC_SERVERS)})")


class _Timeline(Kind[tuple[Action, ...]]):
    type_doc = "list of actions"

    def parse(self, raw: object, at: Where, default: Any) -> tuple[Action, ...]:
        if not isinstance(raw, list):
            raise Invalid("expected a list of actions")
        actions = [a for i, item in enumerate(raw) for a in _actions(item, at.child(i))]
        dests = at.sibling("outlet").destinations
        multi_dc = at.sibling("topology") == MULTI_DC
        for a in actions:
            if a.action in ("add_destination", "remove_destination") and not at.sibling(
                    "outlet").orchestrator:
                at.problems.add(a.path, f"{a.action} needs outlet.orchestrator: true (the "
                                        "destination is added through the orchestrator)")
            if a.action in ("add_destination", "remove_destination") and multi_dc:
                at.problems.add(a.path, f"{a.action}: single-dc scenarios only")
            _check_topology(a, multi_dc, at.problems)
        for a in actions if not multi_dc else ():
            if a.proxy and a.proxy != "kafka" and a.proxy.removeprefix("clickhouse-") not in dests:
                at.problems.add(a.path, f"proxy {a.proxy} is not in front of a destination of "
                                        f"this run (outlet.destinations: {list(dests)})")
            if a.action == "restart_clickhouse" and a.params.get("target") not in dests:
                at.problems.add(a.path, f"target {a.params.get('target')!r} is not a "
                                        "destination of this run")
        processes = at.sibling("outlet").processes
        for a in actions:
            member = a.params.get("member")
            if member is not None and (multi_dc or member > processes):
                where = ", single-dc only" if multi_dc else ""
                at.problems.add(f"{a.path}.member",
                                f"no member {member} (outlet.processes: {processes}{where})")
            if a.action in ("pause_outlet", "resume_outlet") and multi_dc:
                at.problems.add(a.path, f"{a.action}: single-dc only")
        _check_timeline(actions, at.problems, processes)
        return tuple(sorted(actions, key=lambda a: a.at))


class _Expect(Kind[Expectations]):
    """``expect``: checked against the run (its destinations, load and timeline); fills the
    defaults that depend on them (the primary, the baseline before the first fault)."""

    type_doc = "mapping"

    def parse(self, raw: object, at: Where, default: Expectations) -> Expectations:
        return self._in_context(self._parse(raw, at), at)

    def missing(self, default: Expectations, at: Where) -> Expectations:
        return self._in_context(self._parse(None, at), at)

    def _parse(self, raw: object, at: Where) -> Expectations:
        token = _ADDED.set(tuple(added_destinations(at.sibling("timeline"))))
        try:
            return parse(Expectations, raw, at.problems, path=at.path)
        finally:
            _ADDED.reset(token)

    def _in_context(self, exp: Expectations, at: Where) -> Expectations:
        multi_dc = at.sibling("topology") == MULTI_DC
        dests = MULTI_DC_VIEWS if multi_dc else at.sibling("outlet").destinations
        load: Load = at.sibling("load")
        actions: tuple[Action, ...] = at.sibling("timeline")
        added = tuple(added_destinations(actions))
        primary = dests[0]

        def own(dest: str, where: Where) -> bool:
            if dest in dests:
                return True
            where.report(f"unknown destination {dest!r} (known: {', '.join(dests)})"
                         if dest not in DESTINATIONS or multi_dc else
                         f"not a destination of this run (outlet.destinations: {list(dests)})")
            return False

        kept: list[DestinationExpectation] = []
        for e in exp.destinations:
            where = at.child("destinations").child(e.destination)
            if e.destination not in added and not own(e.destination, where):
                continue
            if e.rows == "given" and e.destination not in added:
                where.child("rows").report("given is for a destination the timeline adds")
            if e.destination in added and (e.rows not in (None, "given") or e.no_loss):
                where.child("rows").report("a destination the timeline adds receives only "
                                           "the batches sealed while configured: expect "
                                           "rows: given")
            is_primary = e.destination.startswith("local-") if multi_dc else (
                e.destination == primary)
            if is_primary and (e.rows == "all_minus_reported_loss" or e.loss_equals_metric):
                where.report("the primary never gives up on a batch: expect rows: all")
            kept.append(e)
        for i, ma in enumerate(exp.metrics):
            _check_labels(ma, multi_dc, added, at.child("metrics").child(i))
        for i, r in enumerate(exp.recovery):
            where = at.child("recovery").child(i)
            if not multi_dc:
                where.report("checked in multi-dc scenarios only")
            elif own(r.destination, where.child("destination")) and not any(
                    a.action == "enable_proxy" for a in actions):
                where.report("no enable_proxy in the timeline: nothing recovers")
        first_fault = min((a.at for a in actions), default=load.duration)
        throughput = []
        for i, t in enumerate(exp.throughput):
            where = at.child("throughput").child(i)
            if t.baseline == _NO_BASELINE:
                t = replace(t, baseline=(min(3.0, first_fault / 2), first_fault))
            t = replace(t, destination=t.destination or primary, path=where.path)
            if t.window[1] > load.duration:
                where.child("window").report(
                    f"ends after the load ({format_duration(load.duration)})")
            if t.against == "baseline" and t.baseline[1] - t.baseline[0] < 2:
                where.child("baseline").report("must span at least 2 s (first fault too early? "
                                               "give an explicit baseline: [start, end])")
            own(t.destination, where.child("destination"))
            throughput.append(t)
        lags = []
        for i, lag in enumerate(exp.lags):
            where = at.child("lag").child(i) if len(exp.lags) > 1 else at.child("lag")
            after = lag.after if lag.after >= 0 else max((a.at for a in actions), default=0.0)
            if after >= load.duration:
                where.child("after").report(
                    f"must be before the end of the load ({format_duration(load.duration)})")
            lag = replace(lag, after=after, destination=lag.destination or primary)
            own(lag.destination, where.child("destination"))
            lags.append(lag)
        if not kept and not throughput and not exp.metrics and not lags:
            at.report("no invariant to check: a scenario must expect something")
        return replace(exp, destinations=tuple(kept), throughput=tuple(throughput),
                       lags=tuple(lags))


def _check_labels(ma: MetricAssertion, multi_dc: bool, added: tuple[str, ...], at: Where
                  ) -> None:
    """The ``destination`` and ``dc`` labels of a metric assertion exist in the topology
    (``added``: the destinations the timeline adds)."""
    additional = ("central",) if multi_dc else (*DESTINATIONS[1:], *added)
    for side in (ma.lhs, ma.rhs):
        for k, v in side.labels if isinstance(side, MetricSelector) else ():
            if k == "destination" and v not in ("primary", *additional):
                at.report(f'unknown destination label {v!r} (the primary is "primary", '
                          f'additional ones by name: {", ".join(additional)})')
            if k == "dc" and (not multi_dc or v not in DATACENTERS):
                at.report(f"label dc={v!r}: multi-dc scenarios only, one of "
                          f"{', '.join(DATACENTERS)} (the outlet of that datacenter)")


ALERT = _one_of(tuple(alert_names()), "alert")  # deploy/prometheus/outlet-rules.yml


class _Labels(Kind[tuple[tuple[str, str], ...]]):
    type_doc = "mapping of label -> value"

    def convert(self, raw: object) -> tuple[tuple[str, str], ...]:
        if not isinstance(raw, dict):
            raise Invalid(f"must be a mapping, got {show(raw)}")
        return tuple(sorted((str(k), str(v)) for k, v in raw.items()))


@dataclass(frozen=True)
class AlertExpectation:
    """``alert`` (with at least ``labels``) fires at most ``within`` after the first fault
    started and, with ``resolves``, is resolved before the run ends (chaos/alerts.py)."""

    __key_style__ = "snake"

    alert: str = setting("", ALERT, required=True)
    labels: tuple[tuple[str, str], ...] = setting((), _Labels(), doc="at least these labels")
    within: float = setting(120.0, POSITIVE,
                            doc="after the first timeline action starts (not time-scaled)")
    resolves: bool = setting(True, BOOL, doc="resolved again before the end of the run")


@dataclass(frozen=True)
class AlertsExpectation:
    """The ``alerts:`` section; ``others: forbid`` fails on any alert neither expected to
    fire nor ``allowed`` (may fire, not checked)."""

    __key_style__ = "snake"

    fire: tuple[AlertExpectation, ...] = setting((), ListOf(Nested(AlertExpectation)))
    others: str = setting("forbid", Str(choices=("forbid", "allow"),
                                        problem="expected forbid or allow, got {got}"))
    allowed: tuple[str, ...] = setting((), ListOf(ALERT))


class _Alerts(Kind["AlertsExpectation | None"]):
    """``alerts``: an alert can only be expected after a fault (a timeline action)."""

    type_doc = "mapping"

    def parse(self, raw: object, at: Where, default: AlertsExpectation | None
              ) -> AlertsExpectation:
        exp = parse(AlertsExpectation, raw, at.problems, path=at.path)
        if exp.fire and not at.sibling("timeline"):
            at.child("fire").report("an alert can only be expected after a fault: the "
                                    "timeline is empty")
        return exp


class _Text(Kind[str]):
    type_doc = "text"

    def convert(self, raw: object) -> str:
        return str(raw).strip()


@dataclass(frozen=True)
class Scenario:
    """A validated scenario (every key of the file is a field here, or of its sections)."""

    __key_style__ = "snake"

    name: str = setting("scenario", Str(pattern=r"[a-z0-9][a-z0-9_.-]*",
                                        pattern_msg="expected a lowercase slug like "
                                                    "azure-partition"),
                        default_doc="the file name")
    description: str = setting("", _Text(), doc="free text, copied into the report")
    topology: str = setting(SINGLE_DC, TOPOLOGY,
                            doc="multi-dc: two datacenters and a central server")
    load: Load = section(Load)
    outlet: OutletSettings = section(OutletSettings, doc="the generated outlet config")
    outlet_overrides: dict[str, Any] = setting(
        {}, AnyMapping(), doc="deep-merged into the outlet config")
    timeline: tuple[Action, ...] = setting((), _Timeline())
    expect: Expectations = setting(Expectations(), _Expect())
    alerts: AlertsExpectation | None = setting(
        None, _Alerts(), default_doc="none: alerts are recorded (with Prometheus), not checked")
    source: str = ""
    time_scale: float = 1.0
    rate_origin: dict[str, Any] | None = None  # at_rate(): where the load rate came from

    @property
    def end(self) -> float:
        """Seconds until the load and the timeline are both over."""
        last = max((a.at for a in self.timeline), default=0.0)
        return max(self.load.duration, last)

    @property
    def views(self) -> tuple[str, ...]:
        """What is counted and checked: the destinations, or multi-dc's views."""
        return MULTI_DC_VIEWS if self.topology == MULTI_DC else self.outlet.destinations

    def metric_destination(self, dest: str) -> str:
        """Label the outlet uses for a stack destination (the primary is ``primary``)."""
        if self.topology == MULTI_DC:
            return "primary" if dest.startswith("local") else "central"
        return destination_label(dest, self.outlet.destinations)

    def view_datacenters(self, view: str) -> tuple[str, ...]:
        """Multi-dc: whose flows a view holds (``central``: every datacenter's)."""
        return DATACENTERS if view == "central" else (view.rsplit("-", 1)[1],)

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
        lags = tuple(replace(lg, after=lg.after * factor) for lg in exp.lags)
        return replace(
            self,
            load=replace(self.load, duration=self.load.duration * factor),
            timeline=timeline,
            expect=replace(exp, throughput=throughput, lags=lags),
            time_scale=self.time_scale * factor,
        )

    def at_rate(self, rate: float, origin: dict[str, Any] | None = None,
                batch_size: int | None = None) -> Scenario:
        """The scenario with its load at ``rate`` flows/s: ``set_rate`` steps keep their
        proportion to the load, and ``outlet.batch_size`` grows to ``batch_size`` (a
        calibrated run: the batches its capacity was measured with, chaos/rates.py) or
        by default to a quarter of a second of load, at most the outlet's default
        maximum-batch-size: a faster run is not an insert storm of small batches, and
        the row counts sampled once a second still move in steps small enough for a
        throughput judged within 5% over a few seconds."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        factor = rate / self.load.rate
        timeline = tuple(
            replace(a, params={**a.params, "rate": float(a.params["rate"]) * factor})
            if a.action == "set_rate" else a for a in self.timeline)
        if batch_size is None:
            batch_size = min(MAX_SCALED_BATCH, round(rate * SCALED_BATCH_SECONDS))
        batch = max(self.outlet.batch_size, batch_size)
        origin = {"file_rate": self.load.rate, **(origin or {})}
        exp = self.expect
        if factor > 1 and self.stops_the_primary() and exp.lags:
            # D seconds without consumption leave D seconds of load behind, which the
            # outlet drains at (capacity - rate): at half its capacity it takes about as
            # long again (twice with dual-write's second server on the same cores). The
            # bound written for the file's rate does not hold; the quiet check (every
            # flow stored, offsets committed within quiesce_timeout) still does.
            origin["lag_not_checked"] = [
                f"{lg.destination or 'primary'}: <= {lg.max_seconds:g} s after "
                f"{format_duration(lg.after)}" for lg in exp.lags]
            exp = replace(exp, lags=())
        return replace(self, load=replace(self.load, rate=float(rate)), timeline=timeline,
                       outlet=replace(self.outlet, batch_size=batch), expect=exp,
                       rate_origin=origin)

    def stops_the_primary(self) -> bool:
        """Whether a timeline action stops the primary's consumption for a while (the
        outlet down, its Kafka or its primary ClickHouse cut or restarted)."""
        primary = self.outlet.destinations[0]
        for a in self.timeline:
            if a.action in ("kill_outlet", "stop_outlet", "restart_outlet", "restart_kafka"):
                return True
            if a.action == "restart_clickhouse" and a.params.get("target") == primary:
                return True
            if a.action in ("disable_proxy", "add_toxic") and a.proxy in (
                    "kafka", PROXIES[primary]):
                return True
        return False

    def fault_windows(self) -> list[tuple[float, float | None, str]]:
        """(start, end or None when instantaneous/unhealed, label) of each planned fault."""
        return planned_windows(self.timeline)


def _whose(a: Action) -> str:
    """The outlet an outlet action is about ("" for the only one)."""
    return str(a.params.get("outlet", a.params.get("member", "")))


def added_destinations(timeline: tuple[Action, ...] | list[Action]) -> list[str]:
    """Names of the destinations the timeline adds (add_destination), in order."""
    return [str(a.params["name"]) for a in timeline if a.action == "add_destination"]


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
        elif a.action == "add_destination":
            open_[("destination", str(a.params.get("name")))] = (a.at, a.label)
        elif a.action == "remove_destination":
            start = open_.pop(("destination", str(a.params.get("name"))), None)
            if start:
                out.append((start[0], a.at, start[1]))
        elif a.action == "fill_disk":
            open_[("disk", str(a.params.get("disk")))] = (a.at, a.label)
        elif a.action == "free_disk":
            start = open_.pop(("disk", str(a.params.get("disk"))), None)
            if start:
                out.append((start[0], a.at, start[1]))
        elif a.action in ("kill_outlet", "stop_outlet", "pause_outlet"):
            open_[("outlet", _whose(a))] = (a.at, a.label)
        elif a.action in ("start_outlet", "resume_outlet"):
            start = open_.pop(("outlet", _whose(a)), None)
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


_KNOWN: list[set[str] | None] = []


def _known_metrics() -> set[str] | None:
    if not _KNOWN:
        _KNOWN.append(known_metric_names())
    return _KNOWN[0]


def resolve_metric_name(name: str, known: set[str] | None) -> str | None:
    """Exact name, or with the ``outlet_`` / ``outlet_destination_`` prefix."""
    candidates = [name, f"outlet_{name}", f"outlet_destination_{name}"]
    if known is None:
        return name
    for c in candidates:
        if c in known:
            return c
    return None


def parse_scenario(data: Any, source: str = "<string>", default_name: str = "scenario"
                   ) -> Scenario:
    """Validate an already-loaded YAML document."""
    if not isinstance(data, dict):
        raise ScenarioError(source, [f"expected a mapping at the top level, got "
                                     f"{type(data).__name__}"])
    problems = Problems()
    sc = parse(Scenario, data, problems, defaults=Scenario(name=default_name, source=source))
    if sc.topology == MULTI_DC:
        if "destinations" in (data.get("outlet") or {}):
            problems.add("outlet.destinations", "multi-dc outlets always write to their local "
                                                "server (primary) and to central")
        sc = replace(sc, outlet=replace(sc.outlet, destinations=MULTI_DC_DESTINATIONS))
    for a in sc.timeline:
        explicit = "+for" not in a.path  # not the undo of a fill_disk's `for:`
        if a.action in ("fill_disk", "free_disk") and explicit and sc.outlet.spool_tmpfs is None:
            problems.add(f"{a.path}.disk", "the spool disk is a tmpfs only with "
                                           "outlet.spool_tmpfs (e.g. 4MiB)")
    if sc.outlet.spool_tmpfs is not None and sc.topology == MULTI_DC:
        problems.add("outlet.spool_tmpfs", "single-dc scenarios only")
    if problems:
        raise ScenarioError(source, problems.errors)
    return sc


def parse_scenario_text(text: str, source: str = "<string>", default_name: str = "scenario"
                        ) -> Scenario:
    try:
        data, duplicates = load_yaml(text)
    except yaml.YAMLError as e:
        raise ScenarioError(source, [f"YAML syntax error: {e}"]) from None
    if duplicates:
        raise ScenarioError(source, duplicates)
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
