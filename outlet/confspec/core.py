"""The spec machinery: keys, kinds, locations, parsing, dumps and the key reference.

See :mod:`outlet.confspec` for the public API and an example.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")
_META = "outlet.confspec"


# --------------------------------------------------------------------------------------
# Problems, locations, errors
# --------------------------------------------------------------------------------------


class Invalid(ValueError):
    """Raised by a kind: the value cannot be used; the message is the problem."""


class SpecError(ValueError):
    """One or more problems in a document; ``errors`` holds one ``path: problem`` each."""

    what = "document"

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors: list[str] = list(errors)
        self.source = source
        super().__init__(self.errors)

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        n = len(self.errors)
        head = f"invalid {self.what}{where} ({n} error{'s' if n != 1 else ''}):"
        return "\n".join([head, *(f"  - {e}" for e in self.errors)])


class Problems:
    """Every problem found so far, in order, as ``path: problem`` lines.

    ``hidden`` maps values that must never appear in a problem (what ``${VAR}`` expansion
    substituted) to what is shown instead (the placeholder): :func:`show` honours it while
    :func:`parse` runs with these problems.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.hidden: dict[str, str] = {}

    def add(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    def __len__(self) -> int:
        return len(self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join_path(path: str, key: object) -> str:
    """Key path notation: ``a.b``, ``a[0]`` for list items and int keys, ``a["x/y"]``."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    if isinstance(key, str) and _SIMPLE_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    text = '"' + str(key).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}[{text}]"


def _join_dotted(path: str, dotted: str) -> str:
    if not dotted:  # the mapping itself
        return path
    for part in dotted.split("."):
        path = join_path(path, part)
    return path


# --------------------------------------------------------------------------------------
# Showing values in problems without showing secrets
# --------------------------------------------------------------------------------------

SHOW_LIMIT = 80
REDACTED = "******"
#: A mapping key whose value is never shown (in a value printed in a problem).
SECRET_KEY = re.compile(
    r"(?:^|[-_. ])(?:pass(?:word|wd|phrase)?|pwd|secrets?|tokens?|keys?|credentials?|auth"
    r"|api-?key|private)(?:$|[-_. ])", re.IGNORECASE)
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^/\s]*@")
_SHORT_HIDDEN = 4  # hidden values shorter than this are replaced only when they are the value
_NOTHING_HIDDEN: Mapping[str, str] = types.MappingProxyType({})
_hidden: ContextVar[Mapping[str, str]] = ContextVar("confspec_hidden", default=_NOTHING_HIDDEN)


def secret_named(key: object) -> bool:
    """Whether a mapping key is named like a secret (password, token, key, ...)."""
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


@contextmanager
def hiding(hidden: Mapping[str, str]) -> Iterator[None]:
    """:func:`show` replaces these values (value -> what is shown) inside the block."""
    token = _hidden.set({**_hidden.get(), **hidden})
    try:
        yield
    finally:
        _hidden.reset(token)


#: How :func:`show` prints what a ``${VAR}`` gave (the orchestrator recognizes it: such a
#: problem depends on the outlet's environment).
HIDDEN_SHOWN = re.compile(r"<(?:a value from )?\$\{[A-Za-z_][A-Za-z0-9_]*\}, not shown>")


def _show_str(s: str) -> str:
    if "-----BEGIN" in s or "PRIVATE KEY" in s:
        return "<PEM data, not shown>"
    for value, placeholder in _hidden.get().items():
        if s == value:
            return f"<{placeholder}, not shown>"
        if len(value) >= _SHORT_HIDDEN and (value in s or (len(s) >= _SHORT_HIDDEN
                                                          and s in value)):
            return f"<a value from {placeholder}, not shown>"
    if "@" in s:
        s = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", s)
    return repr(s)


def _pieces(v: object) -> Iterator[str]:
    """The text of ``v`` in pieces (lazy: a huge value is not rendered past the cut)."""
    if isinstance(v, str):
        yield _show_str(v)
    elif isinstance(v, bytes | bytearray):
        yield f"<{len(v)} bytes of binary data>"
    elif isinstance(v, dict):
        yield "{"
        for i, (k, item) in enumerate(v.items()):
            yield ", " if i else ""
            yield from _pieces(k)
            yield ": "
            if secret_named(k):
                yield repr(REDACTED)
            else:
                yield from _pieces(item)
        yield "}"
    elif isinstance(v, list | tuple):
        yield "["
        for i, item in enumerate(v):
            yield ", " if i else ""
            yield from _pieces(item)
        yield "]"
    else:
        yield repr(v)


def show(v: object) -> str:
    """A value as it appears in a problem, cut to 80 characters, never showing a secret:
    what ``${VAR}`` substituted shows as its placeholder, values under keys named like
    secrets as ``******``, PEM data and the ``user:password@`` of addresses not at all."""
    text = ""
    for piece in _pieces(v):
        text += piece
        if len(text) > SHOW_LIMIT:
            return text[: SHOW_LIMIT - 3] + "..."
    return text


@dataclass
class Where:
    """Where a value sits (its key path) and where its problems go."""

    path: str
    problems: Problems
    _section: _SectionParse | None = None

    def report(self, message: str) -> None:
        """Record a problem at this place and go on (the caller picks a fallback)."""
        self.problems.add(self.path, message)

    def child(self, key: object) -> Where:
        """The place of an item (``key`` an index or a mapping key) below this one."""
        return Where(join_path(self.path, key), self.problems)

    def sibling(self, name: str) -> Any:
        """Parsed value of another field (Python name) of the same mapping."""
        if self._section is None:
            raise LookupError(f"{self.path}: no enclosing section")
        return self._section.get(name)

    def sibling_key(self, name: str) -> str:
        """The YAML key of a sibling field, for messages."""
        if self._section is None:
            raise LookupError(f"{self.path}: no enclosing section")
        return self._section.spec.by_name[name].yaml


# --------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------


class Kind(Generic[T]):
    """How one YAML value is checked, converted, dumped and documented.

    Subclasses implement :meth:`convert` (raise :class:`Invalid` with the problem) or, when
    they need the location (item paths, siblings) or the default, :meth:`parse`.
    ``problem`` replaces the message of an invalid value (``{got}`` is the value shown).
    """

    type_doc = "value"
    #: "value": the value is a secret (never shown); "file": the file it names holds one.
    secret: str | None = None

    def __init__(self, *, problem: str | None = None) -> None:
        self.problem = problem

    def children(self) -> Iterator[tuple[str, Kind[Any]]]:
        """The kinds of the values inside this one, with their path suffix (``.key``,
        ``[*]`` for any item): what :func:`secret_paths` walks. None by default."""
        return iter(())

    def convert(self, raw: object) -> T:
        raise NotImplementedError

    def parse(self, raw: object, at: Where, default: T) -> T:
        """``raw`` is never None (null means absent: :meth:`missing`)."""
        try:
            return self.convert(raw)
        except Invalid as e:
            if self.problem is None:
                raise
            raise Invalid(self.problem.format(got=show(raw))) from e

    def missing(self, default: T, at: Where) -> T:
        """The value when the key is absent, null or unusable (then already reported)."""
        return default

    def dump(self, value: T) -> Any:
        return value


# --------------------------------------------------------------------------------------
# Keys and specs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key: its kind, default, documentation and whether it must be given.

    ``required`` True reports ``is required`` when absent; a string is the problem text.
    ``default_doc`` is the docs' default when the literal default would mislead.
    """

    kind: Kind[Any]
    default: Any = None
    doc: str = ""
    required: bool | str = False
    yaml: str | None = None
    default_doc: str | None = None
    type_doc: str | None = None
    after: str | None = None  # an ``__inputs__`` key: listed after this field (else last)

    @property
    def type_text(self) -> str:
        return self.type_doc if self.type_doc is not None else self.kind.type_doc


def setting(default: Any, kind: Kind[Any], *, yaml: str | None = None, doc: str = "",
            required: bool | str = False, default_doc: str | None = None,
            type_doc: str | None = None) -> Any:
    """A dataclass field that is a config key (its YAML name derives from the field's).

    A mutable default (a dict, a mapping proxy) is copied for each instance.
    """
    key = Key(kind, default, doc, required, yaml, default_doc, type_doc)
    if getattr(type(default), "__hash__", None) is None:
        return field(default_factory=lambda: type(default)(default), metadata={_META: key})
    return field(default=default, metadata={_META: key})


class Nested(Kind[Any]):
    """A nested spec. ``keys`` limits the accepted keys (the others keep the defaults);
    ``hints`` explains unknown ones; ``must_have`` lists keys that are required here;
    ``inline`` takes the keys from the enclosing mapping itself (``yaml`` paths there)."""

    def __init__(self, cls: type[Any], *, keys: Sequence[str] | None = None,
                 hints: Mapping[str, str] | None = None, must_have: Sequence[str] = (),
                 inline: bool = False, optional: bool = False,
                 type_doc: str | None = None) -> None:
        super().__init__()
        self.cls = cls
        self.keys = tuple(keys) if keys is not None else None
        self.hints = dict(hints or {})
        self.must_have = tuple(must_have)
        self.inline = inline
        self.optional = optional  # absent: the default (None) instead of the spec's defaults
        self.type_doc = type_doc or "mapping"

    def parse(self, raw: object, at: Where, default: Any) -> Any:
        return _parse_section(self.cls, raw, at, None if self.optional else default, self.keys,
                              self.hints, self.must_have)

    def missing(self, default: Any, at: Where) -> Any:
        if self.optional:
            return default
        return _parse_section(self.cls, None, at, default, self.keys, self.hints, self.must_have)

    def dump(self, value: Any) -> Any:
        return None if value is None else dump(value, keys=self.keys)

    def children(self) -> Iterator[tuple[str, Kind[Any]]]:
        for f in _spec_of(self.cls).leaves(self.keys):
            yield "." + f.yaml, f.key.kind



def section(cls: type[Any], *, yaml: str | None = None, doc: str = "",
            required: bool | str = False, keys: Sequence[str] | None = None,
            hints: Mapping[str, str] | None = None, must_have: Sequence[str] = (),
            inline: bool = False, default_factory: Callable[[], Any] | None = None,
            default_doc: str | None = None, type_doc: str | None = None) -> Any:
    """A dataclass field holding a nested spec (defaults: ``cls()`` or ``default_factory``)."""
    kind = Nested(cls, keys=keys, hints=hints, must_have=must_have, inline=inline,
                  type_doc=type_doc)
    key = Key(kind, None, doc, required, yaml, default_doc, type_doc)
    return field(default_factory=default_factory or cls, metadata={_META: key})


def reuse(cls: type[Any], name: str, *, yaml: str | None = None, doc: str | None = None
          ) -> Any:
    """A field declared as ``cls.name`` is (same kind and default; ``yaml`` places it
    elsewhere, ``doc`` words it for this format): a key two formats share is declared once
    (the orchestrator's ``log`` keys are the outlet's)."""
    key = _spec_of(cls).by_name[name].key
    if yaml is not None:
        key = dataclasses.replace(key, yaml=yaml)
    if doc is not None:
        key = dataclasses.replace(key, doc=doc)
    if getattr(type(key.default), "__hash__", None) is None:
        return field(default_factory=lambda: type(key.default)(key.default), metadata={_META: key})
    return field(default=key.default, metadata={_META: key})


@dataclass(frozen=True)
class _Field:
    name: str  # Python attribute
    yaml: str  # dotted key path relative to the mapping
    key: Key

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.yaml.split("."))


@dataclass(frozen=True)
class _Spec:
    cls: type[Any]
    fields: tuple[_Field, ...]  # keyed fields, declaration order
    plain: tuple[str, ...]  # dataclass fields that are not keys (taken from the defaults)
    inputs: Mapping[str, Key]
    hints: Mapping[str, str]
    style: str

    @property
    def by_name(self) -> dict[str, _Field]:
        return {f.name: f for f in self.fields}

    def tree(self, keys: Sequence[str] | None) -> dict[str, Any]:
        """Accepted keys as a nested dict: leaf -> None, sub-mapping -> dict (declared order)."""
        root: dict[str, Any] = {}
        for f in self.leaves(keys):
            node = root
            for part in f.parts[:-1]:
                node = node.setdefault(part, {})
            node.setdefault(f.parts[-1], None)
        return root

    def leaves(self, keys: Sequence[str] | None) -> Iterator[_Field]:
        """Every key this mapping accepts, inline sections expanded, inputs included."""
        for f in self.ordered():
            if keys is not None and f.parts[0] not in keys:
                continue
            kind = f.key.kind
            if isinstance(kind, Nested) and kind.inline:
                yield from _spec_of(kind.cls).leaves(kind.keys)
            else:
                yield f

    def ordered(self) -> list[_Field]:
        """The fields with the ``__inputs__`` keys in place (input fields have no name)."""
        out = list(self.fields)
        for yaml_key, key in self.inputs.items():
            names = [f.name for f in out]
            at = names.index(key.after) + 1 if key.after in names else len(out)
            out.insert(at, _Field("", yaml_key, key))
        return out

    def default_of(self, name: str) -> Any:
        for f in dataclasses.fields(self.cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
        raise TypeError(f"{self.cls.__name__}.{name} has no default: pass defaults=")


_SPECS: dict[type[Any], _Spec] = {}


def _yaml_name(name: str, style: str) -> str:
    return name if style == "snake" else name.replace("_", "-")


def _spec_of(cls: type[Any]) -> _Spec:
    spec = _SPECS.get(cls)
    if spec is None:
        style = getattr(cls, "__key_style__", "kebab")
        keyed: list[_Field] = []
        plain: list[str] = []
        for f in dataclasses.fields(cls):
            key = f.metadata.get(_META)
            if key is None:
                plain.append(f.name)
            else:
                keyed.append(_Field(f.name, key.yaml or _yaml_name(f.name, style), key))
        spec = _Spec(cls, tuple(keyed), tuple(plain), dict(getattr(cls, "__inputs__", {})),
                     dict(getattr(cls, "__hints__", {})), style)
        _SPECS[cls] = spec
    return spec


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def unknown_key_message(key: str, allowed: Sequence[str],
                        hints: Mapping[str, str] | None = None, style: str = "kebab") -> str:
    """``unknown key (hint)``: the hint given, the right spelling, a close match, or the list."""
    if hints and key in hints:
        return f"unknown key ({hints[key]})"
    respelled = key.lower().replace("_", "-") if style == "kebab" else key.replace("-", "_")
    if respelled in allowed and respelled != key:
        spelled = "kebab-case" if style == "kebab" else "snake_case"
        return f"unknown key (did you mean '{respelled}'? keys are {spelled})"
    close = difflib.get_close_matches(respelled, list(allowed), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return "unknown key (allowed: " + ", ".join(allowed) + ")"


def _mapping(raw: object, at: Where) -> dict[Any, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        at.report(f"must be a mapping, got {show(raw)}")
        return {}
    return raw


def _check_keys(data: dict[Any, Any], tree: dict[str, Any], at: Where,
                hints: Mapping[str, str], style: str, prefix: str = "") -> dict[Any, Any]:
    """The accepted part of ``data``; every other key reported (hints by relative path)."""
    allowed = list(tree)
    local = {k[len(prefix):]: v for k, v in hints.items() if k.startswith(prefix)}
    kept: dict[Any, Any] = {}
    for key, value in data.items():
        where = at.child(key)
        if not isinstance(key, str):
            where.report("keys must be strings")
        elif key not in tree:
            where.report(unknown_key_message(key, allowed, local, style))
        elif isinstance(tree[key], dict) and value is not None:
            sub = _mapping(value, where)
            kept[key] = _check_keys(sub, tree[key], where, hints, style, f"{prefix}{key}.")
        else:
            kept[key] = value
    return kept


def _lookup(data: dict[Any, Any], parts: tuple[str, ...]) -> object:
    node: object = data
    for part in parts:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


class _SectionParse:
    """One mapping being parsed: fields are parsed on first use (siblings may ask)."""

    def __init__(self, spec: _Spec, data: dict[Any, Any], at: Where, defaults: Any,
                 keys: Sequence[str] | None, must_have: Sequence[str]) -> None:
        self.spec = spec
        self.data = data
        self.at = at
        self.defaults = defaults
        self.keys = keys
        self.must_have = must_have
        self.values: dict[str, Any] = {}
        self._busy: set[str] = set()

    def default(self, name: str) -> Any:
        if self.defaults is not None:
            return getattr(self.defaults, name)
        return self.spec.default_of(name)

    def where(self, f: _Field) -> Where:
        return Where(_join_dotted(self.at.path, f.yaml), self.at.problems, self)

    def get(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self._busy:
            raise RecursionError(f"{self.spec.cls.__name__}.{name} depends on itself")
        self._busy.add(name)
        f = self.spec.by_name[name]
        default = self.default(name)
        kind = f.key.kind
        if self.keys is not None and f.parts[0] not in self.keys:
            value = default
        elif isinstance(kind, Nested) and kind.inline:
            value = _parse_section(kind.cls, self.data, self.at, default, kind.keys,
                                   kind.hints, kind.must_have, check=False)
        else:
            value = self.parse_key(f, default)
        self.values[name] = value
        return value

    def parse_key(self, f: _Field, default: Any) -> Any:
        where = self.where(f)
        raw = _lookup(self.data, f.parts)
        kind = f.key.kind
        if raw is None:
            required = f.key.required or (f.yaml in self.must_have)
            if required:
                where.report(required if isinstance(required, str) else "is required")
            return kind.missing(default, where)
        try:
            return kind.parse(raw, where, default)
        except Invalid as e:
            where.report(str(e))
            return kind.missing(default, where)

    def input(self, name: str) -> Any:
        """Parsed value of an ``__inputs__`` key (None when absent or invalid)."""
        key = self.spec.inputs[name]
        raw = _lookup(self.data, tuple(name.split(".")))
        if raw is None:
            return None
        where = Where(_join_dotted(self.at.path, name), self.at.problems, self)
        try:
            return key.kind.parse(raw, where, key.default)
        except Invalid as e:
            where.report(str(e))
            return None


class Section:
    """What ``__check__`` sees of a parsed mapping: read, replace, report."""

    def __init__(self, sp: _SectionParse) -> None:
        self._sp = sp

    def __getitem__(self, name: str) -> Any:
        return self._sp.get(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self._sp.values[name] = value

    def given(self, key: str) -> bool:
        """Whether the YAML key (dotted path) was present and not null."""
        return self.raw(key) is not None

    def raw(self, key: str) -> object:
        """The value of the YAML key (dotted path) as written, None when absent."""
        return _lookup(self._sp.data, tuple(key.split(".")))

    def input(self, key: str) -> Any:
        return self._sp.input(key)

    def at(self, key: str) -> Where:
        """The place of a YAML key (dotted path) of this mapping."""
        return Where(_join_dotted(self._sp.at.path, key), self._sp.at.problems, self._sp)

    def report(self, key: str, message: str) -> None:
        self.at(key).report(message)


def _parse_section(cls: type[S], raw: object, at: Where, defaults: Any,
                   keys: Sequence[str] | None, hints: Mapping[str, str],
                   must_have: Sequence[str], check: bool = True) -> S:
    spec = _spec_of(cls)
    data = _mapping(raw, at)
    if check:
        data = _check_keys(data, spec.tree(keys), at, {**spec.hints, **hints}, spec.style)
    sp = _SectionParse(spec, data, at, defaults, keys, must_have)
    for f in spec.fields:
        sp.get(f.name)
    checker = getattr(cls, "__check__", None)
    if checker is not None:
        checker(Section(sp))
    values = dict(sp.values)
    for name in spec.plain:
        values[name] = sp.default(name)
    return cls(**values)


def parse(cls: type[S], data: object, problems: Problems | None = None, *, path: str = "",
          defaults: S | None = None, keys: Sequence[str] | None = None,
          hints: Mapping[str, str] | None = None, must_have: Sequence[str] = (),
          error: type[SpecError] = SpecError) -> S:
    """Parse ``data`` (a YAML mapping, None = empty) into the spec ``cls``.

    With ``problems`` every problem is appended there and a best-effort value returned;
    without, ``error`` (a :class:`SpecError`) is raised listing them all. ``defaults``
    replaces the spec's defaults (an instance of ``cls``); ``keys`` limits the accepted
    keys, ``hints`` explains unknown ones, ``must_have`` makes keys required.
    """
    own = problems is None
    probs = Problems() if problems is None else problems
    with hiding(probs.hidden):
        value = _parse_section(cls, data, Where(path, probs), defaults, keys, dict(hints or {}),
                               must_have)
    if own and probs:
        raise error(probs.errors)
    return value


def parse_mapping(spec: Mapping[str, Key], data: object, at: Where, *,
                  hints: Mapping[str, str] | None = None, style: str = "snake",
                  unknown: Callable[[str, list[str]], str] | None = None) -> dict[str, Any]:
    """A mapping checked against ``{key: Key}`` (no dataclass): the parsed values by key.

    For formats whose keys depend on another value (e.g. the parameters of an action).
    Absent optional keys are left out; ``unknown(key, allowed)`` words the unknown-key
    problem.
    """
    raw = _mapping(data, at)
    out: dict[str, Any] = {}
    allowed = list(spec)
    for k in raw:
        if not isinstance(k, str):
            at.child(k).report("keys must be strings")
        elif k not in spec:
            msg = (unknown(k, allowed) if unknown is not None
                   else unknown_key_message(k, allowed, hints, style))
            at.child(k).report(msg)
    for k, key in spec.items():
        where = at.child(k)
        value = raw.get(k)
        if value is None:
            if key.required:
                where.report(key.required if isinstance(key.required, str) else "is required")
            elif key.default is not None:
                out[k] = key.default
            continue
        try:
            out[k] = key.kind.parse(value, where, key.default)
        except Invalid as e:
            where.report(str(e))
    return out


# --------------------------------------------------------------------------------------
# Dump and reference
# --------------------------------------------------------------------------------------


def _put(out: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _merge(out: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            _merge(out[k], v)
        else:
            out[k] = v


def dump(obj: Any, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The normalized mapping of a parsed spec: every key, defaults filled in, durations and
    sizes readable, secrets redacted. Parsing it again gives ``obj`` back, secrets aside."""
    out: dict[str, Any] = {}
    for f in _spec_of(type(obj)).fields:
        if keys is not None and f.parts[0] not in keys:
            continue
        kind = f.key.kind
        value = getattr(obj, f.name)
        if isinstance(kind, Nested) and kind.inline:
            _merge(out, dump(value, kind.keys))
        else:
            _put(out, f.parts, kind.dump(value))
    return out


@dataclass(frozen=True)
class KeyDoc:
    """One row of a key reference."""

    path: str  # dotted YAML path relative to the spec
    type_text: str
    default: str
    doc: str
    nested: type[Any] | None = None  # for a section documented on its own
    kind: Kind[Any] | None = None  # how the value is checked (tests read its bounds)


def _default_text(kind: Kind[Any], default: Any) -> str:
    value = kind.dump(default)
    if isinstance(value, list | tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "" or value is None:
        return '`""`'
    if isinstance(value, dict):
        return "`{}`" if not value else "see below"
    return f"`{value}`"


def describe(cls: type[Any], *, defaults: Any = None, keys: Sequence[str] | None = None,
             expand: Callable[[type[Any]], bool] = lambda c: True, prefix: str = "",
             default_template: str | None = None) -> list[KeyDoc]:
    """The key reference of a spec, nested sections flattened (``sasl.mechanism``) unless
    ``expand`` says a section is documented on its own (then one row with ``nested``).

    A section's ``default_doc`` containing ``{key}`` is the default text of each of its keys
    (``top-level `clickhouse.{key}```: the defaults come from elsewhere).
    """
    spec = _spec_of(cls)
    rows: list[KeyDoc] = []
    for f in spec.ordered():
        if keys is not None and f.parts[0] not in keys:
            continue
        kind = f.key.kind
        if not f.name:  # an __inputs__ key
            default = f.key.default
        else:
            default = getattr(defaults, f.name) if defaults is not None else spec.default_of(
                f.name)
        path = prefix + f.yaml
        if isinstance(kind, Nested) and (kind.inline or expand(kind.cls)):
            template = f.key.default_doc if "{key}" in (f.key.default_doc or "") else None
            rows += describe(kind.cls, defaults=default, keys=kind.keys, expand=expand,
                             prefix="" if kind.inline else path + ".",
                             default_template=template)
            continue
        nested = kind.cls if isinstance(kind, Nested) else None
        if default_template is not None:
            shown = default_template.format(key=f.yaml)
        elif f.key.default_doc is not None:
            shown = f.key.default_doc
        else:
            shown = "required" if f.key.required else _default_text(kind, default)
        rows.append(KeyDoc(path, f.key.type_text, shown, f.key.doc, nested, kind))
    return rows


@dataclass(frozen=True)
class SecretPath:
    """Where a spec holds a secret: ``path`` (``a.b``, ``[*]`` = any list item) and
    ``kind``: ``value`` (the value is the secret) or ``file`` (the file it names holds one)."""

    path: str
    kind: str


def secret_paths(cls: type[Any]) -> list[SecretPath]:
    """Every place a spec holds a secret, from its declarations (the kinds' ``secret``), so
    that a secret key added later is found without being listed anywhere."""
    out: list[SecretPath] = []
    todo: list[tuple[str, Kind[Any]]] = [("." + f.yaml, f.key.kind)
                                         for f in _spec_of(cls).leaves(None)]
    while todo:
        path, kind = todo.pop(0)
        if kind.secret is not None:
            out.append(SecretPath(path.lstrip("."), kind.secret))
        todo += [(path + suffix, child) for suffix, child in kind.children()]
    return out


_PATH_PART = re.compile(r"\[[^\]]*\]|[^.\[]+")


def locate(document: object, path: str) -> Iterator[tuple[str, Any, Any]]:
    """Each place of a parsed YAML document that a key path names, as (concrete path,
    container, key): ``[*]`` is any list item, ``[<name>]`` any mapping key (the forms of
    :class:`SecretPath`), ``[2]`` one item, ``["k.y"]`` one key (those of problems)."""
    places: list[tuple[str, Any]] = [("", document)]
    parts = _PATH_PART.findall(path)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        found: list[tuple[str, Any]] = []
        for where, node in places:
            if part == "[*]":
                keys: list[Any] = list(range(len(node))) if isinstance(node, list) else []
            elif part.startswith("[<"):
                keys = list(node) if isinstance(node, dict) else []
            elif part.startswith("[") and part[1:-1].isdigit():
                index = int(part[1:-1])
                keys = [index] if isinstance(node, list) and index < len(node) else []
            elif part.startswith('["'):
                name = part[2:-2].replace('\\"', '"').replace("\\\\", "\\")
                keys = [name] if isinstance(node, dict) and name in node else []
            else:
                keys = [part] if isinstance(node, dict) and part in node else []
            for key in keys:
                if last:
                    yield join_path(where, key), node, key
                else:
                    found.append((join_path(where, key), node[key]))
        places = found
