"""The outlet configurations an orchestrator serves: inheritance, validation, secrets.

Each ``outlet`` entry inherits the orchestrator's shared sections (``SHARED_SECTIONS``)
where it does not set its own, and nothing an entry sets is ever overridden:

- an entry that names its own cluster (``clickhousedb.servers``, ``kafka.brokers``: the
  section's ``IDENTITY_KEYS``) gets its section exactly as written: the shared
  credentials never go to another server (Akvorado's rule too, on the same keys);
- an entry that sets other keys only tweaks the shared section (a consumer group, retry
  limits): the keys it sets win at every depth (mappings merge, anything else is
  replaced whole), the rest is inherited;
- an entry without the section inherits it whole.

Akvorado looks for an outlet's own servers under the wrong key (``ClickHouse.Servers``
instead of ``ClickHouseDB.Servers``), so it replaces every outlet's ``clickhousedb`` with
the shared one.

Secrets never travel: the served document is the merged entry *as written*, ``${VAR}``
placeholders included; the outlet expands them from its own environment. Each document
is checked with the outlet's own validation (outlet.config.parse_config) against an
environment where every variable is a stand-in, so that a placeholder is never expanded
here. A secret (a key the outlet declares secret) that is not exactly one ``${VAR}`` (a
literal, or a ``${VAR:-default}`` with a default) is refused unless
``allow-literal-secrets`` is set.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from outlet.config import ConfigError, OutletConfig, parse_config
from outlet.confspec import HIDDEN_SHOWN, locate, secret_paths

#: Sections of the orchestrator's config that outlet entries inherit.
SHARED_SECTIONS = ("kafka", "clickhousedb")
#: A section that sets this key describes another cluster: it inherits nothing.
IDENTITY_KEYS = {"kafka": "brokers", "clickhousedb": "servers"}
#: Keys of a shared section that only the orchestrator uses (never served).
ORCHESTRATOR_ONLY_KEYS = {"clickhousedb": ("cluster",)}

_STAND_IN = "__orchestrator_placeholder_{}__"
_STAND_IN_PREFIX = _STAND_IN.split("{", 1)[0]
_PLACEHOLDER = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-)?\}")


class _StandInEnv(Mapping[str, str]):
    """Every variable is set, to a recognizable stand-in; ``${VAR:-default}`` takes the
    default (the orchestrator cannot know the outlet's environment)."""

    def __getitem__(self, name: str) -> str:
        return _STAND_IN.format(name)

    def get(self, name: str, default: Any = None) -> Any:
        return default

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(frozen=True)
class ServedConfig:
    """One outlet entry as served: the document, its YAML body and its ETag."""

    index: int
    document: dict[str, Any]
    body: str
    etag: str
    literal_secrets: tuple[str, ...]  # key paths (only when allowed)


def merge(shared: object, own: object) -> object:
    """``own`` over ``shared``: mappings merge key by key, ``own`` wins everywhere else."""
    if isinstance(shared, dict) and isinstance(own, dict):
        out = dict(shared)
        for key, value in own.items():
            out[key] = merge(shared[key], value) if key in shared else value
        return out
    return own


def shared_sections(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The shared sections of an orchestrator config, without orchestrator-only keys."""
    out: dict[str, Any] = {}
    for section in SHARED_SECTIONS:
        value = raw.get(section)
        if isinstance(value, dict):
            hidden = ORCHESTRATOR_ONLY_KEYS.get(section, ())
            out[section] = {k: v for k, v in value.items() if k not in hidden}
    return out


def inherit(entry: Mapping[str, Any], shared: Mapping[str, Any]) -> dict[str, Any]:
    """The entry with the shared sections it does not fully set filled in."""
    out = dict(entry)
    for section, value in shared.items():
        own = entry.get(section)
        if section not in entry:
            out[section] = value
        elif not (isinstance(own, dict) and IDENTITY_KEYS[section] in own):
            out[section] = merge(value, own)
    return out


@functools.cache
def secret_keys() -> tuple[str, ...]:
    """Where the outlet's configuration holds secret values (``[*]`` = any list item), from
    the outlet's own declarations (outlet.confspec.secret_paths), not listed by hand."""
    return tuple(p.path for p in secret_paths(OutletConfig) if p.kind == "value")


def literal_secrets(document: Mapping[str, Any]) -> list[str]:
    """Key paths of secrets in a served document that are not one ``${VAR}`` (or empty)."""
    found = []
    for keys in secret_keys():
        for path, node, key in locate(document, keys):
            value = node[key]
            if value in (None, "") or (isinstance(value, str) and _PLACEHOLDER.fullmatch(value)):
                continue
            found.append(path)
    return found


def validate(document: Mapping[str, Any], prefix: str) -> list[str]:
    """Outlet validation of a served document; errors that depend on an outlet-side
    ``${VAR}`` (the stand-in shows in them) are left for the outlet to report."""
    try:
        parse_config(dict(document), env=_StandInEnv())
    except ConfigError as e:
        return [f"{prefix}{err}" for err in e.errors
                if _STAND_IN_PREFIX not in err and not HIDDEN_SHOWN.search(err)]
    return []


def _origin(entry: Mapping[str, Any], path: str) -> str:
    """' (inherited from the shared <section> section)' when the entry does not set it."""
    section, _, rest = path.partition(".")
    if section not in SHARED_SECTIONS:
        return ""
    node: object = entry.get(section)
    for key in rest.split("."):
        if not isinstance(node, dict) or key not in node:
            return f" (inherited from the shared {section} section)"
        node = node[key]
    return ""


def render(index: int, document: dict[str, Any]) -> tuple[str, str]:
    """YAML body and ETag of a served document."""
    head = (
        f"# outlet configuration {index}, served by the orchestrator.\n"
        "# ${VAR} placeholders are expanded by the outlet from its own environment.\n"
    )
    body = head + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    return body, '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'


def build(
    entries: list[Any], shared: Mapping[str, Any], allow_literal_secrets: bool
) -> tuple[list[ServedConfig], list[str]]:
    """Served configs of every entry, and every problem found (``outlet[i].key: ...``)."""
    served: list[ServedConfig] = []
    errors: list[str] = []
    shared_errors = validate(shared, "")
    errors += shared_errors
    for index, entry in enumerate(entries):
        prefix = f"outlet[{index}]."
        if not isinstance(entry, dict):
            errors.append(f"outlet[{index}]: must be a mapping (an outlet configuration)")
            continue
        document = inherit(entry, shared)
        problems = validate(document, prefix)
        errors += [p for p in problems if p.removeprefix(prefix) not in shared_errors]
        literals = literal_secrets(document)
        if literals and not allow_literal_secrets:
            errors += [
                f"{prefix}{path}: a literal password would be served to the outlet"
                f"{_origin(entry, path)}; write ${{VARIABLE}} (expanded by the outlet from"
                " its own environment) or set allow-literal-secrets: true"
                for path in literals
            ]
            continue
        body, etag = render(index, document)
        served.append(ServedConfig(index, document, body, etag, tuple(literals)))
    return served, errors
