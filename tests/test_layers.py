"""The import rules of the project, read from the source (imports inside functions count, and so do module
names written as strings: the modules a process is started with, `python -m graphspec.cli`):

- one namespace: the folders below are the packages named beside them (graphspec/compiler and
  graphspec/runtime are links to compiler/ and runtime/, so an import resolves on disk for every tool), and
  pyproject.toml installs every package folder under those names, nothing else;
- each module's layer is its folder's: the spec language <- the compiler <- the runtime <- the surface (the
  command line, variants and studies) <- the API facade (the files directly in graphspec/); a module imports,
  or names as a string, only modules of its own layer and those before it;
- a relative import stays inside its folder (one that leaves it names a file that is not on disk);
- no import cycle among the project's modules;
- importing any spec-language module loads no module of a later layer (and no torch).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
# folder -> (its package, its layer); graphspec/ itself holds only the facade's files, its sub-folders are theirs
FOLDERS = {"graphspec/language": ("graphspec.language", "language"), "compiler": ("graphspec.compiler", "compiler"),
           "runtime": ("graphspec.runtime", "runtime"), "graphspec/studies": ("graphspec.studies", "surface"),
           "graphspec/cli": ("graphspec.cli", "surface"), "graphspec/cost": ("graphspec.cost", "surface"),
           "graphspec": ("graphspec", "facade")}
LAYERS = ("language", "compiler", "runtime", "surface", "facade")  # each may use only itself and those before it


def _folder_of(path: Path) -> str:
    rel = path.relative_to(ROOT).as_posix()
    return max((f for f in FOLDERS if rel == f or rel.startswith(f + "/")), key=len)


def module_files() -> dict[str, Path]:
    """module -> file, every module of every folder, each once (the links are the other folders)."""
    out = {}
    for folder, (package, _) in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if any(p.is_symlink() for p in path.relative_to(ROOT).parents if p != Path(".")):
                continue  # graphspec/compiler, graphspec/runtime: the other folders, counted there
            if _folder_of(path) != folder:
                continue  # graphspec/language/... belongs to its own folder, not to graphspec/
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((package, *parts))] = path
    return out


def layer_of(path: Path) -> str:
    return FOLDERS[_folder_of(path)][1]


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (a module's, a class's, a function's): prose, not a module started."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def imports(modules: dict[str, Path]) -> nx.DiGraph:
    """module -> project module it imports or names in a string, with the line of the first such use and how."""
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        prose = _docstrings(tree)
        for node in ast.walk(tree):
            how = "imports"
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose \
                    and "." in node.value and node.value.partition(":")[0] in modules:
                targets, how = [node.value.partition(":")[0]], "names"  # "graphspec.cli", "graphspec.cli:entry"
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import graphspec.compiler.x` of a name inside x
                    target = target.rpartition(".")[0]
                if target and target != module and not g.has_edge(module, target):
                    g.add_edge(module, target, line=node.lineno, how=how)
    return g


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return imports(module_files())


def test_every_package_folder_is_installed_under_the_one_namespace():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "package-dir" not in config  # the links make the folders the namespace: no mapping, no import hook
    for folder, (package, _) in FOLDERS.items():
        link = ROOT.joinpath(*package.split("."))
        assert link.resolve() == ROOT / folder, f"{link} should be {folder}/ (a link, for {package})"
    found = sorted(m for m, p in module_files().items() if p.name == "__init__.py")
    assert sorted(config["packages"]) == found


def test_every_module_has_a_layer_from_its_folder():
    modules = module_files()
    layers = {m: layer_of(p) for m, p in modules.items()}
    assert layers["graphspec.language.errors"] == "language" and layers["graphspec.cli.run"] == "surface"
    assert layers["graphspec"] == "facade" and layers["graphspec.runtime.tasks.vqa"] == "runtime"
    assert set(layers.values()) == set(LAYERS)


def _reached(path: Path, node: ast.ImportFrom) -> Path | None:
    """Where on disk a relative import points (None for an absolute one)."""
    if not node.level:
        return None
    target = path.parent
    for _ in range(node.level - 1):
        target = target.parent
    return target.joinpath(*node.module.split(".")) if node.module else target


def relative_imports_leaving_their_folder(modules: dict[str, Path]) -> list[str]:
    """`file:line: from ..x reaches PATH` for each relative import that points outside its folder (into
    another folder, or through a link)."""
    out = []
    for path in modules.values():
        own = ROOT / _folder_of(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or (reached := _reached(path, node)) is None:
                continue
            where = reached.relative_to(ROOT) if ROOT in reached.parents else reached
            inside = (reached == own or own in reached.parents) and (
                ROOT not in reached.parents or _folder_of(reached) == _folder_of(path))
            linked = any(p.is_symlink() for p in (reached, *reached.parents) if own in p.parents)
            if not inside or linked:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {'.' * node.level}{node.module or ''} "
                           f"reaches {where}")
    return out


def test_relative_imports_stay_in_their_folder():
    assert not relative_imports_leaving_their_folder(module_files())


def test_the_rule_sees_a_relative_import_leaving_its_folder(tmp_path, monkeypatch):
    """The check itself, on planted files: into another folder by dots, into a sub-folder of another layer,
    or by a link; a sibling is fine."""
    for folder in FOLDERS:
        (tmp_path / folder / "tasks").mkdir(parents=True, exist_ok=True)
    for folder in ("compiler", "runtime"):
        (tmp_path / "graphspec" / folder).symlink_to(f"../{folder}")
    planted = {"graphspec.x": ("graphspec/x.py", "def f():\n    from .runtime.launch import cores\n"),
               "graphspec.cli.y": ("graphspec/cli/y.py", "from ..studies.grid import Grid\nfrom .common import f\n"),
               "graphspec.runtime.tasks.y": ("runtime/tasks/y.py", "from ...compiler.preprocess import f\n"),
               "graphspec.runtime.tasks.z": ("runtime/tasks/z.py", "from ..data import scenes\nfrom . import y\n")}
    for rel, text in planted.values():
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = relative_imports_leaving_their_folder({m: tmp_path / rel for m, (rel, _) in planted.items()})
    assert found == ["graphspec/x.py:2: from .runtime.launch reaches graphspec/runtime/launch",
                     "graphspec/cli/y.py:1: from ..studies.grid reaches graphspec/studies/grid",
                     "runtime/tasks/y.py:1: from ...compiler.preprocess reaches compiler/preprocess"], found


def upward(graph: nx.DiGraph, layers: dict[str, str]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [f"{src} ({layers[src]}) {e['how']} {dst} ({layers[dst]}) at line {e['line']}"
            for src, dst, e in graph.edges(data=True) if rank[layers[dst]] > rank[layers[src]]]


def test_layers_import_downwards_only(graph):
    wrong = upward(graph, {m: layer_of(p) for m, p in module_files().items()})
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles(graph):
    static = nx.DiGraph([(a, b) for a, b, e in graph.edges(data=True) if e["how"] == "imports"])
    cycles = [sorted(c) for c in nx.strongly_connected_components(static) if len(c) > 1]
    assert not cycles, cycles


def test_the_rules_see_imports_inside_functions_and_module_strings(tmp_path):
    """The check itself: an upward import inside a function, planted in a spec-language module, and a
    runtime module that starts the command line by its module's name are edges like any other, and the
    layer rule names both; a docstring that mentions a module is prose, not an edge."""
    planted, starter = tmp_path / "planted.py", tmp_path / "starter.py"
    planted.write_text('"""Read by graphspec.cli."""\nimport os\n\n\ndef later():\n'
                       "    from graphspec.runtime.train import run\n    return run\n")
    starter.write_text('def start(world):\n    return ["--module", "graphspec.cli", "run"]\n')
    modules = {**module_files(), "graphspec.language.planted": planted, "graphspec.runtime.starter": starter}
    layers = {**{m: layer_of(p) for m, p in module_files().items()},
              "graphspec.language.planted": "language", "graphspec.runtime.starter": "runtime"}
    g = imports(modules)
    assert g.edges["graphspec.language.planted", "graphspec.runtime.train"]["line"] == 6
    assert not g.has_edge("graphspec.language.planted", "graphspec.cli")  # its docstring
    found = upward(g, layers)
    assert found == ["graphspec.language.planted (language) imports graphspec.runtime.train (runtime) at line 6",
                     "graphspec.runtime.starter (runtime) names graphspec.cli (surface) at line 2"], found


def test_importing_the_spec_language_loads_no_later_layer():
    """Every spec-language module, imported in a fresh interpreter: nothing of the compiler, the runtime,
    the surface, and no torch, is loaded (the facade `graphspec/__init__.py` runs first, and is lazy)."""
    language = sorted(m for m, p in module_files().items() if layer_of(p) == "language")
    code = ("import importlib, json, sys\n"
            f"for m in {language!r}:\n    importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('graphspec') or m == 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = json.loads(out.stdout)
    above = [m for m in loaded if m == "torch" or not (m == "graphspec" or m.startswith("graphspec.language"))]
    assert len(language) > 10 and not above, above


def _public_defs(tree: ast.Module) -> list:
    """A module's functions and classes, and its classes' methods (not functions local to a function)."""
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.append(node)
        if isinstance(node, ast.ClassDef):
            out += [n for n in node.body if isinstance(n, ast.FunctionDef)]
    return out


ONE_MEANING = ("rules", "loader", "run", "format_summary", "validate")


def test_a_name_means_one_thing():
    """Across graphspec/, compiler/ and runtime/, each of these names is at most one module and at most one
    function: `validate` is the API's and the command's (the same job), `run` the command's module."""
    modules = module_files()
    for name in ONE_MEANING:
        files = [m for m, p in modules.items() if p.stem == name]
        defs = [f"{m}:{n.lineno}" for m, p in modules.items() for n in _public_defs(ast.parse(p.read_text()))
                if n.name == name]
        assert len(files) <= 1 and len(defs) <= 1, (name, files, defs)


def test_no_module_imports_another_ones_private_names():
    """A name with a leading underscore stays in its module: what another module needs is public."""
    modules = module_files()
    found = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and _resolve(module, path.name == "__init__.py", node) in modules:
                found += [f"{module}:{node.lineno}: {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found
