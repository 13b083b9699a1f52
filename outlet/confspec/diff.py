"""Where two parsed documents of the same spec differ, as key paths (live reconfiguration).

``changed_keys(old, new)`` walks both values along the spec's own declarations, so the
paths are the YAML keys a user wrote (``clickhouse.maximum-batch-size``,
``connection.tls.ca-file``), inline sections are flattened as in the file, and secrets
compare by value without ever being shown (only their path is returned).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from outlet.confspec.core import Nested, _join_dotted, _spec_of


def changed_keys(old: Any, new: Any, path: str = "") -> list[str]:
    """Key paths (declaration order) whose values differ between two specs of one class.

    A nested section is compared key by key; any other value (a list, a mapping, a
    scalar) is compared whole and reported at its own path.
    """
    if type(old) is not type(new):
        raise TypeError(f"cannot compare {type(old).__name__} with {type(new).__name__}")
    out: list[str] = []
    for f in _spec_of(type(old)).fields:
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        kind = f.key.kind
        if isinstance(kind, Nested) and dataclasses.is_dataclass(before) and after is not None:
            out += changed_keys(before, after, path if kind.inline else _join_dotted(path, f.yaml))
        else:
            out.append(_join_dotted(path, f.yaml))
    return out
