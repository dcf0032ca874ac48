"""kvstore's module structure, read from the source with ``ast`` (issue 10).

- the imports between kvstore's modules form a DAG: each module can be understood, and
  imported, after the ones below it;
- imports are at module level, where a reader (and the import graph) sees them; function-local
  imports only of the few packages in ``LAZY_IMPORTS`` below, each for a stated reason;
- no module imports or reaches into another kvstore module's private (``_name``) names;
- every module says what it is for in a docstring.

The self-test at the end runs the checkers on a small package with one of each problem, so
they cannot pass by checking nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kvstore"
#: Top-level packages that may be imported inside a function, and why.
LAZY_IMPORTS = {
    # Alembic is needed only to run or check migrations. Importing it takes a noticeable part
    # of a second, and opening a store at the current schema must never load it
    # (tests/test_migrations.py checks that ensure_schema at head does not).
    "alembic": "imported only where a migration runs",
    # rich draws the CLI's progress bars; only a long-running command that shows one pays for
    # importing it.
    "rich": "imported only when the CLI shows progress",
    # urllib.parse is needed by the CLI only to mask a password in an error message; it is
    # the standard library's and creates no dependency between kvstore's modules.
    "urllib": "imported only when the CLI masks a secret",
    # psycopg2 is an optional driver: its batch helper is imported only by the dialect object
    # of a store that runs on psycopg2.
    "psycopg2": "imported only on a psycopg2 connection",
}


@dataclass(frozen=True)
class Import:
    """One imported module, or one name imported from a module."""

    module: str  # the importing kvstore module
    path: str  # its file, relative to the repository
    line: int
    target: str  # the absolute name of the module imported (from)
    name: str | None  # the name imported from ``target``; None for ``import target``
    local: bool  # inside a function
    type_checking: bool  # inside ``if TYPE_CHECKING:`` (never runs)

    def where(self) -> str:
        what = f"from {self.target} import {self.name}" if self.name else f"import {self.target}"
        return f"{self.path}:{self.line}: {what}"


def module_name(path: Path, package: str = "kvstore") -> str:
    return package if path.stem == "__init__" else f"{package}.{path.stem}"


def parse_package(directory: Path, package: str = "kvstore") -> dict[str, tuple[str, ast.Module]]:
    """Every module of a flat package: its name -> (its file, from the package's parent
    directory; its syntax tree)."""
    out = {}
    for path in sorted(directory.glob("*.py")):
        rel = str(path.relative_to(directory.parent))
        out[module_name(path, package)] = (rel, ast.parse(path.read_text(), filename=str(path)))
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(modules: dict[str, tuple[str, ast.Module]], package: str = "kvstore") -> list[Import]:
    """Every import statement of the package's modules, relative ones resolved."""
    found: list[Import] = []

    def walk(node: ast.AST, mod: str, path: str, local: bool, tc: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(mod, path, child.lineno, alias.name, None, local, tc))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    # a flat package: every module's "." is the package itself
                    base = ".".join([package, *(child.module.split(".") if child.module else [])])
                else:
                    base = child.module or ""
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:  # from . import store: the module itself
                        found.append(Import(mod, path, child.lineno, sub, None, local, tc))
                    else:
                        found.append(Import(mod, path, child.lineno, base, alias.name, local, tc))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                walk(child, mod, path, True, tc)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    walk(ast.Module(body=[stmt], type_ignores=[]), mod, path, local, True)
                for stmt in child.orelse:
                    walk(ast.Module(body=[stmt], type_ignores=[]), mod, path, local, tc)
            else:
                walk(child, mod, path, local, tc)

    for mod, (path, tree) in modules.items():
        walk(tree, mod, path, False, False)
    return found


# -- (a) the import graph is a DAG -------------------------------------------------------------
def import_graph(
    modules: dict[str, tuple[str, ast.Module]], package: str = "kvstore"
) -> dict[str, set[str]]:
    """kvstore module -> the kvstore modules it imports when it runs (module level or inside
    a function; ``if TYPE_CHECKING:`` imports never run and are left out)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports(modules, package):
        if imp.type_checking or imp.target not in modules or imp.target == imp.module:
            continue
        graph[imp.module].add(imp.target)
    return graph


def tangles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules that import each other, in a cycle or several: each strongly connected
    component of more than one module (or a module that imports itself), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(found)


def shortest_cycle(graph: dict[str, set[str]], tangle: list[str]) -> list[str]:
    """A shortest cycle through the first module of a tangle, as ``[a, b, ..., a]``."""
    start, inside = tangle[0], set(tangle)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & inside):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{tangle} is not strongly connected")


# -- (b) function-local imports ------------------------------------------------------------------
def local_imports(
    modules: dict[str, tuple[str, ast.Module]], package: str = "kvstore"
) -> list[Import]:
    """Imports inside functions of anything but the ``LAZY_IMPORTS`` packages."""
    return [
        imp
        for imp in imports(modules, package)
        if imp.local and imp.target.split(".")[0] not in LAZY_IMPORTS
    ]


# -- (c) other modules' private names ------------------------------------------------------------
def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def private_uses(modules: dict[str, tuple[str, ast.Module]], package: str = "kvstore") -> list[str]:
    """Where a module imports another kvstore module's private name (``from .x import _y``),
    or reads one as an attribute of that module (``x._y``, ``kvstore.x._y``) or of a name it
    imported from it (``Store._key``). (Private attributes of objects that merely come from
    another module - ``store._b`` of a parameter - are beyond what the source shows.)"""
    found = []
    all_imports = imports(modules, package)
    for mod, (path, tree) in modules.items():
        # local name -> the kvstore module it is (modules) or the module it came from (names)
        module_aliases: dict[str, str] = {}
        name_origins: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules or alias.name.split(".")[0] == package:
                        if alias.asname:
                            module_aliases[alias.asname] = alias.name
                        else:
                            module_aliases[package] = package
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    local = alias.asname or alias.name
                    imp = next(
                        i
                        for i in all_imports
                        if i.module == mod
                        and i.line == node.lineno
                        and (i.name == alias.name or i.target.endswith("." + alias.name))
                    )
                    if imp.name is None and imp.target in modules:
                        module_aliases[local] = imp.target
                    elif imp.target in modules and imp.target != mod:
                        name_origins[local] = imp.target
        for imp in all_imports:
            if (
                imp.module == mod
                and imp.name is not None
                and imp.target in modules
                and imp.target != mod
                and _private(imp.name)
            ):
                found.append(f"{imp.where()} (a private name of {imp.target})")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            base = _dotted(node.value)
            if base is None:
                continue
            head, _, rest = base.partition(".")
            target = None
            if head in module_aliases:
                target = ".".join(filter(None, [module_aliases[head], rest]))
                if target not in modules:
                    target = None
            elif head in name_origins and not rest:
                target = name_origins[head]
            if target is not None and target != mod:
                found.append(f"{path}:{node.lineno}: {base}.{node.attr} (private to {target})")
    return sorted(set(found))


# -- the package -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kvstore_modules() -> dict[str, tuple[str, ast.Module]]:
    modules = parse_package(PACKAGE)
    assert "kvstore.store" in modules and "kvstore" in modules
    return modules


def test_the_import_graph_is_a_dag(kvstore_modules: dict[str, tuple[str, ast.Module]]) -> None:
    graph = import_graph(kvstore_modules)
    found = [
        f"{', '.join(tangle)} (e.g. {' -> '.join(shortest_cycle(graph, tangle))})"
        for tangle in tangles(graph)
    ]
    assert found == [], "modules that import each other:\n" + "\n".join(found)


def test_imports_are_at_module_level(kvstore_modules: dict[str, tuple[str, ast.Module]]) -> None:
    found = [imp.where() for imp in local_imports(kvstore_modules)]
    assert found == [], "function-local imports:\n" + "\n".join(found)


def test_no_module_uses_another_modules_private_names(
    kvstore_modules: dict[str, tuple[str, ast.Module]],
) -> None:
    found = private_uses(kvstore_modules)
    assert found == [], "private names used across modules:\n" + "\n".join(found)


def test_every_module_has_a_docstring(kvstore_modules: dict[str, tuple[str, ast.Module]]) -> None:
    missing = [path for path, tree in kvstore_modules.values() if not ast.get_docstring(tree)]
    assert missing == []


# -- the checkers, on small packages -------------------------------------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, tuple[str, ast.Module]]:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name, text in files.items():
        (pkg / name).write_text(text)
    return parse_package(pkg, "pkg")


def _sources() -> Iterator[tuple[str, str]]:
    yield "__init__.py", '"""p"""\nfrom .a import A\n'
    yield (
        "a.py",
        '"""a"""\nfrom typing import TYPE_CHECKING\nfrom . import c\nfrom .b import B, _hidden\n'
        "if TYPE_CHECKING:\n    from .d import D\n"
        "class A:\n    def f(self):\n        import alembic.op\n        from .b import B\n"
        "        return c._secret, B._slot, c.public\n",
    )
    yield "b.py", '"""b"""\nimport pkg.c\nB = 1\n_hidden = 2\nx = pkg.c._deep\n'
    yield "c.py", "from .a import A\n"
    yield "d.py", '"""d"""\nfrom .a import A\n'


def test_the_checkers_find_what_they_look_for(tmp_path: Path) -> None:
    modules = _package(tmp_path, dict(_sources()))
    graph = import_graph(modules, "pkg")
    assert graph["pkg.a"] == {"pkg.b", "pkg.c"}  # pkg.d only under TYPE_CHECKING
    assert tangles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert shortest_cycle(graph, ["pkg.a", "pkg.b", "pkg.c"]) == ["pkg.a", "pkg.c", "pkg.a"]
    assert [(i.line, i.target) for i in local_imports(modules, "pkg")] == [(10, "pkg.b")]
    assert private_uses(modules, "pkg") == [
        "pkg/a.py:11: B._slot (private to pkg.b)",
        "pkg/a.py:11: c._secret (private to pkg.c)",
        "pkg/a.py:4: from pkg.b import _hidden (a private name of pkg.b)",
        "pkg/b.py:5: pkg.c._deep (private to pkg.c)",
    ]
    undocumented = [p for p, tree in modules.values() if not ast.get_docstring(tree)]
    assert undocumented == ["pkg/c.py"]
