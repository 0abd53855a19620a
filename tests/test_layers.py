"""The import rules of the project, read from the source (imports inside functions count):

- one namespace: the folders graphspec/, compiler/ and runtime/ are the packages graphspec, graphspec.compiler
  and graphspec.runtime (graphspec/compiler and graphspec/runtime are links to the other two, so an import
  resolves on disk for every tool, no import hook needed), and pyproject.toml installs every package folder
  under those names, nothing else;
- a relative import stays inside its folder (one that leaves it names a file that is not on disk);
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
            if any(p.is_symlink() for p in path.relative_to(ROOT).parents if p != Path(".")):
                continue  # graphspec/compiler, graphspec/runtime: the other folders, counted there
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
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
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
    assert "package-dir" not in config  # the links make the folders the namespace: no mapping, no import hook
    for folder, package in FOLDERS.items():
        link = ROOT.joinpath(*package.split("."))
        assert link.resolve() == ROOT / folder, f"{link} should be {folder}/ (a link, for graphspec.{folder})"
    found = sorted(m for m, p in module_files().items() if p.name == "__init__.py")
    assert sorted(config["packages"]) == found


def _reached(path: Path, node: ast.ImportFrom) -> Path | None:
    """Where on disk a relative import points (None for an absolute one)."""
    if not node.level:
        return None
    target = path.parent
    for _ in range(node.level - 1):
        target = target.parent
    return target.joinpath(*node.module.split(".")) if node.module else target


def relative_imports_leaving_their_folder(modules: dict[str, Path]) -> list[str]:
    """`file:line: from ..x reaches PATH` for each relative import that points outside its top-level folder,
    or into it through a link (graphspec/compiler, graphspec/runtime lead to the other folders)."""
    out = []
    for path in modules.values():
        own = ROOT / path.relative_to(ROOT).parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or (reached := _reached(path, node)) is None:
                continue
            inside = reached == own or own in reached.parents
            linked = any(p.is_symlink() for p in (reached, *reached.parents) if own in p.parents)
            if not inside or linked:
                where = reached.relative_to(ROOT) if ROOT in reached.parents else reached
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {'.' * node.level}{node.module or ''} "
                           f"reaches {where}")
    return out


def test_relative_imports_stay_in_their_folder():
    assert not relative_imports_leaving_their_folder(module_files())


def test_the_rule_sees_a_relative_import_leaving_its_folder(tmp_path, monkeypatch):
    """The check itself, on planted files: into another folder by dots, or by a link; a sibling is fine."""
    for folder in FOLDERS:
        (tmp_path / folder / "tasks").mkdir(parents=True)
    for folder in ("compiler", "runtime"):
        (tmp_path / "graphspec" / folder).symlink_to(f"../{folder}")
    planted = {"graphspec.x": ("graphspec/x.py", "def f():\n    from .runtime.launch import cores\n"),
               "graphspec.runtime.tasks.y": ("runtime/tasks/y.py", "from ...compiler.preprocess import f\n"),
               "graphspec.runtime.tasks.z": ("runtime/tasks/z.py", "from ..data import scenes\nfrom . import y\n")}
    for rel, text in planted.values():
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = relative_imports_leaving_their_folder({m: tmp_path / rel for m, (rel, _) in planted.items()})
    assert found == ["graphspec/x.py:2: from .runtime.launch reaches graphspec/runtime/launch",
                     "runtime/tasks/y.py:1: from ...compiler.preprocess reaches compiler/preprocess"], found


def upward(graph: nx.DiGraph) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [f"{src} ({layer(src)}) imports {dst} ({layer(dst)}) at line {e['line']}"
            for src, dst, e in graph.edges(data=True) if rank[layer(dst)] > rank[layer(src)]]


def test_layers_import_downwards_only(graph):
    wrong = upward(graph)
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles(graph):
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, cycles


def test_the_rules_see_imports_inside_functions(tmp_path):
    """The check itself: an upward import inside a function, planted in a spec-layer module, is an edge like
    any other, and the layer rule names it."""
    planted = tmp_path / "planted.py"
    planted.write_text("import os\n\n\ndef later():\n    from graphspec.runtime.run import run\n    return run\n")
    g = imports({**module_files(), "graphspec.planted": planted})
    assert g.edges["graphspec.planted", "graphspec.runtime.run"]["line"] == 5
    assert upward(g) == ["graphspec.planted (spec) imports graphspec.runtime.run (runtime) at line 5"]
