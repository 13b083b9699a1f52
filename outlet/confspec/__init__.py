"""Declarative config specs: each key is declared once; parsing, errors, hints and dumps follow.

A *spec* is a frozen dataclass whose fields are declared with :func:`setting` (one value)
or :func:`section` (a nested spec). From these declarations alone this module derives:

- the allowed keys of every mapping, with did-you-mean hints for unknown ones;
- parsing, every problem collected as ``key.path: problem`` in one :class:`Problems`;
- the normalized dump (durations and sizes readable, secrets as ``******``);
- the key reference of the docs (:func:`describe`).

Used by the outlet's config (``outlet/config.py``), the chaos scenarios and the load
profiles; meant for any component that reads YAML::

    @dataclass(frozen=True)
    class HTTPConfig:
        listen: str = setting("127.0.0.1:8080", HostPort(), doc="Where /metrics listens.")
        timeout: float = setting(5.0, Duration(positive=True), doc="Request timeout.")

    cfg = parse(HTTPConfig, yaml.safe_load(text))      # raises SpecError listing every problem
    print(dump(cfg))                                    # {'listen': ..., 'timeout': '5s'}

Keys are kebab-case by default (``max_retries`` -> ``max-retries``); a spec sets
``__key_style__ = "snake"`` to keep Python names. ``setting(yaml="http.listen")`` places a
field under a sub-mapping; :func:`reuse` declares a field exactly as another spec's.
A spec may also define ``__hints__`` (``{key path: hint}`` shown
for an unknown key), ``__inputs__`` (``{key: Key}``: accepted, handed to the check, never
stored or dumped, e.g. an alias) and a classmethod ``__check__(cls, s: Section)`` for
rules across fields.

Values are checked by *kinds*: :class:`Str`, :class:`Int`, :class:`Number`,
:class:`Bool`, :class:`Duration`, :class:`Size`, :class:`SecretStr`, :class:`StrList`,
:class:`HostPort`, :class:`File`, :class:`ListOf`, :class:`AnyMapping`, :class:`Nested`.
Each takes ``problem="... {got}"`` to word its error differently. A custom kind subclasses
:class:`Kind` and raises :class:`Invalid` with the problem; :meth:`Where.sibling` reads
another field of the same mapping (parsed on demand), :meth:`Where.report` records a
problem and goes on. :func:`parse_mapping` checks a mapping against ``{key: Key}`` when the
keys depend on a value (the parameters of an action).

:func:`changed_keys` lists the key paths where two parsed documents differ (live
reconfiguration decides per key what it can apply).

Also here: the one duration grammar (:func:`parse_duration`, :func:`format_duration`),
sizes, YAML loading (:func:`load_yaml`: duplicate keys as problems; syntax errors as a line,
a column and a problem, never the text) and ``${VAR}`` expansion (:func:`expand_env`).

Secrets: a kind marks what it holds (``secret = "value"``: :class:`SecretStr`;
``"file"``: ``File(secret=True)``, the file's content), :func:`secret_paths` lists every
place a spec holds one and :func:`locate` finds them in a document. Every value a problem
shows goes through :func:`show`, which never prints what a ``${VAR}`` gave (the
placeholder instead), the value of a key named like a secret, PEM data or the
``user:password@`` of an address.
"""

from __future__ import annotations

from outlet.confspec.core import (
    HIDDEN_SHOWN,
    REDACTED,
    Invalid,
    Key,
    KeyDoc,
    Kind,
    Nested,
    Problems,
    SecretPath,
    Section,
    SpecError,
    Where,
    describe,
    dump,
    hiding,
    join_path,
    locate,
    parse,
    parse_mapping,
    reuse,
    secret_named,
    secret_paths,
    section,
    setting,
    show,
    unknown_key_message,
)
from outlet.confspec.diff import changed_keys
from outlet.confspec.kinds import (
    AnyMapping,
    Bool,
    Duration,
    File,
    HostPort,
    Int,
    ListOf,
    Number,
    Secret,
    SecretStr,
    Size,
    Str,
    StrList,
    host_port_problem,
)
from outlet.confspec.units import format_duration, format_size, parse_duration, parse_size
from outlet.confspec.yamlio import (
    MAX_DEPTH,
    MAX_VALUES,
    PARSERS,
    YAMLSyntaxError,
    expand_env,
    load_yaml,
)

__all__ = [
    "HIDDEN_SHOWN",
    "MAX_DEPTH",
    "MAX_VALUES",
    "PARSERS",
    "REDACTED",
    "AnyMapping",
    "Bool",
    "Duration",
    "File",
    "HostPort",
    "Int",
    "Invalid",
    "Key",
    "KeyDoc",
    "Kind",
    "ListOf",
    "Nested",
    "Number",
    "Problems",
    "Secret",
    "SecretPath",
    "SecretStr",
    "Section",
    "Size",
    "SpecError",
    "Str",
    "StrList",
    "Where",
    "YAMLSyntaxError",
    "changed_keys",
    "describe",
    "dump",
    "expand_env",
    "format_duration",
    "format_size",
    "hiding",
    "host_port_problem",
    "join_path",
    "load_yaml",
    "locate",
    "parse",
    "parse_duration",
    "parse_mapping",
    "parse_size",
    "reuse",
    "secret_named",
    "secret_paths",
    "section",
    "setting",
    "show",
    "unknown_key_message",
]
