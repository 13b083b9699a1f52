"""The outlet's configuration schema: the only place config keys, defaults and docs live.

YAML keys are kebab-case; Python attributes are snake_case. Each key is declared once, as a
field of the frozen dataclasses below (:func:`outlet.confspec.setting`: YAML name, kind,
default, doc line); the allowed keys, did-you-mean hints, parsing, the ``key.path:
problem`` errors, the redacted dump (``outlet check-config``) and the key tables of
docs/configuration.md (``python -m outlet.config --docs``) all derive from them.

Loading is done in three steps:

1. YAML (duplicate keys are errors),
2. ``${VAR}`` / ``${VAR:-default}`` expansion on every parsed *string value* (never on raw
   text, so YAML quoting cannot break; mapping keys are not expanded; ``$${`` is a literal
   ``${``),
3. validation into the dataclasses. Every problem is collected, and one
   :class:`ConfigError` lists them all, each as ``key.path: problem``.

Passwords are :class:`Secret` objects: their ``str``/``repr`` never show the value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import yaml

from outlet import tlsfiles
from outlet.confspec import (
    REDACTED,
    Bool,
    Duration,
    File,
    HostPort,
    Int,
    Invalid,
    Key,
    KeyDoc,
    Kind,
    Nested,
    Problems,
    Secret,
    SecretStr,
    Section,
    Size,
    SpecError,
    Str,
    StrList,
    Where,
    describe,
    dump,
    format_duration,
    format_size,
    host_port_problem,
    load_yaml,
    parse,
    parse_duration,
    parse_size,
    section,
    setting,
    show,
)
from outlet.confspec import expand_env as _expand_env

__all__ = [
    "REDACTED",
    "BatchConfig",
    "CircuitBreakerConfig",
    "ConfigError",
    "ConnectionConfig",
    "DestinationConfig",
    "ExporterInfo",
    "InterfaceInfo",
    "KafkaConfig",
    "MetadataConfig",
    "NetworkInfo",
    "OutletConfig",
    "SASLConfig",
    "Secret",
    "SpoolConfig",
    "TLSConfig",
    "dump_redacted",
    "format_duration",
    "format_size",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "read_yaml",
    "redacted_dict",
]

PRIMARY_NAME = "primary"
PRIMARY_QUEUE_SIZE = 4
BOUNDARIES = ("undefined", "external", "internal")
SASL_MECHANISMS = ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("human", "json")
WHEN_FULL = ("drop-oldest", "block")
FSYNC_MODES = ("batch", "interval", "never")
COMPRESSIONS = ("none", "lz4")
UINT32_MAX = 2**32 - 1
HTTP_PORT, HTTPS_PORT = 8123, 8443
_DEFAULT_SERVER = f"127.0.0.1:{HTTP_PORT}"
#: ClickHouse's default ports that do not speak its HTTP interface: ``host:port`` with one
#: of these is refused (Akvorado's examples use the native port 9000); an explicit
#: ``http(s)://`` URL is taken as the user means it.
NOT_HTTP_PORTS = {9000: "native protocol", 9440: "native protocol with TLS",
                  9004: "MySQL protocol", 9005: "PostgreSQL protocol",
                  9009: "interserver protocol", 9100: "gRPC interface"}
#: A configuration file (or a configuration an orchestrator serves) larger than this is
#: refused before it is parsed: reading and validating one costs ~1.7 s of CPU and ~65 MB
#: per MiB (docs/configuration.md).
MAX_CONFIG_BYTES = 8 * 1024 * 1024


class ConfigError(SpecError):
    """One or more configuration problems; ``errors`` holds one ``path: problem`` line each."""

    what = "configuration"


# --------------------------------------------------------------------------------------
# Kinds specific to the outlet
# --------------------------------------------------------------------------------------


def _server_url(s: str, tls_enable: bool) -> tuple[str, str]:
    """Normalize a ClickHouse server entry to a URL; returns (url, error)."""
    if "://" in s:
        try:
            u = urlsplit(s)
            port = u.port
        except ValueError:  # its text quotes the entry
            return "", "is not a valid URL (bad port or IPv6 address)"
        if u.scheme not in ("http", "https"):
            return "", "URL scheme must be http or https"
        if u.username is not None or u.password is not None:
            # Do not echo the entry: it holds credentials.
            return "", "must not contain credentials; use username and password"
        if not u.hostname:
            return "", "URL has no host"
        if u.path not in ("", "/") or u.query or u.fragment:
            return "", "URL must not have a path, query or fragment"
        if u.scheme == "http" and tls_enable:
            return "", "is an http:// URL but tls.enable is true (use https://)"
        if port == 0:
            return "", "has port 0 out of range 1..65535"
        if port is None:
            port = HTTPS_PORT if u.scheme == "https" else HTTP_PORT
        host = u.hostname
        if ":" in host:
            host = f"[{host}]"
        return f"{u.scheme}://{host}:{port}", ""
    scheme = "https" if tls_enable else "http"
    if re.fullmatch(r"(\[[^\]]*\]|[^:\[\]/\s]+)", s):  # host without a port
        s = f"{s}:{HTTPS_PORT if tls_enable else HTTP_PORT}"
    problem = host_port_problem(s)
    if problem.startswith("must be"):
        return "", "must be host:port ([addr]:port for IPv6) or an http(s):// URL"
    if problem:
        return "", problem
    port = int(s.rsplit(":", 1)[1])
    if port in NOT_HTTP_PORTS:
        return "", (f"is ClickHouse's {NOT_HTTP_PORTS[port]} port ({port}): this outlet "
                    f"speaks the ClickHouse HTTP interface: use port {HTTP_PORT} (or "
                    f"{HTTPS_PORT} with TLS); if this server really serves HTTP on {port}, "
                    f"write {scheme}://{s}")
    return f"{scheme}://{s}", ""


class _Servers(StrList):
    """ClickHouse servers, normalized to URLs (the scheme follows the sibling ``tls.enable``)."""

    def __init__(self) -> None:
        super().__init__(type_doc="list of `host:port` or `http(s)://host[:port]`")

    def parse(self, raw: object, at: Where, default: tuple[str, ...]) -> tuple[str, ...]:
        tls_enable = at.sibling("tls").enable
        servers: list[str] = []
        for where, s in self.items(raw, at):
            url, problem = _server_url(s, tls_enable)
            if problem:
                quoted = "@" in s or s in problem  # never echo credentials, nor twice
                where.report(problem + ("" if quoted else f", got {show(s)}"))
            elif url in servers:
                where.report(f"duplicate server {url}")
            else:
                servers.append(url)
        return tuple(servers) or self.missing(default, at)

    def missing(self, default: tuple[str, ...], at: Where) -> tuple[str, ...]:
        return (_server_url(_DEFAULT_SERVER, at.sibling("tls").enable)[0],)


def _parse_prefix(key: object) -> tuple[str, str]:
    """Normalize an IP address or CIDR (IPv4-mapped IPv6 folded to IPv4); (prefix, error)."""
    if not isinstance(key, str):
        return "", f"must be an IP address or CIDR, got {show(key)}"
    text = key.strip()
    try:
        net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return "", "is not a valid IP address or CIDR"
        return "", f"has host bits set (did you mean {loose}?)"
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            net = ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return str(net), ""


class _Prefixes(Kind[tuple[Any, ...]]):
    """A mapping of IP address or CIDR -> attributes (a spec with a ``prefix`` field)."""

    def __init__(self, cls: type[Any], *, shorthand: str | None = None) -> None:
        super().__init__()
        self.cls = cls
        self.shorthand = shorthand  # a plain string value is short for {shorthand: value}
        self.type_doc = "map IP or CIDR -> attributes"

    def parse(self, raw: object, at: Where, default: tuple[Any, ...]) -> tuple[Any, ...]:
        if not isinstance(raw, dict):
            raise Invalid(f"must be a mapping of IP address or CIDR to attributes, got {show(raw)}")
        out: list[Any] = []
        seen: dict[str, object] = {}
        for k, value in raw.items():
            where = at.child(k)
            prefix, problem = _parse_prefix(k)
            if problem:
                where.report(problem)
                continue
            if prefix in seen:
                where.report(f"duplicate prefix {prefix} (also given as {show(seen[prefix])})")
                continue
            seen[prefix] = k
            if self.shorthand and isinstance(value, str):
                value = {self.shorthand: value}
            out.append(parse(self.cls, value, at.problems, path=where.path,
                             defaults=self.cls(prefix=prefix)))
        return tuple(out)

    def dump(self, value: tuple[Any, ...]) -> dict[str, Any]:
        return {item.prefix: dump(item) for item in value}

    def children(self) -> Iterator[tuple[str, Kind[Any]]]:
        yield "[<prefix>]", Nested(self.cls)


class _IfIndexes(Kind["Mapping[int, InterfaceInfo]"]):
    type_doc = "map ifIndex (int 0..2^32-1) -> interface"

    def parse(self, raw: object, at: Where, default: Mapping[int, InterfaceInfo]
              ) -> Mapping[int, InterfaceInfo]:
        if not isinstance(raw, dict):
            raise Invalid(f"must be a mapping of ifIndex to interface, got {show(raw)}")
        interfaces: dict[int, InterfaceInfo] = {}
        for k, value in raw.items():
            where = at.child(k)
            index: int | None = None
            if isinstance(k, int) and not isinstance(k, bool):
                index = k
            elif isinstance(k, str) and k.strip().isdigit():
                index = int(k.strip())
            if index is None or not 0 <= index <= UINT32_MAX:
                where.report(f"ifIndex must be an integer between 0 and {UINT32_MAX}")
                continue
            if index in interfaces:
                where.report(f"duplicate ifIndex {index}")
                continue
            interfaces[index] = parse(InterfaceInfo, value, at.problems, path=where.path)
        return types.MappingProxyType(interfaces)

    def dump(self, value: Mapping[int, InterfaceInfo]) -> dict[int, Any]:
        return {i: dump(v) for i, v in value.items()}

    def children(self) -> Iterator[tuple[str, Kind[Any]]]:
        yield "[<ifIndex>]", Nested(InterfaceInfo)


class _Destinations(Kind[tuple["DestinationConfig", ...]]):
    """``additional-clickhouses``: batch defaults from the top-level ``clickhouse``, spool
    paths under ``state.path``; names and spool paths unique."""

    type_doc = "list of destinations"

    def parse(self, raw: object, at: Where, default: tuple[DestinationConfig, ...]
              ) -> tuple[DestinationConfig, ...]:
        if not isinstance(raw, list):
            raise Invalid(f"must be a list of destinations, got {show(raw)}")
        defaults = DestinationConfig(batch=at.sibling("clickhouse"))
        state_path = at.sibling("state_path")
        out: list[DestinationConfig] = []
        names: dict[str, int] = {}
        spools: dict[str, int] = {}
        for i, item in enumerate(raw):
            where = at.child(i)
            dest = parse(DestinationConfig, item, at.problems, path=where.path,
                         defaults=defaults)
            if not dest.spool.path:
                path = _default_spool_path(state_path, dest.name or "_")
                dest = replace(dest, spool=replace(dest.spool, path=path))
            if dest.name:
                if dest.name in names:
                    where.child("name").report(f"duplicate destination name {dest.name!r}"
                                               f" (also at {at.child(names[dest.name]).path})")
                else:
                    names[dest.name] = i
                if dest.spool.enable:
                    norm = os.path.normpath(dest.spool.path)
                    if norm in spools:
                        where.child("spool").child("path").report(
                            f"same spool path as {at.child(spools[norm]).path}: "
                            f"{show(dest.spool.path)}")
                    else:
                        spools[norm] = i
            out.append(dest)
        return tuple(out)

    def dump(self, value: tuple[DestinationConfig, ...]) -> list[dict[str, Any]]:
        return [dump(d) for d in value]

    def children(self) -> Iterator[tuple[str, Kind[Any]]]:
        yield "[*]", Nested(DestinationConfig)


def _sasl_mechanism(v: str) -> str:
    k = v.strip().upper().replace("-", "").replace("_", "")
    return {
        "": "",
        "NONE": "",
        "PLAIN": "PLAIN",
        "SCRAMSHA256": "SCRAM-SHA-256",
        "SCRAMSHA512": "SCRAM-SHA-512",
    }.get(k, v)


def _log_level(v: str) -> str:
    s = v.strip().lower()
    return {"warn": "warning"}.get(s, s)


def _named(v: object) -> bool:
    return isinstance(v, str) and v != ""


def _default_spool_path(state_path: str, name: str) -> str:
    return os.path.join(state_path, "spool", name)


# --------------------------------------------------------------------------------------
# The schema (the API other modules code against)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSConfig:
    enable: bool = setting(
        False, Bool(), doc="Use TLS. For ClickHouse, `host:port` servers become `https://`; "
                           "for Kafka, the security protocol is `SSL` (`SASL_SSL` with `sasl`).")
    verify: bool = setting(
        True, Bool(), doc="Verify the server certificate (chain, validity) and host name.")
    ca_file: str | None = setting(
        None, File(), default_doc="none",
        doc="CA bundle (PEM) to verify the server; system CAs when absent. Must be readable "
            "and hold a PEM certificate.")
    cert_file: str | None = setting(
        None, File(secret=True), default_doc="none",
        doc="Client certificate (PEM), for mutual TLS. May also hold the key (then no "
            "`key-file`). Checked at load: readable, a PEM certificate, its key matching "
            "(errors); expired, not yet valid or expiring within 14 days (warnings). Replaced "
            "files are used by new connections without a restart ([security.md](security.md)).")
    key_file: str | None = setting(
        None, File(secret=True), default_doc="none",
        doc="Client key (PEM, unencrypted: there is no key password setting); requires "
            "`cert-file`.")

    __inputs__: ClassVar[dict[str, Key]] = {
        "skip-verify": Key(Bool(), False, after="verify",
                           doc="Akvorado's spelling: the opposite of `verify`. Setting both "
                               "inconsistently is an error."),
    }

    @classmethod
    def __check__(cls, s: Section) -> None:
        skip = s.input("skip-verify")
        if skip is not None:
            if s.given("verify") and skip == s["verify"]:
                s.report("skip-verify", "contradicts verify (skip-verify is the opposite)")
            s["verify"] = not skip
        if _named(s.raw("key-file")) and not _named(s.raw("cert-file")):  # even if missing
            s.report("key-file", "is set but cert-file is not")
        _check_tls_files(s)


def _check_tls_files(s: Section) -> None:
    """What librdkafka and Python's ssl would refuse when the connection is set up: files
    that hold no certificate, a key that is encrypted or does not match the certificate,
    a certificate without its key. Never quotes a file (a key is a secret)."""
    ca, cert, key = s["ca_file"], s["cert_file"], s["key_file"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for name, path in (("ca-file", ca), ("cert-file", cert)):
        if path is not None:
            try:
                context.load_verify_locations(cafile=path)
            except (ssl.SSLError, ValueError):
                s.report(name, f"holds no PEM certificate: {show(path)}")
                return
    if cert is None:
        return
    try:
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as e:
        holder = "key-file" if key is not None else "cert-file"
        if e.reason == "KEY_VALUES_MISMATCH":
            s.report(holder, "does not hold the private key of the certificate in cert-file")
        elif _encrypted_key(key or cert):
            s.report(holder, "holds an encrypted private key, which the outlet cannot "
                             "decrypt: store it unencrypted (readable by the outlet only)")
        elif key is None:
            s.report("cert-file", "holds no private key: set key-file (mutual TLS needs the "
                                  "key of the certificate)")
        else:
            s.report("key-file", f"holds no PEM private key: {show(key)}")


def _encrypted_key(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"ENCRYPTED" in f.read(MAX_CONFIG_BYTES)
    except OSError:
        return False


@dataclass(frozen=True)
class SASLConfig:
    mechanism: str = setting(
        "", Str(choices=SASL_MECHANISMS, normalize=_sasl_mechanism), default_doc='`""` (none)',
        doc="Case-insensitive; Akvorado's `plain`, `scram-sha256`, `scram-sha512` are accepted. "
            "With `tls.enable` the protocol is `SASL_SSL`, without `SASL_PLAINTEXT`.")
    username: str = setting("", Str(), doc="Required when a mechanism is set.")
    password: Secret = setting(
        Secret(), SecretStr(), doc="Required when a mechanism is set. Never shown (logs, "
                                   "metrics, /readyz, `check-config`); `${VAR}` keeps it out "
                                   "of the file.")

    @classmethod
    def __check__(cls, s: Section) -> None:
        if s["mechanism"] and not s["username"]:
            s.report("username", f"is required when mechanism is {s['mechanism']}")
        invalid = s.given("password") and not isinstance(s.raw("password"), str)  # reported
        if s["mechanism"] and not s["password"] and not invalid:  # librdkafka needs one
            s.report("password", f"is required when mechanism is {s['mechanism']}")


_TLS_TYPE = "[TLS](#tls)"


# Bounds of the keys handed to librdkafka (outlet/kafka_client.py), so that check-config
# refuses what the consumer would refuse (tests/outlet/test_librdkafka_bounds.py builds a
# real consumer at each bound and reads librdkafka's own ranges):
# - fetch.wait.max.ms is 0..300000 ms for librdkafka, but above socket.timeout.ms (60 s,
#   its default) minus 1 s librdkafka warns that fetch requests time out: 59 s at most;
# - confluent-kafka's consume() returns at most 1,000,000 messages per call;
# - topic names: Kafka's rule (1..249 of [a-zA-Z0-9._-], not "." or ".."); a name starting
#   with "^" would be a regular expression to librdkafka.
FETCH_MAX_WAIT_MAX = 59.0
MAX_POLL_RECORDS_MAX = 1_000_000
KAFKA_NAME_MAX = 249
QUEUE_SIZE_MAX = 256  # batches in a queue: each is up to maximum-batch-size flows in memory
BATCH_SIZE_MAX = 1_000_000  # flows in one batch: ~120 MB of Native per batch
HOUR = 3600.0  # sane ceiling of the other durations (a timeout of years overflows sockets)
DIAL_TIMEOUT_MAX = 600.0


def _kafka_topic(v: str) -> str:
    if v in (".", ".."):
        raise Invalid(f"must not be '.' or '..' (Kafka refuses them), got {show(v)}")
    return v


@dataclass(frozen=True)
class KafkaConfig:
    brokers: tuple[str, ...] = setting(
        ("127.0.0.1:9092",), StrList(HostPort(credentials="for Kafka use kafka.sasl"),
                                     type_doc="list of `host:port`"),
        doc="Bootstrap brokers (`[v6addr]:port` for IPv6). Non-empty. Credentials "
            "(`user:password@`) are refused: use `sasl`.")
    topic: str = setting(
        "flows", Str(pattern=rf"[a-zA-Z0-9._-]{{1,{KAFKA_NAME_MAX}}}", normalize=_kafka_topic,
                     pattern_msg=f"must be a Kafka topic name (1 to {KAFKA_NAME_MAX} of "
                                 "a-z A-Z 0-9 . _ -)"),
        type_doc=f"topic name (1..{KAFKA_NAME_MAX} of `[a-zA-Z0-9._-]`)",
        doc="Topic of GoFlow2 length-delimited protobuf records.")
    consumer_group: str = setting(
        "outlet", Str(nonempty=True, max_len=255), type_doc="string (1..255 chars)",
        doc="Consumer group; offsets are committed only once the data is stored "
            "(see the delivery guarantees).")
    fetch_max_wait: float = setting(
        0.1, Duration(at_most=FETCH_MAX_WAIT_MAX),
        doc="How long a fetch waits for data (librdkafka's `fetch.wait.max.ms`; at most 59s: "
            "a fetch must return within librdkafka's 60 s socket timeout minus 1 s).")
    max_poll_records: int = setting(
        10000, Int(1, MAX_POLL_RECORDS_MAX),
        doc="Records per poll (at most 1,000,000: what confluent-kafka's `consume()` takes).")
    queue_size: int = setting(
        8, Int(1, QUEUE_SIZE_MAX),
        doc="Chunks of polled records (up to `max-poll-records` each) in flight between the "
            "consumer and the batcher.")
    offset_metadata_max_bytes: int = setting(
        4096, Int(512, 1 << 20),
        doc="Most bytes of offset-commit metadata per partition, where the batch ledger "
            "lives (the sealed, uncommitted batches: about 10 bytes each, so hundreds fit). "
            "Must not exceed the brokers' `offset.metadata.max.bytes` (4096 by default): "
            "checked at start-up when the brokers let us read it. When a partition's pending "
            "batches fill it, sealing waits for settlements (backpressure). See "
            "[dual-write.md](dual-write.md#the-batch-ledger-in-kafka).")
    tls: TLSConfig = section(TLSConfig, doc="TLS to the brokers.", type_doc=_TLS_TYPE,
                             default_doc="disabled")
    sasl: SASLConfig = section(SASLConfig)
    cluster_identity: str = setting(  # added to the cluster id in deduplication tokens
        "", Str(pattern=r"[A-Za-z0-9._-]{0,64}",
                pattern_msg="must match [A-Za-z0-9._-]+ (at most 64 characters)"),
        type_doc="`[A-Za-z0-9._-]`, at most 64", default_doc='`""` (none)',
        doc="Added to the Kafka cluster id in every deduplication token "
            "(`v2:<cluster-id>+<cluster-identity>/...`). **Set it, different in each "
            "datacenter, when Kafka clusters share a cluster id**: clusters restored from one "
            "backup or disk snapshot, cloned VMs or volumes, a cluster re-created from "
            "another's storage. Leave it empty otherwise: the cluster id, read from the "
            "brokers at start-up, already tells clusters apart. Changing it changes the "
            "tokens of new batches only (batches in the ledger and the spool keep theirs), so "
            "it is safe to set during an outage. See [dual-write.md](dual-write.md#"
            "deduplication-tokens-and-why-they-cannot-collide).")


DEDUP_UNKNOWN = ("replay", "skip")


@dataclass(frozen=True)
class DedupCheckConfig:
    after: float = setting(
        60.0, Duration(at_most=7 * 24 * HOUR),
        doc="A batch that may be stored already (an earlier attempt timed out or was cut "
            "after sending, a rebuild of a batch another process may have inserted, a spool "
            "replay) and was first sealed longer ago than this is looked up in the server's "
            "`system.query_log` before it is sent again, because the table may have "
            "forgotten its token by then (`non_replicated_deduplication_window` counts "
            "inserts, `replicated_deduplication_window_seconds` is 1 h). `0` = never look. "
            "Needs `SELECT` on `system.query_log`. See "
            "[dual-write.md](dual-write.md#replays-older-than-the-deduplication-window).")
    when_unknown: str = setting(
        "replay", Str(choices=DEDUP_UNKNOWN),
        doc="When the lookup cannot tell (no access to the log, log disabled or rotated "
            "since the batch was sealed): `replay` sends the batch (risks a duplicate), "
            "`skip` gives it up (risks a loss, counted in `retries_exceeded{reason="
            "\"unverified\"}`). Either way counted in "
            "`outlet_destination_dedup_checks_total{outcome}`.")
    cluster: str = setting(
        "", Str(pattern=r"[A-Za-z0-9_.-]{0,128}",
                pattern_msg="must be a cluster name ([A-Za-z0-9_.-]+)"),
        default_doc='`""` (one server)',
        doc="Read the logs of every replica (`clusterAllReplicas('<cluster>', "
            "system.query_log)`): required when inserts go through several servers of a "
            "cluster, since each server logs only its own queries.")


@dataclass(frozen=True)
class ConnectionConfig:
    servers: tuple[str, ...] = setting(
        ("http://127.0.0.1:8123",), _Servers(), default_doc=f'`["{_DEFAULT_SERVER}"]`',
        doc="ClickHouse HTTP interface. Several entries = failover, in order. Normalized to "
            "URLs: `host:port` becomes `http://host:port`, or `https://host:port` when "
            "`tls.enable` is true; a URL without a port gets 8123 (http) or 8443 (https). An "
            "`http://` URL with `tls.enable: true` is an error; credentials in URLs are "
            "refused. A `host:port` on another ClickHouse protocol's default port is refused "
            "with the fix: 9000 and 9440 (native protocol, as in Akvorado's examples), 9004, "
            "9005, 9009, 9100; an explicit `http(s)://` URL is taken as written. Required (no "
            "default) in `additional-clickhouses`.")
    database: str = setting(
        "flows", Str(pattern=r"[A-Za-z_][A-Za-z0-9_]*",
                     pattern_msg="must be an identifier ([A-Za-z_][A-Za-z0-9_]*)"),
        type_doc="identifier", doc="Database of the flows table.")
    username: str = setting("default", Str(), doc="")
    password: Secret = setting(
        Secret(), SecretStr(), doc="Never shown in logs, metrics, errors or `check-config`. "
                                   "Sent with a client certificate too (the certificate "
                                   "secures the link, the password authenticates).")
    tls: TLSConfig = section(TLSConfig, type_doc=_TLS_TYPE, default_doc="disabled")
    dial_timeout: float = setting(5.0, Duration(positive=True, at_most=DIAL_TIMEOUT_MAX),
                                  doc="Connection timeout.")
    insert_timeout: float = setting(
        30.0, Duration(positive=True, at_most=HOUR), doc="Whole-request timeout of one insert.")
    max_retries: int = setting(
        0, Int(0), default_doc="`0` here, `3` in `additional-clickhouses`",
        doc="Failed attempts before a batch is given up on (`retries_exceeded`). `0` = retry "
            "forever. The primary always keeps `0` unless you change it.")
    retry_initial_backoff: float = setting(
        0.2, Duration(positive=True, at_most=HOUR),
        doc="First retry delay; doubles per attempt, with jitter.")
    retry_max_backoff: float = setting(
        30.0, Duration(positive=True, at_least="retry_initial_backoff", at_most=HOUR),
        type_doc="duration >= `retry-initial-backoff`, <= 1h", doc="Cap of the retry delay.")
    dedup_check: DedupCheckConfig = section(DedupCheckConfig)


@dataclass(frozen=True)
class BatchConfig:
    maximum_batch_size: int = setting(
        50000, Int(1, BATCH_SIZE_MAX),
        doc="Flows per insert. The batcher counts flows, not Kafka records (a record of several "
            "length-delimited messages counts each; an undecodable record counts one), so a "
            "batch never holds more flows than this, except a single record with more flows "
            "(up to `maximum-flows-per-record`), which then forms a batch alone. At most "
            "1,000,000 (~120 MB of encoded batch, held once per queued copy).")
    maximum_wait_time: float = setting(
        5.0, Duration(positive=True, at_most=HOUR),
        doc="A partial batch is flushed after this long per partition holding records: "
            "batches are per partition, and a process's partial batches are flushed "
            "together once the oldest waited this times the number of partitions with "
            "records (1 partition: this long; 4: four times as long). So at low traffic a "
            "process inserts about once per this interval, as with one batch over every "
            "partition, instead of once per partition. Lower it for less latency at the "
            "price of more inserts (see [dual-write.md](dual-write.md#the-batch-ledger-in-"
            "kafka)).")
    grace_period: float = setting(
        60.0, Duration(at_most=HOUR),
        doc="On SIGTERM/SIGINT, time allowed to flush and commit before exiting. Global "
            "(applies to every destination).")
    rebalance_grace_period: float = setting(
        5.0, Duration(at_most=HOUR),
        doc="At a consumer-group rebalance, time allowed for the batches of the partitions "
            "being revoked to settle before they are handed over (the whole group pauses "
            "meanwhile). What is not settled by then is listed in the commit metadata and "
            "rebuilt by the partitions' next owner under the same tokens: no loss, no "
            "duplicate, only work done twice. Global.")
    compression: str = setting(
        "lz4", Str(choices=COMPRESSIONS),
        doc="Compress each encoded batch once (LZ4 frame) and send the same compressed bytes "
            "to every destination (`Content-Encoding: lz4`; ClickHouse decompresses it, see "
            "[Compression and ClickHouse](#compression-and-clickhouse)). Global. Costs ~0.12 "
            "µs/flow once; makes each extra destination ~4x cheaper to send to (dual-write "
            "CPU overhead ~1% instead of 5%) and cuts the bytes on a cloud link ~4x. `none` "
            "sends the Native block as it is (for a proxy in front of ClickHouse that rejects "
            "`Content-Encoding`). Spooled batches keep their encoding.")
    maximum_flows_per_record: int = setting(  # global: more in one Kafka record = a bad record
        1000, Int(1, 1_000_000),
        doc="Most flows (length-delimited messages) one Kafka record may hold. A record with "
            "more is bad: skipped, never stored, counted in "
            '`outlet_decode_errors_total{reason="too-many-flows"}`. GoFlow2 writes one flow per '
            "record; the bound keeps one record (a 1 MB record of 3-byte messages is 333,333 "
            "flows) from expanding into a huge batch. Global. See [codec.md](codec.md).")


@dataclass(frozen=True)
class SpoolConfig:
    enable: bool = setting(
        True, Bool(), doc="Keep batches this destination could not take on disk instead of "
                          "dropping them.")
    path: str = setting(  # "" in YAML -> <state.path>/spool/<destination name>
        "", Str(), type_doc="path", default_doc="`<state.path>/spool/<name>`",
        doc="Spool directory; must differ between destinations.")
    max_bytes: int = setting(1 << 30, Size(), doc="Spool capacity.")
    when_full: str = setting(
        "drop-oldest", Str(choices=WHEN_FULL), doc="What happens when the spool is full.")
    fsync: str = setting("batch", Str(choices=FSYNC_MODES), doc="When spooled data is fsynced.")
    fsync_interval: float = setting(
        1.0, Duration(positive=True, at_most=HOUR), doc="Period for `fsync: interval`.")


@dataclass(frozen=True)
class CircuitBreakerConfig:
    failure_threshold: int = setting(
        5, Int(1), doc="Consecutive failures that open the breaker. While it is open no batch "
                       "is sent (they go to the spool).")
    probe_interval: float = setting(
        0.5, Duration(positive=True, at_most=HOUR),
        doc="First probe of an open breaker: a `SELECT 1` (bounded by `dial-timeout`), never a "
            "batch. Each failed probe doubles the wait...")
    probe_max_interval: float = setting(
        2.0, Duration(positive=True, at_least="probe_interval", at_most=HOUR),
        type_doc="duration >= `probe-interval`, <= 1h",
        doc="...up to this. Once a probe answers, one batch decides (half-open): a link that "
            "comes back carries flows again within about this long plus one insert; a dead "
            "destination costs one cheap request per interval.")
    cool_down: float = setting(
        30.0, Duration(positive=True, at_most=HOUR),
        doc="**Changed meaning:** before probes existed this was the wait after *any* opening; "
            "it is now the wait between attempts after a *permanent* error only "
            "(authentication 516, unknown table or column, type mismatch), which a probe "
            "cannot see getting fixed. Existing configs keep working; a `cool-down` set to "
            "slow down connectivity recovery now has no effect there (use "
            "`probe-max-interval`).")


@dataclass(frozen=True)
class DestinationConfig:
    name: str = setting(
        "", Str(pattern=r"[a-z0-9_-]{1,64}",
                pattern_msg="must match [a-z0-9_-]+ (at most 64 characters)"),
        required=True, type_doc="`[a-z0-9_-]+` (1..64 chars)",
        doc="Unique; `primary` is reserved. Used as the `destination` metric "
                           "label.")
    primary: bool = False
    connection: ConnectionConfig = section(
        ConnectionConfig, required=True, must_have=("servers",),
        default_factory=lambda: ConnectionConfig(max_retries=3),
        type_doc="[connection](#clickhousedb-the-primary-destinations-connection)",
        default_doc="required (`servers` required)",
        doc="Own servers, auth, TLS and timeouts; `max-retries` defaults to `3`.")
    batch: BatchConfig = section(
        BatchConfig, yaml="clickhouse", keys=("maximum-batch-size", "maximum-wait-time"),
        hints={"grace-period": "grace-period is global: set it in the top-level clickhouse "
                               "section",
               "rebalance-grace-period": "rebalance-grace-period is global: set it in the "
                                         "top-level clickhouse section",
               "compression": "compression is global (batches are compressed once for every "
                              "destination): set it in the top-level clickhouse section",
               "maximum-flows-per-record": "maximum-flows-per-record is global (records are "
                                           "decoded once for every destination): set it in the "
                                           "top-level clickhouse section"},
        default_doc="top-level `clickhouse.{key}`")
    queue_size: int = setting(
        16, Int(1, QUEUE_SIZE_MAX),
        doc="Maximum encoded batches queued for this destination (the primary's queue holds "
            "4); each holds up to `maximum-batch-size` flows in memory (~120 bytes per flow).")
    spool: SpoolConfig = section(SpoolConfig)
    circuit_breaker: CircuitBreakerConfig = section(CircuitBreakerConfig)

    @classmethod
    def __check__(cls, s: Section) -> None:
        if s["name"] == PRIMARY_NAME:
            s.report("name", "'primary' is reserved for the clickhousedb destination")


@dataclass(frozen=True)
class InterfaceInfo:
    name: str = setting("", Str(), doc="InIfName / OutIfName")
    description: str = setting("", Str(), doc="InIfDescription / OutIfDescription")
    speed: int = setting(0, Int(0, UINT32_MAX, hi_doc="2^32-1"),
                         doc="Mbps (InIfSpeed / OutIfSpeed)")
    boundary: str = setting("undefined", Str(choices=BOUNDARIES, normalize=str.lower),
                            doc="InIfBoundary / OutIfBoundary")


@dataclass(frozen=True)
class ExporterInfo:
    prefix: str  # normalized CIDR (the mapping key); /32 or /128 for a single address
    name: str = setting("", Str(), doc="ExporterName column.")
    group: str = setting("", Str(), doc="ExporterGroup column.")
    role: str = setting("", Str(), doc="ExporterRole column.")
    site: str = setting("", Str(), doc="ExporterSite column.")
    region: str = setting("", Str(), doc="ExporterRegion column.")
    tenant: str = setting("", Str(), doc="ExporterTenant column.")
    default_interface: InterfaceInfo = section(
        InterfaceInfo, yaml="default", type_doc="interface", default_doc="all empty, `undefined`",
        doc="Interface attributes for ifIndexes not listed.")
    interfaces: Mapping[int, InterfaceInfo] = setting(
        types.MappingProxyType({}), _IfIndexes(), yaml="if-indexes",
        doc="Per-interface attributes.")


@dataclass(frozen=True)
class NetworkInfo:
    prefix: str  # normalized CIDR (the mapping key)
    name: str = setting("", Str(), doc="SrcNetName / DstNetName.")
    role: str = setting("", Str(), doc="SrcNetRole / DstNetRole.")
    site: str = setting("", Str(), doc="SrcNetSite / DstNetSite.")
    region: str = setting("", Str(), doc="SrcNetRegion / DstNetRegion.")
    tenant: str = setting("", Str(), doc="SrcNetTenant / DstNetTenant.")


@dataclass(frozen=True)
class MetadataConfig:
    exporters: tuple[ExporterInfo, ...] = setting(
        (), _Prefixes(ExporterInfo), yaml="metadata.exporters", doc="Exporters by address.")
    networks: tuple[NetworkInfo, ...] = setting(
        (), _Prefixes(NetworkInfo, shorthand="name"), yaml="networks", doc="Networks by CIDR.")


@dataclass(frozen=True)
class OutletConfig:
    kafka: KafkaConfig = section(KafkaConfig)
    clickhousedb: ConnectionConfig = section(ConnectionConfig)
    clickhouse: BatchConfig = section(BatchConfig)
    additional_clickhouses: tuple[DestinationConfig, ...] = setting(
        (), _Destinations(), doc="Extra destinations (dual-write).")
    metadata: MetadataConfig = section(MetadataConfig, inline=True)
    http_listen: str = setting(
        "127.0.0.1:8080", HostPort(allow_empty_host=True, allow_port_zero=True),
        yaml="http.listen",
        doc="`/metrics`, `/healthz`, `/readyz`. An empty host listens on all addresses; port 0 "
            "picks a free port.")
    log_level: str = setting(
        "info", Str(choices=LOG_LEVELS, normalize=_log_level), yaml="log.level",
        doc="`warn` is accepted for `warning`.")
    log_format: str = setting(
        "human", Str(choices=LOG_FORMATS, normalize=str.lower), yaml="log.format", doc="")
    state_path: str = setting(
        "./outlet-state", Str(nonempty=True), yaml="state.path", type_doc="path",
        doc="Local state: the spools (the default parent of spool directories) and the "
            "codec's work files. The batch ledger is in Kafka (offset-commit metadata); a "
            "ledger file left by an older outlet is read once after the upgrade.")

    __hints__: ClassVar[dict[str, str]] = {
        "exporters": "exporters go under metadata",
        "metadata.networks": "networks is a top-level section",
    }

    def primary_destination(self) -> DestinationConfig:
        """The primary (``clickhousedb`` + ``clickhouse``) as a destination named 'primary'."""
        return DestinationConfig(
            name=PRIMARY_NAME,
            primary=True,
            connection=self.clickhousedb,
            batch=self.clickhouse,
            queue_size=PRIMARY_QUEUE_SIZE,
            spool=SpoolConfig(enable=False, path=_default_spool_path(self.state_path, "primary")),
            circuit_breaker=CircuitBreakerConfig(),
        )

    def destinations(self) -> tuple[DestinationConfig, ...]:
        """All destinations, normalized: the primary first, then the additional ones."""
        return (self.primary_destination(), *self.additional_clickhouses)


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def parse_config(data: object, env: Mapping[str, str] | None = None) -> OutletConfig:
    """Validate a parsed YAML document (None = empty document). ``env`` defaults to os.environ.

    Raises ConfigError listing every problem found.
    """
    env = os.environ if env is None else env
    problems = Problems()
    expanded = _expand_env(data, env, problems)
    if expanded is not None and not isinstance(expanded, dict):
        raise ConfigError([f"the document must be a mapping, got {show(type(expanded).__name__)}"])
    cfg = parse(OutletConfig, expanded, problems)
    if problems:
        raise ConfigError(problems.errors)
    return cfg


def too_big(size: int | None) -> str:
    """The problem of a configuration of ``size`` bytes (None: more than the cap)."""
    what = f"{size:,} bytes, more than" if size is not None else "larger than"
    return (f"the configuration is {what} the {format_size(MAX_CONFIG_BYTES)} "
            f"({MAX_CONFIG_BYTES:,} bytes) a configuration may be")


def read_capped(path: str | Path) -> bytes:
    """The bytes of a configuration file, refusing more than MAX_CONFIG_BYTES before
    reading them (a FIFO or a device included). Raises OSError or ConfigError."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([too_big(size)], str(path))
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([too_big(None)], str(path))
    return data


def parse_yaml_text(data: bytes, source: str) -> tuple[object, list[str]]:
    """(document, duplicate-key errors) of a configuration's bytes. Raises ConfigError,
    never quoting the text (a syntax error's line may hold a password)."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([too_big(len(data))], source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError([f"the file is not UTF-8 (line {line}: {e.reason})"], source) from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:  # a YAMLSyntaxError: line, column and problem only
        raise ConfigError([f"invalid YAML: {e}"], source) from None


def _read(path: str | Path) -> tuple[object, list[str]]:
    """The parsed YAML document and its duplicate-key errors; ConfigError if unreadable."""
    source = str(path)
    try:
        data = read_capped(path)
    except OSError as e:
        raise ConfigError([f"cannot read the file: {e.strerror or e}"], source) from None
    return parse_yaml_text(data, source)


def read_yaml(path: str | Path) -> object:
    """A YAML file as parsed data, unexpanded (duplicate keys are errors). Raises ConfigError."""
    data, duplicates = _read(path)
    if duplicates:
        raise ConfigError(duplicates, str(path))
    return data


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> OutletConfig:
    """Read, expand and validate a YAML config file. Raises ConfigError."""
    data, duplicates = _read(path)
    try:
        cfg = parse_config(data, env)
    except ConfigError as e:
        raise ConfigError([*duplicates, *e.errors], str(path)) from None
    if duplicates:
        raise ConfigError(duplicates, str(path))
    return cfg


def tls_sections(cfg: OutletConfig) -> list[tuple[str, TLSConfig]]:
    """Every link's TLS section with its key path."""
    out = [("kafka.tls", cfg.kafka.tls), ("clickhousedb.tls", cfg.clickhousedb.tls)]
    out += [(f"additional-clickhouses[{i}].connection.tls", d.connection.tls)
            for i, d in enumerate(cfg.additional_clickhouses)]
    return out


def certificate_warnings(cfg: OutletConfig) -> list[str]:
    """Client certificates that expired, are not valid yet or expire soon, one
    ``key.path: problem`` line each (warnings: see outlet/tlsfiles.py for why)."""
    return [f"{path}.{key}: {message}" for path, tls in tls_sections(cfg)
            for key, message in tlsfiles.file_warnings(tls.cert_file, tls.key_file)]


def redacted_dict(cfg: OutletConfig) -> dict[str, Any]:
    """The normalized config (defaults filled, kebab-case keys), secrets as '******'.

    Feeding it back to :func:`parse_config` gives the same config, except the secrets.
    """
    return dump(cfg)


def dump_redacted(cfg: OutletConfig) -> str:
    """YAML text of :func:`redacted_dict` (for ``outlet check-config``)."""
    return yaml.dump(redacted_dict(cfg), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True)


_Dumper: Any = yaml.CSafeDumper if getattr(yaml, "__with_libyaml__", False) else yaml.SafeDumper


# --------------------------------------------------------------------------------------
# The key tables of docs/configuration.md
# --------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_OWN_TABLE = (TLSConfig, ConnectionConfig, InterfaceInfo)


def reference_tables() -> dict[str, list[KeyDoc]]:
    """The rows of each key table in docs/configuration.md, by marker name."""

    def expand(cls: type[Any]) -> bool:
        return cls not in _OWN_TABLE

    return {
        "kafka": describe(KafkaConfig, expand=expand),
        "clickhousedb": describe(ConnectionConfig, expand=expand),
        "clickhouse": describe(BatchConfig),
        "additional-clickhouses": describe(DestinationConfig, expand=expand),
        "tls": describe(TLSConfig),
        "exporters": describe(ExporterInfo, expand=expand),
        "interface": describe(InterfaceInfo),
        "networks": describe(NetworkInfo),
        "http-log-state": describe(OutletConfig, keys=("http", "log", "state")),
    }


def _table(rows: Sequence[KeyDoc]) -> str:
    lines = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
    for r in rows:
        cells = (f"`{r.path}`", r.type_text, r.default, r.doc)
        lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
    return "\n".join(lines)


def render_docs(text: str, tables: Mapping[str, Sequence[KeyDoc]] | None = None) -> str:
    """``text`` with every ``<!-- keys:NAME -->`` ... ``<!-- /keys -->`` table regenerated
    (``tables``: the outlet's by default; the orchestrator passes its own)."""
    for name, rows in (reference_tables() if tables is None else tables).items():
        m = re.search(rf"<!-- keys:{re.escape(name)} -->\n(.*?)<!-- /keys -->", text, re.S)
        if m is None:
            raise ValueError(f"docs: no <!-- keys:{name} --> marker")
        text = text[: m.start(1)] + _table(rows) + "\n" + text[m.end(1) :]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m outlet.config --docs``: regenerate the key tables of the docs."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["--docs"]:
        print("usage: python -m outlet.config --docs   (rewrites the key tables of "
              f"{DOCS})", file=sys.stderr)
        return 2
    DOCS.write_text(render_docs(DOCS.read_text()))
    print(f"updated {DOCS}")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
