"""The native test stack: Apache Kafka (KRaft), Toxiproxy and ClickHouse-on-chDB servers.

Two topologies (``start_stack(..., topology=...)``, ``chaos stack up --topology``):

- ``single-dc`` (default): one Kafka, ClickHouse servers ``local`` and ``azure``;
- ``multi-dc``: datacenters ``a`` and ``b``, each with its own Kafka (its own cluster id,
  the same topic name) and its own ``local`` ClickHouse, and one ``central`` ClickHouse
  that both write to. Every link has its own Toxiproxy proxy: ``kafka-<dc>``,
  ``clickhouse-local-<dc>`` and ``clickhouse-central-<dc>`` (datacenter ``<dc>``'s link
  to central), so one datacenter's link to central can be cut while the other's stays up.
  Only these processes start: two brokers, three ClickHouse servers, one Toxiproxy.

Every process binds to 127.0.0.1 on free ports allocated at start. Layout of a stack
directory (default ``.stack``)::

    endpoints.json       the public contract (docs/CONTRACTS.md), written once healthy
    pids.json            every started process (pid, process group, start time, command, log),
                         updated as each process starts so ``stop_stack`` works after failures
    state.json           internal ports and settings (kafka listener/controller ports, ...)
    tls/                 ca.pem, ca-key.pem, server.pem, server-key.pem (127.0.0.1, localhost)
    kafka/               server.properties, log4j2.xml, data/ (kafka-<dc>/ in multi-dc)
    clickhouse/<name>/   data directory of each ClickHouse server
    logs/                kafka.log (log4j2), kafka.out, toxiproxy.log, clickhouse-<name>.log

Python API: ``Endpoints.load`` (single-dc), ``MultiDCEndpoints.load`` (multi-dc),
``load_endpoints`` (either), ``start_stack``, ``stop_stack``, ``stack_status``,
``is_healthy``, ``restart_clickhouse``, ``restart_kafka``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from teststack import secure as sec
from teststack.certs import Authority
from teststack.paths import PROJECT_ROOT
from teststack.secure import SecureEndpoints
from teststack.toxiproxy import Toxiproxy, ToxiproxyError

CLICKHOUSE_NAMES = ("local", "azure")
CLICKHOUSE_USER = "outlet"
KAFKA_PROXY = "kafka"
SINGLE_DC, MULTI_DC = "single-dc", "multi-dc"
TOPOLOGIES = (SINGLE_DC, MULTI_DC)
DATACENTERS = ("a", "b")  # multi-dc
CENTRAL = "central"
KAFKA_HEAP = os.environ.get("CHAOS_KAFKA_HEAP", "-Xmx512m")

log = logging.getLogger("teststack.stack")


def tools_dir() -> Path:
    return Path(os.environ.get("CHAOS_TOOLS_DIR", PROJECT_ROOT / ".tools")).resolve()


# ---------------------------------------------------------------------------------------
# Endpoints (docs/CONTRACTS.md)
# ---------------------------------------------------------------------------------------


def _hostport(url_or_addr: str) -> tuple[str, int]:
    addr = url_or_addr.split("://", 1)[-1].split("/", 1)[0]
    host, port = addr.rsplit(":", 1)
    return host, int(port)


@dataclass(frozen=True)
class KafkaEndpoints:
    bootstrap: str
    bootstrap_proxied: str
    topic: str
    partitions: int
    proxy: str

    @property
    def port(self) -> int:
        return _hostport(self.bootstrap)[1]

    @property
    def proxied_port(self) -> int:
        return _hostport(self.bootstrap_proxied)[1]


@dataclass(frozen=True)
class ToxiproxyEndpoints:
    api: str

    def client(self) -> Toxiproxy:
        return Toxiproxy(self.api)


@dataclass(frozen=True)
class ClickHouseEndpoints:
    url: str
    proxied_url: str
    https_url: str
    username: str
    password: str
    data_dir: str
    proxy: str
    mtls_url: str = ""  # secure stacks: HTTPS requiring a client certificate (stack CA)

    @property
    def host(self) -> str:
        return _hostport(self.url)[0]

    @property
    def port(self) -> int:
        return _hostport(self.url)[1]

    @property
    def proxied_port(self) -> int:
        return _hostport(self.proxied_url)[1]

    @property
    def https_port(self) -> int:
        return _hostport(self.https_url)[1]


@dataclass(frozen=True)
class Endpoints:
    kafka: KafkaEndpoints
    toxiproxy: ToxiproxyEndpoints
    ca_file: str
    clickhouse: dict[str, ClickHouseEndpoints]
    stack_dir: str = ""
    secure: SecureEndpoints | None = None  # secure stacks only (teststack/secure.py)

    @classmethod
    def load(cls, stack_dir: str | os.PathLike[str] = ".stack") -> Endpoints:
        path = Path(stack_dir) / "endpoints.json"
        data = json.loads(path.read_text())
        if data.get("topology", SINGLE_DC) != SINGLE_DC:
            raise StackError("stack", f"{path} describes a {data['topology']} stack: use "
                                      "MultiDCEndpoints.load (or load_endpoints)")
        return cls.from_dict(data, str(Path(stack_dir).resolve()))

    @classmethod
    def from_dict(cls, data: dict[str, Any], stack_dir: str = "") -> Endpoints:
        return cls(
            kafka=KafkaEndpoints(**data["kafka"]),
            toxiproxy=ToxiproxyEndpoints(**data["toxiproxy"]),
            ca_file=str(data["ca_file"]),
            clickhouse={k: ClickHouseEndpoints(**v) for k, v in data["clickhouse"].items()},
            stack_dir=stack_dir,
            secure=SecureEndpoints.from_dict(data["secure"]) if data.get("secure") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kafka": self.kafka.__dict__.copy(),
            "toxiproxy": self.toxiproxy.__dict__.copy(),
            "ca_file": self.ca_file,
            "clickhouse": {k: v.__dict__.copy() for k, v in self.clickhouse.items()},
        }
        if self.secure is not None:
            out["secure"] = self.secure.to_dict()
        return out


@dataclass(frozen=True)
class MultiDCEndpoints:
    """A multi-dc stack: per datacenter, the same shape as a single-dc stack's endpoints
    (its Kafka, and ClickHouse servers ``local`` and ``central`` as that datacenter sees
    them: ``central``'s proxied URL and proxy are that datacenter's link to it)."""

    toxiproxy: ToxiproxyEndpoints
    ca_file: str
    datacenters: dict[str, Endpoints]
    stack_dir: str = ""

    topology = MULTI_DC

    @property
    def central(self) -> ClickHouseEndpoints:
        """Central's direct endpoints (the same in every datacenter's view but the proxy)."""
        return next(iter(self.datacenters.values())).clickhouse[CENTRAL]

    @classmethod
    def load(cls, stack_dir: str | os.PathLike[str] = ".stack") -> MultiDCEndpoints:
        path = Path(stack_dir) / "endpoints.json"
        data = json.loads(path.read_text())
        if data.get("topology") != MULTI_DC:
            raise StackError("stack", f"{path} describes a single-dc stack: use Endpoints.load")
        return cls.from_dict(data, str(Path(stack_dir).resolve()))

    @classmethod
    def from_dict(cls, data: dict[str, Any], stack_dir: str = "") -> MultiDCEndpoints:
        shared = {"toxiproxy": data["toxiproxy"], "ca_file": data["ca_file"]}
        return cls(
            toxiproxy=ToxiproxyEndpoints(**data["toxiproxy"]),
            ca_file=str(data["ca_file"]),
            datacenters={dc: Endpoints.from_dict({**shared, **view}, stack_dir)
                         for dc, view in data["datacenters"].items()},
            stack_dir=stack_dir,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "topology": MULTI_DC,
            "toxiproxy": self.toxiproxy.__dict__.copy(),
            "ca_file": self.ca_file,
            "datacenters": {
                dc: {k: v for k, v in ep.to_dict().items() if k in ("kafka", "clickhouse")}
                for dc, ep in self.datacenters.items()
            },
        }


def load_endpoints(stack_dir: str | os.PathLike[str] = ".stack") -> Endpoints | MultiDCEndpoints:
    """The endpoints of whichever topology runs in stack_dir."""
    data = json.loads((Path(stack_dir) / "endpoints.json").read_text())
    if data.get("topology") == MULTI_DC:
        return MultiDCEndpoints.from_dict(data, str(Path(stack_dir).resolve()))
    return Endpoints.from_dict(data, str(Path(stack_dir).resolve()))


# ---------------------------------------------------------------------------------------
# Errors, files
# ---------------------------------------------------------------------------------------


class StackError(RuntimeError):
    """A component failed to start (or the stack is unusable)."""

    def __init__(self, component: str, message: str, log_file: Path | None = None) -> None:
        super().__init__(f"{component}: {message}")
        self.component = component
        self.message = message
        self.log_file = log_file

    def log_tail(self, lines: int = 30) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return tail(self.log_file, lines)


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_pids_lock = threading.Lock()


@dataclass
class ProcRecord:
    """One started process, as stored in pids.json."""

    pid: int
    pgid: int
    create_time: float
    cmd: list[str]
    log: str
    ports: dict[str, int] = field(default_factory=dict)
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        try:
            p = psutil.Process(self.pid)
            return (
                abs(p.create_time() - self.create_time) < 1.0
                and p.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def group_alive(self) -> bool:
        """True while any process of the group remains (zombies of ours excluded)."""
        if self.alive():
            return True
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == self.pgid and p.status() != psutil.STATUS_ZOMBIE:
                    return True
            except (OSError, psutil.Error):
                continue
        return False


def load_pids(stack_dir: Path) -> dict[str, ProcRecord]:
    data = _read_json(stack_dir / "pids.json") or {}
    return {name: ProcRecord(**rec) for name, rec in data.get("components", {}).items()}


def _save_pid(stack_dir: Path, name: str, rec: ProcRecord | None) -> None:
    with _pids_lock:
        data = _read_json(stack_dir / "pids.json") or {"components": {}}
        if rec is None:
            data["components"].pop(name, None)
        else:
            data["components"][name] = rec.__dict__
        _write_json(stack_dir / "pids.json", data)


# ---------------------------------------------------------------------------------------
# Ports, TLS
# ---------------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """Allocate n distinct free TCP ports on 127.0.0.1 (held together, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def generate_ca(tls_dir: Path, common_name: str = "chaos-stack test CA") -> tuple[Path, Path]:
    """Write a self-signed CA (ca.pem, ca-key.pem) into tls_dir; returns their paths."""
    ca = Authority.create(common_name)
    return ca.write(tls_dir / "ca.pem", tls_dir / "ca-key.pem")


def generate_tls(tls_dir: Path) -> dict[str, Path]:
    """CA + server certificate for 127.0.0.1/localhost. Reuses existing files."""
    paths = {
        "ca": tls_dir / "ca.pem",
        "ca_key": tls_dir / "ca-key.pem",
        "cert": tls_dir / "server.pem",
        "key": tls_dir / "server-key.pem",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    generate_ca(tls_dir)
    ca = Authority.load(paths["ca"], paths["ca_key"])
    ca.issue("127.0.0.1", ips=["127.0.0.1"], dns=["localhost"], server=True).write(
        paths["cert"], paths["key"]
    )
    return paths


# ---------------------------------------------------------------------------------------
# Process management
# ---------------------------------------------------------------------------------------


def _spawn(
    stack_dir: Path,
    name: str,
    cmd: list[str],
    log_file: Path,
    ports: dict[str, int],
    cwd: Path,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], ProcRecord]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    with log_file.open("ab") as out:
        out.write(f"\n==== {time.strftime('%F %T')} start: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=full_env,
            start_new_session=True,  # own process group: down kills the whole group
        )
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        create_time = 0.0
    rec = ProcRecord(
        pid=proc.pid,
        pgid=proc.pid,
        create_time=create_time,
        cmd=cmd,
        log=str(log_file),
        ports=ports,
        cwd=str(cwd),
        env=env or {},
    )
    _save_pid(stack_dir, name, rec)
    return proc, rec


def _respawn(stack_dir: Path, name: str, rec: ProcRecord) -> subprocess.Popen[bytes]:
    proc, _ = _spawn(
        stack_dir, name, rec.cmd, Path(rec.log), rec.ports, Path(rec.cwd or "."), rec.env
    )
    return proc


def _terminate(rec: ProcRecord, timeout: float = 20.0) -> bool:
    """SIGTERM the process group, wait, SIGKILL leftovers. True when nothing remains."""
    if not rec.group_alive():
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if rec.alive():
            os.killpg(rec.pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(rec.pid)
        if not rec.group_alive():
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pgid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if rec.alive():
            os.kill(rec.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _reap(rec.pid)
        if not rec.group_alive():
            return True
        time.sleep(0.1)
    return False


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (avoids zombies)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class _Abort:
    """Shared flag: one failing component stops the others' waits early."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def check(self, component: str) -> None:
        if self.event.is_set():
            raise StackError(component, "aborted because another component failed")


def _wait_until(
    component: str,
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    log_file: Path,
    timeout: float,
    abort: _Abort | None = None,
    interval: float = 0.1,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if abort is not None:
            abort.check(component)
        rc = proc.poll()
        if rc is not None:
            raise StackError(component, f"process exited with code {rc}", log_file)
        if ready():
            return
        if time.monotonic() > deadline:
            raise StackError(component, f"not ready after {timeout:.0f} s", log_file)
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise StackError("kafka", "java not found (install Java 17+)")
    return java


def _kafka_classpath() -> str:
    libs = tools_dir() / "kafka" / "libs"
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise StackError("kafka", f"no Kafka jars in {libs}: run `make setup`")
    return f"{libs}/*"


def _toxiproxy_bin() -> Path:
    binary = tools_dir() / "bin" / "toxiproxy-server"
    if not binary.exists():
        raise StackError("toxiproxy", f"{binary} missing: run `make setup`")
    return binary


def _kafkas(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each broker of the stack by component name (``kafka``, or ``kafka-<dc>``): ports,
    cluster id and directory. The name is also its Toxiproxy proxy's and its logs'."""
    if state.get("topology", SINGLE_DC) == MULTI_DC:
        return {f"kafka-{dc}": {**k, "dir": f"kafka-{dc}"} for dc, k in state["kafkas"].items()}
    return {
        "kafka": {
            "port": state["kafka_port"],
            "proxied_upstream_port": state["kafka_proxied_upstream_port"],
            "proxied_port": state["kafka_proxied_port"],
            "controller_port": state["kafka_controller_port"],
            "cluster_id": state["kafka_cluster_id"],
            "dir": "kafka",
            "secure": state.get("secure"),  # secure stacks: teststack/secure.py's ports
        }
    }


def _kafka_files(
    stack_dir: Path, name: str, spec: dict[str, Any], partitions: int
) -> tuple[Path, Path]:
    kdir = stack_dir / spec["dir"]
    data = kdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    logs = stack_dir / "logs"
    p, p2, q, c = (spec["port"], spec["proxied_upstream_port"], spec["proxied_port"],
                   spec["controller_port"])
    props = f"""# generated by chaos stack up
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{c}
controller.listener.names=CONTROLLER
listeners=DIRECT://127.0.0.1:{p},PROXIED://127.0.0.1:{p2},CONTROLLER://127.0.0.1:{c}
advertised.listeners=DIRECT://127.0.0.1:{p},PROXIED://127.0.0.1:{q}
listener.security.protocol.map=DIRECT:PLAINTEXT,PROXIED:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=DIRECT
log.dirs={data}
num.partitions={partitions}
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
num.network.threads=2
num.io.threads=4
"""
    props_file = kdir / "server.properties"
    props_file.write_text(props)
    log4j = f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{logs / f'{name}.log'}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""
    log4j_file = kdir / "log4j2.xml"
    log4j_file.write_text(log4j)
    return props_file, log4j_file


def _kafka_format(stack_dir: Path, kdir: str, props: Path, log4j: Path, cluster_id: str,
                  secure: bool = False) -> None:
    """Format the KRaft storage directory (once). The formatted result is cached under
    .tools/kafka/formatted-<kafka jar> and copied, which saves a JVM start per stack; a
    secure broker's (its SCRAM users are in the metadata) under its own name. The copy gets
    this broker's own cluster id (a cached format must not give every stack, and both
    datacenters of a multi-dc stack, the same id: the outlet's tokens contain it)."""
    data = stack_dir / kdir / "data"
    if (data / "meta.properties").exists():
        return
    jar = next((tools_dir() / "kafka" / "libs").glob("kafka_2.13-*.jar"))
    template = tools_dir() / "kafka" / f"formatted-{jar.stem}"
    scram: list[str] = []
    if secure:
        users = sec.users(tools_dir() / "kafka")
        template = template.with_name(sec.template_name(template.name, users))
        scram = sec.scram_arguments(users)
    if not (template / "meta.properties").exists():
        tmp = template.with_name(f"{template.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tmp_props = tmp.parent / f"{tmp.name}.properties"
        tmp_props.write_text(
            "\n".join(
                line if not line.startswith("log.dirs=") else f"log.dirs={tmp}"
                for line in props.read_text().splitlines()
            )
            + "\n"
        )
        out_file = stack_dir / "logs" / "kafka-format.log"
        cmd = [
            _java(), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", _kafka_classpath(),
            f"-Dlog4j2.configurationFile={log4j}",
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(tmp_props),
            *scram,
        ]
        with out_file.open("wb") as out:
            rc = subprocess.call(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=120
            )
        tmp_props.unlink(missing_ok=True)
        if rc != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StackError("kafka", f"storage format failed (exit {rc})", out_file)
        try:
            tmp.rename(template)
        except OSError:  # another stack won the race: use its template
            shutil.rmtree(tmp, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    for item in template.iterdir():
        if item.is_file():
            shutil.copy2(item, data / item.name)
        else:
            shutil.copytree(item, data / item.name, dirs_exist_ok=True)
    meta = data / "meta.properties"
    lines = [
        f"cluster.id={cluster_id}" if line.startswith("cluster.id=")
        else f"directory.id={_new_kafka_id()}" if line.startswith("directory.id=")
        else line
        for line in meta.read_text().splitlines()
    ]
    meta.write_text("\n".join(lines) + "\n")


def _new_kafka_id() -> str:
    """A Kafka id (cluster or directory): a random UUID in URL-safe base64, as Kafka's."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _kafka_cmd(props: Path, log4j: Path) -> list[str]:
    return [
        _java(), *KAFKA_HEAP.split(), "-Xms128m", "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}", "-Dkafka.logs.dir=" + str(log4j.parent),
        "-cp", _kafka_classpath(), "kafka.Kafka", str(props),
    ]


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("teststack.stack.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000}, logger=quiet)


def kafka_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    host, port = _hostport(bootstrap)
    if not port_open(port, host):
        return False
    try:
        md = _admin(bootstrap).list_topics(timeout=timeout)
    except Exception:
        return False
    return len(md.brokers) > 0


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Create the topic (or add partitions) and wait until its metadata is served."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        NewPartitions,
        NewTopic,
    )

    admin = _admin(bootstrap)
    md = admin.list_topics(timeout=10)
    existing = md.topics.get(topic)
    if existing is None or existing.error is not None:
        futures = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=20)
        try:
            futures[topic].result(timeout=30)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    elif len(existing.partitions) < partitions:
        admin.create_partitions([NewPartitions(topic, partitions)])[topic].result(timeout=30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        if (
            t is not None
            and t.error is None
            and len(t.partitions) >= partitions
            and all(p.leader >= 0 for p in t.partitions.values())
        ):
            return
        time.sleep(0.1)
    raise StackError("kafka", f"topic {topic} has no leaders after {timeout:.0f} s")


def _start_kafka(
    stack_dir: Path, name: str, spec: dict[str, Any], partitions: int, abort: _Abort | None
) -> None:
    props, log4j = _kafka_files(stack_dir, name, spec, partitions)
    secure = spec.get("secure")
    if secure:
        users = sec.users(tools_dir() / "kafka")
        props.write_text(sec.broker_properties(props.read_text(), secure,
                                               stack_dir / "tls", users))
    _kafka_format(stack_dir, spec["dir"], props, log4j, spec["cluster_id"], bool(secure))
    log_file = stack_dir / "logs" / f"{name}.out"
    ports = {
        "direct": spec["port"],
        "proxied_upstream": spec["proxied_upstream_port"],
        "controller": spec["controller_port"],
    }
    proc, _ = _spawn(stack_dir, name, _kafka_cmd(props, log4j), log_file, ports, stack_dir)
    _wait_kafka(stack_dir, name, proc, f"127.0.0.1:{spec['port']}", abort)


def _wait_kafka(
    stack_dir: Path, name: str, proc: subprocess.Popen[bytes], bootstrap: str,
    abort: _Abort | None,
) -> None:
    log_file = stack_dir / "logs" / f"{name}.log"
    if not log_file.exists():
        log_file = stack_dir / "logs" / f"{name}.out"
    _wait_until(
        name, lambda: kafka_ready(bootstrap), proc, log_file, timeout=120, abort=abort,
        interval=0.2,
    )


def _start_toxiproxy(stack_dir: Path, state: dict[str, Any], abort: _Abort | None) -> None:
    port = state["toxiproxy_port"]
    cmd = [str(_toxiproxy_bin()), "-host", "127.0.0.1", "-port", str(port)]
    log_file = stack_dir / "logs" / "toxiproxy.log"
    proc, _ = _spawn(stack_dir, "toxiproxy", cmd, log_file, {"api": port}, stack_dir)
    client = Toxiproxy(f"http://127.0.0.1:{port}", timeout=2)
    _wait_until("toxiproxy", client.ping, proc, log_file, timeout=30, abort=abort)


def _clickhouse_proxies(state: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Toxiproxy proxy name -> (ClickHouse server name, listen port). Central has one per
    datacenter (``clickhouse-central-<dc>``): each datacenter's link to it can be cut."""
    out: dict[str, tuple[str, int]] = {}
    for name, ch in state["clickhouse"].items():
        if "proxied_ports" in ch:
            for dc, port in ch["proxied_ports"].items():
                out[f"clickhouse-{name}-{dc}"] = (name, port)
        else:
            out[f"clickhouse-{name}"] = (name, ch["proxied_port"])
    return out


def _create_proxies(stack_dir: Path, state: dict[str, Any]) -> None:
    """Proxies in front of each ClickHouse HTTP port and each Kafka's PROXIED listener."""
    client = Toxiproxy(f"http://127.0.0.1:{state['toxiproxy_port']}", timeout=5)
    proxies = [
        {
            "name": proxy,
            "listen": f"127.0.0.1:{port}",
            "upstream": f"127.0.0.1:{state['clickhouse'][name]['http_port']}",
            "enabled": True,
        }
        for proxy, (name, port) in _clickhouse_proxies(state).items()
    ]
    proxies += [
        {
            "name": name,
            "listen": f"127.0.0.1:{spec['proxied_port']}",
            "upstream": f"127.0.0.1:{spec['proxied_upstream_port']}",
            "enabled": True,
        }
        for name, spec in _kafkas(state).items()
    ]
    try:
        client.populate(proxies)
    except ToxiproxyError as e:
        raise StackError(
            "toxiproxy", f"creating proxies failed: {e}", stack_dir / "logs" / "toxiproxy.log"
        ) from e


def clickhouse_ping(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def clickhouse_cmd(
    *,
    http_port: int,
    https_port: int | None,
    data_dir: Path | str,
    password: str,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    user: str = CLICKHOUSE_USER,
    mtls_port: int | None = None,
    client_ca_file: Path | str | None = None,
) -> list[str]:
    """Command line of our ClickHouse-HTTP-on-chDB server (docs/CONTRACTS.md)."""
    cmd = [
        sys.executable, "-m", "teststack.chserver", "--host", "127.0.0.1",
        "--http-port", str(http_port),
    ]
    if https_port is not None:
        cmd += ["--https-port", str(https_port), "--certfile", str(certfile),
                "--keyfile", str(keyfile)]
    if mtls_port is not None:
        cmd += ["--mtls-port", str(mtls_port), "--client-ca-file", str(client_ca_file)]
    cmd += ["--data-dir", str(data_dir), f"--user={user}", f"--password={password}"]
    return cmd


def _log_has_ready(log_file: Path, offset: int) -> bool:
    try:
        with log_file.open("rb") as f:
            f.seek(offset)
            return b"READY http=" in f.read()
    except OSError:
        return False


def _start_clickhouse(
    stack_dir: Path, state: dict[str, Any], name: str, abort: _Abort | None
) -> None:
    ch = state["clickhouse"][name]
    tls = stack_dir / "tls"
    data_dir = Path(ch["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = stack_dir / "logs" / f"clickhouse-{name}.log"
    for attempt in range(3):
        cmd = clickhouse_cmd(
            http_port=ch["http_port"], https_port=ch["https_port"], data_dir=data_dir,
            password=ch["password"], certfile=tls / "server.pem",
            keyfile=tls / "server-key.pem", mtls_port=ch.get("mtls_port"),
            client_ca_file=tls / "ca.pem",
        )
        ports = {"http": ch["http_port"], "https": ch["https_port"]}
        if ch.get("mtls_port"):
            ports["mtls"] = ch["mtls_port"]
        offset = log_file.stat().st_size if log_file.exists() else 0
        proc, _ = _spawn(
            stack_dir, f"clickhouse-{name}", cmd, log_file, ports, PROJECT_ROOT,
            env={"PYTHONUNBUFFERED": "1"},
        )
        try:
            _wait_clickhouse(name, proc, log_file, offset, ch["http_port"], abort)
            return
        except StackError:
            with log_file.open("rb") as f:
                f.seek(offset)
                collided = b"Address already in use" in f.read()
            if not collided or attempt == 2:
                raise
            # Another program took a port between allocation and bind: new ports, retry.
            _reap(proc.pid)
            ch["http_port"], ch["https_port"], mtls = free_ports(3)
            if ch.get("mtls_port"):
                ch["mtls_port"] = mtls


def _wait_clickhouse(
    name: str,
    proc: subprocess.Popen[bytes],
    log_file: Path,
    offset: int,
    http_port: int,
    abort: _Abort | None,
) -> None:
    url = f"http://127.0.0.1:{http_port}"

    def ready() -> bool:
        return _log_has_ready(log_file, offset) and clickhouse_ping(url)

    try:
        _wait_until(f"clickhouse-{name}", ready, proc, log_file, timeout=90, abort=abort)
    except StackError as e:
        if proc.poll() == 3:
            e.message += " (data directory in use)"
        raise


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def _clickhouse_state(stack_dir: Path, name: str, it: Iterator[int]) -> dict[str, Any]:
    return {
        "http_port": next(it),
        "https_port": next(it),
        "proxied_port": next(it),
        "password": secrets.token_hex(12),
        "data_dir": str(stack_dir / "clickhouse" / name),
    }


def _new_state(stack_dir: Path, partitions: int, topic: str, topology: str = SINGLE_DC
               ) -> dict[str, Any]:
    old = _read_json(stack_dir / "state.json") or {}
    if topology == MULTI_DC:
        return _new_multi_dc_state(stack_dir, partitions, topic, old)
    it = iter(free_ports(4 + 3 * len(CLICKHOUSE_NAMES) + 1))
    state: dict[str, Any] = {
        "partitions": partitions,
        "topic": topic,
        "kafka_cluster_id": old.get("kafka_cluster_id") or _new_kafka_id(),
        "kafka_port": next(it),
        "kafka_proxied_upstream_port": next(it),
        "kafka_proxied_port": next(it),
        "kafka_controller_port": next(it),
        "toxiproxy_port": next(it),
        "clickhouse": {},
    }
    for name in CLICKHOUSE_NAMES:
        state["clickhouse"][name] = _clickhouse_state(stack_dir, name, it)
    return state


def _new_multi_dc_state(stack_dir: Path, partitions: int, topic: str, old: dict[str, Any]
                        ) -> dict[str, Any]:
    n = len(DATACENTERS)
    it = iter(free_ports(1 + 4 * n + 3 * (n + 1) + n))
    old_kafkas = old.get("kafkas") or {}
    state: dict[str, Any] = {
        "topology": MULTI_DC,
        "partitions": partitions,
        "topic": topic,
        "toxiproxy_port": next(it),
        "kafkas": {},
        "clickhouse": {},
    }
    for dc in DATACENTERS:
        state["kafkas"][dc] = {
            # every datacenter's Kafka has its own cluster id, as in real deployments
            "cluster_id": (old_kafkas.get(dc) or {}).get("cluster_id") or _new_kafka_id(),
            "port": next(it),
            "proxied_upstream_port": next(it),
            "proxied_port": next(it),
            "controller_port": next(it),
        }
        state["clickhouse"][f"local-{dc}"] = _clickhouse_state(stack_dir, f"local-{dc}", it)
    central = _clickhouse_state(stack_dir, CENTRAL, it)
    del central["proxied_port"]
    central["proxied_ports"] = {dc: next(it) for dc in DATACENTERS}
    state["clickhouse"][CENTRAL] = central
    return state


def _add_secure_state(state: dict[str, Any]) -> None:
    """Ports of the secure listeners (teststack/secure.py)."""
    ports = free_ports(3 + len(state["clickhouse"]))
    state["secure"] = sec.new_ports(ports[:3])
    for ch, port in zip(state["clickhouse"].values(), ports[3:], strict=True):
        ch["mtls_port"] = port


def _clickhouse_endpoints(name: str, ch: dict[str, Any], proxy: str, proxied_port: int
                          ) -> ClickHouseEndpoints:
    return ClickHouseEndpoints(
        url=f"http://127.0.0.1:{ch['http_port']}",
        proxied_url=f"http://127.0.0.1:{proxied_port}",
        https_url=f"https://127.0.0.1:{ch['https_port']}",
        mtls_url=f"https://127.0.0.1:{ch['mtls_port']}" if ch.get("mtls_port") else "",
        username=CLICKHOUSE_USER,
        password=ch["password"],
        data_dir=ch["data_dir"],
        proxy=proxy,
    )


def _kafka_endpoints(state: dict[str, Any], name: str, spec: dict[str, Any]) -> KafkaEndpoints:
    return KafkaEndpoints(
        bootstrap=f"127.0.0.1:{spec['port']}",
        bootstrap_proxied=f"127.0.0.1:{spec['proxied_port']}",
        topic=state["topic"],
        partitions=state["partitions"],
        proxy=name,
    )


def _endpoints_from_state(stack_dir: Path, state: dict[str, Any]
                          ) -> Endpoints | MultiDCEndpoints:
    toxiproxy = ToxiproxyEndpoints(api=f"http://127.0.0.1:{state['toxiproxy_port']}")
    ca_file = str(stack_dir / "tls" / "ca.pem")
    kafkas = _kafkas(state)
    chs = state["clickhouse"]
    if state.get("topology", SINGLE_DC) == MULTI_DC:
        central = chs[CENTRAL]
        views = {
            dc: Endpoints(
                kafka=_kafka_endpoints(state, f"kafka-{dc}", kafkas[f"kafka-{dc}"]),
                toxiproxy=toxiproxy,
                ca_file=ca_file,
                clickhouse={
                    "local": _clickhouse_endpoints(
                        f"local-{dc}", chs[f"local-{dc}"], f"clickhouse-local-{dc}",
                        chs[f"local-{dc}"]["proxied_port"]),
                    CENTRAL: _clickhouse_endpoints(
                        CENTRAL, central, f"clickhouse-central-{dc}",
                        central["proxied_ports"][dc]),
                },
                stack_dir=str(stack_dir),
            )
            for dc in state["kafkas"]
        }
        return MultiDCEndpoints(toxiproxy, ca_file, views, str(stack_dir))
    return Endpoints(
        kafka=_kafka_endpoints(state, KAFKA_PROXY, kafkas["kafka"]),
        toxiproxy=toxiproxy,
        ca_file=ca_file,
        clickhouse={
            name: _clickhouse_endpoints(name, ch, f"clickhouse-{name}", ch["proxied_port"])
            for name, ch in chs.items()
        },
        stack_dir=str(stack_dir),
        secure=sec.endpoints(state["secure"], stack_dir / "tls", sec.users(tools_dir() / "kafka"))
        if state.get("secure") else None,
    )


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    alive: bool
    ports: dict[str, int]
    healthy: bool
    detail: str = ""


def stack_status(stack_dir: str | os.PathLike[str] = ".stack") -> list[ComponentStatus]:
    sdir = Path(stack_dir).resolve()
    pids = load_pids(sdir)
    state = _read_json(sdir / "state.json") or {}
    result: list[ComponentStatus] = []
    for name, rec in pids.items():
        alive = rec.alive()
        healthy = False
        detail = ""
        if alive:
            if name == "toxiproxy":
                client = Toxiproxy(f"http://127.0.0.1:{rec.ports['api']}", timeout=2)
                try:
                    proxies = client.proxies()
                    healthy = True
                    down = [p.name for p in proxies.values() if not p.enabled]
                    toxics = sum(len(p.toxics) for p in proxies.values())
                    detail = f"{len(proxies)} proxies, {toxics} toxics"
                    if down:
                        detail += f", disabled: {','.join(down)}"
                except ToxiproxyError as e:
                    detail = str(e)
            elif name == "kafka" or name.startswith("kafka-"):
                healthy = kafka_ready(f"127.0.0.1:{rec.ports['direct']}")
                spec = _kafkas(state).get(name, {}) if state else {}
                if spec.get("proxied_port"):
                    rec.ports["proxied"] = spec["proxied_port"]
            elif name.startswith("clickhouse-"):
                healthy = clickhouse_ping(f"http://127.0.0.1:{rec.ports['http']}")
                ch = state.get("clickhouse", {}).get(name.removeprefix("clickhouse-"), {})
                if ch.get("proxied_port"):
                    rec.ports["proxied"] = ch["proxied_port"]
                for dc, port in (ch.get("proxied_ports") or {}).items():
                    rec.ports[f"proxied-{dc}"] = port
            else:  # optional components (teststack/prometheus.py): their ports answer
                healthy = bool(rec.ports) and all(port_open(p) for p in rec.ports.values())
        result.append(ComponentStatus(name, rec.pid, alive, rec.ports, healthy, detail))
    return result


def topology(stack_dir: str | os.PathLike[str] = ".stack") -> str | None:
    """The topology of the stack in stack_dir (from state.json), None when there is none."""
    state = _read_json(Path(stack_dir) / "state.json")
    return None if not state else str(state.get("topology", SINGLE_DC))


def _components(state: dict[str, Any]) -> set[str]:
    return {"toxiproxy", *_kafkas(state), *(f"clickhouse-{n}" for n in state["clickhouse"])}


def is_healthy(stack_dir: str | os.PathLike[str] = ".stack", topology: str | None = None
               ) -> bool:
    """Every component of the stack alive and answering (and of that topology, if given)."""
    sdir = Path(stack_dir)
    state = _read_json(sdir / "state.json")
    if not (sdir / "endpoints.json").exists() or not state:
        return False
    if topology is not None and state.get("topology", SINGLE_DC) != topology:
        return False
    statuses = stack_status(sdir)
    return {s.name for s in statuses} >= _components(state) and all(
        s.alive and s.healthy for s in statuses
    )


def start_stack(
    stack_dir: str | os.PathLike[str] = ".stack",
    partitions: int = 4,
    topic: str = "flows",
    timings: dict[str, float] | None = None,
    secure: bool = False,
) -> Endpoints:
    """Start the single-dc stack in stack_dir; returns its endpoints. ``secure`` adds the
    secure listeners of teststack/secure.py.

    Reuses a healthy running stack. On failure stops whatever started and raises StackError.
    """
    sdir = Path(stack_dir).resolve()
    if not is_healthy(sdir, SINGLE_DC):
        _start(sdir, partitions, topic, timings, SINGLE_DC, secure)
    running = Endpoints.load(sdir)
    if secure and running.secure is None:
        raise StackError("stack", f"the stack running in {sdir} has no secure listeners: "
                                  "stop it (chaos stack down) or use another directory")
    return running


def start_multi_dc_stack(
    stack_dir: str | os.PathLike[str] = ".stack",
    partitions: int = 2,
    topic: str = "flows",
    timings: dict[str, float] | None = None,
) -> MultiDCEndpoints:
    """Start the multi-dc stack (module docstring) in stack_dir; returns its endpoints.

    Reuses a healthy running one. On failure stops whatever started and raises StackError.
    """
    sdir = Path(stack_dir).resolve()
    if not is_healthy(sdir, MULTI_DC):
        _start(sdir, partitions, topic, timings, MULTI_DC)
    return MultiDCEndpoints.load(sdir)


def _start(sdir: Path, partitions: int, topic: str, timings: dict[str, float] | None,
           topo: str, secure: bool = False) -> None:
    running = topology(sdir)
    if is_healthy(sdir) and running != topo:
        raise StackError("stack", f"a {running} stack is running in {sdir}: stop it (chaos "
                                  "stack down) or use another directory")
    if (sdir / "pids.json").exists():
        stop_stack(sdir)  # leftovers of a broken stack
    t0 = time.monotonic()
    timings = timings if timings is not None else {}
    (sdir / "logs").mkdir(parents=True, exist_ok=True)
    (sdir / "endpoints.json").unlink(missing_ok=True)
    state = _new_state(sdir, partitions, topic, topo)
    if secure:
        _add_secure_state(state)
    _write_json(sdir / "state.json", state)
    _write_json(sdir / "pids.json", {"components": {}})
    # Fail fast on missing tools, before anything starts.
    _kafka_classpath()
    _toxiproxy_bin()
    generate_tls(sdir / "tls")
    if secure:
        sec.write_certificates(sdir / "tls")
    timings["tls"] = time.monotonic() - t0

    abort = _Abort()
    errors: list[StackError] = []

    def run(component: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            timings[component] = time.monotonic() - t0
        except StackError as e:
            if not abort.event.is_set():
                errors.append(e)
            abort.event.set()
        except Exception as e:
            errors.append(StackError(component, f"{type(e).__name__}: {e}"))
            abort.event.set()

    kafkas = _kafkas(state)
    jobs: list[tuple[str, Callable[[], None]]] = [
        (name, lambda n=name, k=spec: _start_kafka(sdir, n, k, partitions, abort))  # type: ignore[misc]
        for name, spec in kafkas.items()
    ]
    jobs.append(("toxiproxy", lambda: _start_toxiproxy(sdir, state, abort)))
    for name in state["clickhouse"]:
        jobs.append(
            (f"clickhouse-{name}", lambda n=name: _start_clickhouse(sdir, state, n, abort))  # type: ignore[misc]
        )
    threads = [threading.Thread(target=run, args=job, name=job[0]) for job in jobs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException:  # Ctrl-C: stop what started, then propagate
        abort.event.set()
        for t in threads:
            t.join(timeout=10)
        stop_stack(sdir)
        raise
    _write_json(sdir / "state.json", state)  # ports may have moved on a collision
    if not errors:
        run("proxies", lambda: _create_proxies(sdir, state))
    for name, spec in kafkas.items():
        if not errors:
            run(f"topic-{name}" if len(kafkas) > 1 else "topic",
                lambda k=spec: ensure_topic(f"127.0.0.1:{k['port']}", topic, partitions))  # type: ignore[misc]
        if not errors:
            # The outlet's path: bootstrap through the proxy must answer with the proxied
            # listener.
            def check_proxied(name: str = name, spec: dict[str, Any] = spec) -> None:
                bootstrap = f"127.0.0.1:{spec['proxied_port']}"
                deadline = time.monotonic() + 20
                while not kafka_ready(bootstrap):
                    if time.monotonic() > deadline:
                        raise StackError(name, f"no metadata through the proxy {bootstrap}")
                    time.sleep(0.2)

            run(f"{name}-proxied", check_proxied)
    if errors:
        stop_stack(sdir)
        raise errors[0]
    endpoints = _endpoints_from_state(sdir, state)
    _write_json(sdir / "endpoints.json", endpoints.to_dict())
    timings["total"] = time.monotonic() - t0


def stop_stack(
    stack_dir: str | os.PathLike[str] = ".stack", purge: bool = False
) -> list[str]:
    """Stop every process recorded in pids.json. Returns the names of processes that could
    not be stopped (empty on success). ``purge`` also deletes data, logs and certificates."""
    sdir = Path(stack_dir).resolve()
    pids = load_pids(sdir)
    leftovers: list[str] = []
    # Clients first would be polite, but every component survives its peers' departure:
    # stop all concurrently to keep `down` fast.
    results: dict[str, bool] = {}

    def stop(name: str, rec: ProcRecord) -> None:
        results[name] = _terminate(rec)

    threads = [threading.Thread(target=stop, args=(n, r)) for n, r in pids.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    leftovers = [n for n, ok in results.items() if not ok]
    if not leftovers:
        (sdir / "pids.json").unlink(missing_ok=True)
        (sdir / "endpoints.json").unlink(missing_ok=True)
        if purge and sdir.exists():
            shutil.rmtree(sdir)
    return leftovers


def restart_clickhouse(stack_dir: str | os.PathLike[str], name: str) -> None:
    """SIGTERM one ClickHouse server and start it again: same ports, data dir and password.
    Toxiproxy proxies are left as they are."""
    sdir = Path(stack_dir).resolve()
    component = f"clickhouse-{name}"
    rec = load_pids(sdir).get(component)
    if rec is None:
        raise StackError(component, f"not part of the stack in {sdir}")
    if not _terminate(rec):
        raise StackError(component, f"pid {rec.pid} did not stop", Path(rec.log))
    log_file = Path(rec.log)
    offset = log_file.stat().st_size if log_file.exists() else 0
    proc = _respawn(sdir, component, rec)
    _wait_clickhouse(name, proc, log_file, offset, rec.ports["http"], None)


def kill_clickhouse(
    stack_dir: str | os.PathLike[str], name: str, sig: int = signal.SIGKILL
) -> None:
    """Send a signal to one ClickHouse server (chaos: crash it); restart_clickhouse revives it."""
    rec = load_pids(Path(stack_dir).resolve()).get(f"clickhouse-{name}")
    if rec is not None and rec.alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rec.pgid, sig)


def restart_kafka(stack_dir: str | os.PathLike[str], datacenter: str | None = None) -> None:
    """SIGTERM the broker (of that datacenter, multi-dc) and start it again on the same
    ports and data directory."""
    sdir = Path(stack_dir).resolve()
    name = "kafka" if datacenter is None else f"kafka-{datacenter}"
    rec = load_pids(sdir).get(name)
    if rec is None:
        raise StackError(name, f"not part of the stack in {sdir}")
    if not _terminate(rec, timeout=60):
        raise StackError(name, f"pid {rec.pid} did not stop", Path(rec.log))
    proc = _respawn(sdir, name, rec)
    _wait_kafka(sdir, name, proc, f"127.0.0.1:{rec.ports['direct']}", None)


@contextlib.contextmanager
def running_stack(
    stack_dir: str | os.PathLike[str], partitions: int = 4, topic: str = "flows"
) -> Iterator[Endpoints]:
    """Context manager: start a stack, yield its endpoints, stop it."""
    endpoints = start_stack(stack_dir, partitions=partitions, topic=topic)
    try:
        yield endpoints
    finally:
        stop_stack(stack_dir)
