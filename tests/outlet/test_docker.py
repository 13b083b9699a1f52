"""The docker-compose path. Runs only where a Docker engine answers; says so when skipped.

The consistency test (the outlet config embedded in docker-compose.yml is valid for the
outlet) needs no engine and always runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from teststack import stack as stk

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_topology_and_outlet_config() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"kafka", "clickhouse-local", "clickhouse-azure", "toxiproxy", "outlet"} <= set(
        services
    )
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    env = services["kafka"]["environment"]
    assert "PROXIED://toxiproxy:9094" in env["KAFKA_ADVERTISED_LISTENERS"]
    from outlet.config import parse_config

    # Compose turns `$$` into `$`; the outlet then expands ${VAR} from its environment.
    text = compose["configs"]["outlet-yaml"]["content"].replace("$$", "$")
    cfg = parse_config(
        yaml.safe_load(text),
        env={"CLICKHOUSE_LOCAL_PASSWORD": "a", "CLICKHOUSE_AZURE_PASSWORD": "b"},
    )
    assert cfg.kafka.brokers == ("toxiproxy:9094",)
    assert [d.name for d in cfg.additional_clickhouses] == ["azure"]


def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    from teststack.prometheus import RULES_FILE, alert_names, promtool_run

    compose = _compose()
    mount = next(v for v in compose["services"]["prometheus"]["volumes"]
                 if v.startswith("./deploy/"))
    assert (ROOT / mount.split(":")[0]) == RULES_FILE
    shutil.copy(RULES_FILE, tmp_path / "outlet-rules.yml")
    (tmp_path / "prometheus.yml").write_text(compose["configs"]["prometheus-yml"]["content"])
    res = promtool_run("check", "config", "prometheus.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in res.stdout


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
        version = subprocess.run(["docker", "compose", "version"], capture_output=True,
                                 timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return info.returncode == 0 and version.returncode == 0


@pytest.fixture(scope="module")
def compose_stack() -> Iterator[dict[str, int]]:
    if not _docker_available():
        pytest.skip("no Docker engine: docker-compose path not tested")
    names = ["KAFKA_HOST_PORT", "CLICKHOUSE_LOCAL_PORT", "CLICKHOUSE_AZURE_PORT",
             "TOXIPROXY_API_PORT", "CLICKHOUSE_LOCAL_PROXIED_PORT",
             "CLICKHOUSE_AZURE_PROXIED_PORT", "OUTLET_HTTP_PORT"]
    ports = dict(zip(names, stk.free_ports(len(names)), strict=True))
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    project = f"flowtest-{uuid.uuid4().hex[:6]}"
    base = ["docker", "compose", "-f", str(COMPOSE), "-p", project]
    services = ["kafka", "kafka-init", "clickhouse-local", "clickhouse-azure", "toxiproxy"]
    up = subprocess.run([*base, "up", "-d", "--wait", *services], env=env, capture_output=True,
                        text=True, timeout=600)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield ports
    finally:
        subprocess.run([*base, "down", "-v", "--remove-orphans"], env=env,
                       capture_output=True, timeout=300)


@pytest.mark.docker
def test_compose_clickhouse_through_toxiproxy(compose_stack: dict[str, int]) -> None:
    import clickhouse_connect

    from teststack.toxiproxy import Toxiproxy

    tp = Toxiproxy(f"http://127.0.0.1:{compose_stack['TOXIPROXY_API_PORT']}")
    assert {"clickhouse-local", "clickhouse-azure", "kafka"} <= set(tp.proxies())
    for name, password in (("LOCAL", "outlet-local"), ("AZURE", "outlet-azure")):
        port = compose_stack[f"CLICKHOUSE_{name}_PROXIED_PORT"]
        deadline = time.monotonic() + 60
        while True:
            try:
                client = clickhouse_connect.get_client(
                    host="127.0.0.1", port=port, username="outlet", password=password
                )
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert client.command("SELECT 1") == 1


@pytest.mark.docker
def test_compose_kafka_topic(compose_stack: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{compose_stack['KAFKA_HOST_PORT']}"})
    topics = admin.list_topics(timeout=30).topics
    assert "flows" in topics
    assert len(topics["flows"].partitions) == 4
