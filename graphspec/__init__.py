"""graphspec: declarative model graphs for vision-language encoders.

The Python API in four calls::

    import graphspec
    spec = graphspec.load("specs/quickstart.yaml", overrides=["train.steps=100"])
    spec = graphspec.override(spec, {"nodes.fusion.layers": 2})
    compiled = graphspec.compile(spec, out="build/quickstart")

and variants of a spec, validated and written as spec files that extend it::

    found = graphspec.variants("specs/quickstart.yaml", grid={"nodes.fusion.layers": [1, 2, 4]})
    graphspec.write_variants(found, "specs/generated")

The package, by layer (each imports only from those before it; tests/test_layers.py checks it):

    graphspec.language   the spec language: schema, files and their locations, spec checks (no torch)
    graphspec.compiler   spec -> graph -> checks -> torch.fx module, DeepSpeed config, build folder
    graphspec.runtime    build folder -> training, evaluation, export, inference
    graphspec.studies    variants of a spec, studies of them, their comparison
    graphspec.cli        the `graphspec` command, one module per subcommand

This facade is lazy: `import graphspec.language.errors` loads nothing else, and `import graphspec` no torch.
Installed plugins (the `graphspec.plugins` entry-point group) are loaded before the first call of the API.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphspec.language.version import __version__

if TYPE_CHECKING:
    from graphspec.compiler import Compiled
    from graphspec.language.errors import EnvironmentProblem, GraphspecError, Issue, SpecError
    from graphspec.language.schema import Spec
    from graphspec.studies.grid import Grid, load_grid
    from graphspec.studies.variants import Variant
    from graphspec.studies.writing import write_variants

# name -> the module that defines it (imported on first use)
_LAZY = {"EnvironmentProblem": "graphspec.language.errors", "GraphspecError": "graphspec.language.errors",
         "Issue": "graphspec.language.errors", "SpecError": "graphspec.language.errors",
         "Spec": "graphspec.language.schema", "Grid": "graphspec.studies.grid", "load_grid": "graphspec.studies.grid",
         "Variant": "graphspec.studies.variants", "write_variants": "graphspec.studies.writing"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphspec' has no attribute '{name}'")


def _plugins() -> None:
    from graphspec.language.plugins import load_plugins

    load_plugins()


def load(path: str | Path, overrides=None) -> "Spec":
    """Load a YAML or JSON spec file (with `extends:`), apply overrides, validate."""
    _plugins()
    from graphspec.language.reading import load as read

    return read(path, overrides)


def loads(text: str, fmt: str = "yaml", overrides=None, file: str = "<spec>") -> "Spec":
    """Load a spec from text (no `extends:`)."""
    _plugins()
    from graphspec.language.reading import loads as read

    return read(text, fmt, overrides, file)


def override(spec: "Spec", overrides) -> "Spec":
    """A copy of `spec` with overrides applied and everything re-validated."""
    from graphspec.language.reading import override as apply

    return apply(spec, overrides)


def variants(base, grid=None, variants=None, compile_check: bool = True) -> list["Variant"]:
    """Variants of a base spec (a file, a Spec or a grid file) by a grid and/or a list of changes, validated."""
    _plugins()
    from graphspec.studies.variants import variants as make

    return make(base, grid, variants, compile_check)


def load_model(target: str | Path, device: str = "cpu"):
    """(model, processor) of a folder `graphspec export` wrote, or a hub model id; see graphspec.runtime.inference."""
    _plugins()
    from graphspec.runtime.inference import load_model as load

    return load(target, device)


def compile(spec: "Spec", out: str | Path | None = None) -> "Compiled":  # noqa: A001 - the verb of the CLI
    """Check `spec` and emit its model; write the build directory when `out` is given."""
    _plugins()
    from graphspec.compiler import compile_spec
    from graphspec.compiler.folders import write_build

    compiled = compile_spec(spec)
    if out is not None:
        write_build(compiled, Path(out))
    return compiled


def validate(spec: "Spec") -> list["Issue"]:
    """Run every check without building weights; return the warnings (errors raise SpecError)."""
    return compile(spec).warnings


__all__ = ["EnvironmentProblem", "GraphspecError", "Grid", "Issue", "Spec", "SpecError", "Variant", "compile", "load",
           "load_grid", "load_model", "loads", "override", "validate", "variants", "write_variants", "__version__"]
