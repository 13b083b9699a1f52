"""ci/install-system.sh, the one place that installs the system prerequisites: what it
decides with tools present or missing, as root or not (fake tools on a private PATH; the
real apt path runs in CI on a fresh machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "ci" / "install-system.sh"
FAKES = {
    "java": 'echo \'openjdk version "17.0.15" 2025-04-15\' >&2',
    "mvn": "echo Apache Maven 3.8.7",
    "go": "echo go1.26.8",
    "prometheus": "echo 'prometheus, version 2.42.0+ds (branch: debian/sid)' >&2",
    "promtool": "echo promtool",
}


def run(tmp_path: Path, tools: list[str], uid: int, java: str = "17"
        ) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sed", "head"):
        os.symlink(shutil.which(name) or name, bin_dir / name)
    fakes = {**FAKES, "id": f"echo {uid}", "apt-get": 'echo "apt-get $*" >> "$APT_LOG"'}
    fakes["java"] = fakes["java"].replace('"17.', f'"{java}.')
    for name, body in fakes.items():
        if name in tools or name in ("id", "apt-get"):
            path = bin_dir / name
            path.write_text(f"#!/bin/bash\n{body}\n")
            path.chmod(0o755)
    env = {"PATH": str(bin_dir), "APT_LOG": str(tmp_path / "apt.log")}
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_nothing_missing_installs_nothing(tmp_path: Path) -> None:
    res = run(tmp_path, list(FAKES), uid=1000)
    assert res.returncode == 0, res.stderr
    assert "system: java 17, maven, go1.26.8, prometheus 2.42.0+ds" in res.stdout
    assert not (tmp_path / "apt.log").exists()


@pytest.mark.parametrize(("tools", "java", "packages"), [
    (["java", "mvn", "go"], "17", "prometheus"),
    (["java", "mvn", "go", "prometheus"], "17", "prometheus"),  # promtool missing
    (["java", "go", "prometheus", "promtool"], "11", "openjdk-17-jre-headless maven"),
    ([], "17", "openjdk-17-jre-headless maven golang-go prometheus"),
])
def test_root_installs_what_is_missing(tmp_path: Path, tools: list[str], java: str,
                                       packages: str) -> None:
    res = run(tmp_path, tools, uid=0, java=java)
    assert res.returncode == 0, res.stderr
    assert f"system: installing {packages}" in res.stdout
    assert (tmp_path / "apt.log").read_text().splitlines() == [
        "apt-get update -q", f"apt-get install -y -q --no-install-recommends {packages}"]


def test_not_root_prints_the_one_command_and_fails(tmp_path: Path) -> None:
    res = run(tmp_path, ["java", "mvn", "go"], uid=1000)
    assert res.returncode == 1
    assert ("sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends "
            "prometheus'") in res.stderr
    assert not (tmp_path / "apt.log").exists()
