"""The one Prometheus text parser of the harnesses, and metric selection on its result.

A scrape is a flat ``{'name{label="value",...}': value}`` mapping (labels sorted as the
outlet exports them): easy to diff, to sum over outlet restarts and to store in a JSON
report. Parsing is prometheus_client's own (``text_string_to_metric_families``), so every
escape and sample suffix is handled as Prometheus does.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Scrape = dict[str, float]

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def sample_key(name: str, labels: Mapping[str, str]) -> str:
    """``name{k="v",...}`` as in the exposition text (``name`` alone without labels)."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


@functools.lru_cache(maxsize=4096)
def split_key(key: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``name{k="v"}`` -> ``("name", (("k", "v"),))``."""
    name, _, rest = key.partition("{")
    return name, tuple((k, _unescape(v)) for k, v in _LABEL.findall(rest))


def parse_metrics(text: str) -> Scrape:
    """Prometheus text exposition -> ``{sample key: value}``."""
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[sample_key(s.name, s.labels)] = float(s.value)
    return out


def matches(key: str, name: str, labels: Mapping[str, str]) -> bool:
    base, have = split_key(key)
    if base != name:
        return False
    got = dict(have)
    return all(got.get(k) == v for k, v in labels.items())


def metric_value(metrics: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (absent: 0)."""
    return sum(v for k, v in metrics.items() if matches(k, name, labels))


def by_label(metrics: Mapping[str, float], name: str, label: str, **labels: str
             ) -> dict[str, float]:
    """Samples of ``name`` summed per value of ``label`` (those matching ``labels``)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if matches(k, name, labels):
            value = dict(split_key(k)[1]).get(label)
            if value is not None:
                out[value] = out.get(value, 0.0) + v
    return out


def histogram_buckets(metrics: Mapping[str, float], name: str, **labels: str
                      ) -> dict[float, float]:
    """Cumulative buckets ``{le: count}`` of histogram ``name`` (summed over other labels)."""
    return {math.inf if le == "+Inf" else float(le): count
            for le, count in by_label(metrics, name + "_bucket", "le", **labels).items()}
