"""`graphspec study`: run every (variant, stage) of a study in turn, then compare them.

Each stage runs as its own `graphspec run` process (its peak memory is its own, and
a crash in one stage cannot leave state behind in the next), forked from a server
that has imported the libraries once (graphspec.studies.stages). A stage whose
`run/summary.json` exists is complete and skipped, so a study that was stopped
continues where it was; a stage that was stopped midway starts over.

Layout of the study folder::

    variants/VARIANT.yaml          the variant specs (extends: the base)
    runs/VARIANT/STAGE/spec.json   the stage's resolved spec; build/ (compiled by the study's process) and
                                   run/ beside it; log.txt
    results.csv, results.md        one row per variant
    plots/metrics_vs_compute.png, plots/learning_curves.png
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from graphspec.runtime.launch import SELF_STARTED

from .compare import write_comparison
from graphspec.language.errors import GraphspecError, Issue, Loc
from graphspec.language.reading import load, override
from .plan import StageRun, Study
from .writing import write_variants

DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", SELF_STARTED)


def fresh_env() -> dict[str, str]:
    """This process's environment without the rendezvous a run in this process may have set up: a stage is a
    run of its own, and would otherwise try to bind the same MASTER_PORT."""
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS}


def stage_dir(out: Path, run: StageRun) -> Path:
    return out / "runs" / run.variant / run.stage


def is_complete(out: Path, run: StageRun) -> bool:
    return (stage_dir(out, run) / "run" / "summary.json").is_file()


def _spec_file(out: Path, run: StageRun) -> Path:
    spec = run.spec
    if run.after:
        checkpoint = out / "runs" / run.variant / run.after / "run" / "checkpoint"
        spec = override(spec, {"init_from": str(checkpoint.resolve())})
    path = stage_dir(out, run) / "spec.json"
    path.write_text(json.dumps(spec.model_dump(mode="json", exclude={"extends"}, exclude_none=True), indent=2) + "\n")
    return path


def _run_stage(out: Path, run: StageRun) -> float:
    """One stage in its own process; its output goes to log.txt; when it started (epoch seconds). The study's
    process compiles the stage's build first (its libraries are imported already, and a spec error is shown
    here, located in the stage's spec.json), so the stage starts from the build and does not run the compile
    checks a second time."""
    from graphspec.compiler import compile_spec, write_build
    from .stages import run_stage

    started = time.time()
    d = stage_dir(out, run)
    if d.exists():  # stopped midway last time: start it over
        shutil.rmtree(d)
    d.mkdir(parents=True)
    spec_file = _spec_file(out, run)
    write_build(compile_spec(load(spec_file)), d / "build")
    (d / "log.txt").write_text("")
    code = run_stage(["run", str(d / "build"), "--run-dir", str(d / "run")], str(d / "log.txt"), fresh_env())
    if code != 0:
        tail = (d / "log.txt").read_text().strip().splitlines()[-8:]
        raise GraphspecError([Issue((), f"variant {run.variant}, stage {run.stage} failed (exit {code}):\n    "
                                    + "\n    ".join(tail), "fix it and run the study again: completed stages are "
                                    "kept", loc=Loc(str(d / "log.txt")))], title="the study stopped")
    return started


def _show_done(run: StageRun, summary: dict, show: Callable[[str], None], note: str) -> None:
    val = " ".join(f"{k} {v:.4f}" for k, v in summary.get("val", {}).items() if isinstance(v, float))
    show(f"{run.variant} / {run.stage}: {note} ({summary['wall_time_s']:.0f} s; {val})")


def run_study(study: Study, out: Path, show: Callable[[str], None] = print) -> dict:
    """Run what is not complete yet, then write the comparison; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    write_variants(study.variants, out / "variants", study.base_file)
    total = len(study.runs)
    if not all(is_complete(out, run) for run in study.runs):
        from .stages import start_server

        start_server()  # its imports overlap with the first stage's compile
    for k, run in enumerate(study.runs, 1):
        if is_complete(out, run):
            summary = json.loads((stage_dir(out, run) / "run" / "summary.json").read_text())
            _show_done(run, summary, show, f"[{k}/{total}] complete, skipped")
            continue
        show(f"[{k}/{total}] {run.variant} / {run.stage}: running (log: {stage_dir(out, run) / 'log.txt'})")
        started = _run_stage(out, run)
        summary = json.loads((stage_dir(out, run) / "run" / "summary.json").read_text())
        first = summary.get("first_step_at")
        _show_done(run, summary, show, "done" + (f", first step {first - started:.1f} s after the stage's start"
                                                  if first else ""))
    return write_comparison(study, out)
