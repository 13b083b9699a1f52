"""The vocabulary both harness commands share (teststack/clikit.py), through their console
scripts: one meaning of the time scale, defaults and report locations in --help, the JSON
verdict on stdout, non-zero exits, and no run past an hour without --yes. No stack needed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from chaos.scenario import load_scenario
from loadtest.profile import load_profile
from teststack.clikit import confirm_long_run

BIN = Path(sys.executable).parent


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, cwd=cwd)


def test_time_scale_means_the_same_in_both_harnesses() -> None:
    """0.1 is a ten times shorter run, 4 a four times longer one, in chaos and in load."""
    sc, profile = load_scenario("azure-partition"), load_profile("steady")
    assert sc.scaled(0.1).load.duration == pytest.approx(sc.load.duration / 10)
    assert profile.scaled(0.1).wall_duration == pytest.approx(profile.wall_duration / 10)
    assert sc.scaled(4).end == pytest.approx(sc.end * 4)
    assert profile.scaled(4).wall_duration == pytest.approx(profile.wall_duration * 4)
    assert profile.scaled(4).peak_rate == profile.peak_rate  # rates are kept


def main_of(tool: str) -> Callable[[list[str]], int]:
    if tool == "chaos":
        from chaos.cli import main
    else:
        from loadtest.cli import main
    return main


def call(*argv: str) -> int:
    """The command in-process (the console scripts call these same functions)."""
    try:
        return main_of(argv[0])(list(argv[1:]))
    except SystemExit as e:  # argparse: --help, usage errors
        return int(e.code or 0)


@pytest.mark.parametrize("argv", [("chaos", "run"), ("loadtest", "run"),
                                  ("loadtest", "capacity")])
def test_help_names_defaults_and_reports(argv: tuple[str, ...],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert call(*argv, "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--time-scale F" in text and "(default: 1)" in text
    assert "(default: .stack)" in text and "--json" in text and "--yes" in text
    assert "Report: " in text and "reports/" in text and "Exit status:" in text


def test_loadtest_has_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert call("loadtest", "--help") == 0
    out = capsys.readouterr().out
    for command in ("run", "capacity", "bench", "demo"):
        assert f"\n    {command} " in out, out
    assert call("loadtest", "bench", "--help") == 0
    assert "(default: 2000000)" in " ".join(capsys.readouterr().out.split())


def test_json_verdict_is_alone_on_stdout() -> None:
    """Through the console script: progress (and subprocesses) go to stderr."""
    out = run("chaos", "run", "azure-partition", "outlet-crash", "--validate", "--json")
    assert out.returncode == 0, out.stderr
    verdict = json.loads(out.stdout)
    assert verdict["harness"] == "chaos run" and verdict["passed"] is True
    assert [r["name"] for r in verdict["runs"]] == ["azure-partition", "outlet-crash"]
    assert "azure-partition: ok" in out.stderr


def test_invalid_input_exits_2_with_a_json_verdict(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("load: {rate: 1000}\nexpect: {}\n")
    verdict_file = tmp_path / "v.json"
    assert call("chaos", "run", str(bad), "--json", str(verdict_file)) == 2
    verdict = json.loads(verdict_file.read_text())
    assert verdict["passed"] is False and "load.duration: is required" in verdict["error"]
    assert call("loadtest", "run", "nope", "--json", str(verdict_file)) == 2
    assert "no profile 'nope'" in json.loads(verdict_file.read_text())["error"]


@pytest.mark.parametrize("argv", [("chaos", "run", "azure-partition", "--time-scale", "80"),
                                  ("loadtest", "run", "steady", "--time-scale", "100"),
                                  ("loadtest", "capacity", "--time-scale", "30")])
def test_a_run_past_an_hour_needs_yes(tmp_path: Path, argv: tuple[str, ...],
                                      capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: no question asked
    stack_dir = tmp_path / "no-stack"
    verdict_file = tmp_path / "v.json"
    assert call(*argv, "--stack-dir", str(stack_dir), "--json", str(verdict_file)) == 2
    err = capsys.readouterr().err
    assert "more than an hour" in err and "--yes" in err
    assert json.loads(verdict_file.read_text())["error"].startswith("refused")
    assert not stack_dir.exists(), "refused before starting anything"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_confirmation_on_a_terminal() -> None:
    out = io.StringIO()
    assert confirm_long_run(3000, "short", False, stdin=_Tty(""), out=out)
    assert out.getvalue() == ""  # under an hour: no question
    assert confirm_long_run(7200, "long", False, stdin=_Tty("y\n"), out=out)
    assert "long will take about 2.0 h" in out.getvalue()
    assert not confirm_long_run(7200, "long", False, stdin=_Tty("\n"), out=out)
    assert not confirm_long_run(7200, "long", False, stdin=io.StringIO("y\n"), out=out)
    assert confirm_long_run(7200, "long", True, stdin=io.StringIO(""), out=out)


def test_rate_options_and_summary_dir(capsys: pytest.CaptureFixture[str]) -> None:
    """`--rate` and `--rate-fraction` exclude each other; every measuring command takes
    `--summary-dir` (the docs/results/ files of `make results`)."""
    assert call("chaos", "run", "azure-partition", "--rate", "1000", "--rate-fraction",
                "0.5") == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert call("chaos", "run", "azure-partition", "--rate-fraction", "0") == 2
    for argv in (("chaos", "run"), ("loadtest", "bench", "outlet"), ("loadtest", "capacity"),
                 ("loadtest", "bench", "codec")):
        assert call(*argv, "--help") == 0
        assert "--summary-dir DIR" in capsys.readouterr().out, argv


def test_summary_file_is_small_and_reproducible(tmp_path: Path) -> None:
    from chaos.report import summary
    from chaos.results import Check, RunResult
    from teststack.summary import write_summary

    sc = load_scenario("azure-partition").at_rate(60_000, {
        "capacity_flows_per_s": 120_000, "fraction": 0.5, "rate": 60_000})
    res = RunResult(scenario=sc.name, passed=True,
                    checks=[Check("local: rows", "10", "10", True)], events=[], samples=[],
                    info={"rate": 60_000.0, "offered_flows_per_s": 57_000, "produced": 10,
                          "rate_origin": sc.rate_origin, "wall_s": 1.23456},
                    destinations={"local": {"rows": 10, "duplicates": 0, "missing": 0,
                                            "bytes_sum": 5}},
                    metrics={}, report_dir=tmp_path)
    path = write_summary(tmp_path, "chaos-azure-partition", "chaos run azure-partition",
                         summary(res, sc))
    doc = json.loads(path.read_text())
    assert doc["command"] == "chaos run azure-partition" and doc["passed"] is True
    assert (doc["capacity_flows_per_s"], doc["fraction_target"], doc["fraction_offered"]) == (
        120_000, 0.5, 0.475)
    assert doc["destinations"] == {"local": {"rows": 10, "duplicates": 0, "missing": 0}}
    assert doc["wall_s"] == 1.235 and doc["machine"]["cores"] >= 1
    assert path.stat().st_size < 4000
