"""The import rules of the project, read from the source (imports inside functions count):

- one namespace: the folders graphspec/, compiler/ and runtime/ are the packages graphspec, graphspec.compiler
  and graphspec.runtime, and pyproject.toml installs every package folder under those names, nothing else;
- layers import downwards only: the spec language <- the compiler <- the runtime <- variants and studies <-
  the API facade (`graphspec/__init__.py`) and the command line;
- no import cycle among the project's modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import networkx as nx
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"graphspec": "graphspec", "compiler": "graphspec.compiler", "runtime": "graphspec.runtime"}
SURFACE = {"graphspec", "graphspec.cli", "graphspec.__main__", "graphspec.variants", "graphspec.study",
           "graphspec.study_run", "graphspec.stage_process", "graphspec.compare"}
LAYERS = ("spec", "compiler", "runtime", "surface")  # each may import only from itself and those before it


def module_files() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((package, *parts))] = path
    return out


def layer(module: str) -> str:
    if module in SURFACE:
        return "surface"
    for name in ("compiler", "runtime"):
        if module == f"graphspec.{name}" or module.startswith(f"graphspec.{name}."):
            return name
    return "spec"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(modules: dict[str, Path]) -> nx.DiGraph:
    """module -> project module it imports, with the line of the first such import."""
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import graphspec.compiler.x` of a name inside x
                    target = target.rpartition(".")[0]
                if target and target != module and not g.has_edge(module, target):
                    g.add_edge(module, target, line=node.lineno)
    return g


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return imports(module_files())


def test_every_package_folder_is_installed_under_the_one_namespace():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    found = sorted(m for m, p in module_files().items() if p.name == "__init__.py")
    assert sorted(config["packages"]) == found


def test_layers_import_downwards_only(graph):
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = [f"{src} ({layer(src)}) imports {dst} ({layer(dst)}) at line {e['line']}"
             for src, dst, e in graph.edges(data=True) if rank[layer(dst)] > rank[layer(src)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles(graph):
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, cycles


def test_the_rules_see_imports_inside_functions():
    """The check itself: a function-level upward import is an edge like any other."""
    modules = module_files()
    g = imports({"graphspec.compiler.pipeline": modules["graphspec.compiler.pipeline"], **modules})
    assert g.has_edge("graphspec.runtime.run", "graphspec.compiler")  # a module-level import
    assert any(layer(d) == "spec" for d in g.successors("graphspec.compiler.pipeline"))
