"""`graphspec study FILE`: every variant and stage of a study (what is complete is skipped), within a budget
when one is given, on an executor (inline, local jobs, Slurm), then the comparison table and plots; `--plan`
checks everything, predicts what each stage costs, and runs nothing."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import positive

HELP = ("run every variant and stage of a study (skipping what is complete), within a budget, then write the "
        "comparison table and plots")
QUICK_EXIT = False


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number")
    return value


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=VALUE (an sbatch option, e.g. qos=high)")
    return key, value


def add_arguments(st) -> None:
    st.add_argument("study", help="a study file (name:, base:, grid:/variants:, stages:, compare:, rank_by:)")
    st.add_argument("-o", "--out", help="the study folder (default: studies/NAME)")
    st.add_argument("--plan", action="store_true", help="check everything, predict each stage's cost and print "
                    "the plan; run nothing")
    st.add_argument("--json", action="store_true", help="with --plan: the plan as JSON")
    st.add_argument("--budget", type=_amount, metavar="HOURS", help="accelerator-hours (on a CPU machine, "
                    "machine-hours) the study may spend: a hard cap; when the whole study does not fit, its first "
                    "stage runs as successive halving")
    st.add_argument("--machine", default="this", help="the cost model's machine profile the plan rests on "
                    "(this, a100-40gb, a100-80gb, h100-sxm, h200, l4, or a calibrated one)")
    st.add_argument("--memory", type=_amount, metavar="GIB", help="memory per rank that a stage must fit in "
                    "(default: the profile's device memory; on a CPU, this machine's RAM)")
    st.add_argument("--executor", choices=["inline", "local", "slurm"], default="inline", help="where stages "
                    "run: inline (one after another, here), local (submitit's local jobs) or slurm (sbatch jobs "
                    "through submitit)")
    st.add_argument("--max-parallel", type=positive, metavar="N", help="stages running at once (local; default: "
                    "the GPUs here over a stage's ranks, 1 on a CPU)")
    st.add_argument("--partition", help="slurm: sbatch --partition (default: the study file's slurm.partition)")
    st.add_argument("--account", help="slurm: sbatch --account (default: the study file's slurm.account)")
    st.add_argument("--sbatch", type=_option, action="append", default=[], metavar="NAME=VALUE",
                    help="slurm: a further sbatch option (repeatable)")
    st.add_argument("--detach", action="store_true", help="submit what can be submitted, record it in the study "
                    "folder and return; run the command again to re-attach and continue")


def command(args) -> int:
    from graphspec.studies.plan import plan_study

    start = time.perf_counter()
    if not args.plan and args.executor == "inline":
        from graphspec.studies.stages import start_server

        start_server()  # the stages' server imports their libraries while the study is checked
    study = plan_study(args.study)
    out = Path(args.out or Path("studies") / study.name)
    if not args.json:
        print(f"study {study.name}: {len(study.variants)} variants x {len(study.config.stages)} stages, checked in "
              f"{time.perf_counter() - start:.1f} s; folder {out}")
    if args.plan:
        from graphspec.studies.forecast import forecast, format_plan

        plan = forecast(study, args.machine, args.memory, args.budget, (lambda _: None) if args.json else print)
        print(json.dumps(plan.to_json(), indent=2) if args.json else format_plan(plan))
        return 0
    from graphspec.studies.execute import Options, run_study

    options = Options(args.executor, args.budget, args.machine, args.memory, args.max_parallel, args.partition,
                      args.account, dict(args.sbatch), args.detach)
    written = run_study(study, out, options=options)
    if written.get("detached"):
        print(f"submitted; the study's state is in {written['state']}: run the same command again to re-attach")
        return 0
    print(f"\n{written['markdown'].read_text()}\n{written['spent'].read_text()}\nwrote {written['csv']}, "
          f"{written['markdown']}, {written['spent']}, " + ", ".join(str(p) for p in written["plots"]))
    return 0
