"""The orchestrator's API over real HTTP(S), against real orchestrator processes.

Migrations are skipped here (no ClickHouse needed); tests/orchestrator/test_site_stack.py
runs them against our ClickHouse servers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from outlet.remote_config import FetchError, RemoteConfig, RemoteSource
from teststack.orchestrator_proc import OrchestratorProcess, run_orchestrator_cli
from teststack.stack import generate_tls

SECRET = "pl4nted-S3cret-value"  # the orchestrator's own ClickHouse password
TOKEN = "t0ken-for-the-api"
CONFIG = "/api/v0/orchestrator/configuration/outlet"


def site_config(**extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "http": {"listen": "127.0.0.1:0"},
        "clickhousedb": {
            "servers": ["127.0.0.1:9"],
            "database": "flows_dc_a",
            "username": "outlet",
            "password": "${CH_PASSWORD}",
        },
        "clickhouse": {"skip-migrations": True},
        "kafka": {"brokers": ["127.0.0.1:9092"], "topic": "flows-a"},
        "outlet": [
            {},
            {"clickhousedb": {"servers": ["127.0.0.1:8124"], "password": "${OTHER_PW}"}},
            {"kafka": {"consumer-group": "second"}},
        ],
    }
    cfg.update(extra)
    return cfg


@pytest.fixture
def orchestrators(tmp_path: Path) -> Iterator[list[OrchestratorProcess]]:
    started: list[OrchestratorProcess] = []
    yield started
    for o in started:
        o.stop()


def start(tmp_path: Path, started: list[OrchestratorProcess], cfg: dict[str, Any],
          **kwargs: Any) -> OrchestratorProcess:  # fmt: skip
    o = OrchestratorProcess(tmp_path / f"o{len(started)}", cfg, env={"CH_PASSWORD": SECRET},
                            **kwargs)  # fmt: skip
    started.append(o)
    o.start()
    return o


def test_serves_inherited_configurations_as_yaml(
    tmp_path: Path, orchestrators: list[OrchestratorProcess]
) -> None:
    o = start(tmp_path, orchestrators, site_config())
    first = o.get(f"{CONFIG}/0")
    assert first.status == 200 and first.headers["content-type"] == "application/yaml"
    doc = yaml.safe_load(first.body)
    assert doc["clickhousedb"]["servers"] == ["127.0.0.1:9"]
    assert doc["clickhousedb"]["password"] == "${CH_PASSWORD}"
    assert doc["kafka"] == {"brokers": ["127.0.0.1:9092"], "topic": "flows-a"}
    # The case Akvorado gets wrong: an entry's own clickhousedb is kept, not replaced.
    own = yaml.safe_load(o.get(f"{CONFIG}/1").body)
    assert own["clickhousedb"] == {"servers": ["127.0.0.1:8124"], "password": "${OTHER_PW}"}
    assert yaml.safe_load(o.get(f"{CONFIG}/2").body)["kafka"]["consumer-group"] == "second"
    assert o.get(CONFIG).body == first.body, "no index: entry 0, as Akvorado"
    # Unchanged configuration: 304 for a poller sending the ETag back.
    assert o.get(f"{CONFIG}/0", etag=first.headers["etag"]).status == 304
    metrics = o.metrics()
    assert metrics['orchestrator_configuration_entries{service="outlet"}'] == 3
    assert metrics['orchestrator_configuration_requests_total{service="outlet",status="200"}'] >= 4


def test_unknown_index_and_service_are_clear_404s(
    tmp_path: Path, orchestrators: list[OrchestratorProcess]
) -> None:
    o = start(tmp_path, orchestrators, site_config())
    past = o.get(f"{CONFIG}/3")
    assert past.status == 404, "Akvorado would silently serve entry 0"
    assert json.loads(past.body) == {
        "message": "no outlet configuration 3: this orchestrator has 3 (indexes 0 to 2)"
    }
    assert "invalid configuration index 'x'" in o.get(f"{CONFIG}/x").body
    assert "serves outlet configurations only" in o.get(CONFIG.replace("outlet", "inlet")).body
    assert o.get("/healthz").status == 200
    ready = o.get("/readyz")
    assert ready.status == 200 and "migrations" in ready.body  # skipped: ready at once


def test_secrets_never_leave_the_orchestrator(
    tmp_path: Path, orchestrators: list[OrchestratorProcess]
) -> None:
    http = {"listen": "127.0.0.1:0", "bearer-token": "${CH_PASSWORD}"}
    o = start(tmp_path, orchestrators, site_config(http=http))
    bodies = [o.get(f"{CONFIG}/{i}", token=SECRET).body for i in range(3)]
    bodies += [o.get(p).body for p in ("/metrics", "/healthz", "/readyz", f"{CONFIG}/9")]
    bodies.append(o.get(f"{CONFIG}/0", token="wrong").body)
    check = run_orchestrator_cli("check-config", str(o.config_path), env={"CH_PASSWORD": SECRET})
    assert check.returncode == 0, check.stderr
    o.stop()
    for text in [*bodies, o.log_text(), check.stdout, check.stderr]:
        assert SECRET not in text
    assert "${CH_PASSWORD}" in bodies[0]


def test_bearer_token_guards_the_configuration_api(
    tmp_path: Path, orchestrators: list[OrchestratorProcess]
) -> None:
    http = {"listen": "127.0.0.1:0", "bearer-token": TOKEN}
    o = start(tmp_path, orchestrators, site_config(http=http))
    assert o.get(f"{CONFIG}/0").status == 401
    refused = o.get(f"{CONFIG}/0", token="nope")
    assert refused.status == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert o.get(f"{CONFIG}/0", token=TOKEN).status == 200
    assert o.get("/healthz").status == 200 and o.get("/metrics").status == 200


def test_https(tmp_path: Path, orchestrators: list[OrchestratorProcess]) -> None:
    tls = generate_tls(tmp_path / "tls")
    cfg = site_config(http={"listen": "127.0.0.1:0", "tls": {
        "enable": True, "cert-file": str(tls["cert"]), "key-file": str(tls["key"])}})  # fmt: skip
    o = start(tmp_path, orchestrators, cfg, ca_file=str(tls["ca"]))
    assert o.url.startswith("https://127.0.0.1:")
    assert o.get(f"{CONFIG}/1").status == 200


def test_refuses_to_start_with_literal_passwords(tmp_path: Path) -> None:
    cfg = site_config()
    cfg["outlet"][1]["clickhousedb"]["password"] = SECRET
    o = OrchestratorProcess(tmp_path, cfg, env={"CH_PASSWORD": "x"})
    o.write_config()
    res = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", "--config", str(o.config_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "CH_PASSWORD": "x"},
    )  # fmt: skip
    assert res.returncode == 2
    assert "outlet[1].clickhousedb.password: a literal password would be served" in res.stderr
    assert SECRET not in res.stderr + res.stdout
    cfg["allow-literal-secrets"] = True
    o.write_config()
    check = run_orchestrator_cli("check-config", str(o.config_path), env={"CH_PASSWORD": "x"})
    assert check.returncode == 0 and SECRET not in check.stdout
    assert yaml.safe_load(check.stdout)["outlet"][1]["clickhousedb"]["password"] == "******"


def outlet_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "outlet.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})  # fmt: skip


def test_outlet_check_config_from_the_orchestrator(
    tmp_path: Path, orchestrators: list[OrchestratorProcess]
) -> None:
    tls = generate_tls(tmp_path / "tls")
    http = {"listen": "127.0.0.1:0", "bearer-token": TOKEN,
            "tls": {"enable": True, "cert-file": str(tls["cert"]), "key-file": str(tls["key"])}}
    o = start(tmp_path, orchestrators, site_config(http=http), ca_file=str(tls["ca"]))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    ca = ["--orchestrator-ca-file", str(tls["ca"])]
    env = {"CH_PASSWORD": "outlet-side-secret", "OTHER_PW": "x"}
    res = outlet_cli("check-config", f"{o.url}#1", *ca, "--orchestrator-token-file",
                     str(token_file), env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    normalized = yaml.safe_load(res.stdout)
    assert normalized["clickhousedb"]["servers"] == ["http://127.0.0.1:8124"]
    assert normalized["clickhousedb"]["password"] == "******", "expanded by the outlet, redacted"
    assert normalized["kafka"]["topic"] == "flows-a"
    assert "outlet-side-secret" not in res.stdout + res.stderr
    # The token from the environment works too; a wrong one, an unknown index, a missing
    # variable and an unknown CA are clear errors, as for a bad local file (exit 2).
    with_token = {**env, "OUTLET_ORCHESTRATOR_TOKEN": TOKEN}
    unknown = outlet_cli("check-config", f"{o.url}#7", *ca, env=with_token)
    assert unknown.returncode == 2
    assert "answered 404: no outlet configuration 7: this orchestrator has 3" in unknown.stderr
    ca_file = str(tls["ca"])
    for index, token, ca_used, outlet_env, message in (
        (0, TOKEN, ca_file, env, ""),
        (0, "wrong", ca_file, env, "answered 401: missing or wrong bearer token"),
        (1, TOKEN, ca_file, {"CH_PASSWORD": "x"},
         "clickhousedb.password: environment variable OTHER_PW is not set"),
        (0, TOKEN, None, env, "CERTIFICATE_VERIFY_FAILED"),
    ):  # fmt: skip
        remote = RemoteConfig(RemoteSource.parse(f"{o.url}#{index}"), cache_dir=tmp_path,
                              token=token, ca_file=ca_used, env=outlet_env)  # fmt: skip
        if not message:
            assert remote.fetch().config.kafka.topic == "flows-a"
            continue
        with pytest.raises(FetchError, match=message):
            remote.fetch()
