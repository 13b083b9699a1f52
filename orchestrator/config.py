"""The orchestrator's configuration (the only place its keys live; docs/orchestrator.md).

Declared with the outlet's spec machinery (outlet/confspec): kebab-case keys, every
problem collected into one ConfigError as ``key.path: problem``, unknown keys with
did-you-mean hints, durations such as ``5s``/``1m``, secrets as Secret, and the key tables
of docs/orchestrator.md generated from the declarations (``python -m orchestrator.config
--docs``). Keys the outlet also has are the outlet's own declarations: the ClickHouse
connection (plus ``cluster``), ``log`` and ``http.listen``.

Two views of the same file: the orchestrator's own sections are expanded with the
orchestrator's environment (it needs its ClickHouse password); the shared ``kafka``
section and the ``outlet`` entries are never expanded here, and are built and checked by
orchestrator/served.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from orchestrator import served
from orchestrator.ddl import Resolution
from outlet.config import (
    ConfigError,
    ConnectionConfig,
    OutletConfig,
    Secret,
    format_duration,
    parse_duration,
    read_yaml,
    render_docs,
)
from outlet.confspec import (
    AnyMapping,
    Bool,
    Duration,
    File,
    Int,
    Invalid,
    Key,
    KeyDoc,
    Kind,
    Problems,
    SecretStr,
    Section,
    Str,
    Where,
    describe,
    dump,
    expand_env,
    parse,
    parse_mapping,
    reuse,
    section,
    setting,
    show,
)

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
#: Sections served to outlets as written: never expanded with the orchestrator's environment.
UNEXPANDED = ("kafka", "outlet")


def parse_retention(v: object) -> float:
    """A duration (outlet syntax, e.g. ``360h``) or a number of days (``15d``)."""
    if isinstance(v, str) and (m := _DAYS.fullmatch(v)):
        return int(m.group(1)) * DAY
    return parse_duration(v)


def format_retention(seconds: int) -> str:
    if seconds and seconds % DAY == 0:
        return f"{seconds // DAY}d"
    return format_duration(seconds)


# --------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------


def _seconds(parse_fn: Any, raw: object) -> float:
    try:
        return float(parse_fn(raw))
    except ValueError:
        return -1.0


class _Interval(Kind[int]):
    type_doc = "duration: 0 or whole seconds >= 5s"

    def convert(self, raw: object) -> int:
        s = _seconds(parse_duration, raw)
        if s != 0 and (s < MIN_INTERVAL or s != int(s)):
            raise Invalid(f"must be 0 (the raw table) or whole seconds >= {MIN_INTERVAL}s, "
                          f"got {show(raw)}")
        return int(s)

    def dump(self, value: int) -> str:
        return format_duration(value)


class _Retention(Kind[int]):
    type_doc = "duration or days (`15d`): 0 or >= 1h"

    def convert(self, raw: object) -> int:
        s = _seconds(parse_retention, raw)
        if s != 0 and (s < MIN_TTL or s != int(s)):
            raise Invalid(f"must be 0 (keep forever) or whole seconds >= 1h (e.g. 15d, 360h), "
                          f"got {show(raw)}")
        return int(s)

    def dump(self, value: int) -> str:
        return format_retention(value)


RESOLUTION_KEYS = {
    "interval": Key(_Interval(), 0, doc="0 = the raw `flows` table"),
    "ttl": Key(_Retention(), 0, doc="retention; 0 = keep forever"),
}


class _Resolutions(Kind[tuple[Resolution, ...]]):
    """A non-empty list of ``{interval, ttl}``, intervals unique, the raw table included."""

    type_doc = "list of `{interval, ttl}`"

    def parse(self, raw: object, at: Where, default: tuple[Resolution, ...]
              ) -> tuple[Resolution, ...]:
        if not isinstance(raw, list) or not raw:
            raise Invalid("must be a non-empty list of {interval, ttl}")
        out: dict[int, Resolution] = {}
        for i, item in enumerate(raw):
            where = at.child(i)
            before = len(at.problems)
            values = parse_mapping(RESOLUTION_KEYS, item, where, style="kebab")
            if len(at.problems) > before:
                continue
            r = Resolution(values["interval"], values["ttl"])
            if r.interval in out:
                where.child("interval").report(f"duplicate interval {r.interval}s")
            out[r.interval] = r
        if out and 0 not in out:
            at.report("must include the raw table (interval: 0)")
        return tuple(sorted(out.values(), key=lambda r: r.interval)) or default

    def dump(self, value: tuple[Resolution, ...]) -> list[dict[str, str]]:
        return [{"interval": format_duration(r.interval), "ttl": format_retention(r.ttl)}
                for r in value]


class _Entries(Kind[tuple[Any, ...]]):
    """``outlet``: a list of outlet configurations, or one mapping (taken as written)."""

    type_doc = "list of outlet configurations"

    def convert(self, raw: object) -> tuple[Any, ...]:
        return tuple(raw) if isinstance(raw, list) else (raw,)


# --------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTLSConfig:
    enable: bool = setting(False, Bool(), doc="Serve HTTPS.")
    cert_file: str | None = setting(None, File(), default_doc="required with `tls.enable`",
                                    doc="Server certificate chain (PEM).")
    key_file: str | None = setting(None, File(), default_doc="required with `tls.enable`",
                                   doc="Server key (PEM).")

    @classmethod
    def __check__(cls, s: Section) -> None:
        for key in ("cert-file", "key-file"):
            if s["enable"] and not s.given(key):
                s.report(key, "is required when tls.enable is true")


@dataclass(frozen=True)
class HTTPConfig:
    listen: str = reuse(
        OutletConfig, "http_listen", yaml="listen",
        doc="The API, `/healthz`, `/readyz`, `/metrics`. Port 0 picks a free port (logged: "
            "`api: listening on ...`).")
    tls: ServerTLSConfig = section(ServerTLSConfig)
    bearer_token: Secret = setting(
        Secret(), SecretStr(), default_doc='`""` (no auth)',
        doc="Require `Authorization: Bearer <token>` on `/api/`. Use `${VAR}`.")

    __hints__: ClassVar[dict[str, str]] = {"token": "the key is bearer-token"}


@dataclass(frozen=True)
class SiteClickHouse(ConnectionConfig):
    """The site's ClickHouse: the outlet's connection keys, plus ``cluster``."""

    cluster: str = setting(
        "", Str(pattern=r"[A-Za-z0-9_.-]*", pattern_msg="must be a cluster name"),
        type_doc="name",
        doc="The site's ClickHouse is a cluster of this name: see [cluster mode](#cluster-mode)."
            " Never served to outlets.")


@dataclass(frozen=True)
class ClickHouseComponentConfig:
    skip_migrations: bool = setting(False, Bool(), doc="Serve configurations only.")
    resolutions: tuple[Resolution, ...] = setting(
        DEFAULT_RESOLUTIONS, _Resolutions(),
        default_doc="0/15d, 1m/7d, 5m/90d, 1h/360d (Akvorado's)",
        doc="One table per interval. `interval: 0` (required) is the raw `flows` table; others "
            "are whole seconds >= 5s. `ttl` is the retention: a duration (`360h`) or days "
            "(`15d`), >= 1h, or 0 = keep forever.")
    max_partitions: int = setting(
        50, Int(1), doc="A resolution table is partitioned in `ttl / max-partitions` slices "
                        "(Akvorado's rule; 30 days when kept forever). The raw table keeps the "
                        "outlet's daily partitions.")
    retry_initial_backoff: float = setting(
        1.0, Duration(positive=True), doc="First delay between migration attempts.")
    retry_max_backoff: float = setting(
        60.0, Duration(positive=True, at_least="retry_initial_backoff"),
        type_doc="duration >= `retry-initial-backoff`",
        doc="Cap of the delay (capped exponential backoff, full jitter).")

    __hints__: ClassVar[dict[str, str]] = {"resolution": "did you mean 'resolutions'?"}


@dataclass(frozen=True)
class OrchestratorConfig:
    http: HTTPConfig = section(HTTPConfig, type_doc="[http](#http)", default_doc="",
                               doc="The API.")
    log_level: str = reuse(OutletConfig, "log_level")
    log_format: str = reuse(OutletConfig, "log_format")
    clickhousedb: SiteClickHouse = section(
        SiteClickHouse, type_doc="[connection](configuration.md#clickhousedb-the-primary-"
                                 "destinations-connection) + `cluster`",
        default_doc="outlet defaults",
        doc="This site's ClickHouse: where migrations run (database `clickhousedb.database`), "
            "and the shared section outlet entries inherit (without `cluster`).")
    clickhouse: ClickHouseComponentConfig = section(
        ClickHouseComponentConfig, type_doc="[clickhouse](#clickhouse-migrations)",
        default_doc="", doc="Migrations.")
    kafka: dict[str, Any] = setting(
        {}, AnyMapping(), type_doc="the outlet's [kafka](configuration.md#kafka) section",
        default_doc="none",
        doc="Shared section outlet entries inherit. The orchestrator itself does not use Kafka.")
    outlet: tuple[Any, ...] = setting(
        ({},), _Entries(), default_doc="one empty entry",
        doc="What `GET .../outlet/<index>` serves, after [inheritance](#inheritance-of-shared-"
            "sections). A single mapping is one entry.")
    allow_literal_secrets: bool = setting(
        False, Bool(), doc="Serve passwords written literally in entries (see [secrets]"
                           "(#secrets-never-travel)). Off: the orchestrator refuses to start.")
    outlets: tuple[served.ServedConfig, ...] = field(default=(), repr=False)  # built from `outlet`

    __hints__: ClassVar[dict[str, str]] = {
        "inlet": "this orchestrator serves outlet configurations only",
        "console": "this orchestrator serves outlet configurations only",
        "schema": "the flows schema is fixed (outlet/schema.py): there is nothing to configure",
        "outlets": "the list of outlet configurations is 'outlet' (as in Akvorado)",
    }

    @property
    def cluster(self) -> str:
        return self.clickhousedb.cluster


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def parse_orchestrator_config(
    data: object, env: Mapping[str, str] | None = None
) -> OrchestratorConfig:
    """Validate a parsed YAML document (None = empty). Raises ConfigError listing all."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(["the document must be a mapping"])
    raw: dict[Any, Any] = dict(data or {})
    problems = Problems()
    own = {k: v for k, v in raw.items() if k not in UNEXPANDED}
    expanded = expand_env(own, os.environ if env is None else env, problems)
    assert isinstance(expanded, dict)
    document = {**expanded, **{k: raw[k] for k in UNEXPANDED if k in raw}}
    cfg = parse(OrchestratorConfig, document, problems)
    entries, entry_errors = served.build(
        list(cfg.outlet), served.shared_sections(raw), cfg.allow_literal_secrets
    )
    errors = list(problems.errors)
    errors += [e for e in entry_errors if e not in errors]
    if errors:
        raise ConfigError(errors)
    return _with_outlets(cfg, tuple(entries))


def _with_outlets(cfg: OrchestratorConfig, outlets: tuple[served.ServedConfig, ...]
                  ) -> OrchestratorConfig:
    return dataclasses.replace(cfg, outlets=outlets)


def load_orchestrator_config(
    path: str | Path, env: Mapping[str, str] | None = None
) -> OrchestratorConfig:
    """Read and validate an orchestrator config file. Raises ConfigError."""
    data = read_yaml(path)
    try:
        return parse_orchestrator_config(data, env)
    except ConfigError as e:
        raise ConfigError(e.errors, str(path)) from None


#: The orchestrator's own keys (what ``redacted_dict`` shows; entries are shown apart).
OWN_KEYS = ("http", "log", "clickhousedb", "clickhouse", "allow-literal-secrets")


def redacted_dict(cfg: OrchestratorConfig) -> dict[str, Any]:
    """The normalized orchestrator config for ``check-config`` (secrets as '******')."""
    return dump(cfg, keys=OWN_KEYS)


# --------------------------------------------------------------------------------------
# The key tables of docs/orchestrator.md
# --------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "orchestrator.md"


def reference_tables() -> dict[str, list[KeyDoc]]:
    """The rows of each key table in docs/orchestrator.md, by marker name."""
    own_table = (HTTPConfig, SiteClickHouse, ClickHouseComponentConfig)
    top = describe(OrchestratorConfig, expand=lambda c: c not in own_table)
    at = next(i for i, row in enumerate(top) if row.path == "clickhousedb") + 1
    top[at:at] = describe(SiteClickHouse, keys=("cluster",), prefix="clickhousedb.")
    return {
        "orchestrator": top,
        "orchestrator-http": describe(HTTPConfig),
        "orchestrator-clickhouse": describe(ClickHouseComponentConfig),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m orchestrator.config --docs``: regenerate the key tables of the docs."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["--docs"]:
        print(f"usage: python -m orchestrator.config --docs   (rewrites the key tables of "
              f"{DOCS})", file=sys.stderr)
        return 2
    DOCS.write_text(render_docs(DOCS.read_text(), reference_tables()))
    print(f"updated {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
