"""A study's folder: where each stage's files are, and the small reads and writes the controller makes.

Layout of the study folder::

    variants/VARIANT.yaml          the variant specs (extends: the base)
    study.json                     the controller's state: plan, ladder, every job submitted
    plan.json                      the predictions the plan rests on
    runs/VARIANT/STAGE/spec.json   the stage's resolved spec; build/ (compiled by the controller) and run/ beside
                                   it; log.txt; attempts.jsonl (one line per job: host, start, end, exit code)
    jobs/                          submitit's files (local and slurm executors)
    results.csv, results.md        one row per variant; spent.md: predicted and spent hours and memory per stage
    plots/metrics_vs_compute.png, plots/learning_curves.png
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from graphspec.language.reading import override

from .plan import StageRun


def stage_dir(out: Path, run: StageRun) -> Path:
    return out / "runs" / run.variant / run.stage


def is_complete(out: Path, run: StageRun) -> bool:
    return (stage_dir(out, run) / "run" / "summary.json").is_file()


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def spec_file(out: Path, run: StageRun) -> Path:
    spec = run.spec
    if run.after:
        checkpoint = out / "runs" / run.variant / run.after / "run" / "checkpoint"
        spec = override(spec, {"init_from": str(checkpoint.resolve())})
    path = stage_dir(out, run) / "spec.json"
    path.write_text(json.dumps(spec.model_dump(mode="json", exclude={"extends"}, exclude_none=True), indent=2) + "\n")
    return path


def at_step(d: Path) -> int:
    """Where a stage's run is: its last pause (`--stop-at`), else its newest checkpoint, else 0."""
    stopped = read_json(d / "run" / "stopped.json")
    ckpts = sorted((d / "run" / "checkpoints").glob("step-*")) if (d / "run" / "checkpoints").is_dir() else []
    newest = int(ckpts[-1].name.split("-")[1]) if ckpts and ckpts[-1].name.split("-")[1].isdigit() else 0
    return max(newest, int(stopped["stopped_at"]) if stopped else 0)


def attempts(d: Path) -> list[dict]:
    path = d / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def log_tail(d: Path) -> str:
    lines = (d / "log.txt").read_text().strip().splitlines()[-8:] if (d / "log.txt").is_file() else []
    return "\n    ".join(lines)


__all__ = ["at_step", "attempts", "is_complete", "log_tail", "read_json", "spec_file", "stage_dir", "write_json"]
