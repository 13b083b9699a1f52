"""Declarative config specs: each key is declared once; parsing, errors, hints and dumps follow.

A *spec* is a frozen dataclass whose fields are declared with :func:`setting` (one value)
or :func:`section` (a nested spec). From these declarations alone this module derives:

- the allowed keys of every mapping, with did-you-mean hints for unknown ones;
- parsing, every problem collected as ``key.path: problem`` in one :class:`Problems`;
- the normalized dump (durations and sizes readable, secrets as ``******``);
- the key reference of the docs (:func:`describe`).

Used by the outlet's config (``outlet/config.py``), the chaos scenarios and the load
profiles; meant for any component that reads YAML::

    @dataclass(frozen=True)
    class HTTPConfig:
        listen: str = setting("127.0.0.1:8080", HostPort(), doc="Where /metrics listens.")
        timeout: float = setting(5.0, Duration(positive=True), doc="Request timeout.")

    cfg = parse(HTTPConfig, yaml.safe_load(text))      # raises SpecError listing every problem
    print(dump(cfg))                                    # {'listen': ..., 'timeout': '5s'}

Keys are kebab-case by default (``max_retries`` -> ``max-retries``); a spec sets
``__key_style__ = "snake"`` to keep Python names. ``setting(yaml="http.listen")`` places a
field under a sub-mapping. A spec may also define ``__hints__`` (``{key path: hint}`` shown
for an unknown key), ``__inputs__`` (``{key: Key}``: accepted, handed to the check, never
stored or dumped, e.g. an alias) and a classmethod ``__check__(cls, s: Section)`` for
rules across fields.

Values are checked by *kinds*: :class:`Str`, :class:`Int`, :class:`Number`,
:class:`Bool`, :class:`Duration`, :class:`Size`, :class:`SecretStr`, :class:`StrList`,
:class:`HostPort`, :class:`File`, :class:`Nested`. A custom kind subclasses :class:`Kind`
and raises :class:`Invalid` with the problem; :meth:`Where.sibling` reads another field of
the same mapping (parsed on demand), :meth:`Where.report` records a problem and goes on.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import yaml

__all__ = [
    "REDACTED",
    "Bool",
    "Duration",
    "File",
    "HostPort",
    "Int",
    "Invalid",
    "Key",
    "KeyDoc",
    "Kind",
    "Nested",
    "Number",
    "Problems",
    "Secret",
    "SecretStr",
    "Section",
    "Size",
    "SpecError",
    "Str",
    "StrList",
    "Where",
    "describe",
    "dump",
    "expand_env",
    "format_duration",
    "format_size",
    "host_port_problem",
    "join_path",
    "load_yaml",
    "parse",
    "parse_duration",
    "parse_mapping",
    "parse_size",
    "section",
    "setting",
    "show",
    "unknown_key_message",
]

T = TypeVar("T")
S = TypeVar("S")
REDACTED = "******"
_META = "outlet.confspec"


# --------------------------------------------------------------------------------------
# Problems, locations, errors
# --------------------------------------------------------------------------------------


class Invalid(ValueError):
    """Raised by a kind: the value cannot be used; the message is the problem."""


class SpecError(ValueError):
    """One or more problems in a document; ``errors`` holds one ``path: problem`` each."""

    what = "document"

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors: list[str] = list(errors)
        self.source = source
        super().__init__(self.errors)

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        n = len(self.errors)
        head = f"invalid {self.what}{where} ({n} error{'s' if n != 1 else ''}):"
        return "\n".join([head, *(f"  - {e}" for e in self.errors)])


class Problems:
    """Every problem found so far, in order, as ``path: problem`` lines."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    def __len__(self) -> int:
        return len(self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join_path(path: str, key: object) -> str:
    """Key path notation: ``a.b``, ``a[0]`` for list items and int keys, ``a["x/y"]``."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    if isinstance(key, str) and _SIMPLE_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    text = '"' + str(key).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}[{text}]"


def _join_dotted(path: str, dotted: str) -> str:
    for part in dotted.split("."):
        path = join_path(path, part)
    return path


def show(v: object) -> str:
    """A value as it appears in a problem: its repr, cut to 80 characters."""
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Where:
    """Where a value sits (its key path) and where its problems go."""

    path: str
    problems: Problems
    _section: _SectionParse | None = None

    def report(self, message: str) -> None:
        """Record a problem at this place and go on (the caller picks a fallback)."""
        self.problems.add(self.path, message)

    def child(self, key: object) -> Where:
        """The place of an item (``key`` an index or a mapping key) below this one."""
        return Where(join_path(self.path, key), self.problems)

    def sibling(self, name: str) -> Any:
        """Parsed value of another field (Python name) of the same mapping."""
        if self._section is None:
            raise LookupError(f"{self.path}: no enclosing section")
        return self._section.get(name)

    def sibling_key(self, name: str) -> str:
        """The YAML key of a sibling field, for messages."""
        if self._section is None:
            raise LookupError(f"{self.path}: no enclosing section")
        return self._section.spec.by_name[name].yaml


# --------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------


class Kind(Generic[T]):
    """How one YAML value is checked, converted, dumped and documented.

    Subclasses implement :meth:`convert` (raise :class:`Invalid` with the problem) or, when
    they need the location (item paths, siblings) or the default, :meth:`parse`.
    ``problem`` replaces the message of an invalid value (``{got}`` is the value shown).
    """

    type_doc = "value"

    def __init__(self, *, problem: str | None = None) -> None:
        self.problem = problem

    def convert(self, raw: object) -> T:
        raise NotImplementedError

    def parse(self, raw: object, at: Where, default: T) -> T:
        """``raw`` is never None (null means absent: :meth:`missing`)."""
        try:
            return self.convert(raw)
        except Invalid as e:
            if self.problem is None:
                raise
            raise Invalid(self.problem.format(got=show(raw))) from e

    def missing(self, default: T, at: Where) -> T:
        """The value when the key is absent, null or unusable (then already reported)."""
        return default

    def dump(self, value: T) -> Any:
        return value


class Str(Kind[str]):
    def __init__(self, *, nonempty: bool = False, choices: Sequence[str] | None = None,
                 normalize: Callable[[str], str] | None = None,
                 pattern: str | None = None, pattern_msg: str = "",
                 problem: str | None = None) -> None:
        super().__init__(problem=problem)
        self.nonempty = nonempty
        self.choices = tuple(choices) if choices is not None else None
        self.normalize = normalize
        self.pattern = re.compile(pattern) if pattern else None
        self.pattern_msg = pattern_msg or f"must match {pattern}"
        if self.choices is not None:
            self.type_doc = ", ".join(f"`{c}`" if c else '`""`' for c in self.choices)
        elif self.pattern is not None:
            self.type_doc = f"`{pattern}`"
        else:
            self.type_doc = "string"

    def convert(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise Invalid(f"must be a string, got {show(raw)}")
        s = self.normalize(raw) if self.normalize else raw
        if self.choices is not None and s not in self.choices:
            opts = ", ".join(repr(c) for c in self.choices)
            raise Invalid(f"must be one of {opts}, got {show(raw)}")
        if self.nonempty and not s.strip():
            raise Invalid("must not be empty")
        if self.pattern is not None and not self.pattern.fullmatch(s):
            raise Invalid(f"{self.pattern_msg}, got {show(raw)}")
        return s


class Secret:
    """A string that never shows itself: ``str``/``repr`` give ``******`` (``''`` if empty)."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """The actual value; use it only where it is sent to the server."""
        return self._value

    def __str__(self) -> str:
        return REDACTED if self._value else ""

    def __repr__(self) -> str:
        return repr(str(self))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


class SecretStr(Kind[Secret]):
    """A password: never echoed in problems, dumped as ``******``."""

    type_doc = "secret string"

    def convert(self, raw: object) -> Secret:
        if not isinstance(raw, str):
            raise Invalid("must be a string (quote it in YAML)")  # never echo the value
        return Secret(raw)

    def dump(self, value: Secret) -> str:
        return REDACTED if value else ""


_INT = re.compile(r"[+-]?\d+")


class Int(Kind[int]):
    """An integer in ``[lo, hi]``; a string such as ``"3"`` (what ``${VAR}`` gives) too."""

    def __init__(self, lo: int = 0, hi: int | None = None, *, problem: str | None = None,
                 hi_doc: str | None = None) -> None:
        super().__init__(problem=problem)
        self.lo, self.hi = lo, hi
        self.type_doc = f"int >= {lo}" if hi is None else f"int {lo}..{hi_doc or f'{hi:,}'}"

    def convert(self, raw: object) -> int:
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and _INT.fullmatch(raw.strip()):
            value = int(raw.strip())
        if value is None or value < self.lo or (self.hi is not None and value > self.hi):
            bound = f">= {self.lo}" if self.hi is None else f"between {self.lo} and {self.hi}"
            raise Invalid(f"must be an integer {bound}, got {show(raw)}")
        return value


class Number(Kind[float]):
    """A YAML number (int or float) in ``[lo, hi]``, as a float."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *,
                 problem: str | None = None) -> None:
        super().__init__(problem=problem)
        self.lo, self.hi = lo, hi
        bounds = [f">= {lo:g}"] if lo is not None else []
        bounds += [f"<= {hi:g}"] if hi is not None else []
        self.type_doc = " ".join(["number", *bounds])

    def convert(self, raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise Invalid(f"must be a number, got {show(raw)}")
        if self.lo is not None and raw < self.lo:
            raise Invalid(f"must be >= {self.lo:g}, got {show(raw)}")
        if self.hi is not None and raw > self.hi:
            raise Invalid(f"must be <= {self.hi:g}, got {show(raw)}")
        return float(raw)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class Bool(Kind[bool]):
    """A YAML boolean; with ``strings`` also ``"true"``/``"no"``/... (what ``${VAR}`` gives)."""

    type_doc = "bool"

    def __init__(self, *, strings: bool = True, problem: str | None = None) -> None:
        super().__init__(problem=problem)
        self.strings = strings

    def convert(self, raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        if self.strings and isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise Invalid(f"must be true or false, got {show(raw)}")


class Duration(Kind[float]):
    """A duration (``500ms``, ``1m30s`` or seconds) in seconds; dumped as ``1m30s``.

    ``at_least``: the Python name of a sibling duration this one must not be shorter than.
    """

    def __init__(self, *, positive: bool = False, at_least: str | None = None,
                 problem: str | None = None) -> None:
        super().__init__(problem=problem)
        self.positive = positive
        self.at_least = at_least
        self.type_doc = "duration > 0" if positive else "duration >= 0"

    def convert(self, raw: object) -> float:
        try:
            d = parse_duration(raw)
        except ValueError:
            d = -1.0
        if d < 0 or (self.positive and d == 0):
            bound = "> 0" if self.positive else ">= 0"
            raise Invalid(f"must be a duration {bound} (e.g. 500ms, 5s, 1m30s), got {show(raw)}")
        return d

    def parse(self, raw: object, at: Where, default: float) -> float:
        return self._floor(super().parse(raw, at, default), at)

    def missing(self, default: float, at: Where) -> float:
        return self._floor(default, at)  # the default must be consistent too

    def _floor(self, value: float, at: Where) -> float:
        if self.at_least is not None:
            floor = at.sibling(self.at_least)
            if value < floor:
                at.report(f"must be >= {at.sibling_key(self.at_least)} "
                          f"({format_duration(floor)}), got {format_duration(value)}")
        return value

    def dump(self, value: float) -> str:
        return format_duration(value)


class Size(Kind[int]):
    """A size > 0 (``512MiB``, ``1GiB``, ``100MB`` or bytes); dumped as ``1GiB``."""

    type_doc = "size > 0"

    def convert(self, raw: object) -> int:
        try:
            n = parse_size(raw)
        except ValueError:
            n = 0
        if n <= 0:
            raise Invalid(f"must be a size > 0 (e.g. 512MiB, 1GiB), got {show(raw)}")
        return n

    def dump(self, value: int) -> str | int:
        return format_size(value)


class File(Kind["str | None"]):
    """A path to an existing file (relative to the working directory); ``""`` = none."""

    type_doc = "path"

    def convert(self, raw: object) -> str | None:
        if not isinstance(raw, str):
            raise Invalid(f"must be a string, got {show(raw)}")
        if not raw:
            return None
        if not os.path.isfile(raw):
            raise Invalid(f"file not found: {show(raw)}")
        return raw

    def dump(self, value: str | None) -> str:
        return value or ""


def host_port_problem(s: str, *, allow_empty_host: bool = False,
                      allow_port_zero: bool = False) -> str:
    """Check ``host:port`` (``[v6]:port`` for IPv6); returns the problem or ``''``."""
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]\s]*):(\d+)", s)
    if m is None:
        return "must be host:port ([addr]:port for IPv6)"
    host, port = m.group(1), int(m.group(2))
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "has an invalid IPv6 address in brackets"
    elif not host and not allow_empty_host:
        return "has an empty host"
    lo = 0 if allow_port_zero else 1
    if not lo <= port <= 65535:
        return f"has port {port} out of range {lo}..65535"
    return ""


class HostPort(Kind[str]):
    type_doc = "`host:port`"

    def __init__(self, *, allow_empty_host: bool = False, allow_port_zero: bool = False) -> None:
        super().__init__()
        self.allow_empty_host = allow_empty_host
        self.allow_port_zero = allow_port_zero

    def convert(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise Invalid(f"must be a string, got {show(raw)}")
        problem = host_port_problem(raw, allow_empty_host=self.allow_empty_host,
                                    allow_port_zero=self.allow_port_zero)
        if problem:
            raise Invalid(f"{problem}, got {show(raw)}")
        return raw


class StrList(Kind[tuple[str, ...]]):
    """A list of non-empty strings, or one comma-separated string (handy with ``${VAR}``).

    Each item may be checked by ``item``; bad items are reported at their own path
    (``brokers[1]``) and left out; when none is left the default stays.
    """

    def __init__(self, item: Kind[str] | None = None, *, type_doc: str = "list of strings"
                 ) -> None:
        super().__init__()
        self.item = item
        self.type_doc = type_doc

    def items(self, raw: object, at: Where) -> list[tuple[Where, str]]:
        """The items as (place, stripped string); bad ones reported and left out."""
        values: list[object]
        if isinstance(raw, str):
            values = [s.strip() for s in raw.split(",") if s.strip()]
        elif isinstance(raw, list):
            values = list(raw)
        else:
            raise Invalid(f"must be a list of strings, got {show(raw)}")
        if not values:
            raise Invalid("must not be empty")
        out: list[tuple[Where, str]] = []
        for i, item in enumerate(values):
            where = at.child(i)
            if not isinstance(item, str) or not item.strip():
                where.report(f"must be a non-empty string, got {show(item)}")
            else:
                out.append((where, item.strip()))
        return out

    def parse(self, raw: object, at: Where, default: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for where, item in self.items(raw, at):
            if self.item is None:
                out.append(item)
                continue
            try:
                out.append(self.item.parse(item, where, item))
            except Invalid as e:
                where.report(str(e))
        return tuple(out) or default

    def dump(self, value: tuple[str, ...]) -> list[str]:
        return list(value)


# --------------------------------------------------------------------------------------
# Keys and specs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key: its kind, default, documentation and whether it must be given.

    ``required`` True reports ``is required`` when absent; a string is the problem text.
    ``default_doc`` is the docs' default when the literal default would mislead.
    """

    kind: Kind[Any]
    default: Any = None
    doc: str = ""
    required: bool | str = False
    yaml: str | None = None
    default_doc: str | None = None
    type_doc: str | None = None
    after: str | None = None  # an ``__inputs__`` key: listed after this field (else last)

    @property
    def type_text(self) -> str:
        return self.type_doc if self.type_doc is not None else self.kind.type_doc


def setting(default: Any, kind: Kind[Any], *, yaml: str | None = None, doc: str = "",
            required: bool | str = False, default_doc: str | None = None,
            type_doc: str | None = None) -> Any:
    """A dataclass field that is a config key (its YAML name derives from the field's).

    A mutable default (a dict, a mapping proxy) is copied for each instance.
    """
    key = Key(kind, default, doc, required, yaml, default_doc, type_doc)
    if getattr(type(default), "__hash__", None) is None:
        return field(default_factory=lambda: type(default)(default), metadata={_META: key})
    return field(default=default, metadata={_META: key})


class Nested(Kind[Any]):
    """A nested spec. ``keys`` limits the accepted keys (the others keep the defaults);
    ``hints`` explains unknown ones; ``must_have`` lists keys that are required here;
    ``inline`` takes the keys from the enclosing mapping itself (``yaml`` paths there)."""

    def __init__(self, cls: type[Any], *, keys: Sequence[str] | None = None,
                 hints: Mapping[str, str] | None = None, must_have: Sequence[str] = (),
                 inline: bool = False, type_doc: str | None = None) -> None:
        super().__init__()
        self.cls = cls
        self.keys = tuple(keys) if keys is not None else None
        self.hints = dict(hints or {})
        self.must_have = tuple(must_have)
        self.inline = inline
        self.type_doc = type_doc or "mapping"

    def parse(self, raw: object, at: Where, default: Any) -> Any:
        return _parse_section(self.cls, raw, at, default, self.keys, self.hints, self.must_have)

    def missing(self, default: Any, at: Where) -> Any:
        return _parse_section(self.cls, None, at, default, self.keys, self.hints, self.must_have)

    def dump(self, value: Any) -> Any:
        return dump(value, keys=self.keys)


def section(cls: type[Any], *, yaml: str | None = None, doc: str = "",
            required: bool | str = False, keys: Sequence[str] | None = None,
            hints: Mapping[str, str] | None = None, must_have: Sequence[str] = (),
            inline: bool = False, default_factory: Callable[[], Any] | None = None,
            default_doc: str | None = None, type_doc: str | None = None) -> Any:
    """A dataclass field holding a nested spec (defaults: ``cls()`` or ``default_factory``)."""
    kind = Nested(cls, keys=keys, hints=hints, must_have=must_have, inline=inline,
                  type_doc=type_doc)
    key = Key(kind, None, doc, required, yaml, default_doc, type_doc)
    return field(default_factory=default_factory or cls, metadata={_META: key})


@dataclass(frozen=True)
class _Field:
    name: str  # Python attribute
    yaml: str  # dotted key path relative to the mapping
    key: Key

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.yaml.split("."))


@dataclass(frozen=True)
class _Spec:
    cls: type[Any]
    fields: tuple[_Field, ...]  # keyed fields, declaration order
    plain: tuple[str, ...]  # dataclass fields that are not keys (taken from the defaults)
    inputs: Mapping[str, Key]
    hints: Mapping[str, str]
    style: str

    @property
    def by_name(self) -> dict[str, _Field]:
        return {f.name: f for f in self.fields}

    def tree(self, keys: Sequence[str] | None) -> dict[str, Any]:
        """Accepted keys as a nested dict: leaf -> None, sub-mapping -> dict (declared order)."""
        root: dict[str, Any] = {}
        for f in self.leaves(keys):
            node = root
            for part in f.parts[:-1]:
                node = node.setdefault(part, {})
            node.setdefault(f.parts[-1], None)
        return root

    def leaves(self, keys: Sequence[str] | None) -> Iterator[_Field]:
        """Every key this mapping accepts, inline sections expanded, inputs included."""
        for f in self.ordered():
            if keys is not None and f.parts[0] not in keys:
                continue
            kind = f.key.kind
            if isinstance(kind, Nested) and kind.inline:
                yield from _spec_of(kind.cls).leaves(kind.keys)
            else:
                yield f

    def ordered(self) -> list[_Field]:
        """The fields with the ``__inputs__`` keys in place (input fields have no name)."""
        out = list(self.fields)
        for yaml_key, key in self.inputs.items():
            names = [f.name for f in out]
            at = names.index(key.after) + 1 if key.after in names else len(out)
            out.insert(at, _Field("", yaml_key, key))
        return out

    def default_of(self, name: str) -> Any:
        for f in dataclasses.fields(self.cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
        raise TypeError(f"{self.cls.__name__}.{name} has no default: pass defaults=")


_SPECS: dict[type[Any], _Spec] = {}


def _yaml_name(name: str, style: str) -> str:
    return name if style == "snake" else name.replace("_", "-")


def _spec_of(cls: type[Any]) -> _Spec:
    spec = _SPECS.get(cls)
    if spec is None:
        style = getattr(cls, "__key_style__", "kebab")
        keyed: list[_Field] = []
        plain: list[str] = []
        for f in dataclasses.fields(cls):
            key = f.metadata.get(_META)
            if key is None:
                plain.append(f.name)
            else:
                keyed.append(_Field(f.name, key.yaml or _yaml_name(f.name, style), key))
        spec = _Spec(cls, tuple(keyed), tuple(plain), dict(getattr(cls, "__inputs__", {})),
                     dict(getattr(cls, "__hints__", {})), style)
        _SPECS[cls] = spec
    return spec


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def unknown_key_message(key: str, allowed: Sequence[str],
                        hints: Mapping[str, str] | None = None, style: str = "kebab") -> str:
    """``unknown key (hint)``: the hint given, the right spelling, a close match, or the list."""
    if hints and key in hints:
        return f"unknown key ({hints[key]})"
    respelled = key.lower().replace("_", "-") if style == "kebab" else key.replace("-", "_")
    if respelled in allowed and respelled != key:
        spelled = "kebab-case" if style == "kebab" else "snake_case"
        return f"unknown key (did you mean '{respelled}'? keys are {spelled})"
    close = difflib.get_close_matches(respelled, list(allowed), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return "unknown key (allowed: " + ", ".join(allowed) + ")"


def _mapping(raw: object, at: Where) -> dict[Any, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        at.report(f"must be a mapping, got {show(raw)}")
        return {}
    return raw


def _check_keys(data: dict[Any, Any], tree: dict[str, Any], at: Where,
                hints: Mapping[str, str], style: str, prefix: str = "") -> dict[Any, Any]:
    """The accepted part of ``data``; every other key reported (hints by relative path)."""
    allowed = list(tree)
    local = {k[len(prefix):]: v for k, v in hints.items() if k.startswith(prefix)}
    kept: dict[Any, Any] = {}
    for key, value in data.items():
        where = at.child(key)
        if not isinstance(key, str):
            where.report("keys must be strings")
        elif key not in tree:
            where.report(unknown_key_message(key, allowed, local, style))
        elif isinstance(tree[key], dict) and value is not None:
            sub = _mapping(value, where)
            kept[key] = _check_keys(sub, tree[key], where, hints, style, f"{prefix}{key}.")
        else:
            kept[key] = value
    return kept


def _lookup(data: dict[Any, Any], parts: tuple[str, ...]) -> object:
    node: object = data
    for part in parts:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


class _SectionParse:
    """One mapping being parsed: fields are parsed on first use (siblings may ask)."""

    def __init__(self, spec: _Spec, data: dict[Any, Any], at: Where, defaults: Any,
                 keys: Sequence[str] | None, must_have: Sequence[str]) -> None:
        self.spec = spec
        self.data = data
        self.at = at
        self.defaults = defaults
        self.keys = keys
        self.must_have = must_have
        self.values: dict[str, Any] = {}
        self._busy: set[str] = set()

    def default(self, name: str) -> Any:
        if self.defaults is not None:
            return getattr(self.defaults, name)
        return self.spec.default_of(name)

    def where(self, f: _Field) -> Where:
        return Where(_join_dotted(self.at.path, f.yaml), self.at.problems, self)

    def get(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self._busy:
            raise RecursionError(f"{self.spec.cls.__name__}.{name} depends on itself")
        self._busy.add(name)
        f = self.spec.by_name[name]
        default = self.default(name)
        kind = f.key.kind
        if self.keys is not None and f.parts[0] not in self.keys:
            value = default
        elif isinstance(kind, Nested) and kind.inline:
            value = _parse_section(kind.cls, self.data, self.at, default, kind.keys,
                                   kind.hints, kind.must_have, check=False)
        else:
            value = self.parse_key(f, default)
        self.values[name] = value
        return value

    def parse_key(self, f: _Field, default: Any) -> Any:
        where = self.where(f)
        raw = _lookup(self.data, f.parts)
        kind = f.key.kind
        if raw is None:
            required = f.key.required or (f.yaml in self.must_have)
            if required:
                where.report(required if isinstance(required, str) else "is required")
            return kind.missing(default, where)
        try:
            return kind.parse(raw, where, default)
        except Invalid as e:
            where.report(str(e))
            return kind.missing(default, where)

    def input(self, name: str) -> Any:
        """Parsed value of an ``__inputs__`` key (None when absent or invalid)."""
        key = self.spec.inputs[name]
        raw = _lookup(self.data, tuple(name.split(".")))
        if raw is None:
            return None
        where = Where(_join_dotted(self.at.path, name), self.at.problems, self)
        try:
            return key.kind.parse(raw, where, key.default)
        except Invalid as e:
            where.report(str(e))
            return None


class Section:
    """What ``__check__`` sees of a parsed mapping: read, replace, report."""

    def __init__(self, sp: _SectionParse) -> None:
        self._sp = sp

    def __getitem__(self, name: str) -> Any:
        return self._sp.get(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self._sp.values[name] = value

    def given(self, key: str) -> bool:
        """Whether the YAML key (dotted path) was present and not null."""
        return self.raw(key) is not None

    def raw(self, key: str) -> object:
        """The value of the YAML key (dotted path) as written, None when absent."""
        return _lookup(self._sp.data, tuple(key.split(".")))

    def input(self, key: str) -> Any:
        return self._sp.input(key)

    def at(self, key: str) -> Where:
        """The place of a YAML key (dotted path) of this mapping."""
        return Where(_join_dotted(self._sp.at.path, key), self._sp.at.problems, self._sp)

    def report(self, key: str, message: str) -> None:
        self.at(key).report(message)


def _parse_section(cls: type[S], raw: object, at: Where, defaults: Any,
                   keys: Sequence[str] | None, hints: Mapping[str, str],
                   must_have: Sequence[str], check: bool = True) -> S:
    spec = _spec_of(cls)
    data = _mapping(raw, at)
    if check:
        data = _check_keys(data, spec.tree(keys), at, {**spec.hints, **hints}, spec.style)
    sp = _SectionParse(spec, data, at, defaults, keys, must_have)
    for f in spec.fields:
        sp.get(f.name)
    checker = getattr(cls, "__check__", None)
    if checker is not None:
        checker(Section(sp))
    values = dict(sp.values)
    for name in spec.plain:
        values[name] = sp.default(name)
    return cls(**values)


def parse(cls: type[S], data: object, problems: Problems | None = None, *, path: str = "",
          defaults: S | None = None, keys: Sequence[str] | None = None,
          hints: Mapping[str, str] | None = None, must_have: Sequence[str] = (),
          error: type[SpecError] = SpecError) -> S:
    """Parse ``data`` (a YAML mapping, None = empty) into the spec ``cls``.

    With ``problems`` every problem is appended there and a best-effort value returned;
    without, ``error`` (a :class:`SpecError`) is raised listing them all. ``defaults``
    replaces the spec's defaults (an instance of ``cls``); ``keys`` limits the accepted
    keys, ``hints`` explains unknown ones, ``must_have`` makes keys required.
    """
    own = problems is None
    probs = Problems() if problems is None else problems
    value = _parse_section(cls, data, Where(path, probs), defaults, keys, dict(hints or {}),
                           must_have)
    if own and probs:
        raise error(probs.errors)
    return value


def parse_mapping(spec: Mapping[str, Key], data: object, at: Where, *,
                  hints: Mapping[str, str] | None = None, style: str = "snake",
                  unknown: Callable[[str, list[str]], str] | None = None) -> dict[str, Any]:
    """A mapping checked against ``{key: Key}`` (no dataclass): the parsed values by key.

    For formats whose keys depend on another value (e.g. the parameters of an action).
    Absent optional keys are left out; ``unknown(key, allowed)`` words the unknown-key
    problem.
    """
    raw = _mapping(data, at)
    out: dict[str, Any] = {}
    allowed = list(spec)
    for k in raw:
        if not isinstance(k, str):
            at.child(k).report("keys must be strings")
        elif k not in spec:
            msg = (unknown(k, allowed) if unknown is not None
                   else unknown_key_message(k, allowed, hints, style))
            at.child(k).report(msg)
    for k, key in spec.items():
        where = at.child(k)
        value = raw.get(k)
        if value is None:
            if key.required:
                where.report(key.required if isinstance(key.required, str) else "is required")
            elif key.default is not None:
                out[k] = key.default
            continue
        try:
            out[k] = key.kind.parse(value, where, key.default)
        except Invalid as e:
            where.report(str(e))
    return out


# --------------------------------------------------------------------------------------
# Dump and reference
# --------------------------------------------------------------------------------------


def _put(out: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _merge(out: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            _merge(out[k], v)
        else:
            out[k] = v


def dump(obj: Any, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The normalized mapping of a parsed spec: every key, defaults filled in, durations and
    sizes readable, secrets redacted. Parsing it again gives ``obj`` back, secrets aside."""
    out: dict[str, Any] = {}
    for f in _spec_of(type(obj)).fields:
        if keys is not None and f.parts[0] not in keys:
            continue
        kind = f.key.kind
        value = getattr(obj, f.name)
        if isinstance(kind, Nested) and kind.inline:
            _merge(out, dump(value, kind.keys))
        else:
            _put(out, f.parts, kind.dump(value))
    return out


@dataclass(frozen=True)
class KeyDoc:
    """One row of a key reference."""

    path: str  # dotted YAML path relative to the spec
    type_text: str
    default: str
    doc: str
    nested: type[Any] | None = None  # for a section documented on its own


def _default_text(kind: Kind[Any], default: Any) -> str:
    value = kind.dump(default)
    if isinstance(value, list | tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "" or value is None:
        return '`""`'
    if isinstance(value, dict):
        return "`{}`" if not value else "see below"
    return f"`{value}`"


def describe(cls: type[Any], *, defaults: Any = None, keys: Sequence[str] | None = None,
             expand: Callable[[type[Any]], bool] = lambda c: True, prefix: str = "",
             default_template: str | None = None) -> list[KeyDoc]:
    """The key reference of a spec, nested sections flattened (``sasl.mechanism``) unless
    ``expand`` says a section is documented on its own (then one row with ``nested``).

    A section's ``default_doc`` containing ``{key}`` is the default text of each of its keys
    (``top-level `clickhouse.{key}```: the defaults come from elsewhere).
    """
    spec = _spec_of(cls)
    rows: list[KeyDoc] = []
    for f in spec.ordered():
        if keys is not None and f.parts[0] not in keys:
            continue
        kind = f.key.kind
        if not f.name:  # an __inputs__ key
            default = f.key.default
        else:
            default = getattr(defaults, f.name) if defaults is not None else spec.default_of(
                f.name)
        path = prefix + f.yaml
        if isinstance(kind, Nested) and (kind.inline or expand(kind.cls)):
            template = f.key.default_doc if "{key}" in (f.key.default_doc or "") else None
            rows += describe(kind.cls, defaults=default, keys=kind.keys, expand=expand,
                             prefix="" if kind.inline else path + ".",
                             default_template=template)
            continue
        nested = kind.cls if isinstance(kind, Nested) else None
        if default_template is not None:
            shown = default_template.format(key=f.yaml)
        elif f.key.default_doc is not None:
            shown = f.key.default_doc
        else:
            shown = "required" if f.key.required else _default_text(kind, default)
        rows.append(KeyDoc(path, f.key.type_text, shown, f.key.doc, nested))
    return rows


# --------------------------------------------------------------------------------------
# Durations and sizes
# --------------------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[+]?(\d+(?:\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_DURATION_HELP = "expected e.g. 10s, 500ms, 1m30s"


def parse_duration(v: object) -> float:
    """``5s``, ``500ms``, ``1m``, ``1h30m``, ``2m30s``, ``1.5s`` or a number (seconds) -> seconds.

    Units ``ns us ms s m h``. Raises ValueError (``bad duration ...``) for anything else,
    negative and non-finite values included.
    """
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"bad duration {v!r}: {_DURATION_HELP}")
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise ValueError(f"bad duration {v!r}: {_DURATION_HELP}")
        if _NUMBER.fullmatch(s):
            seconds = float(s)
        else:
            pos = 0
            seconds = 0.0
            while pos < len(s):
                m = _DURATION_PART.match(s, pos)
                if m is None:
                    raise ValueError(f"bad duration {v!r}: {_DURATION_HELP}")
                seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                pos = m.end()
    else:
        seconds = float(v)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"bad duration {v!r}: must be a finite number of seconds >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration` for display: 0.1 -> '100ms', 90 -> '1m30s'."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        if abs(ms - round(ms)) < 1e-9:
            return f"{round(ms)}ms"
        return f"{seconds:g}s"
    if abs(seconds - round(seconds)) > 1e-9:
        return f"{seconds:g}s"
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")


_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")


def parse_size(v: object) -> int:
    """``1GiB``, ``512MiB``, ``100MB``, ``4096B`` or an integer (bytes) -> bytes.

    Units (case-insensitive): B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (of 1024).
    Raises ValueError for anything else (including negative values).
    """
    if isinstance(v, bool):
        raise ValueError("not a size")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("negative size")
        return v
    if isinstance(v, str):
        m = _SIZE.fullmatch(v.strip())
        if m is None:
            raise ValueError("not a size")
        number, unit = m.group(1), m.group(2).lower()
        if unit == "":
            if not number.isdigit():
                raise ValueError("a size without unit must be a whole number of bytes")
            return int(number)
        if unit not in _SIZE_UNITS:
            raise ValueError(f"unknown size unit {m.group(2)!r}")
        return round(float(number) * _SIZE_UNITS[unit])
    raise ValueError("not a size")


def format_size(n: int) -> str | int:
    """For display: 1073741824 -> '1GiB'; sizes that are not a whole binary unit stay ints."""
    for unit, mult in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return n


# --------------------------------------------------------------------------------------
# YAML loading and ${VAR} expansion
# --------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of silently keeping the last."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_errors: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    line = key_node.start_mark.line + 1
                    self.duplicate_errors.append(f"line {line}: duplicate key {key!r}")
                seen.add(key)
            except TypeError:  # unhashable key; the base class reports it
                pass
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> tuple[Any, list[str]]:
    """(document, duplicate-key problems). Raises ``yaml.YAMLError`` on a syntax error."""
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicate_errors
    finally:
        loader.dispose()


_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand_string(s: str, at: Where, env: Mapping[str, str]) -> str:
    if "$" not in s:
        return s
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        if s.startswith("$${", i):
            out.append("${")
            i += 3
            continue
        if s.startswith("${", i):
            end = s.find("}", i + 2)
            if end < 0:
                at.report("unterminated '${' (write '$${' for a literal '${')")
                return s
            body = s[i + 2 : end]
            name, sep, default = body.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                at.report(f"invalid variable reference '${{{body}}}'"
                          " (expected ${NAME} or ${NAME:-default})")
            elif sep:
                value = env.get(name, "")
                out.append(value if value else default)
            elif name in env:
                out.append(env[name])
            else:
                at.report(f"environment variable {name} is not set")
            i = end + 1
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


def expand_env(node: object, env: Mapping[str, str], problems: Problems, path: str = ""
               ) -> object:
    """``${VAR}`` / ``${VAR:-default}`` in every string *value* (never in keys, never on raw
    text: YAML quoting cannot break); ``$${`` is a literal ``${``."""
    if isinstance(node, str):
        return _expand_string(node, Where(path, problems), env)
    if isinstance(node, dict):
        return {k: expand_env(v, env, problems, join_path(path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, env, problems, join_path(path, i)) for i, v in enumerate(node)]
    return node

