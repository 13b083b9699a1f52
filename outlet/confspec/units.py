"""Durations and sizes as written in YAML files: one grammar for every format we read."""

from __future__ import annotations

import math
import re

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
