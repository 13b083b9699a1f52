"""The shipped alert rules: promtool check and unit tests, coverage of every alert by a
firing and a quiet case, runbook anchors and metric names.

Each rule is also broken on purpose (never firing, always firing) to prove the unit tests
notice: a rule whose tests still pass when it is replaced is not tested.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import unknown_metrics
from teststack.prometheus import RULES_FILE, alert_names, promtool_run

DEPLOY = RULES_FILE.parent
TESTS_FILE = DEPLOY / "outlet-rules.test.yml"
DUAL_WRITE_DOC = RULES_FILE.parents[2] / "docs" / "dual-write.md"


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_check_rules() -> None:
    res = promtool_run("check", "rules", RULES_FILE.name, cwd=DEPLOY)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules())} rules found" in res.stdout


def test_promtool_unit_tests_pass() -> None:
    res = promtool_run("test", "rules", TESTS_FILE.name, cwd=DEPLOY)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_example_prometheus_config_is_valid() -> None:
    res = promtool_run("check", "config", "prometheus.example.yml", cwd=DEPLOY)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(TESTS_FILE.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    missing = {name: sorted({True, False} - cases.get(name, set())) for name in alert_names()}
    assert not {n: m for n, m in missing.items() if m}, f"cases missing (True = firing): {missing}"


@pytest.mark.parametrize("alert", alert_names())
@pytest.mark.parametrize("broken", ["vector(1)", "vector(0) > 1"], ids=["always", "never"])
def test_unit_tests_catch_a_broken_rule(tmp_path: Path, alert: str, broken: str) -> None:
    for f in (RULES_FILE, TESTS_FILE):
        shutil.copy(f, tmp_path / f.name)
    doc = yaml.safe_load(RULES_FILE.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = broken
    (tmp_path / RULES_FILE.name).write_text(yaml.safe_dump(doc))
    res = promtool_run("test", "rules", TESTS_FILE.name, cwd=tmp_path)
    assert res.returncode != 0, f"{alert} replaced by {broken!r} still passes its tests"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        if m := re.match(r"#+\s+(.*)", line):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_rule_annotations_and_metrics(rule: dict[str, Any]) -> None:
    ann = rule["annotations"]
    assert ann.get("summary") and ann.get("description")
    assert rule["labels"]["severity"] in ("critical", "warning")
    doc, _, anchor = ann["runbook_url"].partition("#")
    assert doc == "docs/dual-write.md"
    assert anchor in _anchors(DUAL_WRITE_DOC.read_text()), f"no heading for #{anchor}"
    assert not unknown_metrics(rule["expr"]), "not exported by the outlet"
    # Alerts keep every target label (datacenter, instance...): no by() aggregation.
    assert " by (" not in rule["expr"] and " by(" not in rule["expr"]
