"""The modules of treepref import each other without a cycle, and only the console entry point imports the CLI.

Every ``import`` and ``from ... import`` statement counts, those inside functions too (a cycle through a lazy
import still ties two modules together), except under ``if TYPE_CHECKING:``, which never runs. Importing
``treepref`` itself stays light: no torch, transformers, vLLM or datasets until a name that needs them is used.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "treepref"
CLI = "treepref.cli"
MAY_IMPORT_CLI = {"treepref.cli", "treepref.__main__"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST):
    """Every import statement, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if _type_checking(node):
            children = list(node.orelse)
        stack.extend(children)


def _named(name: str, known: dict[str, Path]) -> str | None:
    """The treepref module ``name`` is or lies in (``treepref.x.y.attr`` -> ``treepref.x.y``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The treepref modules ``module`` imports."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, or a name in ``base``
        out |= {m for m in (_named(n, known) for n in names) if m and m != module}
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_cycle_among_treepref_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_entry_point_imports_the_cli():
    importers = sorted(name for name, deps in graph().items() if CLI in deps and name not in MAY_IMPORT_CLI)
    assert not importers, f"{CLI} is imported by {importers}; move what they need out of the CLI"


def test_the_walker_sees_lazy_imports_and_finds_a_cycle():
    """The checks above would pass vacuously if the walker missed imports: it must see one inside a function
    (the Ray actors' lazy import of the search context) and report a cycle it is given."""
    edges = graph()
    assert "treepref.context" in edges["treepref.executors.ray"]
    assert "treepref.search.spend" not in edges["treepref.search.base"]  # only under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_importing_treepref_loads_nothing_heavy():
    code = ("import sys, treepref; treepref.search; treepref.UserInputError; "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'datasets', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
