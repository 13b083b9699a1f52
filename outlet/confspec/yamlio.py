"""YAML loading (duplicate keys are problems) and ``${VAR}`` expansion of string values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from outlet.confspec.core import Problems, Where, join_path


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


def load_yaml(text: str) -> tuple[Any, list[str]]:
    """(document, duplicate-key problems). Raises ``yaml.YAMLError`` on a syntax error."""
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicate_errors
    finally:
        loader.dispose()


_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand_string(s: str, at: Where, env: Mapping[str, str]) -> str:
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
                at.report(f"invalid variable reference '${{{body}}}'"
                          " (expected ${NAME} or ${NAME:-default})")
            elif sep:
                value = env.get(name, "")
                out.append(value if value else default)
            elif name in env:
                out.append(env[name])
            else:
                at.report(f"environment variable {name} is not set")
            i = end + 1
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


def expand_env(node: object, env: Mapping[str, str], problems: Problems, path: str = ""
               ) -> object:
    """``${VAR}`` / ``${VAR:-default}`` in every string *value* (never in keys, never on raw
    text: YAML quoting cannot break); ``$${`` is a literal ``${``."""
    if isinstance(node, str):
        return _expand_string(node, Where(path, problems), env)
    if isinstance(node, dict):
        return {k: expand_env(v, env, problems, join_path(path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, env, problems, join_path(path, i)) for i, v in enumerate(node)]
    return node
