"""TLS files and link failures in-process: static checks, check-config, rotation of the
files, the classification of real library errors, the diagnostic handshake, and the
Kafka link's logging and backoff (fake clock). The real brokers and servers are in
tests/outlet/test_secure_links.py."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from outlet import linkfailure as lf
from outlet.config import ConfigError, KafkaConfig, parse_config
from outlet.kafka_link import BACKOFF, TLS_ROTATED, FailureLog, KafkaLink
from outlet.metrics import Metrics
from outlet.tlsfiles import TLSFiles
from teststack.certs import DAY, Authority, Issued

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Files:
    dir: Path
    ca: Authority
    ca_file: Path
    cert: Path
    key: Path

    def issue(self, name: str, **kw: Any) -> tuple[Path, Path]:
        return self.ca.issue(name, client=True, **kw).write(self.dir / f"{name}.pem",
                                                            self.dir / f"{name}-key.pem")


@pytest.fixture
def files(tmp_path: Path) -> Files:
    ca = Authority.create("unit CA")
    ca_file, _ = ca.write(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    cert, key = ca.issue("outlet", client=True).write(tmp_path / "c.pem", tmp_path / "c-key.pem")
    return Files(tmp_path, ca, ca_file, cert, key)


def tls_errors(tls: dict[str, Any]) -> list[str]:
    try:
        parse_config({"kafka": {"tls": {"enable": True, **tls}}}, {})
    except ConfigError as e:
        return e.errors
    return []


# -- static checks ----------------------------------------------------------------------


def test_good_files_pass(files: Files) -> None:
    assert tls_errors({"ca-file": str(files.ca_file), "cert-file": str(files.cert),
                       "key-file": str(files.key)}) == []


def test_key_not_matching_the_certificate_is_an_error(files: Files) -> None:
    _, other_key = files.issue("other")
    errors = tls_errors({"cert-file": str(files.cert), "key-file": str(other_key)})
    assert errors == ["kafka.tls.key-file: does not hold the private key of the certificate "
                      "in cert-file"]


def test_not_pem_and_swapped_files_are_errors(files: Files) -> None:
    junk = files.dir / "junk.pem"
    junk.write_text("not a certificate\n")
    assert tls_errors({"ca-file": str(junk)}) == [
        f"kafka.tls.ca-file: holds no PEM certificate: {str(junk)!r}"]
    # cert and key swapped: the certificate file holds a key only
    assert tls_errors({"cert-file": str(files.key), "key-file": str(files.cert)}) == [
        f"kafka.tls.cert-file: holds no PEM certificate: {str(files.key)!r}"]


def test_key_in_the_certificate_file(files: Files) -> None:
    both = files.dir / "both.pem"
    both.write_bytes(files.cert.read_bytes() + files.key.read_bytes())
    assert tls_errors({"cert-file": str(both)}) == []
    assert tls_errors({"cert-file": str(files.cert)}) == [
        "kafka.tls.cert-file: holds no private key: set key-file (mutual TLS needs the key "
        "of the certificate)"]


def test_encrypted_key_is_refused(files: Files) -> None:
    issued = files.ca.issue("enc", client=True)
    enc = files.dir / "enc-key.pem"
    enc.write_bytes(issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    cert = files.dir / "enc.pem"
    cert.write_bytes(issued.cert_pem)
    [error] = tls_errors({"cert-file": str(cert), "key-file": str(enc)})
    assert error.startswith("kafka.tls.key-file:") and "encrypted" in error


def _unreadable_check_config(config: Path) -> subprocess.CompletedProcess[str]:
    """check-config as a process that file permissions apply to (root reads anything:
    drop its DAC override capabilities)."""
    cmd = [sys.executable, "-m", "outlet.cli", "check-config", str(config)]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_unreadable_key_file_check_config(files: Files) -> None:
    files.key.chmod(0)
    config = files.dir / "outlet.yaml"
    config.write_text(yaml.safe_dump({"clickhousedb": {"tls": {
        "enable": True, "cert-file": str(files.cert), "key-file": str(files.key)}}}))
    res = _unreadable_check_config(config)
    assert res.returncode == 2, res.stderr
    assert (f"clickhousedb.tls.key-file: file not readable (permissions): {str(files.key)!r}"
            in res.stderr), res.stderr


def test_expired_certificate_is_a_warning_not_an_error(files: Files, tmp_path: Path) -> None:
    """An expired client certificate: check-config says so on stderr and exits 0 (a running
    outlet would report the link and pick up a renewed certificate)."""
    cert, key = files.issue("old", not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    soon, soon_key = files.issue("soon", not_after=NOW + 3 * DAY)
    secret = "pw-that-must-not-show"
    config = tmp_path / "outlet.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"tls": {"enable": True, "cert-file": str(cert), "key-file": str(key)},
                  "sasl": {"mechanism": "PLAIN", "username": "u", "password": secret}},
        "clickhousedb": {"tls": {"enable": True, "cert-file": str(soon),
                                 "key-file": str(soon_key)}}}))
    res = subprocess.run([sys.executable, "-m", "outlet.cli", "check-config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert any(line.startswith("outlet: warning: kafka.tls.cert-file: the certificate in "
                               f"{str(cert)!r} (CN=old) expired on ") for line in lines), lines
    assert any(line.startswith("outlet: warning: clickhousedb.tls.cert-file: the certificate "
                               f"in {str(soon)!r} (CN=soon) expires in 2.9 days")
               or "expires in 3.0 days" in line for line in lines), lines
    assert secret not in res.stdout + res.stderr


# -- rotation ---------------------------------------------------------------------------


def test_rotation_switches_only_to_a_complete_set(files: Files,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    t = TLSFiles(True, str(files.ca_file), str(files.cert), str(files.key), "unit")
    assert t.certificate is not None and t.certificate.subject == "CN=outlet"
    assert not t.changed() and not t.refresh()
    new = files.ca.issue("outlet-2", client=True)
    # A torn rotation: the certificate replaced, the key not yet.
    files.cert.write_bytes(new.cert_pem)
    with caplog.at_level(logging.WARNING, "outlet.tlsfiles"):
        assert t.changed() and not t.refresh()
        assert not t.refresh()  # logged once for that state of the files
    assert [r.getMessage() for r in caplog.records if "cannot be used yet" in r.getMessage()]
    assert len([r for r in caplog.records if "cannot be used yet" in r.getMessage()]) == 1
    assert t.certificate.subject == "CN=outlet" and t.reloads == 0
    files.key.write_bytes(new.key_pem)
    assert t.refresh()
    assert t.certificate.subject == "CN=outlet-2" and t.reloads == 1
    assert not t.changed()


# -- classification ---------------------------------------------------------------------

# Texts librdkafka 2.16 reported against the stack's broker (error_cb), verbatim.
RD = {
    "scram": ("_AUTHENTICATION", "sasl_ssl://127.0.0.1:38599/bootstrap: SASL authentication "
              "error: Authentication failed during authentication due to invalid credentials "
              "with SASL mechanism SCRAM-SHA-256 (after 305ms in state AUTH_REQ)"),
    "mechanism": ("_AUTHENTICATION", "sasl_plaintext://127.0.0.1:51915/bootstrap: SASL PLAIN "
                  "mechanism handshake failed: Broker: Unsupported SASL mechanism: broker's "
                  "supported mechanisms: SCRAM-SHA-512 (after 300ms in state AUTH_HANDSHAKE)"),
    "nocert": ("_TRANSPORT", "ssl://127.0.0.1:58937/bootstrap: Receive failed: "
               "error:0A000412:SSL routines::ssl/tls alert bad certificate: SSL alert number "
               "42 (after 0ms in state APIVERSION_QUERY)"),
    "verify": ("_SSL", "sasl_ssl://127.0.0.1:38599/bootstrap: SSL handshake failed: "
               "error:0A000086:SSL routines::certificate verify failed: broker certificate "
               "could not be verified, verify that ssl.ca.location is correctly configured "
               "or root CA certificates are installed (install ca-certificates package) "
               "(after 3ms in state SSL_HANDSHAKE)"),
    "tls-to-plain": ("_TRANSPORT", "ssl://127.0.0.1:50371/bootstrap: Disconnected: SSL "
                     "connection closed by peer (after 1ms in state SSL_HANDSHAKE)"),
    "plain-to-tls": ("_TRANSPORT", "127.0.0.1:58937/bootstrap: Disconnected: connection "
                     "closed by peer: receive 0 after POLLIN (after 0ms in state "
                     "APIVERSION_QUERY)"),
    "refused": ("_TRANSPORT", "ssl://127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 "
                "failed: Connection refused (after 0ms in state CONNECT)"),
}


@pytest.mark.parametrize(("case", "reason", "says"), [
    ("scram", lf.AUTH, "broker 127.0.0.1:38599: SASL authentication failed: Authentication "
                       "failed during authentication due to invalid credentials with SASL "
                       "mechanism SCRAM-SHA-256: check kafka.sasl.username"),
    ("mechanism", lf.SASL_MECHANISM, "the broker does not enable SASL mechanism PLAIN (it "
                                     "offers SCRAM-SHA-512)"),
    ("nocert", lf.CLIENT_CERT_REJECTED, "refused the client certificate (TLS alert: bad "
                                        "certificate)"),
    ("verify", lf.CERT_UNTRUSTED, "broker certificate verification failed"),
    ("tls-to-plain", lf.TLS_HANDSHAKE, "is the listener plaintext?"),
    ("plain-to-tls", lf.TRANSPORT, "does the listener expect TLS or SASL?"),
    ("refused", lf.TRANSPORT, "Connection refused"),
])
def test_librdkafka_errors(case: str, reason: str, says: str) -> None:
    failure = lf.kafka_failure(*RD[case])
    assert failure.reason == reason
    assert says in failure.message, failure.message
    assert "ms in state" not in failure.message and "\n" not in failure.message


class _TLSServer:
    """A TLS server thread: its handshake outcome is what a real client library sees."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            self.ctx.load_verify_locations(client_ca)
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server_files(files: Files) -> Iterator[dict[str, Path]]:
    out: dict[str, Path] = {"ca": files.ca_file}
    for name, kw in {"good": {}, "expired": {"not_before": NOW - 10 * DAY,
                                             "not_after": NOW - DAY}}.items():
        issued: Issued = files.ca.issue("127.0.0.1", ips=["127.0.0.1"], server=True, **kw)
        out[name], out[f"{name}-key"] = issued.write(files.dir / f"srv-{name}.pem",
                                                     files.dir / f"srv-{name}-key.pem")
    yield out


@pytest.mark.parametrize(("server", "host", "trust", "reason"), [
    ("expired", "127.0.0.1", "ca", lf.CERT_EXPIRED),
    ("good", "localhost", "ca", lf.HOSTNAME_MISMATCH),
    ("good", "127.0.0.1", "other", lf.CERT_UNTRUSTED),
])
def test_probe_names_the_server_certificate_problem(
    files: Files, server_files: dict[str, Path], server: str, host: str, trust: str,
    reason: str,
) -> None:
    srv = _TLSServer(server_files[server], server_files[f"{server}-key"])
    try:
        ca = server_files["ca"] if trust == "ca" else Authority.create("other").write(
            files.dir / "other.pem", files.dir / "other-key.pem")[0]
        ctx = ssl.create_default_context(cafile=str(ca))
        failure = lf.probe(host, srv.port, ctx) if host == "127.0.0.1" else None
        if host != "127.0.0.1":  # the probe connects to `host`: resolve localhost ourselves
            with socket.create_connection(("127.0.0.1", srv.port)) as raw:
                try:
                    ctx.wrap_socket(raw, server_hostname=host)
                except ssl.SSLCertVerificationError as e:
                    failure = lf.verify_failure(e.verify_code, e.verify_message)
        assert failure is not None and failure.reason == reason, failure
    finally:
        srv.close()


@pytest.mark.parametrize(("client", "alert"), [
    (None, "certificate required"), ("other", "unknown ca"), ("expired", "certificate expired"),
])
def test_probe_reads_why_the_server_refused_the_client_certificate(
    files: Files, server_files: dict[str, Path], client: str | None, alert: str,
) -> None:
    srv = _TLSServer(server_files["good"], server_files["good-key"], client_ca=files.ca_file)
    try:
        ctx = ssl.create_default_context(cafile=str(files.ca_file))
        if client == "other":
            other = Authority.create("other CA").issue("outlet", client=True)
            ctx.load_cert_chain(*other.write(files.dir / "o.pem", files.dir / "o-key.pem"))
        elif client == "expired":
            ctx.load_cert_chain(*files.issue("exp", not_before=NOW - 9 * DAY,
                                             not_after=NOW - DAY))
        failure = lf.probe("127.0.0.1", srv.port, ctx)
        assert failure is not None and failure.reason == lf.CLIENT_CERT_REJECTED, failure
        assert f"TLS alert: {alert}" in failure.message
        ctx = ssl.create_default_context(cafile=str(files.ca_file))
        ctx.load_cert_chain(files.cert, files.key)
        assert lf.probe("127.0.0.1", srv.port, ctx) is None  # accepted
    finally:
        srv.close()


def test_ssl_failure_reads_through_the_client_library_wrapping(
    files: Files, server_files: dict[str, Path]
) -> None:
    """clickhouse-connect wraps urllib3's MaxRetryError wrapping the ssl error."""
    import clickhouse_connect

    srv = _TLSServer(server_files["expired"], server_files["expired-key"])
    try:
        with pytest.raises(Exception) as err:
            clickhouse_connect.get_client(host="127.0.0.1", port=srv.port, secure=True,
                                          ca_cert=str(files.ca_file), connect_timeout=3)
        failure = lf.ssl_failure(err.value)
        assert failure is not None and failure.reason == lf.CERT_EXPIRED
        assert failure.message.startswith("the server's certificate is not valid now "
                                          "(certificate has expired)")
    finally:
        srv.close()
    assert lf.ssl_failure(ConnectionRefusedError(111, "Connection refused")) is None


# -- the Kafka link ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failure_log_one_line_per_class_a_summary_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    flog = FailureLog("kafka", clock=clock)
    auth = lf.kafka_failure(*RD["scram"])
    with caplog.at_level(logging.INFO, "outlet.kafka_client"):
        for i in range(1200):  # twenty a second for a minute, librdkafka's pace
            clock.now = 1000.0 + i * 0.05
            flog.failed(auth)
        clock.now = 1060.0
        flog.failed(auth)
        flog.failed(lf.kafka_failure(*RD["refused"]))  # another class: its own line
        flog.recovered("partitions assigned")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("kafka: broker 127.0.0.1:38599: SASL authentication failed")
    assert lines[0].endswith("[auth; retrying with backoff]")
    assert lines[1].startswith("kafka: still failing for 60s (1200 more auth failures): ")
    assert lines[2].endswith("[transport; retrying with backoff]")
    assert lines[3].startswith("kafka: partitions assigned after 60s of failures (auth 1201, "
                               "transport 1)")
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR", "WARNING", "INFO"]


class _Err:
    def __init__(self, name: str, text: str) -> None:
        self._name, self._text = name, text

    def name(self) -> str:
        return self._name

    def str(self) -> str:
        return self._text


def test_kafka_link_backs_off_only_unassigned_and_on_failures_that_need_action() -> None:
    metrics = Metrics()
    assigned = False
    link = KafkaLink(KafkaConfig(), metrics, assigned=lambda: assigned,
                     uniform=lambda lo, hi: hi, clock=Clock())
    link.on_error(_Err(*RD["refused"]))
    assert link.restart_due() is None  # librdkafka's own fast reconnect serves outages
    link.on_error(_Err(*RD["scram"]))
    assert link.restart_due() == BACKOFF and link.restart_due() is None
    assert [link.backoff() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assigned = True
    link.on_error(_Err(*RD["scram"]))
    assert link.restart_due() is None  # a consumer holding partitions is never closed
    link.working("partitions assigned")
    assert link.backoff() == 1
    assert link.failure_reason() == ""
    scrape = metrics.registry.get_sample_value
    assert scrape("outlet_kafka_connection_errors_total", {"reason": "auth"}) == 2
    assert scrape("outlet_kafka_connection_errors_total", {"reason": "transport"}) == 1


def test_kafka_link_recreates_the_consumer_when_tls_files_rotate(files: Files) -> None:
    metrics = Metrics()
    cfg = parse_config({"kafka": {"tls": {"enable": True, "ca-file": str(files.ca_file),
                                          "cert-file": str(files.cert),
                                          "key-file": str(files.key)}}}, {}).kafka
    link = KafkaLink(cfg, metrics, assigned=lambda: True)
    expiry = "outlet_tls_client_certificate_expiry_timestamp_seconds"
    before = metrics.registry.get_sample_value(expiry, {"file": str(files.cert)})
    assert link.restart_due() is None
    new = files.ca.issue("outlet", client=True, not_after=NOW + 30 * DAY)
    new.write(files.cert, files.key)
    assert link.restart_due() == TLS_ROTATED and link.restart_due() is None
    after = metrics.registry.get_sample_value(expiry, {"file": str(files.cert)})
    assert before is not None and after == pytest.approx(new.cert.not_valid_after_utc.timestamp())
    assert after < before


async def test_tls_metrics_follow_the_writer_a_reconfiguration_puts_in(files: Files) -> None:
    """Live reconfiguration replaces a destination's writers (new TLS files): the expiry
    gauge then shows the new client certificate, and the new writer's rotations count."""
    from outlet import metrics as names
    from outlet.writer import ClickHouseWriter, ReplaceableWriter, TLSMetrics

    def writer(cert: Path, key: Path) -> ClickHouseWriter:
        cfg = parse_config({"clickhousedb": {"servers": ["https://127.0.0.1:8443"], "tls": {
            "enable": True, "ca-file": str(files.ca_file), "cert-file": str(cert),
            "key-file": str(key)}}}, {})
        return ClickHouseWriter(cfg.clickhousedb)

    metrics = Metrics()
    replaceable = ReplaceableWriter(writer(files.cert, files.key))
    TLSMetrics("central", metrics).follow(replaceable)
    later, later_key = files.issue("later", not_after=NOW + 90 * DAY)
    new = writer(later, later_key)
    await replaceable.replace(new)

    def expiry(path: Path) -> float | None:
        return metrics.registry.get_sample_value(
            names.TLS_CLIENT_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, {"file": str(path)})

    assert expiry(later) == pytest.approx((NOW + 90 * DAY).timestamp(), abs=2)
    files.ca.issue("later-b", client=True).write(later, later_key)  # then rotated on disk
    new._follow_rotation()
    assert metrics.registry.get_sample_value(
        names.DESTINATION_TLS_RELOADS_TOTAL, {"destination": "central"}) == 1
    await replaceable.aclose()
