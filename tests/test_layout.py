"""The package layout: imports go one way between packages, and no module cycles.

`outlet` <- `orchestrator`, `flowgen` <- `teststack` <- `chaos`, `loadtest`
(docs/CONTRACTS.md). Every import counts, lazy and TYPE_CHECKING ones included: a cycle
hidden in a function is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each package may import (besides itself).
ALLOWED = {
    "outlet": set(),
    "orchestrator": {"outlet"},
    "flowgen": {"outlet"},
    "teststack": {"outlet", "orchestrator", "flowgen"},
    "chaos": {"outlet", "orchestrator", "flowgen", "teststack"},
    "loadtest": {"outlet", "orchestrator", "flowgen", "teststack"},
}
OURS = set(ALLOWED) | {"tests"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Our modules imported by `path` (resolved to module names, packages included)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in OURS}


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in ALLOWED for p in (ROOT / pkg).rglob("*.py") if "pb" not in p.parts]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_packages_import_one_way() -> None:
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        for dep in deps
        if (src := mod.split(".")[0]) != (dst := dep.split(".")[0]) and dst not in ALLOWED[src]
    ]
    assert not bad, "imports against the package direction:\n" + "\n".join(sorted(bad))


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package's __init__ is not an edge back into its own modules.
            if nxt == node.rsplit(".", 1)[0]:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if state.get(nxt) is None and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_module_cycles(package: str) -> None:
    graph = {m: d for m, d in _graph().items() if m.split(".")[0] == package}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
