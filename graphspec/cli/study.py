"""`graphspec study FILE`: every variant and stage of a study (what is complete is skipped), then the
comparison table and plots; `--plan` checks everything and runs nothing."""

from __future__ import annotations

import time
from pathlib import Path

HELP = ("run every variant and stage of a study (skipping what is complete), then write the comparison table "
        "and plots")
QUICK_EXIT = False


def add_arguments(st) -> None:
    st.add_argument("study", help="a study file (name:, base:, grid:/variants:, stages:, compare:)")
    st.add_argument("-o", "--out", help="the study folder (default: studies/NAME)")
    st.add_argument("--plan", action="store_true", help="check everything and print the plan; run nothing")


def command(args) -> int:
    from graphspec.studies.plan import plan_study

    start = time.perf_counter()
    if not args.plan:
        from graphspec.studies.stages import start_server

        start_server()  # the stages' server imports their libraries while the study is checked
    study = plan_study(args.study)
    out = Path(args.out or Path("studies") / study.name)
    print(f"study {study.name}: {len(study.variants)} variants x {len(study.config.stages)} stages, checked in "
          f"{time.perf_counter() - start:.1f} s; folder {out}")
    if args.plan:
        for v in study.variants:
            print(f"  {v.name}: {v.describe()}")
        return 0
    from graphspec.studies.execute import run_study

    written = run_study(study, out)
    print(f"\n{written['markdown'].read_text()}\nwrote {written['csv']}, {written['markdown']}, "
          + ", ".join(str(p) for p in written["plots"]))
    return 0
