"""graphspec: declarative model graphs for vision-language encoders.

The Python API in four calls::

    import graphspec
    spec = graphspec.load("specs/quickstart.yaml", overrides=["train.steps=100"])
    spec = graphspec.override(spec, {"nodes.fusion.layers": 2})
    compiled = graphspec.compile(spec, out="build/quickstart")

and variants of a spec, validated and written as spec files that extend it::

    found = graphspec.variants("specs/quickstart.yaml", grid={"nodes.fusion.layers": [1, 2, 4]})
    graphspec.write_variants(found, "specs/generated")

Importing graphspec imports no torch; `compile` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import EnvironmentProblem, GraphspecError, Issue, SpecError
from .loader import load, loads, override
from .schema import Spec
from .variants import Grid, Variant, load_grid, variants, write_variants
from .version import __version__

if TYPE_CHECKING:
    from graphspec.compiler import Compiled



def load_model(target: str | Path, device: str = "cpu"):
    """(model, processor) of a folder `graphspec export` wrote, or a hub model id; see graphspec.runtime.inference."""
    from graphspec.runtime.inference import load_model as load

    return load(target, device)


def compile(spec: Spec, out: str | Path | None = None) -> "Compiled":  # noqa: A001 - the verb of the CLI
    """Check `spec` and emit its model; write the build directory when `out` is given."""
    from graphspec.compiler import compile_spec, write_artifacts

    compiled = compile_spec(spec)
    if out is not None:
        write_artifacts(compiled, Path(out))
    return compiled


def validate(spec: Spec) -> list[Issue]:
    """Run every check without building weights; return the warnings (errors raise SpecError)."""
    return compile(spec).warnings


__all__ = ["EnvironmentProblem", "GraphspecError", "Grid", "Issue", "Spec", "SpecError", "Variant", "compile", "load",
           "load_grid", "load_model", "loads", "override", "validate", "variants", "write_variants", "__version__"]
