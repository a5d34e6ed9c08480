"""Arrows one way: no import cycle among the modules of a package, nor among the top-level packages.

The graph is read from the sources (ast), not from what happens to be imported: every `import` and
`from ... import` of a module counts, inside functions and `if` blocks too, and so does
`importlib.import_module("literal.name")`. An import names one module; the parent packages Python runs first
are not counted (every submodule would otherwise depend on its package's `__init__`).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "grader", "trainer", "serving", "synthetic", "demo", "media")


def modules(package: str) -> dict[str, Path]:
    """The modules of `package` by dotted name (`grader`, `grader.core`, `grader.types.iou`, ...)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules `path` (module `name`) imports, anywhere in it; `from a import b` is `a.b` when that is a
    module in `known`, else `a`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)
    return out


def module_graph(package: str) -> dict[str, set[str]]:
    """Edges between the modules of `package`: module -> the modules of the package it imports."""
    mods = modules(package)
    graph = {}
    for name, path in mods.items():
        targets = set()
        for target in imported(path, name, set(mods)):
            while target and target not in mods:  # `import grader.types.iou.X`-like names: the longest module
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def package_graph(packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Edges between top-level packages: P -> Q when a module of P imports a module of Q."""
    packages = tuple(packages)
    graph: dict[str, set[str]] = {p: set() for p in packages}
    for p in packages:
        mods = modules(p)
        for name, path in mods.items():
            for target in imported(path, name, set(mods)):
                top = target.partition(".")[0]
                if top in packages and top != p:
                    graph[p].add(top)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted: [] when acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
    return sorted(found)


def describe(graph: dict[str, set[str]], found: list[list[str]]) -> str:
    return "\n".join(" <-> ".join(c) + ":\n" + "\n".join(f"  {a} -> {b}" for a in c for b in sorted(graph[a])
                                                          if b in c) for c in found)


def check_package(package: str) -> None:
    """No cycle among the modules of `package` (imports inside functions included)."""
    graph = module_graph(package)
    found = cycles(graph)
    assert not found, f"import cycles in {package}/:\n{describe(graph, found)}"


def check_top_level(allowed_edges: Iterable[tuple[str, str]] = ()) -> None:
    """No cycle among the top-level packages, once the edges in `allowed_edges` ((importer, imported) pairs,
    known debts) are taken out."""
    graph = package_graph()
    for a, b in allowed_edges:
        graph[a].discard(b)
    found = cycles(graph)
    assert not found, f"import cycles among the top-level packages:\n{describe(graph, found)}"


def test_no_package_has_a_cycle_among_its_modules():
    for package in PACKAGES:
        check_package(package)


def test_top_level_packages_have_no_cycle():
    check_top_level()


def test_the_arrows_between_the_service_packages():
    """serving takes what it needs from the API through serving/interface.py, and the API process reads only
    the trainer's torch-free contract (the job file, the hyperparameter declaration, the model families and the
    memory plan; tests/trainer/test_memory.py checks that these import no torch)."""
    graph = package_graph()
    assert "api" not in graph["serving"] and "api" not in graph["trainer"] and "api" not in graph["grader"]
    trainer_modules = {t for name, path in modules("api").items()
                       for t in imported(path, name, set()) if t.partition(".")[0] == "trainer"}
    assert trainer_modules <= {"trainer.job_spec", "trainer.hparams", "trainer.families",
                               "trainer.memory"}, trainer_modules


def test_the_checker_sees_cycles_through_function_level_imports(tmp_path, monkeypatch):
    """The checker itself: a cycle closed by an import inside a function, and a relative import, are found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import importlib\nimportlib.import_module('pkg.a')\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    graph = module_graph("pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
