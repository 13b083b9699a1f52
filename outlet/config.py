"""The outlet's configuration schema: the only place config keys, defaults and validation live.

YAML keys are kebab-case; Python attributes are snake_case. Loading is done in three steps:

1. ``yaml.safe_load`` (with duplicate-key detection),
2. ``${VAR}`` / ``${VAR:-default}`` expansion on every parsed *string value* (never on raw
   text, so YAML quoting cannot break; mapping keys are not expanded; ``$${`` is a literal
   ``${``),
3. validation into frozen dataclasses. Every problem is collected, and one
   :class:`ConfigError` lists them all, each as ``key.path: problem``.

Passwords are :class:`Secret` objects: their ``str``/``repr`` never show the value.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = [
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
    "expand_env",
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
REDACTED = "******"
BOUNDARIES = ("undefined", "external", "internal")
SASL_MECHANISMS = ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("human", "json")
WHEN_FULL = ("drop-oldest", "block")
FSYNC_MODES = ("batch", "interval", "never")
UINT32_MAX = 2**32 - 1


# --------------------------------------------------------------------------------------
# Errors and secrets
# --------------------------------------------------------------------------------------


class ConfigError(Exception):
    """One or more configuration problems; ``errors`` holds one ``path: problem`` line each."""

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors: list[str] = list(errors)
        self.source = source
        super().__init__(self.errors)

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        n = len(self.errors)
        head = f"invalid configuration{where} ({n} error{'s' if n != 1 else ''}):"
        return "\n".join([head, *(f"  - {e}" for e in self.errors)])


class Secret:
    """A string that never shows itself: ``str``/``repr`` give ``******`` (``''`` if empty)."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """The actual value; use it only where it is sent to the server."""
        return self._value

    def __str__(self) -> str:
        return REDACTED if self._value else ""

    def __repr__(self) -> str:
        return repr(str(self))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


# --------------------------------------------------------------------------------------
# Dataclasses (the API other modules code against)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSConfig:
    enable: bool = False
    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class SASLConfig:
    mechanism: str = ""  # "" (none), PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    username: str = ""
    password: Secret = field(default_factory=Secret)


@dataclass(frozen=True)
class KafkaConfig:
    brokers: tuple[str, ...] = ("127.0.0.1:9092",)
    topic: str = "flows"
    consumer_group: str = "outlet"
    fetch_max_wait: float = 0.1
    max_poll_records: int = 10000
    queue_size: int = 8
    tls: TLSConfig = field(default_factory=TLSConfig)
    sasl: SASLConfig = field(default_factory=SASLConfig)


@dataclass(frozen=True)
class ConnectionConfig:
    servers: tuple[str, ...] = ("http://127.0.0.1:8123",)  # normalized URLs, failover order
    database: str = "flows"
    username: str = "default"
    password: Secret = field(default_factory=Secret)
    tls: TLSConfig = field(default_factory=TLSConfig)
    dial_timeout: float = 5.0
    insert_timeout: float = 30.0
    max_retries: int = 0  # 0 = retry forever
    retry_initial_backoff: float = 0.2
    retry_max_backoff: float = 30.0


@dataclass(frozen=True)
class BatchConfig:
    maximum_batch_size: int = 50000
    maximum_wait_time: float = 5.0
    grace_period: float = 60.0
    compression: str = "none"  # global: a batch is encoded (and compressed) once
    maximum_flows_per_record: int = 1000  # global: more in one Kafka record = a bad record


@dataclass(frozen=True)
class SpoolConfig:
    enable: bool = True
    path: str = ""  # resolved: "" in YAML -> <state.path>/spool/<destination name>
    max_bytes: int = 1 << 30
    when_full: str = "drop-oldest"
    fsync: str = "batch"
    fsync_interval: float = 1.0


@dataclass(frozen=True)
class CircuitBreakerConfig:
    failure_threshold: int = 5
    cool_down: float = 30.0


@dataclass(frozen=True)
class DestinationConfig:
    name: str
    primary: bool
    connection: ConnectionConfig
    batch: BatchConfig
    queue_size: int
    spool: SpoolConfig
    circuit_breaker: CircuitBreakerConfig


@dataclass(frozen=True)
class InterfaceInfo:
    name: str = ""
    description: str = ""
    speed: int = 0  # Mbps
    boundary: str = "undefined"  # undefined | external | internal


@dataclass(frozen=True)
class ExporterInfo:
    prefix: str  # normalized CIDR; /32 or /128 for a single address
    name: str = ""
    group: str = ""
    role: str = ""
    site: str = ""
    region: str = ""
    tenant: str = ""
    default_interface: InterfaceInfo = field(default_factory=InterfaceInfo)
    interfaces: Mapping[int, InterfaceInfo] = field(
        default_factory=lambda: types.MappingProxyType({})
    )


@dataclass(frozen=True)
class NetworkInfo:
    prefix: str  # normalized CIDR
    name: str = ""
    role: str = ""
    site: str = ""
    region: str = ""
    tenant: str = ""


@dataclass(frozen=True)
class MetadataConfig:
    exporters: tuple[ExporterInfo, ...] = ()
    networks: tuple[NetworkInfo, ...] = ()


@dataclass(frozen=True)
class OutletConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    clickhousedb: ConnectionConfig = field(default_factory=ConnectionConfig)
    clickhouse: BatchConfig = field(default_factory=BatchConfig)
    additional_clickhouses: tuple[DestinationConfig, ...] = ()
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    http_listen: str = "127.0.0.1:8080"
    log_level: str = "info"
    log_format: str = "human"
    state_path: str = "./outlet-state"

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


def _default_spool_path(state_path: str, name: str) -> str:
    return os.path.join(state_path, "spool", name)


# --------------------------------------------------------------------------------------
# Durations and sizes
# --------------------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[+]?(\d+(?:\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def parse_duration(v: object) -> float:
    """``5s``, ``500ms``, ``1m``, ``1h30m``, ``2m30s``, ``1.5s`` or a number (seconds) -> seconds.

    Raises ValueError for anything else (including negative and non-finite values).
    """
    if isinstance(v, bool):
        raise ValueError("not a duration")
    if isinstance(v, int | float):
        seconds = float(v)
    elif isinstance(v, str):
        s = v.strip()
        if not s:
            raise ValueError("empty duration")
        if _NUMBER.fullmatch(s):
            seconds = float(s)
        else:
            pos = 0
            seconds = 0.0
            while pos < len(s):
                m = _DURATION_PART.match(s, pos)
                if m is None:
                    raise ValueError("not a duration")
                seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                pos = m.end()
    else:
        raise ValueError("not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("not a non-negative finite duration")
    return seconds


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration` for display: 0.1 -> '100ms', 90 -> '1m30s'."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        if abs(ms - round(ms)) < 1e-9:
            return f"{round(ms)}ms"
        return f"{seconds:g}s"
    if abs(seconds - round(seconds)) > 1e-9:
        return f"{seconds:g}s"
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    out = ""
    if h:
        out += f"{h}h"
    if m:
        out += f"{m}m"
    if s:
        out += f"{s}s"
    return out


_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")


def parse_size(v: object) -> int:
    """``1GiB``, ``512MiB``, ``100MB``, ``4096B`` or an integer (bytes) -> bytes.

    Units (case-insensitive): B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (of 1024).
    Raises ValueError for anything else (including negative values).
    """
    if isinstance(v, bool):
        raise ValueError("not a size")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("negative size")
        return v
    if isinstance(v, str):
        m = _SIZE.fullmatch(v.strip())
        if m is None:
            raise ValueError("not a size")
        number, unit = m.group(1), m.group(2).lower()
        if unit == "":
            if not number.isdigit():
                raise ValueError("a size without unit must be a whole number of bytes")
            return int(number)
        if unit not in _SIZE_UNITS:
            raise ValueError(f"unknown size unit {m.group(2)!r}")
        return round(float(number) * _SIZE_UNITS[unit])
    raise ValueError("not a size")


def format_size(n: int) -> str | int:
    """For display: 1073741824 -> '1GiB'; sizes that are not a whole binary unit stay ints."""
    for unit, mult in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return n


# --------------------------------------------------------------------------------------
# YAML loading and ${VAR} expansion
# --------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of silently keeping the last."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_errors: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    line = key_node.start_mark.line + 1
                    self.duplicate_errors.append(f"line {line}: duplicate key {key!r}")
                seen.add(key)
            except TypeError:  # unhashable key; the base class reports it
                pass
        return super().construct_mapping(node, deep=deep)


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _join(path: str, key: object) -> str:
    """Key path notation: ``a.b``, ``a[0]`` for list items and int keys, ``a["x/y"]``."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    if isinstance(key, str) and _SIMPLE_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    text = '"' + str(key).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}[{text}]"


_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand_string(s: str, path: str, env: Mapping[str, str], errors: list[str]) -> str:
    if "$" not in s:
        return s
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        if s.startswith("$${", i):
            out.append("${")
            i += 3
            continue
        if s.startswith("${", i):
            end = s.find("}", i + 2)
            if end < 0:
                errors.append(f"{path}: unterminated '${{' (write '$${{' for a literal '${{')")
                return s
            body = s[i + 2 : end]
            name, sep, default = body.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                errors.append(
                    f"{path}: invalid variable reference '${{{body}}}'"
                    " (expected ${NAME} or ${NAME:-default})"
                )
            elif sep:
                value = env.get(name, "")
                out.append(value if value else default)
            elif name in env:
                out.append(env[name])
            else:
                errors.append(f"{path}: environment variable {name} is not set")
            i = end + 1
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


def _expand(node: object, path: str, env: Mapping[str, str], errors: list[str]) -> object:
    if isinstance(node, str):
        return _expand_string(node, path, env, errors)
    if isinstance(node, dict):
        return {k: _expand(v, _join(path, k), env, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, _join(path, i), env, errors) for i, v in enumerate(node)]
    return node


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------


def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


class _Ctx:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, path: str, msg: str) -> None:
        self.errors.append(f"{path}: {msg}" if path else msg)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_INT = re.compile(r"[+-]?\d+")


class _Map:
    """A YAML mapping being validated: typed getters that record errors and return defaults."""

    def __init__(
        self,
        ctx: _Ctx,
        data: object,
        path: str,
        allowed: Sequence[str],
        hints: Mapping[str, str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.path = path
        self.data: dict[str, object] = {}
        if data is None:
            return
        if not isinstance(data, dict):
            ctx.err(path, f"must be a mapping, got {_show(data)}")
            return
        for key, value in data.items():
            if not isinstance(key, str):
                ctx.err(_join(path, key), "keys must be strings")
                continue
            if key not in allowed:
                ctx.err(_join(path, key), _unknown_key_message(key, allowed, hints))
                continue
            self.data[key] = value

    def p(self, key: str) -> str:
        return _join(self.path, key)

    def raw(self, key: str) -> object:
        """The value, or None when absent or null (null means 'use the default')."""
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def map(self, key: str, allowed: Sequence[str], hints: Mapping[str, str] | None = None) -> _Map:
        return _Map(self.ctx, self.raw(key), self.p(key), allowed, hints)

    def string(
        self,
        key: str,
        default: str,
        *,
        nonempty: bool = False,
        choices: Sequence[str] | None = None,
        normalize: Callable[[str], str] | None = None,
        pattern: re.Pattern[str] | None = None,
        pattern_msg: str = "",
    ) -> str:
        v = self.raw(key)
        if v is None:
            return default
        if not isinstance(v, str):
            self.ctx.err(self.p(key), f"must be a string, got {_show(v)}")
            return default
        s = normalize(v) if normalize else v
        if choices is not None and s not in choices:
            opts = ", ".join(repr(c) for c in choices)
            self.ctx.err(self.p(key), f"must be one of {opts}, got {_show(v)}")
            return default
        if nonempty and not s.strip():
            self.ctx.err(self.p(key), "must not be empty")
            return default
        if pattern is not None and not pattern.fullmatch(s):
            self.ctx.err(self.p(key), f"{pattern_msg}, got {_show(v)}")
            return default
        return s

    def secret(self, key: str) -> Secret:
        v = self.raw(key)
        if v is None:
            return Secret("")
        if not isinstance(v, str):
            # Never echo the value: it is meant to be a secret.
            self.ctx.err(self.p(key), "must be a string (quote it in YAML)")
            return Secret("")
        return Secret(v)

    def integer(self, key: str, default: int, *, lo: int = 0, hi: int | None = None) -> int:
        v = self.raw(key)
        if v is None:
            return default
        value: int | None = None
        if isinstance(v, int) and not isinstance(v, bool):
            value = v
        elif isinstance(v, str) and _INT.fullmatch(v.strip()):
            value = int(v.strip())
        if value is None or value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            self.ctx.err(self.p(key), f"must be an integer {bound}, got {_show(v)}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        v = self.raw(key)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
            return v.strip().lower() in _TRUE
        self.ctx.err(self.p(key), f"must be true or false, got {_show(v)}")
        return default

    def duration(self, key: str, default: float, *, positive: bool = False) -> float:
        v = self.raw(key)
        if v is None:
            return default
        bound = "> 0" if positive else ">= 0"
        try:
            d = parse_duration(v)
        except ValueError:
            d = -1.0
        if d < 0 or (positive and d == 0):
            self.ctx.err(
                self.p(key), f"must be a duration {bound} (e.g. 500ms, 5s, 1m30s), got {_show(v)}"
            )
            return default
        return d

    def size(self, key: str, default: int) -> int:
        v = self.raw(key)
        if v is None:
            return default
        try:
            n = parse_size(v)
        except ValueError:
            n = 0
        if n <= 0:
            self.ctx.err(self.p(key), f"must be a size > 0 (e.g. 512MiB, 1GiB), got {_show(v)}")
            return default
        return n

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """A list of strings (or one comma-separated string) as (item path, item) pairs.

        Invalid items are reported and left out.
        """
        v = self.raw(key)
        if v is None:
            return tuple((f"{self.p(key)}[{i}]", s) for i, s in enumerate(default))
        items: list[object]
        if isinstance(v, str):
            items = [s.strip() for s in v.split(",") if s.strip()]
        elif isinstance(v, list):
            items = list(v)
        else:
            self.ctx.err(self.p(key), f"must be a list of strings, got {_show(v)}")
            return ()
        if not items:
            self.ctx.err(self.p(key), "must not be empty")
            return ()
        out: list[tuple[str, str]] = []
        for i, item in enumerate(items):
            ipath = f"{self.p(key)}[{i}]"
            if not isinstance(item, str) or not item.strip():
                self.ctx.err(ipath, f"must be a non-empty string, got {_show(item)}")
            else:
                out.append((ipath, item.strip()))
        return tuple(out)


def _unknown_key_message(key: str, allowed: Sequence[str], hints: Mapping[str, str] | None) -> str:
    if hints and key in hints:
        return f"unknown key ({hints[key]})"
    kebab = key.replace("_", "-").lower()
    if kebab in allowed:
        return f"unknown key (did you mean '{kebab}'? keys are kebab-case)"
    close = difflib.get_close_matches(kebab, list(allowed), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return "unknown key (allowed: " + ", ".join(allowed) + ")"


def _host_port(s: str, *, allow_empty_host: bool = False, allow_port_zero: bool = False) -> str:
    """Validate ``host:port`` (``[v6]:port`` for IPv6); returns an error message or ''."""
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]\s]*):(\d+)", s)
    if m is None:
        return "must be host:port ([addr]:port for IPv6)"
    host, port = m.group(1), int(m.group(2))
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "has an invalid IPv6 address in brackets"
    elif not host and not allow_empty_host:
        return "has an empty host"
    lo = 0 if allow_port_zero else 1
    if not lo <= port <= 65535:
        return f"has port {port} out of range {lo}..65535"
    return ""


def _server_url(s: str, tls_enable: bool) -> tuple[str, str]:
    """Normalize a ClickHouse server entry to a URL; returns (url, error)."""
    if "://" in s:
        try:
            u = urlsplit(s)
            port = u.port
        except ValueError as e:
            return "", f"is not a valid URL ({e})"
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
            port = 8443 if u.scheme == "https" else 8123
        host = u.hostname
        if ":" in host:
            host = f"[{host}]"
        return f"{u.scheme}://{host}:{port}", ""
    scheme = "https" if tls_enable else "http"
    if re.fullmatch(r"(\[[^\]]*\]|[^:\[\]/\s]+)", s):  # host without a port
        s = f"{s}:{8443 if tls_enable else 8123}"
    problem = _host_port(s)
    if problem.startswith("must be"):
        return "", "must be host:port ([addr]:port for IPv6) or an http(s):// URL"
    if problem:
        return "", problem
    return f"{scheme}://{s}", ""


def _parse_prefix(key: object) -> tuple[str, str]:
    """Normalize an IP address or CIDR (IPv4-mapped IPv6 folded to IPv4); (prefix, error)."""
    if not isinstance(key, str):
        return "", f"must be an IP address or CIDR, got {_show(key)}"
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


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------

_TLS_KEYS = ("enable", "verify", "skip-verify", "ca-file", "cert-file", "key-file")


def _tls(m: _Map) -> TLSConfig:
    enable = m.boolean("enable", False)
    verify = m.boolean("verify", True)
    if m.has("skip-verify"):
        skip = m.boolean("skip-verify", False)
        if m.has("verify") and skip == verify:
            m.ctx.err(m.p("skip-verify"), "contradicts verify (skip-verify is the opposite)")
        verify = not skip
    files: dict[str, str | None] = {}
    for key in ("ca-file", "cert-file", "key-file"):
        value = m.string(key, "") or None
        if value is not None and not os.path.isfile(value):
            m.ctx.err(m.p(key), f"file not found: {_show(value)}")
        files[key] = value
    if files["key-file"] and not files["cert-file"]:
        m.ctx.err(m.p("key-file"), "is set but cert-file is not")
    return TLSConfig(
        enable=enable,
        verify=verify,
        ca_file=files["ca-file"],
        cert_file=files["cert-file"],
        key_file=files["key-file"],
    )


def _sasl_mechanism(v: str) -> str:
    k = v.strip().upper().replace("-", "").replace("_", "")
    return {
        "": "",
        "NONE": "",
        "PLAIN": "PLAIN",
        "SCRAMSHA256": "SCRAM-SHA-256",
        "SCRAMSHA512": "SCRAM-SHA-512",
    }.get(k, v)


def _sasl(m: _Map) -> SASLConfig:
    mechanism = m.string("mechanism", "", choices=SASL_MECHANISMS, normalize=_sasl_mechanism)
    username = m.string("username", "")
    password = m.secret("password")
    if mechanism and not username:
        m.ctx.err(m.p("username"), f"is required when mechanism is {mechanism}")
    return SASLConfig(mechanism=mechanism, username=username, password=password)


_KAFKA_KEYS = (
    "brokers",
    "topic",
    "consumer-group",
    "fetch-max-wait",
    "max-poll-records",
    "queue-size",
    "tls",
    "sasl",
)


def _kafka(m: _Map) -> KafkaConfig:
    d = KafkaConfig()
    brokers: list[str] = []
    for ipath, b in m.str_list("brokers", d.brokers):
        problem = _host_port(b)
        if problem:
            m.ctx.err(ipath, f"{problem}, got {_show(b)}")
        else:
            brokers.append(b)
    return KafkaConfig(
        brokers=tuple(brokers) or d.brokers,
        topic=m.string("topic", d.topic, nonempty=True),
        consumer_group=m.string("consumer-group", d.consumer_group, nonempty=True),
        fetch_max_wait=m.duration("fetch-max-wait", d.fetch_max_wait),
        max_poll_records=m.integer("max-poll-records", d.max_poll_records, lo=1, hi=10_000_000),
        queue_size=m.integer("queue-size", d.queue_size, lo=1),
        tls=_tls(m.map("tls", _TLS_KEYS)),
        sasl=_sasl(m.map("sasl", ("mechanism", "username", "password"))),
    )


_CONNECTION_KEYS = (
    "servers",
    "database",
    "username",
    "password",
    "tls",
    "dial-timeout",
    "insert-timeout",
    "max-retries",
    "retry-initial-backoff",
    "retry-max-backoff",
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _connection(m: _Map, *, max_retries_default: int, servers_required: bool) -> ConnectionConfig:
    d = ConnectionConfig()
    tls = _tls(m.map("tls", _TLS_KEYS))
    if servers_required and not m.has("servers"):
        m.ctx.err(m.p("servers"), "is required")
    default_servers = ("127.0.0.1:8123",)
    servers: list[str] = []
    for ipath, s in m.str_list("servers", default_servers):
        url, problem = _server_url(s, tls.enable)
        if problem:
            shown = "" if "@" in s else f", got {_show(s)}"
            m.ctx.err(ipath, problem + shown)
        elif url in servers:
            m.ctx.err(ipath, f"duplicate server {url}")
        else:
            servers.append(url)
    initial = m.duration("retry-initial-backoff", d.retry_initial_backoff, positive=True)
    maximum = m.duration("retry-max-backoff", d.retry_max_backoff, positive=True)
    if maximum < initial:
        m.ctx.err(
            m.p("retry-max-backoff"),
            f"must be >= retry-initial-backoff ({format_duration(initial)}),"
            f" got {format_duration(maximum)}",
        )
    if not servers:
        servers = [_server_url(default_servers[0], tls.enable)[0]]
    return ConnectionConfig(
        servers=tuple(servers),
        database=m.string(
            "database",
            d.database,
            pattern=_IDENTIFIER,
            pattern_msg="must be an identifier ([A-Za-z_][A-Za-z0-9_]*)",
        ),
        username=m.string("username", d.username),
        password=m.secret("password"),
        tls=tls,
        dial_timeout=m.duration("dial-timeout", d.dial_timeout, positive=True),
        insert_timeout=m.duration("insert-timeout", d.insert_timeout, positive=True),
        max_retries=m.integer("max-retries", max_retries_default, lo=0),
        retry_initial_backoff=initial,
        retry_max_backoff=maximum,
    )


_BATCH_KEYS = (
    "maximum-batch-size",
    "maximum-wait-time",
    "grace-period",
    "compression",
    "maximum-flows-per-record",
)
COMPRESSIONS = ("none", "lz4")


def _batch(m: _Map, defaults: BatchConfig) -> BatchConfig:
    return BatchConfig(
        maximum_batch_size=m.integer(
            "maximum-batch-size", defaults.maximum_batch_size, lo=1, hi=10_000_000
        ),
        maximum_wait_time=m.duration(
            "maximum-wait-time", defaults.maximum_wait_time, positive=True
        ),
        grace_period=m.duration("grace-period", defaults.grace_period),
        compression=m.string("compression", defaults.compression, choices=COMPRESSIONS),
        maximum_flows_per_record=m.integer(
            "maximum-flows-per-record", defaults.maximum_flows_per_record, lo=1, hi=1_000_000
        ),
    )


_SPOOL_KEYS = ("enable", "path", "max-bytes", "when-full", "fsync", "fsync-interval")


def _spool(m: _Map, default_path: str) -> SpoolConfig:
    d = SpoolConfig()
    return SpoolConfig(
        enable=m.boolean("enable", d.enable),
        path=m.string("path", "") or default_path,
        max_bytes=m.size("max-bytes", d.max_bytes),
        when_full=m.string("when-full", d.when_full, choices=WHEN_FULL),
        fsync=m.string("fsync", d.fsync, choices=FSYNC_MODES),
        fsync_interval=m.duration("fsync-interval", d.fsync_interval, positive=True),
    )


def _circuit_breaker(m: _Map) -> CircuitBreakerConfig:
    d = CircuitBreakerConfig()
    return CircuitBreakerConfig(
        failure_threshold=m.integer("failure-threshold", d.failure_threshold, lo=1),
        cool_down=m.duration("cool-down", d.cool_down, positive=True),
    )


_DEST_KEYS = ("name", "connection", "clickhouse", "queue-size", "spool", "circuit-breaker")
_DEST_NAME = re.compile(r"[a-z0-9_-]{1,64}")


def _destination(m: _Map, top_batch: BatchConfig, state_path: str) -> DestinationConfig:
    if not m.has("name"):
        m.ctx.err(m.p("name"), "is required")
    name = m.string(
        "name",
        "",
        pattern=_DEST_NAME,
        pattern_msg="must match [a-z0-9_-]+ (at most 64 characters)",
    )
    if name == PRIMARY_NAME:
        m.ctx.err(m.p("name"), "'primary' is reserved for the clickhousedb destination")
    if not m.has("connection"):
        m.ctx.err(m.p("connection"), "is required")
    connection = _connection(
        m.map("connection", _CONNECTION_KEYS), max_retries_default=3, servers_required=True
    )
    hints = {
        "grace-period": "grace-period is global: set it in the top-level clickhouse section",
        "compression": "compression is global (batches are compressed once for every "
        "destination): set it in the top-level clickhouse section",
        "maximum-flows-per-record": "maximum-flows-per-record is global (records are "
        "decoded once for every destination): set it in the top-level clickhouse section",
    }
    batch = _batch(m.map("clickhouse", _BATCH_KEYS[:2], hints), top_batch)
    return DestinationConfig(
        name=name,
        primary=False,
        connection=connection,
        batch=batch,
        queue_size=m.integer("queue-size", 16, lo=1),
        spool=_spool(m.map("spool", _SPOOL_KEYS), _default_spool_path(state_path, name or "_")),
        circuit_breaker=_circuit_breaker(
            m.map("circuit-breaker", ("failure-threshold", "cool-down"))
        ),
    )


def _additional(m: _Map, top_batch: BatchConfig, state_path: str) -> tuple[DestinationConfig, ...]:
    key = "additional-clickhouses"
    v = m.raw(key)
    if v is None:
        return ()
    if not isinstance(v, list):
        m.ctx.err(m.p(key), f"must be a list of destinations, got {_show(v)}")
        return ()
    out: list[DestinationConfig] = []
    names: dict[str, int] = {}
    spools: dict[str, int] = {}
    for i, item in enumerate(v):
        ipath = f"{m.p(key)}[{i}]"
        dest = _destination(_Map(m.ctx, item, ipath, _DEST_KEYS), top_batch, state_path)
        if dest.name:
            if dest.name in names:
                m.ctx.err(
                    f"{ipath}.name",
                    f"duplicate destination name {dest.name!r}"
                    f" (also at {m.p(key)}[{names[dest.name]}])",
                )
            else:
                names[dest.name] = i
            if dest.spool.enable:
                norm = os.path.normpath(dest.spool.path)
                if norm in spools:
                    m.ctx.err(
                        f"{ipath}.spool.path",
                        f"same spool path as {m.p(key)}[{spools[norm]}]: {_show(dest.spool.path)}",
                    )
                else:
                    spools[norm] = i
        out.append(dest)
    return tuple(out)


_INTERFACE_KEYS = ("name", "description", "speed", "boundary")


def _interface(m: _Map) -> InterfaceInfo:
    return InterfaceInfo(
        name=m.string("name", ""),
        description=m.string("description", ""),
        speed=m.integer("speed", 0, lo=0, hi=UINT32_MAX),
        boundary=m.string("boundary", "undefined", choices=BOUNDARIES, normalize=str.lower),
    )


_EXPORTER_KEYS = ("name", "group", "role", "site", "region", "tenant", "default", "if-indexes")
_NETWORK_KEYS = ("name", "role", "site", "region", "tenant")


def _prefix_map(m: _Map, key: str) -> list[tuple[str, str, object]]:
    """Entries of a CIDR-keyed mapping as (path, normalized prefix, value), errors recorded."""
    v = m.raw(key)
    if v is None:
        return []
    if not isinstance(v, dict):
        m.ctx.err(
            m.p(key), f"must be a mapping of IP address or CIDR to attributes, got {_show(v)}"
        )
        return []
    out: list[tuple[str, str, object]] = []
    seen: dict[str, object] = {}
    for k, value in v.items():
        path = _join(m.p(key), k)
        prefix, problem = _parse_prefix(k)
        if problem:
            m.ctx.err(path, problem)
            continue
        if prefix in seen:
            m.ctx.err(path, f"duplicate prefix {prefix} (also given as {_show(seen[prefix])})")
            continue
        seen[prefix] = k
        out.append((path, prefix, value))
    return out


def _exporters(m: _Map) -> tuple[ExporterInfo, ...]:
    out: list[ExporterInfo] = []
    for path, prefix, value in _prefix_map(m, "exporters"):
        e = _Map(m.ctx, value, path, _EXPORTER_KEYS)
        interfaces: dict[int, InterfaceInfo] = {}
        raw_ifs = e.raw("if-indexes")
        if raw_ifs is not None and not isinstance(raw_ifs, dict):
            m.ctx.err(
                e.p("if-indexes"),
                f"must be a mapping of ifIndex to interface, got {_show(raw_ifs)}",
            )
        elif isinstance(raw_ifs, dict):
            for k, iv in raw_ifs.items():
                ipath = _join(e.p("if-indexes"), k)
                index: int | None = None
                if isinstance(k, int) and not isinstance(k, bool):
                    index = k
                elif isinstance(k, str) and k.strip().isdigit():
                    index = int(k.strip())
                if index is None or not 0 <= index <= UINT32_MAX:
                    m.ctx.err(ipath, f"ifIndex must be an integer between 0 and {UINT32_MAX}")
                    continue
                if index in interfaces:
                    m.ctx.err(ipath, f"duplicate ifIndex {index}")
                    continue
                interfaces[index] = _interface(_Map(m.ctx, iv, ipath, _INTERFACE_KEYS))
        out.append(
            ExporterInfo(
                prefix=prefix,
                name=e.string("name", ""),
                group=e.string("group", ""),
                role=e.string("role", ""),
                site=e.string("site", ""),
                region=e.string("region", ""),
                tenant=e.string("tenant", ""),
                default_interface=_interface(e.map("default", _INTERFACE_KEYS)),
                interfaces=types.MappingProxyType(interfaces),
            )
        )
    return tuple(out)


def _networks(m: _Map) -> tuple[NetworkInfo, ...]:
    out: list[NetworkInfo] = []
    for path, prefix, value in _prefix_map(m, "networks"):
        if isinstance(value, str):  # shorthand: "198.51.100.0/24: name"
            value = {"name": value}
        n = _Map(m.ctx, value, path, _NETWORK_KEYS)
        out.append(
            NetworkInfo(
                prefix=prefix,
                name=n.string("name", ""),
                role=n.string("role", ""),
                site=n.string("site", ""),
                region=n.string("region", ""),
                tenant=n.string("tenant", ""),
            )
        )
    return tuple(out)


_TOP_KEYS = (
    "kafka",
    "clickhousedb",
    "clickhouse",
    "additional-clickhouses",
    "metadata",
    "networks",
    "http",
    "log",
    "state",
)
_TOP_HINTS = {
    "exporters": "exporters go under metadata",
}


def _outlet(m: _Map) -> OutletConfig:
    d = OutletConfig()
    state = m.map("state", ("path",))
    state_path = state.string("path", d.state_path, nonempty=True)
    batch = _batch(m.map("clickhouse", _BATCH_KEYS), BatchConfig())
    http = m.map("http", ("listen",))
    listen = http.string("listen", d.http_listen)
    problem = _host_port(listen, allow_empty_host=True, allow_port_zero=True)
    if problem:
        m.ctx.err(http.p("listen"), f"{problem}, got {_show(listen)}")
        listen = d.http_listen
    log = m.map("log", ("level", "format"))
    metadata = m.map("metadata", ("exporters",), {"networks": "networks is a top-level section"})
    return OutletConfig(
        kafka=_kafka(m.map("kafka", _KAFKA_KEYS)),
        clickhousedb=_connection(
            m.map("clickhousedb", _CONNECTION_KEYS), max_retries_default=0, servers_required=False
        ),
        clickhouse=batch,
        additional_clickhouses=_additional(m, batch, state_path),
        metadata=MetadataConfig(exporters=_exporters(metadata), networks=_networks(m)),
        http_listen=listen,
        log_level=log.string(
            "level",
            d.log_level,
            choices=LOG_LEVELS,
            normalize=lambda s: {"warn": "warning"}.get(s.strip().lower(), s.strip().lower()),
        ),
        log_format=log.string("format", d.log_format, choices=LOG_FORMATS, normalize=str.lower),
        state_path=state_path,
    )


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def parse_config(data: object, env: Mapping[str, str] | None = None) -> OutletConfig:
    """Validate a parsed YAML document (None = empty document). ``env`` defaults to os.environ.

    Raises ConfigError listing every problem found.
    """
    env = os.environ if env is None else env
    ctx = _Ctx()
    expanded = _expand(data, "", env, ctx.errors)
    if expanded is not None and not isinstance(expanded, dict):
        raise ConfigError([f"the document must be a mapping, got {_show(type(expanded).__name__)}"])
    cfg = _outlet(_Map(ctx, expanded, "", _TOP_KEYS, _TOP_HINTS))
    if ctx.errors:
        raise ConfigError(ctx.errors)
    return cfg


def _read(path: str | Path) -> tuple[object, list[str]]:
    """The parsed YAML document and its duplicate-key errors; ConfigError if unreadable."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"cannot read the file: {e.strerror or e}"], source) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"the file is not UTF-8: {e.reason}"], source) from None
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicate_errors
    except yaml.YAMLError as e:
        raise ConfigError([f"invalid YAML: {e}"], source) from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> object:
    """A YAML file as parsed data, unexpanded (duplicate keys are errors). Raises ConfigError."""
    data, duplicates = _read(path)
    if duplicates:
        raise ConfigError(duplicates, str(path))
    return data


def expand_env(data: object, env: Mapping[str, str] | None = None) -> object:
    """``${VAR}`` expansion of every string value (the rules of :func:`parse_config`).

    Raises ConfigError naming each key whose variable is missing.
    """
    errors: list[str] = []
    expanded = _expand(data, "", os.environ if env is None else env, errors)
    if errors:
        raise ConfigError(errors)
    return expanded


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


def _secret_out(s: Secret) -> str:
    return REDACTED if s else ""


def _tls_out(t: TLSConfig) -> dict[str, Any]:
    return {
        "enable": t.enable,
        "verify": t.verify,
        "ca-file": t.ca_file or "",
        "cert-file": t.cert_file or "",
        "key-file": t.key_file or "",
    }


def _connection_out(c: ConnectionConfig) -> dict[str, Any]:
    return {
        "servers": list(c.servers),
        "database": c.database,
        "username": c.username,
        "password": _secret_out(c.password),
        "tls": _tls_out(c.tls),
        "dial-timeout": format_duration(c.dial_timeout),
        "insert-timeout": format_duration(c.insert_timeout),
        "max-retries": c.max_retries,
        "retry-initial-backoff": format_duration(c.retry_initial_backoff),
        "retry-max-backoff": format_duration(c.retry_max_backoff),
    }


def _interface_out(i: InterfaceInfo) -> dict[str, Any]:
    return {
        "name": i.name,
        "description": i.description,
        "speed": i.speed,
        "boundary": i.boundary,
    }


def redacted_dict(cfg: OutletConfig) -> dict[str, Any]:
    """The normalized config (defaults filled, kebab-case keys), secrets as '******'.

    Feeding it back to :func:`parse_config` gives the same config, except the secrets.
    """
    k = cfg.kafka
    return {
        "kafka": {
            "brokers": list(k.brokers),
            "topic": k.topic,
            "consumer-group": k.consumer_group,
            "fetch-max-wait": format_duration(k.fetch_max_wait),
            "max-poll-records": k.max_poll_records,
            "queue-size": k.queue_size,
            "tls": _tls_out(k.tls),
            "sasl": {
                "mechanism": k.sasl.mechanism,
                "username": k.sasl.username,
                "password": _secret_out(k.sasl.password),
            },
        },
        "clickhousedb": _connection_out(cfg.clickhousedb),
        "clickhouse": {
            "maximum-batch-size": cfg.clickhouse.maximum_batch_size,
            "maximum-wait-time": format_duration(cfg.clickhouse.maximum_wait_time),
            "grace-period": format_duration(cfg.clickhouse.grace_period),
            "compression": cfg.clickhouse.compression,
            "maximum-flows-per-record": cfg.clickhouse.maximum_flows_per_record,
        },
        "additional-clickhouses": [
            {
                "name": d.name,
                "connection": _connection_out(d.connection),
                "clickhouse": {
                    "maximum-batch-size": d.batch.maximum_batch_size,
                    "maximum-wait-time": format_duration(d.batch.maximum_wait_time),
                },
                "queue-size": d.queue_size,
                "spool": {
                    "enable": d.spool.enable,
                    "path": d.spool.path,
                    "max-bytes": format_size(d.spool.max_bytes),
                    "when-full": d.spool.when_full,
                    "fsync": d.spool.fsync,
                    "fsync-interval": format_duration(d.spool.fsync_interval),
                },
                "circuit-breaker": {
                    "failure-threshold": d.circuit_breaker.failure_threshold,
                    "cool-down": format_duration(d.circuit_breaker.cool_down),
                },
            }
            for d in cfg.additional_clickhouses
        ],
        "metadata": {
            "exporters": {
                e.prefix: {
                    "name": e.name,
                    "group": e.group,
                    "role": e.role,
                    "site": e.site,
                    "region": e.region,
                    "tenant": e.tenant,
                    "default": _interface_out(e.default_interface),
                    "if-indexes": {i: _interface_out(v) for i, v in e.interfaces.items()},
                }
                for e in cfg.metadata.exporters
            },
        },
        "networks": {
            n.prefix: {
                "name": n.name,
                "role": n.role,
                "site": n.site,
                "region": n.region,
                "tenant": n.tenant,
            }
            for n in cfg.metadata.networks
        },
        "http": {"listen": cfg.http_listen},
        "log": {"level": cfg.log_level, "format": cfg.log_format},
        "state": {"path": cfg.state_path},
    }


def dump_redacted(cfg: OutletConfig) -> str:
    """YAML text of :func:`redacted_dict` (for ``outlet check-config``)."""
    return yaml.safe_dump(redacted_dict(cfg), sort_keys=False, default_flow_style=False)
