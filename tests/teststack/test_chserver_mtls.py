"""teststack.chserver's client-certificate port in `relaxed` mode (a certificate is
verified when presented, none is required) and its request log naming the certificate.
The `strict` mode, the stack's, is exercised by tests/outlet/test_secure_links.py."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import clickhouse_connect
import pytest
import urllib3
from clickhouse_connect.driver.exceptions import OperationalError

from outlet import linkfailure as lf
from teststack.certs import Authority
from teststack.chserver_proc import start_chserver


def test_relaxed_verifies_a_presented_certificate_and_requires_none(tmp_path: Path) -> None:
    ca = Authority.create("relaxed CA")
    ca_file, _ = ca.write(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    server = ca.issue("127.0.0.1", ips=["127.0.0.1"], server=True).write(
        tmp_path / "server.pem", tmp_path / "server-key.pem")
    good = ca.issue("relaxed-client", client=True).write(tmp_path / "c.pem", tmp_path / "k.pem")
    foreign = Authority.create("other CA").issue("intruder", client=True).write(
        tmp_path / "f.pem", tmp_path / "fk.pem")
    log_file = tmp_path / "ch.log"
    srv = start_chserver(tmp_path / "data", "u", "pw", mtls_port=0, certfile=server[0],
                         keyfile=server[1], client_ca_file=ca_file, log_file=log_file,
                         extra_args=["--mtls-verification-mode", "relaxed"],
                         die_with_parent=True)
    try:
        assert srv.mtls_url is not None

        def query(cert: tuple[Path, Path] | None) -> int:
            ctx = ssl.create_default_context(cafile=str(ca_file))
            if cert is not None:
                ctx.load_cert_chain(*cert)
            pool = urllib3.PoolManager(ssl_context=ctx)
            client = clickhouse_connect.get_client(
                host="127.0.0.1", port=srv.mtls_port, interface="https", username="u",
                password="pw", pool_mgr=pool, connect_timeout=5)
            try:
                return int(client.command("SELECT 1"))
            finally:
                client.close()
                pool.clear()

        assert query(None) == 1  # relaxed: no certificate is fine
        assert query(good) == 1
        with pytest.raises(OperationalError) as err:
            query(foreign)  # presented, not signed by the CA: refused
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(*foreign)
        failure = lf.probe("127.0.0.1", srv.mtls_port, ctx)
        assert failure is not None and failure.reason == lf.CLIENT_CERT_REJECTED, err.value
    finally:
        srv.stop()
    names = re.findall(r"cert=(\S+) query='SELECT 1'", log_file.read_text())
    assert names == ["-", "relaxed-client"], names
    assert "TLS with 127.0.0.1 failed" in log_file.read_text()
