"""The import graph of ``platform/ambient`` has no cycle, and ``ambient.core`` depends on nothing else.

The graph is read from the source with ``ast`` (nothing is imported). Every ``import`` statement
counts, wherever it is: module level, inside functions and under ``if TYPE_CHECKING:``. A deferred
or type-only import still couples two modules, and deferring an import is how a cycle hides until
one of its ends starts importing the other at module level. An edge goes to the module named by the
statement (``from a.b import c`` reaches ``a.b.c`` when that is a module, else ``a.b``), not to the
parent packages Python initialises on the way, as import-linter and grimp count them. Names that
a package's ``lazy_exports`` resolves by string are not statements and do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "platform"
PACKAGE = "ambient"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is named by its ``__init__``)."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module of the package, line) for every import in one module.

    ``from a.b import c`` reaches ``a.b.c`` when that is a module, else ``a.b``; relative imports are
    resolved against the module's package."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # ``from .x`` in a package's __init__ is relative to the package itself.
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            if target in modules and target != name:
                yield target, node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: first line that imports it}."""
    modules = module_files()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for name, path in modules.items():
        for target, line in sorted(imported_modules(name, path, set(modules)), key=lambda t: t[1]):
            graph[name].setdefault(target, line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components with more than one module (or a module importing itself), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as ``module:line -> ...`` steps."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    cycle = [*paths[node], start]
                    return [f"{a} (line {graph[a][b]})" for a, b in pairwise(cycle)] + [start]
                if child in members and child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    return component


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and graph["ambient.data.streaming"], "the walk found the package's modules"
    cycles = [" -> ".join(one_cycle(graph, c)) for c in strongly_connected(graph)]
    assert not cycles, "import cycles (module (line of the import) -> ...):\n" + "\n".join(cycles)


def test_core_imports_nothing_from_the_rest_of_ambient():
    graph = import_graph()
    outside = [
        f"{name} imports {target} (line {line})"
        for name, edges in graph.items()
        if name == f"{PACKAGE}.core" or name.startswith(f"{PACKAGE}.core.")
        for target, line in edges.items()
        if not (target == f"{PACKAGE}.core" or target.startswith(f"{PACKAGE}.core."))
    ]
    assert not outside, "\n".join(outside)
