"""The Grafana dashboard's PromQL, as Grafana would send it, evaluated on a real Prometheus.

Grafana is not installable here, so the dashboard is proven the other way round: every
panel query (and the alert annotation) is extracted, its Grafana variables replaced the
way Grafana replaces them, and evaluated as a range query over a chaos run.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teststack.prometheus import Prometheus, PrometheusError

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "outlet.json"
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval for a 1 s scrape at this time range


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and annotation."""
    out = [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in panels() for t in p["targets"]]
    out += [(f"annotation {a['name']}", a["expr"])
            for a in dashboard()["annotations"]["list"] if "expr" in a]
    return out


_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


def variable_values(prom: Prometheus, variables: dict[str, str]) -> dict[str, list[str]]:
    """What each ``label_values(selector, label)`` variable offers, asked the way Grafana
    asks (``/api/v1/label/<label>/values?match[]=selector``)."""
    out = {}
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = _LABEL_VALUES.match(var["query"]["query"])
        assert m, f"variable {var['name']}: not label_values(selector, label)"
        selector = substitute(m.group(1), variables)
        out[var["name"]] = list(prom.label_values(m.group(2), selector))
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    leftover = re.findall(r"\$\w+", expr)
    assert not leftover, f"unknown Grafana variables {leftover} in {expr}"
    return expr


@dataclass
class QueryResult:
    where: str
    expr: str
    series: int
    points: int  # finite values over all series
    error: str = ""


def evaluate(prom: Prometheus, variables: dict[str, str], start: float, end: float,
             step: float = 2.0) -> list[QueryResult]:
    results = []
    for where, expr in queries():
        text = substitute(expr, variables)
        try:
            matrix = prom.query_range(text, start, end, step)
        except PrometheusError as e:
            results.append(QueryResult(where, text, 0, 0, str(e)))
            continue
        points = sum(1 for s in matrix for _, v in s["values"] if math.isfinite(float(v)))
        results.append(QueryResult(where, text, len(matrix), points))
    return results
