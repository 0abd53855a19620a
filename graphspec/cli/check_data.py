"""`graphspec check-data SPEC`: every image a spec's data blocks name, read and decoded in parallel; the bad
ones reported by file, row and column."""

from __future__ import annotations

from graphspec.language.errors import GraphspecError
from graphspec.language.reading import load

from .common import add_overrides, positive

HELP = ("read and decode every image a spec's data blocks name, in parallel, and report the bad ones (file, row, "
        "column)")
QUICK_EXIT = False


def add_arguments(cd) -> None:
    cd.add_argument("spec", help="a spec file")
    add_overrides(cd, "override a field of the spec")
    cd.add_argument("--split", choices=["train", "val", "both"], default="both", help="which data blocks")
    cd.add_argument("--workers", type=positive, metavar="N", help="decoding processes (default: every core)")


def command(args) -> int:
    from graphspec.runtime.check_data import check_data, raise_if_bad
    from graphspec.runtime.launch import cores

    spec = load(args.spec, args.overrides)
    splits = ["train", "val"] if args.split == "both" else [args.split]
    workers = args.workers or cores()
    reports = check_data(spec, splits, workers)
    for report in reports:
        print(report.line(workers) if report.source != "builtin:shapes" else
              f"{report.split} (builtin:shapes): generated, nothing to decode")
    try:
        raise_if_bad(reports)
    except GraphspecError as e:
        e.issues = [i.located(spec._source.locate(i.path + ("source",))) for i in e.issues]
        raise
    return 0
