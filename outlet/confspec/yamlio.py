"""YAML loading and ``${VAR}`` expansion of string values.

:func:`load_yaml` reads a document the way a configuration must be read: duplicate keys
are problems, and nothing in the text can make the reader crash, hang or print the text.
A document that cannot be read raises :class:`YAMLSyntaxError`, whose message is the
line, the column and the problem in words of our own; it never quotes the document (the
offending line may hold a password: ``password: S3cr3t: x``, an unterminated quote, a
value starting with ``@``, ``!`` or ``*`` are YAML syntax). Also refused, with a position:
nesting deeper than :data:`MAX_DEPTH` levels, more than :data:`MAX_VALUES` values once
aliases are expanded (an "alias bomb"), an alias inside its own anchor, values YAML cannot
convert (``2001-02-30``, ``!!int x``), ``!!binary`` values and control characters.

libyaml (PyYAML's C parser) is used when PyYAML has it: 3-4x faster on large files; the
errors are the same with PyYAML's own parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from outlet.confspec.core import Problems, Where, join_path, show

MAX_DEPTH = 64  # nesting levels of a document (the outlet's config needs 7)
MAX_VALUES = 4_000_000  # values once aliases are expanded (an 8 MiB file holds ~1.5M)

class YAMLSyntaxError(yaml.YAMLError):
    """A document that cannot be read: where (1-based line and column, 0 when unknown) and
    the problem, in words that never quote the document."""

    def __init__(self, problem: str, line: int = 0, column: int = 0) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.column = column

    @classmethod
    def at(cls, problem: str, mark: Any) -> YAMLSyntaxError:
        if mark is None:
            return cls(problem)
        return cls(problem, mark.line + 1, mark.column + 1)

    def __str__(self) -> str:
        if not self.line:
            return self.problem
        return f"line {self.line}, column {self.column}: {self.problem}"


# What PyYAML says, in words that quote nothing of the document, with the usual fix.
# Matched against PyYAML's problem (and context) text, first match wins.
_QUOTE_IT = "quote the value ('...' or \"...\")"
_ESCAPE = ("a bad escape sequence in a \"...\" value: write \\\\ for a backslash, or use "
           "'...' (no escapes)")
_EXPLAINED = (  # (words PyYAML uses, ours, whether the place is where the construct starts)
    ("nesting depth", f"nesting deeper than {MAX_DEPTH} levels", False),
    ("escape character", _ESCAPE, False),
    ("escape sequence", _ESCAPE, False),
    ("hexdecimal", _ESCAPE, False),  # libyaml's spelling
    ("hexadecimal", _ESCAPE, False),
    ("while scanning a quoted scalar", "a quoted value that is never closed (it starts here)",
     True),
    ("cannot start any token", "a value starts with a character YAML reserves (@ or `), or "
     f"a tab indents the line: {_QUOTE_IT}, and indent with spaces", False),
    ("mapping values are not allowed", f"': ' inside an unquoted value: {_QUOTE_IT}", False),
    ("undefined alias", f"an unknown alias (a value starting with *): {_QUOTE_IT}", False),
    ("could not determine a constructor", "an unknown tag (a value starting with !): "
     + _QUOTE_IT, False),
    ("while scanning a tag", f"a bad tag (a value starting with !): {_QUOTE_IT}", False),
    ("while scanning an anchor", f"a bad anchor (a value starting with &): {_QUOTE_IT}",
     False),
    ("while scanning an alias", f"a bad alias (a value starting with *): {_QUOTE_IT}", False),
    ("while scanning a directive", f"a line starts with %: {_QUOTE_IT}", False),
    ("while scanning a block scalar", "a bad | or > block value header", False),
    ("found duplicate anchor", "the same anchor (&name) is defined twice", False),
    ("found unhashable key", "a key that is a list or a mapping", False),
    ("for merging", "a merge key (<<) whose value is not a mapping or a list of mappings",
     False),
    ("while scanning a simple key", f"an unquoted key or value is cut by a line break: "
     f"{_QUOTE_IT}", False),
    ("but found another document", "more than one document (---) in the file", False),
    ("found unexpected end of stream", "the file ends inside a value (an unclosed quote, "
     "bracket or brace)", False),
    ("while parsing a flow", "an unclosed or misplaced [ or { (or a missing comma)", False),
    ("while parsing a block", "bad indentation (or an unquoted value holding ': ' or a "
     "leading - ? :)", False),
)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_TOKEN = re.compile(r"'<[a-z ]+>'")


def _marked(e: yaml.MarkedYAMLError) -> YAMLSyntaxError:
    """Our error for one of PyYAML's, quoting nothing of the document."""
    said = f"{e.context or ''} {e.problem or ''}"
    for needle, words, at_start in _EXPLAINED:
        if needle in said:
            mark = e.context_mark if at_start and e.context_mark else e.problem_mark
            return YAMLSyntaxError.at(words, mark or e.context_mark)
    # Anything else: PyYAML's own words without anything it quotes from the document
    # (token names such as '<block end>' are not from the document).
    words = _QUOTED.sub(lambda m: m.group(0) if _TOKEN.fullmatch(m.group(0)) else "",
                        e.problem or e.context or "")
    return YAMLSyntaxError.at("invalid YAML: " + (" ".join(words.split()) or "syntax error"),
                              e.problem_mark or e.context_mark)


def _line_column(text: str, position: int) -> tuple[int, int]:
    line = text.count("\n", 0, position) + 1
    return line, position - (text.rfind("\n", 0, position) + 1) + 1


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_shape(root: Node) -> None:
    """Refuse nesting deeper than MAX_DEPTH, more than MAX_VALUES values once aliases are
    expanded, and an alias inside its own anchor (iterative: no recursion limit; each node
    is visited once, however many aliases repeat it)."""
    height: dict[int, int] = {}  # levels below and including a collection node
    weight: dict[int, int] = {}  # values in it, aliases expanded
    on_path = {id(root)}
    stack: list[tuple[Node, int, Iterator[Node]]] = [(root, 1, iter(_children(root)))]
    while stack:
        node, depth, pending = stack[-1]
        for child in pending:
            if isinstance(child, ScalarNode):
                if depth + 1 > MAX_DEPTH:
                    raise YAMLSyntaxError.at(_TOO_DEEP, child.start_mark)
                continue
            if id(child) in on_path:
                raise YAMLSyntaxError.at("an alias (*name) inside the value it names",
                                         node.start_mark)
            if depth + height.get(id(child), 1) > MAX_DEPTH:
                raise YAMLSyntaxError.at(_TOO_DEEP, child.start_mark)
            if id(child) not in height:
                on_path.add(id(child))
                stack.append((child, depth + 1, iter(_children(child))))
                break
        else:
            stack.pop()
            on_path.discard(id(node))
            levels, values = 1, 1
            for c in _children(node):
                if isinstance(c, ScalarNode):
                    levels, values = max(levels, 2), values + 1
                else:
                    levels, values = max(levels, 1 + height[id(c)]), values + weight[id(c)]
            height[id(node)], weight[id(node)] = levels, values
            if values > MAX_VALUES:
                raise YAMLSyntaxError.at(f"more than {MAX_VALUES:,} values once the aliases "
                                         "(*name) in it are expanded", node.start_mark)


_TOO_DEEP = f"nesting deeper than {MAX_DEPTH} levels"


_UNCONVERTIBLE = (f"a value YAML cannot convert (a date that does not exist, or a !!tag that "
                  f"does not fit the value): {_QUOTE_IT}")


class _Checks(yaml.constructor.SafeConstructor):
    """What our loaders add to PyYAML's safe loader: duplicate mapping keys recorded instead
    of silently keeping the last; ``!!binary`` and values YAML cannot convert refused, at
    their position."""

    duplicate_errors: list[str]  # set by load_yaml

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception:  # e.g. 2001-02-30, !!int x, !!bool x: their text names the value
            raise YAMLSyntaxError.at(_UNCONVERTIBLE, node.start_mark) from None

    def construct_binary(self, node: Node) -> Any:
        raise YAMLSyntaxError.at("binary values (!!binary) are not supported", node.start_mark)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):  # the base class reports it
            return super().construct_mapping(node, deep=deep)
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    line = key_node.start_mark.line + 1
                    self.duplicate_errors.append(f"line {line}: duplicate key {show(key)}")
                seen.add(key)
            except TypeError:  # unhashable key; the base class reports it
                pass
        return super().construct_mapping(node, deep=deep)


class _PythonLoader(_Checks, yaml.SafeLoader):
    pass


#: The parsers load_yaml can use: libyaml (PyYAML's C parser, 3-4x faster) when PyYAML has
#: it, else PyYAML's own.
PARSERS: dict[str, Any] = {"python": _PythonLoader}
if getattr(yaml, "__with_libyaml__", False):
    class _LibyamlLoader(_Checks, yaml.CSafeLoader):
        pass

    PARSERS["libyaml"] = _LibyamlLoader
DEFAULT_PARSER = "libyaml" if "libyaml" in PARSERS else "python"
for _loader in PARSERS.values():
    _loader.add_constructor("tag:yaml.org,2002:binary", _loader.construct_binary)


def load_yaml(text: str, parser: str = DEFAULT_PARSER) -> tuple[Any, list[str]]:
    """(document, duplicate-key problems). Raises :class:`YAMLSyntaxError` (a
    ``yaml.YAMLError``) when the text is not a document we can read. ``parser``: a key of
    :data:`PARSERS` (tests read with both)."""
    nul = text.find("\0")
    if nul >= 0:
        raise YAMLSyntaxError("the file holds a NUL character (is it a binary file?)",
                              *_line_column(text, nul))
    loader: Any = None
    try:
        loader = PARSERS[parser](text)
        loader.duplicate_errors = []
        node = loader.get_single_node()
        if node is None:
            return None, []
        check_shape(node)
        try:
            return loader.construct_document(node), loader.duplicate_errors
        except yaml.YAMLError:
            raise
        except Exception:  # a value converted lazily (in a mapping or a list)
            raise YAMLSyntaxError(_UNCONVERTIBLE) from None
    except YAMLSyntaxError:
        raise
    except yaml.MarkedYAMLError as e:
        raise _marked(e) from None
    except yaml.reader.ReaderError as e:
        what = ("a control character YAML does not allow" if e.character is not None
                else "text that is not valid")
        raise YAMLSyntaxError(f"the file holds {what}",
                              *_line_column(text, e.position)) from None
    except yaml.YAMLError:  # nothing else is raised by PyYAML today; quote nothing
        raise YAMLSyntaxError("invalid YAML") from None
    except RecursionError:  # the pure-Python parser, nesting past its recursion limit
        raise YAMLSyntaxError.at(f"nesting deeper than {MAX_DEPTH} levels",
                                 _mark_of(loader)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _mark_of(loader: Any) -> Any:
    get_mark = getattr(loader, "get_mark", None)
    return get_mark() if get_mark is not None else None


_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand_string(s: str, at: Where, env: Mapping[str, str]) -> str:
    if "\0" in s:
        at.report("holds a NUL character (\\0)")
        return s.replace("\0", "")
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
                at.report("unterminated '${' (write '$${' for a literal '${')")
                return s
            body = s[i + 2 : end]
            name, sep, default = body.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                at.report("invalid variable reference (expected ${NAME} or ${NAME:-default})")
            elif sep:
                value = env.get(name, "")
                out.append(_substitute(value, name, at) if value else default)
            elif name in env:
                out.append(_substitute(env[name], name, at))
            else:
                at.report(f"environment variable {name} is not set")
            i = end + 1
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


def _substitute(value: str, name: str, at: Where) -> str:
    """``value`` of variable ``name``: recorded as never to be shown in a problem."""
    if value:
        at.problems.hidden.setdefault(value, "${" + name + "}")
    if "\0" in value:
        at.report(f"environment variable {name} holds a NUL character (\\0)")
        return value.replace("\0", "")
    return value


def expand_env(node: object, env: Mapping[str, str], problems: Problems, path: str = ""
               ) -> object:
    """``${VAR}`` / ``${VAR:-default}`` in every string *value* (never in keys, never on raw
    text: YAML quoting cannot break); ``$${`` is a literal ``${``.

    What a variable gives is added to ``problems.hidden``: :func:`show` never prints it (a
    ``${PASSWORD}`` put under the wrong key is not echoed). A NUL character in a value is a
    problem (paths and names cannot hold one).
    """
    if isinstance(node, str):
        return _expand_string(node, Where(path, problems), env)
    if isinstance(node, dict):
        return {k: expand_env(v, env, problems, join_path(path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, env, problems, join_path(path, i)) for i, v in enumerate(node)]
    return node
