"""The orchestrator's configuration (the only place its keys live; docs/orchestrator.md).

Same conventions and errors as the outlet's (outlet/config.py): kebab-case keys, every
problem collected into one ConfigError as ``key.path: problem``, ``${VAR}`` expansion
of string values, durations such as ``5s``/``1m``, secrets as Secret. Sections shared
with the outlet (``clickhousedb``, ``log``, ``http.listen``) are validated by the
outlet's own code; the outlet entries are built and checked by orchestrator/served.py.

Two views of the same file: the orchestrator's own sections are expanded with the
orchestrator's environment (it needs its ClickHouse password); the served outlet entries
are never expanded here.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import served
from orchestrator.ddl import Resolution
from outlet.config import (
    ConfigError,
    ConnectionConfig,
    Secret,
    format_duration,
    parse_config,
    parse_duration,
    read_yaml,
)
from outlet.confspec import Problems, expand_env, hiding, show

TOP_KEYS = (
    "http",
    "log",
    "clickhousedb",
    "clickhouse",
    "kafka",
    "outlet",
    "allow-literal-secrets",
)
TOP_HINTS = {
    "inlet": "this orchestrator serves outlet configurations only",
    "console": "this orchestrator serves outlet configurations only",
    "schema": "the flows schema is fixed (outlet/schema.py): there is nothing to configure",
    "outlets": "the list of outlet configurations is 'outlet' (as in Akvorado)",
}
HTTP_KEYS = ("listen", "tls", "bearer-token")
TLS_KEYS = ("enable", "cert-file", "key-file")
CLICKHOUSE_KEYS = (
    "skip-migrations",
    "resolutions",
    "max-partitions",
    "retry-initial-backoff",
    "retry-max-backoff",
)
RESOLUTION_KEYS = ("interval", "ttl")
DAY = 86400
#: Akvorado's defaults: raw 15 days, 1m 7 days, 5m 90 days, 1h 360 days.
DEFAULT_RESOLUTIONS = (
    Resolution(0, 15 * DAY),
    Resolution(60, 7 * DAY),
    Resolution(300, 90 * DAY),
    Resolution(3600, 360 * DAY),
)
MIN_INTERVAL = 5
MIN_TTL = 3600
_DAYS = re.compile(r"\s*(\d+)\s*d\s*")
_CLUSTER = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ServerTLSConfig:
    enable: bool = False
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class HTTPConfig:
    listen: str = "127.0.0.1:8080"
    tls: ServerTLSConfig = field(default_factory=ServerTLSConfig)
    bearer_token: Secret = field(default_factory=Secret)  # empty: no authentication


@dataclass(frozen=True)
class ClickHouseComponentConfig:
    skip_migrations: bool = False
    resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS
    max_partitions: int = 50
    retry_initial_backoff: float = 1.0
    retry_max_backoff: float = 60.0


@dataclass(frozen=True)
class OrchestratorConfig:
    http: HTTPConfig = field(default_factory=HTTPConfig)
    log_level: str = "info"
    log_format: str = "human"
    clickhousedb: ConnectionConfig = field(default_factory=ConnectionConfig)
    cluster: str = ""
    clickhouse: ClickHouseComponentConfig = field(default_factory=ClickHouseComponentConfig)
    allow_literal_secrets: bool = False
    outlets: tuple[served.ServedConfig, ...] = ()


def parse_retention(v: object) -> float:
    """A duration (outlet syntax, e.g. ``360h``) or a number of days (``15d``)."""
    if isinstance(v, str) and (m := _DAYS.fullmatch(v)):
        return int(m.group(1)) * DAY
    return parse_duration(v)


def format_retention(seconds: int) -> str:
    if seconds and seconds % DAY == 0:
        return f"{seconds // DAY}d"
    return format_duration(seconds)


class _Checker:
    """Collects ``path: problem`` lines while reading a mapping."""

    def __init__(self, errors: list[str], data: object, path: str, allowed: Sequence[str],
                 hints: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.errors = errors
        self.path = path
        self.data: dict[str, Any] = {}
        if data is None:
            return
        if not isinstance(data, dict):
            self.err("", f"must be a mapping, got {show(data)}")
            return
        for key, value in data.items():
            if key in allowed:
                self.data[key] = value
            else:
                self.errors.append(f"{self.p(str(key))}: {_unknown(str(key), allowed, hints)}")

    def p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def err(self, key: str, problem: str) -> None:
        where = self.p(key) if key else self.path
        self.errors.append(f"{where}: {problem}" if where else problem)

    def sub(self, key: str, allowed: Sequence[str]) -> _Checker:
        return _Checker(self.errors, self.data.get(key), self.p(key), allowed)

    def boolean(self, key: str, default: bool) -> bool:
        v = self.data.get(key)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            return v.strip().lower() == "true"
        self.err(key, f"must be true or false, got {show(v)}")
        return default

    def string(self, key: str, default: str = "") -> str:
        v = self.data.get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            self.err(key, f"must be a string, got {show(v)}")
            return default
        return v

    def integer(self, key: str, default: int, lo: int) -> int:
        v = self.data.get(key)
        if v is None:
            return default
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            self.err(key, f"must be an integer >= {lo}, got {show(v)}")
            return default
        return v

    def duration(self, key: str, default: float) -> float:
        v = self.data.get(key)
        if v is None:
            return default
        try:
            seconds = parse_duration(v)
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            self.err(key, f"must be a duration > 0 (e.g. 500ms, 5s, 1m), got {show(v)}")
            return default
        return seconds


def _unknown(key: str, allowed: Sequence[str], hints: Mapping[str, str] | None) -> str:
    if hints and key in hints:
        return f"unknown key ({hints[key]})"
    close = difflib.get_close_matches(key.replace("_", "-").lower(), list(allowed), n=1)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return "unknown key (allowed: " + ", ".join(allowed) + ")"


def _seconds(parse: Callable[[object], float], v: object) -> float:
    """parse(v), or -1 when it is not a duration at all."""
    try:
        return parse(v)
    except ValueError:
        return -1.0


def _resolution(c: _Checker) -> Resolution | None:
    before = len(c.errors)
    raw_interval, raw_ttl = c.data.get("interval", 0), c.data.get("ttl", 0)
    interval = _seconds(parse_duration, raw_interval)
    if interval != 0 and (interval < MIN_INTERVAL or interval != int(interval)):
        c.err("interval", f"must be 0 (the raw table) or whole seconds >= {MIN_INTERVAL}s,"
                          f" got {show(raw_interval)}")  # fmt: skip
    ttl = _seconds(parse_retention, raw_ttl)
    if ttl != 0 and (ttl < MIN_TTL or ttl != int(ttl)):
        c.err("ttl", f"must be 0 (keep forever) or whole seconds >= 1h (e.g. 15d, 360h),"
                     f" got {show(raw_ttl)}")  # fmt: skip
    if len(c.errors) > before:
        return None
    return Resolution(int(interval), int(ttl))


def _resolutions(c: _Checker) -> tuple[Resolution, ...]:
    raw = c.data.get("resolutions")
    if raw is None:
        return DEFAULT_RESOLUTIONS
    if not isinstance(raw, list) or not raw:
        c.err("resolutions", "must be a non-empty list of {interval, ttl}")
        return DEFAULT_RESOLUTIONS
    out: dict[int, Resolution] = {}
    for i, item in enumerate(raw):
        r = _resolution(_Checker(c.errors, item, f"{c.p('resolutions')}[{i}]", RESOLUTION_KEYS))
        if r is None:
            continue
        if r.interval in out:
            c.err(f"resolutions[{i}].interval", f"duplicate interval {r.interval}s")
        out[r.interval] = r
    if out and 0 not in out:
        c.err("resolutions", "must include the raw table (interval: 0)")
    return tuple(sorted(out.values(), key=lambda r: r.interval)) or DEFAULT_RESOLUTIONS


def _clickhouse(c: _Checker) -> ClickHouseComponentConfig:
    d = ClickHouseComponentConfig()
    initial = c.duration("retry-initial-backoff", d.retry_initial_backoff)
    maximum = c.duration("retry-max-backoff", d.retry_max_backoff)
    if maximum < initial:
        c.err("retry-max-backoff", "must be >= retry-initial-backoff")
    return ClickHouseComponentConfig(
        skip_migrations=c.boolean("skip-migrations", d.skip_migrations),
        resolutions=_resolutions(c),
        max_partitions=c.integer("max-partitions", d.max_partitions, lo=1),
        retry_initial_backoff=initial,
        retry_max_backoff=maximum,
    )


def _http(c: _Checker) -> tuple[ServerTLSConfig, Secret]:
    tls = c.sub("tls", TLS_KEYS)
    enable = tls.boolean("enable", False)
    files = {key: tls.string(key) for key in ("cert-file", "key-file")}
    for key, value in files.items():
        if enable and not value:
            tls.err(key, "is required when tls.enable is true")
        elif value and not os.path.isfile(value):
            tls.err(key, f"file not found: {value!r}")
    token = c.data.get("bearer-token")
    if token is not None and not isinstance(token, str):
        c.err("bearer-token", "must be a string (quote it in YAML)")  # never echo it
        token = None
    return ServerTLSConfig(enable, files["cert-file"], files["key-file"]), Secret(token or "")


def _outlet_entries(raw: object) -> list[Any]:
    """``outlet`` as a list: absent = one entry (Akvorado's default), a mapping = one."""
    if raw is None:
        return [{}]
    return raw if isinstance(raw, list) else [raw]


def parse_orchestrator_config(
    data: object, env: Mapping[str, str] | None = None
) -> OrchestratorConfig:
    """Validate a parsed YAML document (None = empty). Raises ConfigError listing all."""
    errors: list[str] = []
    if data is not None and not isinstance(data, dict):
        raise ConfigError(["the document must be a mapping"])
    raw = _Checker(errors, data, "", TOP_KEYS, TOP_HINTS).data
    http_raw = _Checker(errors, raw.get("http"), "http", HTTP_KEYS).data
    database = dict(raw.get("clickhousedb") or {})
    cluster_raw = database.pop("cluster", None)
    # What the outlet also has is validated (and expanded) by the outlet's own code.
    outlet_like = {"clickhousedb": database, "log": raw.get("log")}
    if "listen" in http_raw:
        outlet_like["http"] = {"listen": http_raw["listen"]}
    try:
        common = parse_config(outlet_like, env)
    except ConfigError as e:
        errors += e.errors
        common = parse_config({})
    # The rest is the orchestrator's own.
    own = {
        "http": {k: v for k, v in http_raw.items() if k != "listen"},
        "clickhouse": raw.get("clickhouse"),
        "allow-literal-secrets": raw.get("allow-literal-secrets"),
        "cluster": cluster_raw,
    }
    expansion = Problems()
    expanded = expand_env(own, os.environ if env is None else env, expansion)
    errors += [err.replace("cluster:", "clickhousedb.cluster:", 1) for err in expansion.errors]
    with hiding(expansion.hidden):  # what a ${VAR} gave is never echoed
        checked = _Checker(errors, expanded if not expansion else {}, "", tuple(own))
        tls, token = _http(checked.sub("http", HTTP_KEYS))
        cluster = checked.string("cluster")
        if cluster and not _CLUSTER.fullmatch(cluster):
            errors.append(f"clickhousedb.cluster: must be a cluster name, got {show(cluster)}")
        clickhouse = _clickhouse(checked.sub("clickhouse", CLICKHOUSE_KEYS))
        allow = checked.boolean("allow-literal-secrets", False)
    entries, entry_errors = served.build(
        _outlet_entries(raw.get("outlet")), served.shared_sections(raw), allow
    )
    errors += [e for e in entry_errors if e not in errors]
    if errors:
        raise ConfigError(errors)
    return OrchestratorConfig(
        http=HTTPConfig(common.http_listen, tls, token),
        log_level=common.log_level,
        log_format=common.log_format,
        clickhousedb=common.clickhousedb,
        cluster=cluster,
        clickhouse=clickhouse,
        allow_literal_secrets=allow,
        outlets=tuple(entries),
    )


def load_orchestrator_config(
    path: str | Path, env: Mapping[str, str] | None = None
) -> OrchestratorConfig:
    """Read and validate an orchestrator config file. Raises ConfigError."""
    data = read_yaml(path)
    try:
        return parse_orchestrator_config(data, env)
    except ConfigError as e:
        raise ConfigError(e.errors, str(path)) from None


def redacted_dict(cfg: OrchestratorConfig) -> dict[str, Any]:
    """The normalized orchestrator config for ``check-config`` (secrets as '******')."""
    c = cfg.clickhousedb
    return {
        "http": {
            "listen": cfg.http.listen,
            "tls": {
                "enable": cfg.http.tls.enable,
                "cert-file": cfg.http.tls.cert_file,
                "key-file": cfg.http.tls.key_file,
            },
            "bearer-token": str(cfg.http.bearer_token),
        },
        "log": {"level": cfg.log_level, "format": cfg.log_format},
        "clickhousedb": {
            "servers": list(c.servers),
            "database": c.database,
            "username": c.username,
            "password": str(c.password),
            "cluster": cfg.cluster,
        },
        "clickhouse": {
            "skip-migrations": cfg.clickhouse.skip_migrations,
            "resolutions": [
                {"interval": format_duration(r.interval), "ttl": format_retention(r.ttl)}
                for r in cfg.clickhouse.resolutions
            ],
            "max-partitions": cfg.clickhouse.max_partitions,
            "retry-initial-backoff": format_duration(cfg.clickhouse.retry_initial_backoff),
            "retry-max-backoff": format_duration(cfg.clickhouse.retry_max_backoff),
        },
        "allow-literal-secrets": cfg.allow_literal_secrets,
    }
