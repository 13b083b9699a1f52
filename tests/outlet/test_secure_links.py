"""Secure links against the real components (issue 17): Kafka 4.1 with SASL_SSL, SSL and
SASL_PLAINTEXT listeners (teststack/secure.py), our ClickHouse server requiring client
certificates, and the outlet as a process.

Every test that plants a secret greps every output channel for it: stdout, stderr (the
log, in both log formats), /metrics, /readyz and `outlet check-config`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from outlet import metrics as names
from outlet.kafka_client import CLUSTER_ID_TIMEOUT
from tests.conftest import OutletRun
from teststack import stack as stk
from teststack import verify
from teststack.certs import Authority
from teststack.chserver_proc import ChServerProcess, start_chserver
from teststack.outlet_proc import (
    OutletProcess,
    apply_schema,
    free_port,
    outlet_config,
    without_secrets,
)
from teststack.secure import MECHANISMS

pytestmark = pytest.mark.secure

RunFactory = Callable[..., OutletRun]
FAST_BREAKER = {"circuit-breaker": {"failure-threshold": 1, "cool-down": "1s"}}


def secure(run: OutletRun) -> Any:
    assert run.ep.secure is not None, "the session stack has no secure listeners"
    return run.ep.secure


def stack_ca(run: OutletRun) -> Authority:
    tls = Path(run.ep.ca_file).parent
    return Authority.load(tls / "ca.pem", tls / "ca-key.pem")


def kafka_via(run: OutletRun, address: str, tls: dict[str, Any] | None = None,
              sasl: dict[str, Any] | None = None) -> None:
    kafka = run.config["kafka"]
    kafka["brokers"] = [address]
    if tls is not None:
        kafka["tls"] = tls
    if sasl is not None:
        kafka["sasl"] = sasl


def azure_via_mtls(run: OutletRun, cert: str | Path | None, key: str | Path | None) -> None:
    conn = run.config["additional-clickhouses"][0]["connection"]
    conn["servers"] = [run.ch("azure").mtls_url]
    conn["tls"] = {"enable": True, "ca-file": run.ep.ca_file,
                   **({"cert-file": str(cert), "key-file": str(key)} if cert else {})}


def start_all(outlets: Iterable[OutletProcess]) -> None:
    """Start outlet processes together (each takes seconds to import and compile)."""
    started = list(outlets)
    for outlet in started:
        outlet.start(wait_ready=False)
    for outlet in started:
        outlet.wait_http()


def background(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic() - t0


def assert_exact(run: OutletRun, name: str) -> None:
    stats = run.stats(name)
    assert (stats.rows, stats.duplicates, stats.bytes_sum) == (run.produced, 0, run.bytes_sum), name


# -- Kafka: each mechanism, TLS only, rotation -------------------------------------------


def test_each_sasl_mechanism_end_to_end_and_clickhouse_mtls(outlet_run: RunFactory) -> None:
    """PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 over SASL_SSL, one outlet each (at once),
    dual-writing local and azure, azure through its port that requires a client
    certificate: every flow stored exactly once on both."""
    runs: dict[str, OutletRun] = {}
    for mechanism in MECHANISMS:
        run = outlet_run(batch_size=5_000, wait_time="500ms")
        s = secure(run)
        user = s.user(mechanism)
        kafka_via(run, s.kafka_sasl_ssl, tls={"enable": True, "ca-file": run.ep.ca_file},
                  sasl={"mechanism": mechanism, "username": user.username,
                        "password": "${KAFKA_PASSWORD}"})
        azure_via_mtls(run, s.client_cert_file, s.client_key_file)
        runs[mechanism] = run
    outlets = {}
    for mechanism, run in runs.items():
        outlets[mechanism] = run.outlet()
        outlets[mechanism].env = {"KAFKA_PASSWORD": secure(run).user(mechanism).password}
    start_all(outlets.values())
    for run in runs.values():
        run.produce(12_000)
    for mechanism, run in runs.items():
        for name in ("local", "azure"):
            assert run.wait_rows(name, 12_000, timeout=90) == 12_000, (mechanism, name)
            assert_exact(run, name)
        outlet = outlets[mechanism]
        assert outlet.metric(names.KAFKA_CONNECTION_ERRORS_TOTAL) == 0, outlet.log_tail()
        assert outlet.metric(names.DESTINATION_INSERT_ERRORS_TOTAL, destination="azure") == 0
        log = outlet.log_path.read_text()
        assert secure(run).user(mechanism).password not in log
        assert outlet.stop() == 0


def _acl(topic: str, principal: str, permission: str) -> Any:
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    return AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, principal, "*",
                      AclOperation.READ, AclPermissionType[permission])


def _consume_error(address: str, topic: str, tls: dict[str, str]) -> str | None:
    """The error a fresh consumer with these TLS files gets reading `topic` (None: none)."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": address, "security.protocol": "SSL",
                  "ssl.ca.location": tls["ca-file"],
                  "ssl.certificate.location": tls["cert-file"],
                  "ssl.key.location": tls["key-file"], "group.id": f"probe-{time.time()}",
                  "auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            return msg.error().name() if msg.error() else None
        return "no answer"
    finally:
        c.close()


def test_tls_only_kafka_with_client_certificate_rotated_under_load(
    outlet_run: RunFactory, tmp_path: Path
) -> None:
    """The SSL listener (TLS, client certificate required). The client certificate
    files are replaced while flows arrive: the outlet recreates its consumer with them
    (no restart), then the broker denies the old certificate's principal: the outlet
    keeps consuming, so every connection it makes uses the new certificate."""
    run = outlet_run(destinations=("local",), batch_size=5_000, wait_time="500ms")
    s = secure(run)
    ca = stack_ca(run)
    cert, key = tmp_path / "kafka-client.pem", tmp_path / "kafka-client-key.pem"
    ca.issue("outlet-a", client=True).write(cert, key)
    tls = {"enable": True, "ca-file": run.ep.ca_file, "cert-file": str(cert),
           "key-file": str(key)}
    kafka_via(run, s.kafka_ssl, tls=tls)
    outlet = run.outlet()
    outlet.start()
    run.produce(20_000)
    assert run.wait_rows("local", 20_000, timeout=60) == 20_000
    producer = background(lambda: run.produce(30_000, rate=5_000))
    time.sleep(2)
    rotated = time.monotonic()
    old_files = {**tls, "cert-file": str(tmp_path / "old.pem"),
                 "key-file": str(tmp_path / "old-key.pem")}
    Path(old_files["cert-file"]).write_bytes(cert.read_bytes())
    Path(old_files["key-file"]).write_bytes(key.read_bytes())
    ca.issue("outlet-b", client=True).write(cert, key)
    restarts = names.KAFKA_CONSUMER_RESTARTS_TOTAL
    took = wait_for(lambda: outlet.metric(restarts, reason="tls-files-changed") >= 1, 30,
                    "the consumer to be recreated")
    print(f"kafka: consumer recreated {took:.2f}s after the certificate files were replaced")
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": run.ep.kafka.bootstrap})
    for future in admin.create_acls([_acl(run.topic, "User:*", "ALLOW"),
                                     _acl(run.topic, "User:CN=outlet-a", "DENY")]).values():
        future.result(timeout=30)
    producer.join()
    assert run.wait_rows("local", 50_000, timeout=90) == 50_000, outlet.log_tail()
    run.wait_stable("local")
    assert_exact(run, "local")
    # The denial bites: a consumer with the old certificate is refused.
    assert _consume_error(s.kafka_ssl, run.topic, old_files) == "TOPIC_AUTHORIZATION_FAILED"
    assert outlet.metric(restarts, reason="tls-files-changed") == 1
    log = outlet.log_path.read_text()
    assert "reconnecting with the new TLS files" in log
    lines = log.splitlines()
    at = next(i for i, line in enumerate(lines) if "reconnecting with the new TLS" in line)
    back = next(line for line in lines[at:] if "kafka: assigned partitions" in line)
    stamp = [dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in (lines[at], back)]
    print(f"kafka: partitions assigned again {(stamp[1] - stamp[0]).total_seconds():.2f}s "
          "after the consumer was recreated")
    assert time.monotonic() - rotated < 120
    assert outlet.stop() == 0


# -- Kafka: failures are clear and safe ---------------------------------------------------


def _readyz(outlet: OutletProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(outlet.http + "/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metrics_text(outlet: OutletProcess) -> str:
    with urllib.request.urlopen(outlet.http + "/metrics", timeout=5) as r:
        return str(r.read().decode())


def _messages(outlet: OutletProcess, fmt: str) -> list[str]:
    lines = outlet.log_path.read_text(errors="replace").splitlines()
    if fmt == "json":
        return [json.loads(line)["message"] for line in lines if line.startswith("{")]
    return lines


def _check_config(outlet: OutletProcess, env: dict[str, str]) -> str:
    res = subprocess.run([sys.executable, "-m", "outlet.cli", "check-config",
                          str(outlet.config_path)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout + res.stderr


@pytest.fixture
def failing(stack: stk.Endpoints, tmp_path: Path) -> Iterator[Callable[..., OutletProcess]]:
    """An outlet whose Kafka link is misconfigured (not started; stdout apart from the
    log). It never gets to read or write anything: no topic, no schema."""
    started: list[OutletProcess] = []

    def make(fmt: str = "human", **kafka: Any) -> OutletProcess:
        n = len(started)
        cfg = outlet_config(stack, state_path=str(tmp_path / f"state{n}"),
                            http_port=free_port(), destinations=("local",),
                            topic="secure-links-never-read", consumer_group=f"failing-{n}")
        cfg["kafka"]["brokers"] = [kafka.pop("address")]
        cfg["kafka"].update(kafka)
        cfg["log"]["format"] = fmt
        outlet = OutletProcess(tmp_path / f"outlet{n}", cfg, split_output=True)
        started.append(outlet)
        return outlet

    yield make
    for outlet in started:
        outlet.kill()


def test_kafka_link_failures_one_clear_line_each_no_secret_no_crash_loop(
    stack: stk.Endpoints, failing: Callable[..., OutletProcess], tmp_path: Path,
) -> None:
    """Wrong SASL password (human and JSON logs), a mechanism the listener does not
    enable, a host name the broker's certificate does not hold, a CA that did not sign
    it: each outlet stays up, logs one line naming the failure, counts every attempt,
    backs off, says why in /readyz, and never shows the password."""
    planted = "Wr0ng-" + str(time.time_ns())
    other_ca = Authority.create("another CA").write(tmp_path / "other-ca.pem",
                                                    tmp_path / "other-ca-key.pem")[0]
    assert stack.secure is not None
    s = stack.secure
    user = s.user("SCRAM-SHA-256")
    plain = s.user("PLAIN")
    sasl_plain = {"mechanism": "PLAIN", "username": plain.username, "password": plain.password}
    tls = {"enable": True, "ca-file": stack.ca_file}
    port = s.kafka_sasl_ssl.rsplit(":", 1)[1]
    cases: dict[str, tuple[OutletProcess, str, str]] = {
        f"password-{fmt}": (
            failing(fmt, address=s.kafka_sasl_ssl, tls=tls,
                    sasl={"mechanism": "SCRAM-SHA-256", "username": user.username,
                          "password": planted}),
            "auth", "SASL authentication failed")
        for fmt in ("human", "json")
    }
    cases["mechanism"] = (failing(address=s.kafka_sasl_plaintext, sasl=sasl_plain),
                          "sasl-mechanism", "the broker does not enable SASL mechanism PLAIN "
                                            "(it offers SCRAM-SHA-512)")
    cases["hostname"] = (failing(address=f"localhost:{port}", sasl=sasl_plain, tls=tls),
                         "hostname-mismatch", "certificate is not valid for this host name "
                         "(Hostname mismatch, certificate is not valid for 'localhost')")
    cases["untrusted"] = (failing(address=s.kafka_sasl_ssl, sasl=sasl_plain,
                                  tls={"enable": True, "ca-file": str(other_ca)}),
                          "certificate-untrusted", "certificate is not trusted (unable to get "
                                                   "local issuer certificate)")
    start_all(outlet for outlet, _, _ in cases.values())
    started = time.monotonic()
    time.sleep(10)
    for case, (outlet, reason, says) in cases.items():
        fmt = "json" if case.endswith("json") else "human"
        assert outlet.alive(), f"{case}: the outlet exited:\n{outlet.log_tail()}"
        messages = _messages(outlet, fmt)
        matching = [m for m in messages if says in m]
        assert len(matching) == 1, (case, messages)  # one line, no flood
        assert f"[{reason}; retrying with backoff]" in matching[0]
        text = outlet.log_path.read_text()
        assert "Traceback" not in text and "FAIL [rdkafka" not in text, (case, text[-2000:])
        # Backoff: librdkafka alone retries every ~50 ms (about 500 attempts in this
        # window); the outlet closes the consumer for 1, 2, 4, 8, 16... s between rounds.
        attempts = outlet.metric(names.KAFKA_CONNECTION_ERRORS_TOTAL, reason=reason)
        rounds = outlet.metric(names.KAFKA_CONSUMER_RESTARTS_TOTAL, reason="backoff")
        elapsed = time.monotonic() - started
        print(f"{case}: {attempts:.0f} attempts in {rounds:.0f} rounds, {elapsed:.0f} s")
        assert 1 <= attempts <= 40, f"{case}: {attempts} attempts: no backoff"
        assert 3 <= rounds <= 8, f"{case}: {rounds} backoff rounds in {elapsed:.0f} s"
        status, body = _readyz(outlet)
        assert status == 503 and reason in body, (case, status, body)
        if case.startswith("password"):
            env = without_secrets(outlet.config)[1]  # the file has ${VAR}s, the env them
            assert planted in env.values()
            channels = {
                "stdout": outlet.stdout_path.read_text(errors="replace"),
                "log (stderr)": text,
                "/metrics": _metrics_text(outlet),
                "/readyz": body,
                "check-config": _check_config(outlet, {**os.environ, **env}),
            }
            for channel, content in channels.items():
                assert planted not in content, f"{case}: the password shows in {channel}"
            for ch in stack.clickhouse.values():
                assert ch.password not in text
    # Past a whole metadata deadline (CLUSTER_ID_TIMEOUT): refused outlets keep waiting,
    # still backing off, nothing more logged; SIGTERM then stops them cleanly.
    time.sleep(max(0.0, started + CLUSTER_ID_TIMEOUT + 5 - time.monotonic()))
    for case, (outlet, _, says) in cases.items():
        assert outlet.alive(), f"{case}: the outlet exited:\n{outlet.log_tail()}"
        rounds = outlet.metric(names.KAFKA_CONSUMER_RESTARTS_TOTAL, reason="backoff")
        print(f"{case}: {rounds:.0f} backoff rounds after {time.monotonic() - started:.0f} s")
        assert 4 <= rounds <= 10, (case, rounds)
        lines = _messages(outlet, "json" if "json" in case else "human")
        assert sum(says in m for m in lines) == 1, (case, lines)  # a summary after 1 min
        assert outlet.stop() == 0, case


# -- ClickHouse: mutual TLS refused, then fixed by rotation --------------------------------


def test_clickhouse_refuses_missing_or_foreign_client_certificate_rotation_repairs(
    outlet_run: RunFactory, tmp_path: Path
) -> None:
    """azure requires a client certificate its CA signed. Without one, or with one from
    another CA, azure refuses every insert: the outlet names the failure once per attempt
    kind, spools, and the primary stores everything. Replacing the foreign certificate
    files with good ones repairs the link without a restart: the spool replays."""
    other = Authority.create("another CA").issue("outlet", client=True)
    foreign = other.write(tmp_path / "foreign.pem", tmp_path / "foreign-key.pem")
    runs = {"none": outlet_run(batch_size=5_000, wait_time="500ms", additional_extra=FAST_BREAKER),
            "foreign": outlet_run(batch_size=5_000, wait_time="500ms",
                                  additional_extra=FAST_BREAKER)}
    azure_via_mtls(runs["none"], None, None)
    azure_via_mtls(runs["foreign"], *foreign)
    outlets = {k: run.outlet() for k, run in runs.items()}
    start_all(outlets.values())
    for run in runs.values():
        run.produce(20_000)
    expected = {"none": "(TLS alert: certificate required)", "foreign": "(TLS alert: unknown ca)"}
    for case, run in runs.items():
        outlet = outlets[case]
        assert run.wait_rows("local", 20_000, timeout=60) == 20_000
        wait_for(lambda o=outlet: o.metric(names.SPOOL_APPENDED_FLOWS_TOTAL,
                                           destination="azure") >= 20_000, 60, "spooling")
        errors = outlet.metric(names.DESTINATION_INSERT_ERRORS_TOTAL, destination="azure",
                               error="client-certificate-rejected")
        assert errors >= 1, outlet.log_tail()
        assert run.rows("azure") == 0
        lines = [line for line in outlet.log_path.read_text().splitlines()
                 if "destination azure" in line and "insert failed" in line]
        assert lines and all(expected[case] in line for line in lines), lines[:3]
        assert all(len(line) < 400 for line in lines)
        assert "Traceback" not in outlet.log_path.read_text()
        assert_exact(run, "local")
    # Rotation repairs the foreign one: good files in place of the foreign ones.
    run, outlet = runs["foreign"], outlets["foreign"]
    stack_ca(run).issue("outlet", client=True).write(*foreign)
    assert run.wait_rows("azure", 20_000, timeout=60) == 20_000, outlet.log_tail()
    run.wait_stable("azure")
    assert_exact(run, "azure")
    assert outlet.metric(names.DESTINATION_TLS_RELOADS_TOTAL, destination="azure") == 1
    for o in outlets.values():
        assert o.stop() == 0


def test_primary_refusing_the_client_certificate_pauses_then_rotation_resumes(
    outlet_run: RunFactory, tmp_path: Path
) -> None:
    """The primary (local) through its port that requires a client certificate, with one
    from another CA: nothing is stored, the outlet retries with backoff (one line per
    attempt, the class counted), consumption pauses once its queue is full, and the
    outlet stays up. Good files in place of the foreign ones: every flow stored once."""
    run = outlet_run(destinations=("local",), batch_size=1_000, wait_time="200ms")
    other = Authority.create("another CA").issue("outlet", client=True)
    cert, key = other.write(tmp_path / "primary.pem", tmp_path / "primary-key.pem")
    run.config["kafka"].update({"max-poll-records": 500, "queue-size": 2})  # fills soon
    conn = run.config["clickhousedb"]
    conn["servers"] = [run.ch("local").mtls_url]
    conn["tls"] = {"enable": True, "ca-file": run.ep.ca_file, "cert-file": str(cert),
                   "key-file": str(key)}
    outlet = run.outlet()
    outlet.start()
    run.produce(30_000)
    rejected = {"destination": "primary", "error": "client-certificate-rejected"}
    wait_for(lambda: outlet.metric(names.KAFKA_PAUSED) == 1, 60, "consumption to pause")
    wait_for(lambda: outlet.metric(names.DESTINATION_INSERT_ERRORS_TOTAL, **rejected) >= 3, 60,
             "retries")
    assert outlet.alive() and run.rows("local") == 0
    status, body = _readyz(outlet)
    assert status == 503 and "client-certificate-rejected" in body, body
    lines = [line for line in outlet.log_path.read_text().splitlines()
             if "destination primary" in line and "insert failed" in line]
    assert lines and all("(TLS alert: unknown ca)" in line for line in lines), lines[:3]
    assert "Traceback" not in outlet.log_path.read_text()
    stack_ca(run).issue("outlet", client=True).write(cert, key)
    assert run.wait_rows("local", 30_000, timeout=90) == 30_000, outlet.log_tail()
    run.wait_stable("local")
    assert_exact(run, "local")
    assert outlet.metric(names.KAFKA_PAUSED) == 0
    assert outlet.metric(names.DESTINATION_TLS_RELOADS_TOTAL, destination="primary") == 1
    assert outlet.stop() == 0


# -- ClickHouse: client certificate rotation under load ------------------------------------


@pytest.fixture
def central(stack: stk.Endpoints, tmp_path: Path) -> Iterator[ChServerProcess]:
    """Our ClickHouse server with a strict mTLS port and a request log that names the
    client certificate of each request."""
    tls = Path(stack.ca_file).parent
    srv = start_chserver(tmp_path / "central-data", "outlet", "central-pw", https_port=None,
                         mtls_port=0, certfile=tls / "server.pem", keyfile=tls / "server-key.pem",
                         client_ca_file=stack.ca_file, log_file=tmp_path / "central.log",
                         die_with_parent=True)
    yield srv
    srv.stop()


def _requests_by_certificate(log_file: Path) -> list[tuple[float, str]]:
    """(unix time, client certificate CN) of each request the server logged with a client
    certificate (the test's own queries use the plain HTTP port: `cert=-`)."""
    out = []
    for line in log_file.read_text().splitlines():
        m = re.match(r"(\S+ \S+) INFO .* cert=(\S+) query=", line)
        if m and m.group(2) != "-":
            when = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            out.append((when.timestamp(), m.group(2)))
    return out


def test_clickhouse_client_certificate_rotation_under_load(
    outlet_run: RunFactory, central: ChServerProcess, tmp_path: Path
) -> None:
    """Flows arrive at 10k/s while the client certificate files of a destination that
    requires one are replaced (the certificate, then half a second later its key): no
    insert fails, nothing is lost or duplicated, and from the first request made with the
    new certificate on, the server sees no other."""
    run = outlet_run(destinations=("local",), batch_size=5_000, wait_time="500ms")
    ca = stack_ca(run)
    cert, key = tmp_path / "central-client.pem", tmp_path / "central-client-key.pem"
    ca.issue("outlet-a", client=True).write(cert, key)
    assert central.mtls_url is not None
    run.config["additional-clickhouses"] = [{
        "name": "central",
        "connection": {
            "servers": [central.mtls_url], "database": run.database, "username": "outlet",
            "password": "central-pw", "max-retries": 3,
            "tls": {"enable": True, "ca-file": run.ep.ca_file, "cert-file": str(cert),
                    "key-file": str(key)},
        },
        "clickhouse": {"maximum-batch-size": 5_000, "maximum-wait-time": "500ms"},
    }]
    schema = run.workdir / "schema-central.yaml"
    schema.write_text(yaml.safe_dump(run.config))
    apply_schema(schema)
    target = stk.ClickHouseEndpoints(url=central.url, proxied_url=central.url, https_url="",
                                     username="outlet", password="central-pw",
                                     data_dir=str(central.data_dir), proxy="")
    outlet = run.outlet()
    outlet.start()
    producer = background(lambda: run.produce(70_000, rate=10_000))
    # Under way with the old certificate first (/healthz answers before the outlet has
    # opened its destinations: a fixed sleep could rotate before the first insert).
    wait_for(lambda: verify.count_rows(target, run.database) >= 10_000, 60,
             "inserts with the first certificate")
    new = ca.issue("outlet-b", client=True)
    rotated = time.time()
    cert.write_bytes(new.cert_pem)  # a torn rotation: new certificate, old key...
    time.sleep(0.5)
    key.write_bytes(new.key_pem)  # ...then the key
    producer.join()
    assert run.wait_rows("local", 70_000, timeout=90) == 70_000
    assert verify.wait_rows(target, 70_000, 90, run.database) == 70_000
    verify.wait_stable(target, database=run.database)
    stats = verify.table_stats(target, run.database)
    assert (stats.rows, stats.duplicates, stats.bytes_sum) == (70_000, 0, run.bytes_sum)
    assert_exact(run, "local")
    assert outlet.metric(names.DESTINATION_INSERT_ERRORS_TOTAL, destination="central") == 0
    assert outlet.metric(names.DESTINATION_TLS_RELOADS_TOTAL, destination="central") == 1
    assert central.log_file is not None
    seen = _requests_by_certificate(central.log_file)
    first_new = next(t for t, cn in seen if cn == "outlet-b")
    assert {cn for t, cn in seen if t < rotated} == {"outlet-a"}
    assert {cn for t, cn in seen if t >= first_new} == {"outlet-b"}
    print(f"central: first request with the new certificate {first_new - rotated:.2f}s after "
          f"the certificate file was replaced (its key 0.5s later)")
    assert outlet.log_path.read_text().count("cannot be used yet") <= 2
    assert outlet.stop() == 0
