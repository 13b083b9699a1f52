"""Run the orchestrator, and outlets configured by it, as real subprocesses (tests, demo).

``OrchestratorProcess`` writes its YAML config, starts ``orchestrator run`` (port 0 by
default: the real address is read from its "listening on" log line), and offers the
HTTP calls tests make. ``RemoteOutletProcess`` is an outlet started with the
orchestrator's URL instead of a file.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from teststack.outlet_proc import OutletProcess, stop_process
from teststack.promtext import parse_metrics
from teststack.stack import ClickHouseEndpoints, MultiDCEndpoints, ensure_topic, free_ports

_LISTENING = re.compile(r"api: listening on (https?://\S+?)[, ]")
_RELOADED = re.compile(r"configuration reload(?:ed)? (from|invalid|refused)")


@dataclass
class HTTPReply:
    status: int
    body: str
    headers: dict[str, str]


@dataclass
class OrchestratorProcess:
    """One orchestrator subprocess with its config file and log."""

    workdir: Path
    config: dict[str, Any]
    name: str = "orchestrator"
    env: dict[str, str] = field(default_factory=dict)
    ca_file: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return self.config_path

    def start(self, timeout: float = 30) -> None:
        """Start and wait until the API listens (not until migrations are done)."""
        self.write_config()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "run", "--config",
                 str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **self.env),
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = _LISTENING.search(self.log_text()[offset:])
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"orchestrator exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")  # fmt: skip
            time.sleep(0.1)
        raise TimeoutError(f"orchestrator did not listen in {timeout}s:\n{self.log_tail()}")

    def reload(self, timeout: float = 30) -> str:
        """Write ``config`` and SIGHUP the running orchestrator; returns its outcome
        (``applied``, ``refused`` or ``invalid``) once the reload is logged."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        offset = self.log_path.stat().st_size
        self.write_config()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = _RELOADED.search(self.log_text()[offset:])
            if m:
                return "applied" if m.group(1) == "from" else m.group(1)
            time.sleep(0.1)
        raise TimeoutError(f"orchestrator did not reload in {timeout}s:\n{self.log_tail()}")

    def get(self, path: str, token: str | None = None, etag: str | None = None) -> HTTPReply:
        request = urllib.request.Request(self.url + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if etag is not None:
            request.add_header("If-None-Match", etag)
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as r:
                return HTTPReply(r.status, r.read().decode(), dict(r.headers.items()))
        except urllib.error.HTTPError as e:
            return HTTPReply(e.code, e.read().decode(), dict(e.headers.items()))

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.get("/metrics").body)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /readyz says migrations are done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz").status == 200:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"orchestrator exited:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"migrations not done in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> int:
        return 0 if self.proc is None else stop_process(self.proc, timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def run_orchestrator_cli(*args: str, env: dict[str, str] | None = None,
                         timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``orchestrator <args>`` (check-config, --version) to completion."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
        env=dict(os.environ, **(env or {})), timeout=timeout,
    )  # fmt: skip


@dataclass
class RemoteOutletProcess(OutletProcess):
    """An outlet started as ``outlet run --config <orchestrator URL>#<index> ...``.

    ``config`` is what the orchestrator serves it (tests read ``http.listen`` from it).
    """

    source: str = ""
    extra_args: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "outlet.cli", "run", "--config", self.source,
                *self.extra_args]  # fmt: skip


def site_config(
    ch: ClickHouseEndpoints,
    database: str,
    *,
    password_var: str,
    listen: str = "127.0.0.1:0",
    proxied: bool = False,
    resolutions: list[dict[str, Any]] | None = None,
    outlets: list[dict[str, Any]] | None = None,
    shared_kafka: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An orchestrator config managing ``database`` on one of the stack's ClickHouse
    servers; its password is the placeholder ``${password_var}`` (set it in the env)."""
    cfg: dict[str, Any] = {
        "http": {"listen": listen},
        "log": {"level": "info"},
        "clickhousedb": {
            "servers": [ch.proxied_url if proxied else ch.url],
            "database": database,
            "username": ch.username,
            "password": f"${{{password_var}}}",
            "dial-timeout": "2s",
        },
        "clickhouse": {"retry-initial-backoff": "200ms", "retry-max-backoff": "1s"},
    }
    if resolutions is not None:
        cfg["clickhouse"]["resolutions"] = resolutions
    if shared_kafka is not None:
        cfg["kafka"] = shared_kafka
    if outlets is not None:
        cfg["outlet"] = outlets
    return cfg


def resolution_mismatches(
    ch: ClickHouseEndpoints, database: str, intervals: tuple[int, ...] = (60, 300, 3600)
) -> dict[str, list[tuple[Any, ...]]]:
    """Per resolution table, the time buckets whose Bytes/Packets sums differ from the raw
    table's (empty lists when every aggregate equals the raw sums)."""
    from orchestrator.ddl import Resolution
    from teststack.verify import client

    c = client(ch)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for interval in intervals:
            table = Resolution(interval, 0).table
            rows = c.query(
                f"SELECT t, r.b, r.p, a.b, a.p FROM (SELECT toStartOfInterval(TimeReceived,"
                f" toIntervalSecond({interval})) AS t, sum(Bytes) AS b, sum(Packets) AS p"
                f" FROM {database}.flows GROUP BY t) AS r FULL OUTER JOIN (SELECT TimeReceived"
                f" AS t, sum(Bytes) AS b, sum(Packets) AS p FROM {database}.{table} GROUP BY t)"
                " AS a USING (t) WHERE r.b != a.b OR r.p != a.p ORDER BY t"
            ).result_rows
            out[table] = [tuple(row) for row in rows]
        return out
    finally:
        c.close()


LOCAL_PASSWORD_VAR, CENTRAL_PASSWORD_VAR = "LOCAL_CH_PASSWORD", "CENTRAL_CH_PASSWORD"


def resolutions(raw_days: int) -> list[dict[str, Any]]:
    """Akvorado's default resolutions, with a site's own raw retention."""
    return [{"interval": 0, "ttl": f"{raw_days}d"}, {"interval": "1m", "ttl": "7d"},
            {"interval": "5m", "ttl": "90d"}, {"interval": "1h", "ttl": "360d"}]


def central_destination(view: ClickHouseEndpoints, database: str, password_var: str
                        ) -> dict[str, Any]:
    """An additional destination ``central`` through ``view``'s proxy (a datacenter's link
    to central in the multi-dc stack), its password a placeholder."""
    return {"name": "central", "connection": {
        "servers": [view.proxied_url], "database": database, "username": view.username,
        "password": f"${{{password_var}}}", "max-retries": 3, "dial-timeout": "2s",
        "retry-initial-backoff": "100ms", "retry-max-backoff": "2s"}}  # fmt: skip


@dataclass
class MultiDCSites:
    """docs/deployment.md on the multi-dc stack: an orchestrator per site (each datacenter's
    manages its local server with ``local_days`` of raw flows, central's manages central
    with ``central_days``) and one outlet per datacenter, started from its site's
    orchestrator URL. ``database`` and ``topic`` are the same everywhere."""

    mep: MultiDCEndpoints
    workdir: Path
    database: str
    topic: str
    local_days: int = 15
    central_days: int = 30
    batch_size: int = 2000
    outlet_extra: dict[str, Any] = field(default_factory=dict)  # merged into each entry
    orchestrators: dict[str, OrchestratorProcess] = field(default_factory=dict)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    outlets: dict[str, RemoteOutletProcess] = field(default_factory=dict)

    def server(self, site: str) -> ClickHouseEndpoints:
        """``central``, or datacenter ``site``'s local server."""
        if site == "central":
            return self.mep.central
        return self.mep.datacenters[site].clickhouse["local"]

    @property
    def sites(self) -> tuple[str, ...]:
        return ("central", *self.mep.datacenters)

    def start_orchestrators(self, with_central: bool = False) -> None:
        """Every site's orchestrator, until its migrations are done; the outlet entries
        include central when ``with_central``. Every listener of the sites (each
        orchestrator, each outlet's HTTP port) is picked at once, distinct, before any
        process starts: an outlet's port picked alone was once taken by an orchestrator
        binding port 0 before the outlet started (the outlet then died, address in use)."""
        from teststack.outlet_proc import outlet_config

        ports = iter(free_ports(1 + 2 * len(self.mep.datacenters)))
        central = self.mep.central
        self._start("central", site_config(central, self.database,
                                           password_var=CENTRAL_PASSWORD_VAR,
                                           listen=f"127.0.0.1:{next(ports)}",
                                           resolutions=resolutions(self.central_days)),
                    {CENTRAL_PASSWORD_VAR: central.password})  # fmt: skip
        for dc, ep in self.mep.datacenters.items():
            ensure_topic(ep.kafka.bootstrap, self.topic, 2)
            entry = outlet_config(ep, state_path=str(self.workdir / dc / "state"),
                                  http_port=next(ports), destinations=("local",),
                                  topic=self.topic, database=self.database,
                                  batch_size=self.batch_size, wait_time="500ms",
                                  **self.outlet_extra)  # fmt: skip
            entry["clickhousedb"]["password"] = f"${{{LOCAL_PASSWORD_VAR}}}"
            entry["kafka"] = {"consumer-group": f"g_{self.topic}_{dc}"}  # the rest: shared
            if with_central:
                entry["additional-clickhouses"] = [self._central_for(dc)]
            self.entries[dc] = entry
            local = self.server(dc)
            self._start(dc, site_config(local, self.database, password_var=LOCAL_PASSWORD_VAR,
                                        listen=f"127.0.0.1:{next(ports)}",
                                        resolutions=resolutions(self.local_days),
                                        shared_kafka={"brokers": [ep.kafka.bootstrap_proxied],
                                                      "topic": self.topic},
                                        outlets=[entry]),
                        {LOCAL_PASSWORD_VAR: local.password})  # fmt: skip
        for o in self.orchestrators.values():
            o.wait_ready()

    def _start(self, site: str, cfg: dict[str, Any], env: dict[str, str]) -> None:
        o = OrchestratorProcess(self.workdir / site, cfg, name=f"orchestrator-{site}", env=env)
        self.orchestrators[site] = o
        o.start()

    def _central_for(self, dc: str) -> dict[str, Any]:
        view = self.mep.datacenters[dc].clickhouse["central"]  # through dc's own link
        return central_destination(view, self.database, CENTRAL_PASSWORD_VAR)

    def start_outlets(self, refresh: str = "1s") -> None:
        """Each datacenter's outlet: ``outlet run --config <its orchestrator>#0``."""
        for dc, entry in self.entries.items():
            outlet = RemoteOutletProcess(
                self.workdir / dc, {"http": entry["http"]}, name=f"outlet-{dc}",
                env={LOCAL_PASSWORD_VAR: self.server(dc).password,
                     CENTRAL_PASSWORD_VAR: self.mep.central.password},
                source=f"{self.orchestrators[dc].url}#0",
                extra_args=["--state-dir", str(self.workdir / dc / "state"),
                            "--config-refresh-interval", refresh, "--config-wait", "2s"])
            self.outlets[dc] = outlet
            outlet.start()

    def roll_out_central(self) -> dict[str, str]:
        """Add central to every datacenter's outlet entry live (file + SIGHUP); each site
        orchestrator's reload outcome."""
        outcomes = {}
        for dc, entry in self.entries.items():
            entry["additional-clickhouses"] = [self._central_for(dc)]
            outcomes[dc] = self.orchestrators[dc].reload()
        return outcomes

    def raw_ttl_days(self, site: str) -> float:
        """The raw ``flows`` table's TTL on a site's server, in days."""
        from teststack.verify import query

        engine = query(self.server(site), "SELECT engine_full FROM system.tables WHERE"
                                          f" database = '{self.database}' AND name = 'flows'")
        m = re.search(r"TTL TimeReceived \+ toIntervalSecond\((\d+)\)", engine)
        return int(m.group(1)) / 86400 if m else float("nan")

    def log_tails(self) -> str:
        return "\n".join(f"--- outlet {dc}\n{o.log_tail()}" for dc, o in self.outlets.items())

    def stop(self) -> list[int]:
        """Outlets (SIGTERM: flushed, committed), then orchestrators; their exit codes."""
        codes = [o.stop() for o in self.outlets.values()]
        return codes + [o.stop() for o in self.orchestrators.values()]
