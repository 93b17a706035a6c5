"""The import graph of the project's own modules (contract/, optimizer/, evaluators/, service/): no
cycles, and the layers of DESIGN.md: contract/ imports only the standard library and pydantic (both
sides import it); optimizer/ never imports evaluators/ or torch, evaluators/ never imports
optimizer/ or service/.

Module-level imports only (what runs when a module is imported, `if TYPE_CHECKING:` blocks left
out); an import inside a function is a deliberate late binding and is not an edge."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "optimizer", "evaluators", "service")


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if "migrations" in parts:  # alembic loads these from files, never by import
                continue
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]):
    """Import statements run at import time: the module body and its if/try/with blocks, not
    functions, classes' methods or TYPE_CHECKING blocks."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)
        elif isinstance(node, ast.ClassDef):
            yield from _module_level(node.body)


def _imports(name: str, path: Path, modules: dict[str, Path], walk) -> set[str]:
    """Every module `name` imports at module level: project modules by full name, others by their
    top-level name (torch, optuna, ...)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in walk(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    out.add(target)
            else:
                out.add(target.split(".")[0])
    return out


def import_graph(walk=None) -> dict[str, set[str]]:
    """Module -> what it imports; ``walk`` picks the import statements (default: module level)."""
    modules = _modules()
    return {name: _imports(name, path, modules, walk or _module_level) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert {"contract.merge", "optimizer.loop", "evaluators.scoring.suite_scorer", "service.cli.main"} <= set(graph)
    assert "optuna" in graph["optimizer.loop"] or any("optuna" in graph[m] for m in graph if m.startswith("optimizer"))


def _every_import(body: list[ast.stmt]):
    """Imports anywhere in the module, functions included (TYPE_CHECKING blocks still left out)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _every_import(node.orelse)
        else:
            yield from _every_import([c for c in ast.iter_child_nodes(node)
                                      if isinstance(c, ast.stmt | ast.excepthandler | ast.match_case)])


# Cycles closed only by an import inside a function (a late binding), left for later (issue 22):
# this list may only shrink.
LATE_CYCLES = [
]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_new_cycles_through_late_imports():
    found = cycles(import_graph(_every_import))
    assert [c for c in found if c not in LATE_CYCLES] == []
    assert sorted(found) == sorted(LATE_CYCLES), "a late cycle is gone: take it off LATE_CYCLES"


def test_layers():
    graph = import_graph()
    wrong = []
    for module, targets in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if top == "optimizer" and other in ("evaluators", "service", "torch"):
                wrong.append(f"{module} -> {target}")
            if top == "evaluators" and other in ("optimizer", "service"):
                wrong.append(f"{module} -> {target}")
            if top == "contract" and other not in ("contract", "pydantic") and other not in sys.stdlib_module_names:
                wrong.append(f"{module} -> {target}")
    assert wrong == []
