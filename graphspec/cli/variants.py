"""`graphspec variants BASE --grid PATH=V1,V2 -o DIR`: derived spec files, each validated."""

from __future__ import annotations

import time
from pathlib import Path

from graphspec.language.errors import Issue, SpecError

from .common import print_warnings

HELP = "write specs derived from a base spec by a grid or a list of changes"
QUICK_EXIT = False


def add_arguments(v) -> None:
    v.add_argument("source", help="the base spec file, or a grid file (base:, grid:, variants:)")
    v.add_argument("--grid", dest="axes", action="append", default=[], metavar="PATH=V1,V2",
                   help="vary a field, e.g. --grid nodes.vision_tower.freeze=false,true (repeatable; the grid is "
                        "their product; values read as YAML: 1e-4 is a number, {layers: '0:6'} a mapping)")
    v.add_argument("-o", "--out", required=True, help="the directory to write the variant specs to")
    v.add_argument("--no-compile-check", dest="compile_check", action="store_false",
                   help="check the schema and spec rules only (fast, no torch), not every compile check")


def command(args) -> int:
    from graphspec.studies.grid import Grid, grid_arg, is_grid_file, load_grid
    from graphspec.studies.variants import tagged, variants
    from graphspec.studies.writing import write_variants

    start = time.perf_counter()
    issues: list[Issue] = []
    axes = [axis for axis in (grid_arg(text, issues) for text in args.axes) if axis]
    if issues:
        raise SpecError(issues, "in --grid")
    grid = load_grid(args.source) if is_grid_file(args.source) else Grid(Path(args.source))
    found = variants(Grid(grid.base, grid.axes + axes, grid.entries), compile_check=args.compile_check)
    paths = write_variants(found, args.out)
    print_warnings(tagged([(v.name, list(v.warnings)) for v in found]))
    for v, path in zip(found, paths):
        print(f"{path}: {v.describe()}")
    checks = "every compile check" if args.compile_check else "schema and spec rules only"
    print(f"wrote {len(paths)} variants of {grid.base} ({checks}) in {time.perf_counter() - start:.1f} s")
    return 0
