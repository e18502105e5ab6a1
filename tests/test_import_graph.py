"""The project's import graph points one way: worker -> service -> engine, the client -> nothing of the server.

Read statically (ast) from every module of the project, so a lazy import inside a function counts
as much as one at the top; imports under `if TYPE_CHECKING:` count for the layers (they still name
what a module knows about) but not for cycles (they never run). One run-time check beside it: the
client and its CLI load without the engine or the server stack.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("diet_engine", "service", "worker", "diet_client")
SCRIPT_FOLDERS = ("benchmarks", "scripts", "migrations", "tests")  # not layered; parsed so they still import what exists

WEB_SQL_QUEUE = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "celery", "kombu", "redis"}
SERVER = {"service", "worker"}
FORBIDDEN = {
    # package: top-level names none of its modules may import
    "diet_engine": WEB_SQL_QUEUE | SERVER | {"diet_client", "httpx"},
    "service": {"worker"},
    "diet_client": WEB_SQL_QUEUE | SERVER | {"diet_engine", "torch"},
}


@dataclass(frozen=True)
class Import:
    target: str  # the dotted module (or package) imported
    line: int
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for folder in PACKAGES + SCRIPT_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _under_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_in(name: str, path: Path) -> list[Import]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, child.lineno, type_checking) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from its package upwards
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    # `from pkg import mod` depends on the module pkg.mod where there is one, else on pkg.
                    submodule = f"{base}.{alias.name}"
                    found.append(Import(submodule if submodule in modules() else base, child.lineno, type_checking))
            else:
                visit(child, type_checking or (isinstance(child, ast.If) and _under_type_checking(child)))

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return found


@cache
def graph() -> dict[str, list[Import]]:
    return {name: _imports_in(name, path) for name, path in modules().items()}


def test_the_graph_reads_the_whole_project():
    names = set(graph())
    assert {"diet_engine.distill.stage", "service.queue", "worker.tasks", "diet_client.cli.common"} <= names
    assert sum(len(imports) for imports in graph().values()) > 500
    # Every import of a project module names one that exists (a moved module leaves no stale import behind).
    missing = [
        f"{name}:{imp.line} imports {imp.target}"
        for name, imports in graph().items()
        for imp in imports
        if imp.target.split(".")[0] in PACKAGES and imp.target not in names
    ]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_down(package: str):
    wrong = [
        f"{name}:{imp.line} imports {imp.target}"
        for name, imports in graph().items()
        if name.split(".")[0] == package
        for imp in imports
        if imp.target.split(".")[0] in FORBIDDEN[package]
    ]
    assert not wrong, f"{package} must not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(sorted(set(wrong)))


def _cycles(package: str) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), among the package's modules."""
    edges = {
        name: sorted({imp.target for imp in imports if not imp.type_checking and imp.target.split(".")[0] == package}
                     - {name})
        for name, imports in graph().items()
        if name.split(".")[0] == package
    }  # fmt: skip
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, []):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return components


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_inside(package: str):
    assert _cycles(package) == []


def test_the_cycle_finder_finds_one():
    """The check above can fail: a cycle put into the graph is found."""
    graph()["diet_engine.data.schema"].append(Import("diet_engine.distill.stage", 0, False))
    try:
        assert any({"diet_engine.data.schema", "diet_engine.distill.stage"} <= set(c) for c in _cycles("diet_engine"))
    finally:
        graph()["diet_engine.data.schema"].pop()


def test_the_client_loads_without_the_engine_or_the_server(tmp_path: Path):
    """At run time too: nothing the client's dependencies pull in brings the engine or the server stack."""
    code = (
        "import sys, diet_client, diet_client.cli; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'diet_engine', 'service', 'worker', 'fastapi', 'sqlalchemy', 'celery')); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
