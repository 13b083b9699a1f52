"""The value kinds of the spec machinery (see :mod:`outlet.confspec`)."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from outlet.confspec.core import REDACTED, Invalid, Kind, Where, show
from outlet.confspec.units import format_duration, format_size, parse_duration, parse_size


class Str(Kind[str]):
    def __init__(self, *, nonempty: bool = False, choices: Sequence[str] | None = None,
                 normalize: Callable[[str], str] | None = None,
                 pattern: str | None = None, pattern_msg: str = "",
                 max_len: int | None = None, problem: str | None = None) -> None:
        super().__init__(problem=problem)
        self.nonempty = nonempty
        self.max_len = max_len
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
        if self.max_len is not None and len(s) > self.max_len:
            raise Invalid(f"must be at most {self.max_len} characters, got {len(s)}")
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
    secret = "value"

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
    """A YAML number (int or float) in ``[lo, hi]`` (``above``: strictly greater), as a float."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *,
                 above: float | None = None, problem: str | None = None) -> None:
        super().__init__(problem=problem)
        self.lo, self.hi, self.above = lo, hi, above
        bounds = [f">= {lo:g}"] if lo is not None else []
        bounds += [f"> {above:g}"] if above is not None else []
        bounds += [f"<= {hi:g}"] if hi is not None else []
        self.type_doc = " ".join(["number", *bounds])

    def convert(self, raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise Invalid(f"must be a number, got {show(raw)}")
        if self.above is not None and raw <= self.above:
            raise Invalid(f"must be > {self.above:g}, got {show(raw)}")
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
                 at_most: float | None = None, problem: str | None = None) -> None:
        super().__init__(problem=problem)
        self.positive = positive
        self.at_least = at_least
        self.at_most = at_most
        low = "> 0" if positive else ">= 0"
        self.type_doc = (f"duration {low}" if at_most is None else
                         f"duration {low}, <= {format_duration(at_most)}")

    def convert(self, raw: object) -> float:
        try:
            d = parse_duration(raw)
        except ValueError:
            d = -1.0
        if d < 0 or (self.positive and d == 0):
            bound = "> 0" if self.positive else ">= 0"
            raise Invalid(f"must be a duration {bound} (e.g. 500ms, 5s, 1m30s), got {show(raw)}")
        if self.at_most is not None and d > self.at_most:
            raise Invalid(f"must be at most {format_duration(self.at_most)}, got {show(raw)}")
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
    """A path to an existing, readable file (relative to the working directory); ``""`` =
    none. ``secret``: what the file holds is a secret (a private key), for
    :func:`secret_paths`; the content is never shown anyway."""

    type_doc = "path"

    def __init__(self, *, secret: bool = False) -> None:
        super().__init__()
        self.secret = "file" if secret else None

    def convert(self, raw: object) -> str | None:
        if not isinstance(raw, str):
            raise Invalid(f"must be a string, got {show(raw)}")
        if not raw:
            return None
        if "-----BEGIN" in raw or "\n" in raw:
            raise Invalid("holds file content (PEM data?), not a path: give the path of the "
                          "file")
        if os.path.isdir(raw):
            raise Invalid(f"is a directory, not a file: {show(raw)}")
        if not os.path.isfile(raw):
            raise Invalid(f"file not found: {show(raw)}")
        if not os.access(raw, os.R_OK):
            raise Invalid(f"file not readable (permissions): {show(raw)}")
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

    def __init__(self, *, allow_empty_host: bool = False, allow_port_zero: bool = False,
                 credentials: str = "") -> None:
        super().__init__()
        self.allow_empty_host = allow_empty_host
        self.allow_port_zero = allow_port_zero
        self.credentials = f": {credentials}" if credentials else ""

    def convert(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise Invalid(f"must be a string, got {show(raw)}")
        if "@" in raw:  # never echoed: user:password@host:port
            raise Invalid("must not hold credentials (user:password@)" + self.credentials)
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


class ListOf(Kind[tuple[Any, ...]]):
    """A list whose items are checked by ``item`` at their own path (``timeline[2]``); bad
    items are reported and left out."""

    def __init__(self, item: Kind[Any], *, type_doc: str = "list") -> None:
        super().__init__()
        self.item = item
        self.type_doc = type_doc

    def parse(self, raw: object, at: Where, default: tuple[Any, ...]) -> tuple[Any, ...]:
        if not isinstance(raw, list):
            raise Invalid(f"must be a list, got {show(raw)}")
        out: list[Any] = []
        for i, value in enumerate(raw):
            where = at.child(i)
            if value is None:
                where.report("must not be empty")
                continue
            try:
                out.append(self.item.parse(value, where, None))
            except Invalid as e:
                where.report(str(e))
        return tuple(out)

    def dump(self, value: tuple[Any, ...]) -> list[Any]:
        return [self.item.dump(v) for v in value]

    def children(self) -> Iterator[tuple[str, Kind[Any]]]:
        yield "[*]", self.item


class AnyMapping(Kind[dict[str, Any]]):
    """A mapping taken as it is (checked by whoever uses it)."""

    type_doc = "mapping"

    def convert(self, raw: object) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise Invalid(f"must be a mapping, got {show(raw)}")
        return dict(raw)
