"""`graphspec cost SPEC`: FLOPs, memory and step time per node and per rank, predicted from the spec alone (no
weights, offline), written beside the build as cost.json and cost.png."""

from __future__ import annotations

import json
from pathlib import Path

from graphspec.language.errors import Issue, SpecError
from graphspec.language.reading import load

from .common import add_overrides, positive, print_warnings

HELP = "predict a spec's FLOPs, memory and step time before running it"
QUICK_EXIT = True


def add_arguments(p) -> None:
    p.add_argument("spec", help="a spec file (.yaml, .yml or .json)")
    add_overrides(p, "override a field, e.g. --set nodes.vision_tower.freeze=true (repeatable)")
    p.add_argument("--machine", default="this", help="this (default: this machine, as `graphspec calibrate` "
                   "measured it) or a profile: a100-40gb, a100-80gb, h100-sxm, h200, l4, or one refitted from a run")
    p.add_argument("--world-size", type=positive, metavar="N", help="predict for N ranks (sets "
                   "distributed.world_size)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("-o", "--out", help="build directory to write cost.json and cost.png into (default: "
                   "build/SPEC_NAME)")


def command(args) -> int:
    from graphspec.compiler import compile_spec
    from graphspec.compiler.folders import write_build
    from graphspec.cost.machine import NAMED, resolve
    from graphspec.cost.picture import draw_cost
    from graphspec.cost.predict import estimate, format_report, write
    from graphspec.runtime.report import spec_digest

    overrides = args.overrides + ([f"distributed.world_size={args.world_size}"] if args.world_size else [])
    try:
        resolve(args.machine)
    except KeyError:
        raise SpecError([Issue((), f"--machine {args.machine}: no such profile", "give `this`, one of "
                               f"{', '.join(NAMED)}, or calibrate one (`graphspec calibrate --from RUN_DIR "
                               f"--machine {args.machine}`)")], title="bad argument") from None
    spec = load(args.spec, overrides)
    compiled = compile_spec(spec)
    out = Path(args.out or Path("build") / spec.name)
    write_build(compiled, out)
    if not args.json:
        print_warnings(compiled.warnings)
    report = estimate(spec, args.machine, compiled)
    report["spec_digest"] = spec_digest(spec)
    write(report, out)
    title = (f"{spec.name}: {report['flops_per_step'] / 1e12:.2f} TFLOP per step, {report['step_s']:.2f} s "
             f"({report['machine']['name']}), peak {report['peak_memory_mb']:,.0f} MiB per rank")
    draw_cost(compiled.graph, report["nodes"], out / "cost.png", title)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
        print(f"\nwrote {out}/cost.json and cost.png")
    return 0
