"""A real Prometheus in the native stack (optional: ``chaos stack up --with-prometheus``).

Debian's ``prometheus`` 2.42 (installed by ``ci/install-system.sh``) runs on 127.0.0.1 on a
free port with its own files under ``<stack>/prometheus/``::

    prometheus.yml        job ``outlet``: file-based service discovery over targets/*.json
    rules/outlet-rules.yml the shipped rules (deploy/prometheus/outlet-rules.yml) on a
                          compressed clock: every ``for:`` divided by TIME_COMPRESSION
    targets/<run>.json    one file per outlet a harness registers (:class:`ScrapeTargets`)
    data/                 the TSDB

It scrapes and evaluates every second, so a 2-minute ``for:`` becomes 4 seconds and a
15-second chaos partition can fire and resolve an alert; expressions, ranges included, are
loaded unchanged (docs/operations.md). The process is recorded in ``pids.json`` like every
stack component: ``chaos stack down`` stops it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from teststack.paths import PROJECT_ROOT
from teststack.stack import (
    StackError,
    _save_pid,
    _spawn,
    _terminate,
    _wait_until,
    free_ports,
    load_pids,
)

RULES_FILE = PROJECT_ROOT / "deploy" / "prometheus" / "outlet-rules.yml"
COMPONENT = "prometheus"
JOB = "outlet"
TIME_COMPRESSION = 30
INTERVAL = "1s"  # scrape and rule evaluation

_DURATION = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000, "y": 31_536_000_000}


class PrometheusError(RuntimeError):
    """A query failed (bad PromQL, Prometheus down) or Prometheus could not start."""


def binary() -> str:
    """The prometheus binary (``PROMETHEUS_BIN`` overrides the PATH lookup)."""
    path = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
    if not path:
        raise StackError(COMPONENT, "prometheus not found: run `make setup` (Debian package "
                                    "`prometheus`, installed by ci/install-system.sh)")
    return path


def duration_ms(text: str) -> int:
    """A Prometheus duration (``2m``, ``1h30m``, ``500ms``) in milliseconds."""
    parts = list(_DURATION.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        raise ValueError(f"bad Prometheus duration {text!r}")
    return sum(int(p.group(1)) * _UNIT_MS[p.group(2)] for p in parts)


def format_ms(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def alert_names(rules_file: Path = RULES_FILE) -> list[str]:
    """Every alert the shipped rules define, in file order."""
    doc = yaml.safe_load(rules_file.read_text())
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


def compress_rules(text: str, factor: int = TIME_COMPRESSION) -> str:
    """The rules with every ``for:`` divided by ``factor`` (at least one evaluation)."""
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = format_ms(max(1000, duration_ms(str(rule["for"])) // factor))
    header = (f"# Generated from {RULES_FILE.relative_to(PROJECT_ROOT)}: every `for:` "
              f"divided by {factor} (teststack/prometheus.py). Do not edit.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=120)


def config_text() -> str:
    return yaml.safe_dump({
        "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL,
                   "evaluation_interval": INTERVAL},
        "rule_files": ["rules/outlet-rules.yml"],
        "scrape_configs": [{
            "job_name": JOB,
            "file_sd_configs": [{"files": ["targets/*.json"], "refresh_interval": "5s"}],
        }],
    }, sort_keys=False)


def _write_atomic(path: Path, text: str) -> None:
    """Prometheus watches these files: it must never read half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class ScrapeTargets:
    """Registers outlets with the stack's Prometheus: one file-SD file per outlet.

    ``labels`` (e.g. ``run``, ``datacenter``) are attached to every series of the targets
    and so to every alert (the rules aggregate with ``without``).
    """

    directory: Path
    labels: dict[str, str] = field(default_factory=dict)

    def _path(self, name: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join([*self.labels.values(), name]))
        return self.directory / f"{slug}.json"

    def add(self, name: str, address: str) -> None:
        group = [{"targets": [address], "labels": {**self.labels, "outlet": name}}]
        _write_atomic(self._path(name), json.dumps(group) + "\n")

    def remove(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus: its URL and directory, and a small HTTP API client."""

    url: str
    directory: Path

    def targets(self, **labels: str) -> ScrapeTargets:
        return ScrapeTargets(self.directory / "targets", dict(labels))

    def _get(self, path: str, params: dict[str, str] | None = None, timeout: float = 10) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(self.url + path + query, timeout=timeout) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
            raise PrometheusError(f"{path}: {body.get('errorType')}: {body.get('error')}") from None
        except (urllib.error.URLError, OSError) as e:
            raise PrometheusError(f"{path}: {e}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        result: list[dict[str, Any]] = self._get("/api/v1/query", params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0
                    ) -> list[dict[str, Any]]:
        """Matrix result: ``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                  "step": f"{step:g}"}
        result: list[dict[str, Any]] = self._get("/api/v1/query_range", params)["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self._get(f"/api/v1/label/{label}/values", {"match[]": match})
        return values

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return groups

    def rules_evaluated(self) -> bool:
        """The rules are loaded and each was evaluated at least once."""
        rules = [r for g in self.rule_groups() for r in g["rules"]]
        return bool(rules) and all(r["health"] != "unknown" for r in rules)

    def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return targets

    def reload(self) -> None:
        req = urllib.request.Request(self.url + "/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass


def _write_files(pdir: Path) -> None:
    (pdir / "rules").mkdir(parents=True, exist_ok=True)
    (pdir / "targets").mkdir(exist_ok=True)
    (pdir / "data").mkdir(exist_ok=True)
    _write_atomic(pdir / "prometheus.yml", config_text())
    _write_atomic(pdir / "rules" / "outlet-rules.yml", compress_rules(RULES_FILE.read_text()))


def running(stack_dir: str | os.PathLike[str]) -> Prometheus | None:
    """The stack's Prometheus if it runs and answers, else None."""
    sdir = Path(stack_dir).resolve()
    rec = load_pids(sdir).get(COMPONENT)
    if rec is None or not rec.alive():
        return None
    prom = Prometheus(f"http://127.0.0.1:{rec.ports['http']}", sdir / COMPONENT)
    return prom if prom.ready() else None


def start(stack_dir: str | os.PathLike[str], timeout: float = 60) -> Prometheus:
    """Start the stack's Prometheus, or refresh the rules of the running one (reload)."""
    sdir = Path(stack_dir).resolve()
    pdir = sdir / COMPONENT
    _write_files(pdir)
    prom = running(sdir)
    if prom is not None:
        prom.reload()
        return prom
    port = free_ports(1)[0]
    cmd = [binary(), f"--config.file={pdir / 'prometheus.yml'}",
           f"--storage.tsdb.path={pdir / 'data'}", "--storage.tsdb.retention.time=2d",
           f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
           "--log.level=warn"]
    log_file = sdir / "logs" / "prometheus.log"
    proc, _ = _spawn(sdir, COMPONENT, cmd, log_file, {"http": port}, pdir)
    prom = Prometheus(f"http://127.0.0.1:{port}", pdir)
    _wait_until(COMPONENT, prom.ready, proc, log_file, timeout=timeout, interval=0.2)
    _wait_until(COMPONENT, prom.rules_evaluated, proc, log_file, timeout=timeout)
    return prom


def stop(stack_dir: str | os.PathLike[str]) -> bool:
    """Stop the stack's Prometheus (``chaos stack down`` does it too). True when gone."""
    sdir = Path(stack_dir).resolve()
    rec = load_pids(sdir).get(COMPONENT)
    if rec is None:
        return True
    if not _terminate(rec):
        return False
    _save_pid(sdir, COMPONENT, None)
    return True


def wait_for(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    """Poll ``predicate()`` (Prometheus state is only observable by asking) until true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        raise StackError("promtool", "promtool not found: run `make setup`")
    return path


def promtool_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` in ``cwd``; the caller checks the return code and output."""
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)
