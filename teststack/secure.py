"""The stack's secure links (optional: ``start_stack(secure=True)``, ``chaos stack up
--secure``, ``make up SECURE=1``): what real datacenters run, next to the plaintext
listeners that producers and test tools keep using.

Kafka gets three more listeners, their certificates from the stack's CA:

=================  =================================================================
``SASL_SSL``       TLS, then SASL PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
``SSL``            TLS only, a client certificate the stack's CA signed is required
``SASL_PLAINTEXT`` SASL SCRAM-SHA-512 only, no TLS (a listener that lacks a mechanism
                   the outlet supports: the "unknown mechanism" case)
=================  =================================================================

SCRAM credentials are created when the storage is formatted (``kafka-storage format
--add-scram``), PLAIN users are in the listener's JAAS configuration. The broker's
certificate names 127.0.0.1 only (not ``localhost``): connecting as ``localhost`` is the
host-name-mismatch case. The broker authorizes with ACLs (StandardAuthorizer; allowed when
a resource has none; the plaintext listeners' ANONYMOUS is a super user), so a test can
deny one certificate's principal and see whether a client still uses it. Each ClickHouse
server gets an HTTPS port that requires and verifies client certificates (``mtls_url``,
ClickHouse's ``verificationMode: strict``).
``tls/client.pem`` + ``tls/client-key.pem`` (CN ``outlet``) is a client certificate the
stack's CA signed.

SCRAM users are part of the formatted metadata, which the stack caches per machine
(``.tools/kafka/formatted-<jar>-scram-<hash>``, one JVM start saved per stack): their
passwords are generated once per machine (``.tools/kafka/scram-users.json``, mode 0600)
and served in ``endpoints.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teststack.certs import Authority, write_private

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_PLAINTEXT_MECHANISMS = ("SCRAM-SHA-512",)
LISTENERS = ("SASL_SSL", "SSL", "SASL_PLAINTEXT")
CLIENT_CN = "outlet"
_USERS_FILE = "scram-users.json"
_LOGIN = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


@dataclass(frozen=True)
class KafkaUser:
    mechanism: str
    username: str
    password: str


@dataclass(frozen=True)
class SecureEndpoints:
    """``endpoints.json``'s ``secure`` section (docs/CONTRACTS.md)."""

    kafka_sasl_ssl: str
    kafka_ssl: str
    kafka_sasl_plaintext: str
    users: dict[str, KafkaUser]  # by mechanism
    client_cert_file: str
    client_key_file: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SecureEndpoints:
        users = {m: KafkaUser(**u) for m, u in data["users"].items()}
        return cls(**{**data, "users": users})

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["users"] = {m: u.__dict__.copy() for m, u in self.users.items()}
        return out

    def user(self, mechanism: str) -> KafkaUser:
        return self.users[mechanism]


def new_ports(ports: list[int]) -> dict[str, int]:
    """State of the secure listeners from three free ports."""
    return dict(zip(("sasl_ssl_port", "ssl_port", "sasl_plaintext_port"), ports, strict=True))


def users(kafka_tools: Path) -> dict[str, KafkaUser]:
    """The stack's Kafka users, one per mechanism, created once beside the format cache
    (``kafka_tools``: .tools/kafka)."""
    path = kafka_tools / _USERS_FILE
    try:
        data = json.loads(path.read_text())
        return {m: KafkaUser(**u) for m, u in data.items()}
    except (OSError, ValueError, TypeError):
        pass
    made = {m: KafkaUser(m, f"outlet-{m.lower()}", secrets.token_urlsafe(18))
            for m in MECHANISMS}
    write_private(path, json.dumps({m: u.__dict__ for m, u in made.items()}).encode())
    return made


def template_name(base: str, kafka_users: dict[str, KafkaUser]) -> str:
    """The format cache of a secure broker: its SCRAM users are in the metadata."""
    digest = hashlib.sha256(json.dumps(
        {m: u.__dict__ for m, u in sorted(kafka_users.items())}).encode()).hexdigest()[:12]
    return f"{base}-scram-{digest}"


def scram_arguments(kafka_users: dict[str, KafkaUser]) -> list[str]:
    """``kafka-storage format`` arguments creating the SCRAM users."""
    out: list[str] = []
    for m in SCRAM_MECHANISMS:
        u = kafka_users[m]
        out += ["--add-scram", f"{m}=[name={u.username},password={u.password}]"]
    return out


def write_certificates(tls_dir: Path) -> dict[str, Path]:
    """The broker's keystore (key + certificate for 127.0.0.1 only) and the outlet's
    client certificate, signed by the stack's CA (tls/ca.pem). Reuses existing files."""
    paths = {
        "keystore": tls_dir / "kafka-keystore.pem",
        "client_cert": tls_dir / "client.pem",
        "client_key": tls_dir / "client-key.pem",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    ca = Authority.load(tls_dir / "ca.pem", tls_dir / "ca-key.pem")
    broker = ca.issue("127.0.0.1", ips=["127.0.0.1"], server=True)
    write_private(paths["keystore"], broker.key_pem + broker.cert_pem)
    ca.issue(CLIENT_CN, client=True).write(paths["client_cert"], paths["client_key"])
    return paths


def _extend(props: str, key: str, extra: list[str]) -> str:
    m = re.search(rf"^{re.escape(key)}=(.*)$", props, re.M)
    if m is None:
        raise ValueError(f"server.properties has no {key}")
    value = ",".join([m.group(1), *extra])
    return props[: m.start()] + f"{key}={value}" + props[m.end():]


def _jaas(mechanism: str, kafka_users: dict[str, KafkaUser]) -> str:
    if mechanism == "PLAIN":
        u = kafka_users["PLAIN"]
        # PLAIN users live in the JAAS configuration: user_<name>="<password>".
        return f'{_LOGIN[mechanism]} required user_{u.username}="{u.password}";'
    return f"{_LOGIN[mechanism]} required;"


def broker_properties(props: str, secure: dict[str, int], tls_dir: Path,
                      kafka_users: dict[str, KafkaUser]) -> str:
    """``server.properties`` with the secure listeners added."""
    ports = {"SASL_SSL": secure["sasl_ssl_port"], "SSL": secure["ssl_port"],
             "SASL_PLAINTEXT": secure["sasl_plaintext_port"]}
    addresses = [f"{name}://127.0.0.1:{port}" for name, port in ports.items()]
    props = _extend(props, "listeners", addresses)
    props = _extend(props, "advertised.listeners", addresses)
    props = _extend(props, "listener.security.protocol.map",
                    [f"{name}:{name}" for name in ports])
    lines = [
        "# secure listeners (teststack/secure.py)",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={tls_dir / 'kafka-keystore.pem'}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={tls_dir / 'ca.pem'}",
        "listener.name.ssl.ssl.client.auth=required",
        # ACLs, so a test can deny one client certificate's principal (User:CN=...):
        # everything without an ACL stays allowed; plaintext listeners are super users.
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=true",
        "super.users=User:ANONYMOUS",
        f"sasl.enabled.mechanisms={','.join(MECHANISMS)}",
        f"listener.name.sasl_ssl.sasl.enabled.mechanisms={','.join(MECHANISMS)}",
        *(f"listener.name.sasl_ssl.{m.lower()}.sasl.jaas.config={_jaas(m, kafka_users)}"
          for m in MECHANISMS),
        "listener.name.sasl_plaintext.sasl.enabled.mechanisms="
        + ",".join(SASL_PLAINTEXT_MECHANISMS),
        *(f"listener.name.sasl_plaintext.{m.lower()}.sasl.jaas.config="
          f"{_jaas(m, kafka_users)}" for m in SASL_PLAINTEXT_MECHANISMS),
    ]
    return props.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def endpoints(secure: dict[str, int], tls_dir: Path, kafka_users: dict[str, KafkaUser]
              ) -> SecureEndpoints:
    return SecureEndpoints(
        kafka_sasl_ssl=f"127.0.0.1:{secure['sasl_ssl_port']}",
        kafka_ssl=f"127.0.0.1:{secure['ssl_port']}",
        kafka_sasl_plaintext=f"127.0.0.1:{secure['sasl_plaintext_port']}",
        users=kafka_users,
        client_cert_file=str(tls_dir / "client.pem"),
        client_key_file=str(tls_dir / "client-key.pem"),
    )
