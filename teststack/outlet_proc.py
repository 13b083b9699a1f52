"""Run the outlet as a real subprocess against the stack (tests, demo, chaos, load).

The config is generated from the stack's endpoints.json, so every harness points the
outlet at the same proxied addresses (faults can be injected between the outlet and
each ClickHouse or Kafka).
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from outlet.config import PRIMARY_NAME, OutletConfig
from outlet.confspec import locate, secret_paths
from teststack.chserver_proc import free_port as free_port  # re-exported for the harnesses
from teststack.prometheus import ScrapeTargets
from teststack.promtext import Scrape, metric_value, parse_metrics
from teststack.stack import Endpoints


def destination_label(dest: str, destinations: Sequence[str]) -> str:
    """The outlet's ``destination`` metric label of a stack server in a config made by
    :func:`outlet_config`: ``primary`` for the first one, its name for the others."""
    return PRIMARY_NAME if dest == destinations[0] else dest


def outlet_config(
    ep: Endpoints,
    *,
    state_path: str,
    http_port: int,
    destinations: Sequence[str] = ("local", "azure"),
    proxied: bool = True,
    consumer_group: str = "outlet",
    topic: str | None = None,
    batch_size: int = 50_000,
    wait_time: str = "1s",
    azure_max_retries: int = 3,
    metadata: dict[str, Any] | None = None,
    networks: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    database: str = "flows",
    additional_extra: dict[str, Any] | None = None,
    grace_period: str = "30s",
    compression: str | None = None,
) -> dict[str, Any]:
    """An outlet config dict: the first destination is the primary. ``compression``
    None keeps the outlet's default (``clickhouse.compression``)."""

    def connection(name: str, max_retries: int) -> dict[str, Any]:
        ch = ep.clickhouse[name]
        return {
            "servers": [ch.proxied_url if proxied else ch.url],
            "database": database,
            "username": ch.username,
            "password": ch.password,
            "max-retries": max_retries,
            "dial-timeout": "2s",
            "insert-timeout": "10s",
            "retry-initial-backoff": "100ms",
            "retry-max-backoff": "2s",
        }

    primary, *others = destinations
    cfg: dict[str, Any] = {
        "kafka": {
            "brokers": [ep.kafka.bootstrap_proxied if proxied else ep.kafka.bootstrap],
            "topic": topic or ep.kafka.topic,
            "consumer-group": consumer_group,
        },
        "clickhousedb": connection(primary, 0),
        "clickhouse": {
            "maximum-batch-size": batch_size,
            "maximum-wait-time": wait_time,
            "grace-period": grace_period,
            **({"compression": compression} if compression is not None else {}),
        },
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "state": {"path": state_path},
        "log": {"level": "info", "format": "human"},
    }
    if others:
        cfg["additional-clickhouses"] = [
            {
                "name": name,
                "connection": connection(name, azure_max_retries),
                "clickhouse": {"maximum-batch-size": batch_size, "maximum-wait-time": wait_time},
                **(additional_extra or {}),
            }
            for name in others
        ]
    if metadata:
        cfg["metadata"] = metadata
    if networks:
        cfg["networks"] = networks
    if extra:
        cfg.update(extra)
    return cfg


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM a process started in its own session, wait ``timeout``, then SIGKILL its
    group; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return int(proc.returncode)


@dataclass
class OutletProcess:
    """One outlet subprocess with its config file, state dir and log."""

    workdir: Path
    config: dict[str, Any]
    name: str = "outlet"
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    split_output: bool = False  # stdout to <name>.stdout, stderr (the log) to <name>.log
    # The stack's Prometheus scrapes the outlet while it runs: registered on start, removed
    # on a graceful stop, kept on a kill (a crash is what OutletDown is for).
    scrape_targets: ScrapeTargets | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"{self.name}.stdout"

    @property
    def http(self) -> str:
        return "http://" + str(self.config["http"]["listen"])

    def command(self) -> list[str]:
        return [sys.executable, "-m", "outlet.cli", "run", "--config", str(self.config_path)]

    def start(self, wait_ready: bool = True, timeout: float = 60) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        secrets = write_config(self.config_path, self.config)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        out = open(self.stdout_path, "ab") if self.split_output else log  # noqa: SIM115
        env = dict(os.environ, **self.env, **secrets)
        self.proc = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        out.close()
        if wait_ready:
            self.wait_http(timeout)
        if self.scrape_targets is not None:
            self.scrape_targets.add(self.name, str(self.config["http"]["listen"]))

    def wait_http(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"outlet exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.http + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"outlet did not serve /healthz in {timeout}s:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 60) -> bool:
        """Until ``/readyz`` answers 200 (False: the process died or time ran out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                with urllib.request.urlopen(self.http + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def metrics(self) -> Scrape:
        """One scrape of ``/metrics``: ``{'name{labels}': value}``."""
        with urllib.request.urlopen(self.http + "/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels`."""
        return metric_value(self.metrics(), name, **labels)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the graceful case. Returns the exit code."""
        if self.scrape_targets is not None:
            self.scrape_targets.remove(self.name)
        return 0 if self.proc is None else stop_process(self.proc, timeout)

    def restart(self, graceful: bool = True) -> None:
        if graceful:
            self.stop()
        else:
            self.kill()
        self.restarts += 1
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def apply_schema(config_path: Path, env: dict[str, str] | None = None) -> None:
    """`outlet schema apply` as a subprocess (the same path users take); ``env``: what
    :func:`write_config` returned for the file."""
    subprocess.run(
        [sys.executable, "-m", "outlet.cli", "schema", "apply", "--config", str(config_path)],
        check=True, env=dict(os.environ, **(env or {})),
    )


def without_secrets(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of an outlet config whose secret values (every path the outlet declares
    secret) are ``${OUTLET_SECRET_...}`` placeholders, and the environment that sets them:
    a config file written into a run's report directory then holds no password."""
    document = copy.deepcopy(config)
    env: dict[str, str] = {}
    for secret in secret_paths(OutletConfig):
        if secret.kind != "value":
            continue
        for path, node, key in locate(document, secret.path):
            value = node[key]
            if isinstance(value, str) and value and not _PLACEHOLDER.fullmatch(value):
                name = "OUTLET_SECRET_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_").upper()
                env[name] = value
                node[key] = f"${{{name}}}"
    return document, env


_PLACEHOLDER = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def write_config(path: Path, config: dict[str, Any]) -> dict[str, str]:
    """Write an outlet config without its secrets (:func:`without_secrets`); returns the
    environment the outlet needs to read it."""
    document, env = without_secrets(config)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return env
