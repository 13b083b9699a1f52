"""The `outlet` command line: version, check-config (redaction), clear config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

SECRET = "s3cr3t-Pa55word"


def outlet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "outlet.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_version() -> None:
    res = outlet("--version")
    assert res.returncode == 0
    assert res.stdout.startswith("outlet ")


def write(tmp_path: Path, cfg: dict[str, object]) -> Path:
    path = tmp_path / "outlet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_check_config_redacts_every_secret(tmp_path: Path) -> None:
    cfg = {
        "clickhousedb": {"servers": ["127.0.0.1:8123"], "password": SECRET},
        "additional-clickhouses": [
            {
                "name": "azure",
                "connection": {"servers": ["127.0.0.1:9123"], "password": "${AZURE_PASSWORD}"},
            }
        ],
        "kafka": {"sasl": {"mechanism": "PLAIN", "username": "u", "password": SECRET}},
    }
    res = outlet("check-config", str(write(tmp_path, cfg)), env={"AZURE_PASSWORD": SECRET})
    assert res.returncode == 0, res.stderr
    assert SECRET not in res.stdout + res.stderr
    assert res.stdout.count("******") == 3
    normalized = yaml.safe_load(res.stdout)
    assert normalized["clickhouse"]["maximum-batch-size"] == 50000  # defaults filled in
    assert normalized["additional-clickhouses"][0]["connection"]["max-retries"] == 3


def test_bad_config_names_key_and_problem(tmp_path: Path) -> None:
    cfg = {
        "clickhousedb": {"servers": ["127.0.0.1:8123"], "password": SECRET},
        "additional-clickhouses": [
            {"name": "primary", "connection": {"servers": ["x:1"], "max-retries": "three"}}
        ],
        "clickhouse": {"maximum-wait-tme": "5s"},
    }
    res = outlet("check-config", str(write(tmp_path, cfg)))
    assert res.returncode == 2
    assert "additional-clickhouses[0].connection.max-retries" in res.stderr
    assert "additional-clickhouses[0].name" in res.stderr
    assert "maximum-wait-time" in res.stderr  # did-you-mean
    assert SECRET not in res.stderr


def test_missing_environment_variable_is_named(tmp_path: Path) -> None:
    cfg = {
        "clickhousedb": {
            "servers": ["127.0.0.1:8123"],
            "password": "${NOPE_REALLY_NOT_SET_ANYWHERE}",
        }
    }
    res = outlet("check-config", str(write(tmp_path, cfg)))
    assert res.returncode == 2
    assert "NOPE_REALLY_NOT_SET_ANYWHERE" in res.stderr
    assert "clickhousedb.password" in res.stderr


def test_unreadable_config_file(tmp_path: Path) -> None:
    res = outlet("check-config", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2
    assert "missing.yaml" in res.stderr


def test_http_listen_taken_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    """Seen in the multi-dc demo: another process held the outlet's http.listen port and
    the outlet died with three nested exception-group tracebacks. It refuses to start
    with one line naming the address, before it contacts anything."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = {"http": {"listen": f"127.0.0.1:{port}"},
               "kafka": {"brokers": ["127.0.0.1:1"]},  # never reached
               "state": {"path": str(tmp_path / "state")}}
        res = outlet("run", "--config", str(write(tmp_path, cfg)))
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "cannot start" in ln]
    assert len(lines) == 1 and f"http.listen 127.0.0.1:{port}: Address already in use" in lines[0]
    assert "Traceback" not in res.stderr, res.stderr
