"""`graphspec compile SPEC`: every check, then the build folder (model.py, ds_config.json, summary, pictures)."""

from __future__ import annotations

import time
from pathlib import Path

from graphspec.language.reading import load

from .common import add_overrides, print_warnings

HELP = "check the spec and write the build directory"
QUICK_EXIT = True


def add_arguments(p) -> None:
    p.add_argument("spec", help="a spec file (.yaml, .yml or .json)")
    add_overrides(p, "override a field, e.g. --set train.optimizer.lr=3e-4 (repeatable)")
    p.add_argument("-o", "--out", help="build directory (default: build/SPEC_NAME)")


def command(args) -> int:
    from graphspec.compiler import compile_spec
    from graphspec.compiler.folders import write_build
    from graphspec.compiler.summary import format_summary

    start = time.perf_counter()
    spec = load(args.spec, args.overrides)
    out = Path(args.out or Path("build") / spec.name)
    compiled = compile_spec(spec)
    write_build(compiled, out)
    print_warnings(compiled.warnings)
    print(format_summary(compiled.summary))
    print(f"\nwrote {out}/ (model.py, ds_config.json, summary.txt, graph.mmd, ...) "
          f"in {time.perf_counter() - start:.1f} s; checks and emission {compiled.seconds:.2f} s")
    return 0
