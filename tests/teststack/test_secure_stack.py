"""The secure stack's broker configuration and endpoints, in-process (the brokers and
servers themselves are exercised by tests/outlet/test_secure_links.py)."""

from __future__ import annotations

from pathlib import Path

from teststack import secure
from teststack.stack import Endpoints

BASE = """listeners=DIRECT://127.0.0.1:1,PROXIED://127.0.0.1:2,CONTROLLER://127.0.0.1:3
advertised.listeners=DIRECT://127.0.0.1:1,PROXIED://127.0.0.1:9
listener.security.protocol.map=DIRECT:PLAINTEXT,PROXIED:PLAINTEXT,CONTROLLER:PLAINTEXT
"""


def test_broker_properties_keep_the_plaintext_listeners(tmp_path: Path) -> None:
    users = secure.users(tmp_path)
    assert secure.users(tmp_path) == users  # created once, then reused
    assert (tmp_path / "scram-users.json").stat().st_mode & 0o077 == 0
    ports = secure.new_ports([11, 12, 13])
    props = dict(line.split("=", 1) for line in
                 secure.broker_properties(BASE, ports, tmp_path, users).splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["listeners"] == ("DIRECT://127.0.0.1:1,PROXIED://127.0.0.1:2,CONTROLLER://"
                                  "127.0.0.1:3,SASL_SSL://127.0.0.1:11,SSL://127.0.0.1:12,"
                                  "SASL_PLAINTEXT://127.0.0.1:13")
    assert props["advertised.listeners"].startswith("DIRECT://127.0.0.1:1,PROXIED://127.0.0.1:9,")
    assert props["listener.security.protocol.map"].endswith(
        "SASL_SSL:SASL_SSL,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT")
    plain = users["PLAIN"]
    assert props["listener.name.sasl_ssl.plain.sasl.jaas.config"].endswith(
        f'required user_{plain.username}="{plain.password}";')
    assert props["listener.name.sasl_plaintext.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.ssl.ssl.client.auth"] == "required"
    args = secure.scram_arguments(users)
    assert args[0::2] == ["--add-scram", "--add-scram"]
    assert args[1].startswith(f"SCRAM-SHA-256=[name={users['SCRAM-SHA-256'].username},")
    # The format cache differs with the users (their credentials are in the metadata).
    other = {m: secure.KafkaUser(m, u.username, u.password + "x") for m, u in users.items()}
    assert secure.template_name("t", users) != secure.template_name("t", other)


def test_endpoints_round_trip_with_and_without_secure(tmp_path: Path) -> None:
    users = secure.users(tmp_path)
    ep = secure.endpoints(secure.new_ports([1, 2, 3]), tmp_path, users)
    plain = {"kafka": {"bootstrap": "127.0.0.1:1", "bootstrap_proxied": "127.0.0.1:2",
                       "topic": "flows", "partitions": 4, "proxy": "kafka"},
             "toxiproxy": {"api": "http://127.0.0.1:3"}, "ca_file": "/ca.pem",
             "clickhouse": {"local": {"url": "http://127.0.0.1:4", "proxied_url": "",
                                      "https_url": "", "username": "u", "password": "p",
                                      "data_dir": "/d", "proxy": "clickhouse-local"}}}
    loaded = Endpoints.from_dict(plain)
    assert loaded.secure is None and loaded.clickhouse["local"].mtls_url == ""
    assert "secure" not in loaded.to_dict()
    with_secure = Endpoints.from_dict({**plain, "secure": ep.to_dict()})
    assert with_secure.secure == ep
    assert with_secure.to_dict()["secure"]["users"]["PLAIN"]["password"] == users["PLAIN"].password
