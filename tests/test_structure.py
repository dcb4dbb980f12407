"""The package's shape: no import cycles, no module over 500 lines.

Imports are read from the source with ``ast``; nothing is imported. Intra-package
imports in every form count: ``import nnbackends.x``, ``from nnbackends.x import y``,
``from . import x``, ``from .x import y``, ``from .. import x``. An import is an edge
to the module it loads: ``from P import y`` goes to the submodule ``P.y`` where that
file exists, else to ``P``. The parent packages that importing a submodule runs are
no edges (they are importing already by then). Imports under ``if TYPE_CHECKING:``
never run and are left out; ``importlib`` calls (the backend registry's factories)
are not seen.

Imports inside functions (lazy imports) are edges too. A lazy import keeps a cycle
from breaking ``import`` but still ties the two modules together, and DESIGN.md has
every layer import only downward. So the cycle test runs twice, on module-level
imports alone (a cycle there can break ``import nnbackends``) and with lazy imports
as well; a failure names each cycle, with the file and line of every edge and the
lazy ones marked.
"""
from __future__ import annotations

import ast
import collections
import pathlib
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnbackends"
MAX_LINES = 500
#: Modules allowed past MAX_LINES, and why.
LONG_MODULES = {
    "nnbackends/backends/numba_kernels.py": "Numba keys its cache on one file, so callers and callees share one",
}


@dataclass(frozen=True)
class Import:
    """One intra-package import: where it is and whether it runs only when a function is called."""

    path: pathlib.Path
    line: int
    lazy: bool

    def where(self, root):
        return f"{self.path.relative_to(root).as_posix()}:{self.line}" + (", in a function" if self.lazy else "")


def package_modules(package_dir):
    """``{dotted module name: path}`` of every module under ``package_dir`` (packages by their ``__init__``)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _is_type_checking(node):
    return isinstance(node, ast.If) and "TYPE_CHECKING" in (getattr(node.test, "id", None),
                                                            getattr(node.test, "attr", None))


def _import_nodes(nodes, lazy=False):
    """``(import node, lazy)`` for every import among and under ``nodes`` that can run."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
        elif _is_type_checking(node):
            yield from _import_nodes(node.orelse, lazy)
        else:
            yield from _import_nodes(ast.iter_child_nodes(node), lazy or isinstance(node, FUNCTIONS))


def _targets(node, name, path, modules):
    """The package modules an import node in module ``name`` (file ``path``) loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    base = node.module or ""
    if node.level:  # relative: one dot is the module's own package, each further dot one package up
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    return [t for t in targets if t in modules]


def import_graph(package_dir):
    """``{module: {imported module: Import}}`` of the package at ``package_dir``.

    Where a module imports another more than once, a module-level import wins over a lazy one.
    """
    modules = package_modules(package_dir)
    graph = {}
    for name, path in modules.items():
        edges = graph[name] = {}
        for node, lazy in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
            for target in _targets(node, name, path, modules):
                found = Import(path, node.lineno, lazy)
                if target != name and (target not in edges or edges[target].lazy > lazy):
                    edges[target] = found
    return graph


def shortest_cycle(graph, start):
    """The shortest ``[start, ..., start]`` path in ``graph``, or None."""
    parents, queue = {start: None}, collections.deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node]):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if target not in parents:
                parents[target] = node
                queue.append(target)
    return None


def import_cycles(graph, with_lazy):
    """Every distinct shortest cycle through some module, each starting at its first module in sorted order."""
    if not with_lazy:
        graph = {m: {t: i for t, i in edges.items() if not i.lazy} for m, edges in graph.items()}
    cycles = set()
    for module in graph:
        cycle = shortest_cycle(graph, module)
        if cycle:
            first = cycle.index(min(cycle[:-1]))
            cycles.add(tuple(cycle[first:-1] + cycle[:first + 1]))
    return [[(a, graph[a][b], b) for a, b in zip(cycle, cycle[1:])] for cycle in sorted(cycles)]


def describe_cycle(edges, root):
    return edges[0][0] + "".join(f" -> {b} ({imp.where(root)})" for _, imp, b in edges)


@pytest.mark.parametrize("with_lazy", [False, True], ids=["module-level-imports", "with-lazy-imports"])
def test_no_import_cycle(with_lazy):
    cycles = import_cycles(import_graph(PACKAGE), with_lazy)
    assert not cycles, "import cycles in nnbackends (each edge: the importing file and line):\n  " + \
        "\n  ".join(describe_cycle(c, ROOT) for c in cycles)


def test_no_module_over_500_lines():
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and rel not in LONG_MODULES:
            long[rel] = lines
    assert not long, f"modules over {MAX_LINES} lines (split them): " + \
        ", ".join(f"{rel} has {lines} lines" for rel, lines in long.items())


# ---------------------------------------------------------------------- the checks themselves
SAMPLE = {  # a package with every import form, two cycles: b <-> sub.c, and a -> b -> a through a lazy import
    "__init__.py": "from . import a\nfrom .b import thing\n",
    "a.py": "import pkg.b\nimport os\n",
    "b.py": "from .sub import c\nthing = 1\n\n\ndef f():\n    from . import a\n",
    "sub/__init__.py": "",
    "sub/c.py": ("from typing import TYPE_CHECKING\nfrom .. import b\nfrom ..e import x\n"
                 "if TYPE_CHECKING:\n    from pkg.sub import d\nelse:\n    from pkg import sub\n"),
    "sub/d.py": "",
    "e.py": "x = 1\n",
}


@pytest.fixture
def sample(tmp_path):
    for rel, text in SAMPLE.items():
        (tmp_path / "pkg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / rel).write_text(text)
    return tmp_path / "pkg"


def test_import_graph_reads_every_import_form(sample):
    graph = import_graph(sample)
    edges = {m: {t: (i.path.relative_to(sample).as_posix(), i.line, i.lazy) for t, i in e.items()}
             for m, e in graph.items()}
    assert edges == {
        "pkg": {"pkg.a": ("__init__.py", 1, False), "pkg.b": ("__init__.py", 2, False)},
        "pkg.a": {"pkg.b": ("a.py", 1, False)},
        "pkg.b": {"pkg.sub.c": ("b.py", 1, False), "pkg.a": ("b.py", 6, True)},
        "pkg.sub": {},
        "pkg.sub.c": {"pkg.b": ("sub/c.py", 2, False), "pkg.e": ("sub/c.py", 3, False),
                      "pkg.sub": ("sub/c.py", 7, False)},
        "pkg.sub.d": {},
        "pkg.e": {},
    }


def test_import_cycles_are_named_with_their_lines(sample):
    graph = import_graph(sample)
    module_level = [describe_cycle(c, sample) for c in import_cycles(graph, with_lazy=False)]
    assert module_level == ["pkg.b -> pkg.sub.c (b.py:1) -> pkg.b (sub/c.py:2)"]
    with_lazy = [describe_cycle(c, sample) for c in import_cycles(graph, with_lazy=True)]
    assert with_lazy == ["pkg.a -> pkg.b (a.py:1) -> pkg.a (b.py:6, in a function)", *module_level]
