"""What each (variant, stage) of a study is predicted to cost, before anything runs.

The cost model (`graphspec.cost.predict.estimate`) gives a spec's step time and
peak memory per rank on a machine profile, with its range. A stage's hours are
its steps at that step time, plus what a run pays besides its steps: a start
(process, libraries, build, engine: `START_S`, measured here) and its
validations (forwards over the validation split, at the step's forward share
of its compute). Hours are accelerator-hours: wall time x the accelerators the
stage holds (its ranks on a GPU machine); on a CPU machine, machine-hours (its
ranks share the machine). Stages whose specs differ only in name and
`init_from` (a fine-tune of every variant, `changes: false`) are estimated once.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Callable

from graphspec.language.schema import Spec

from .plan import StageRun, Study

# Seconds a run pays besides its steps and validations, from its process's start to its first step (build, data,
# the engine) and after its last (checkpoint, summary). Measured here for the CPU twin's stages forked from the
# study's stage server (a job's wall time less its steps at their median time): 5-9 s, validation included; a
# stage in a fresh process (the local and Slurm executors) also imports its libraries, about 5 s more here. On a
# GPU node, loading the model and starting NCCL: a prior, not a measurement.
START_S = {"cpu": 6.0, "cuda": 90.0}
# A predicted peak's range: the cost benchmark measured -12% to +23% on this machine (README, "How close it is");
# a datasheet profile is uncalibrated and gets more.
MEMORY_SPREAD = {True: (0.15, 0.25), False: (0.3, 0.5)}


@dataclass(frozen=True)
class StageCost:
    """One (variant, stage): what it trains and its predicted cost, each as (low, predicted, high)."""

    variant: str
    stage: str
    frozen: tuple[str, ...]
    trainable: int
    steps: int
    accelerators: int
    step_s: tuple[float, float, float]
    start_h: float
    eval_h: float
    evals: int
    hours: tuple[float, float, float]
    peak_memory_mb: tuple[float, float, float]
    memory_kind: str

    def hours_per_step(self) -> float:
        return self.step_s[1] * self.accelerators / 3600

    def to_json(self) -> dict:
        return asdict(self)


def cost_key(spec: Spec) -> str:
    """Specs that cost the same: the same spec but for its name and where its weights start from."""
    data = spec.model_dump(mode="json", exclude={"extends", "name", "init_from"}, exclude_none=True)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _evals(spec: Spec, steps: int) -> int:
    if not spec.data.val:
        return 0
    every = spec.train.val_every
    return (steps // every if every else 0) + (0 if every and steps % every == 0 else 1)


def _eval_s(spec: Spec, report: dict) -> float:
    """One validation: the split's rows through the forward, at the step's compute per row and its forward
    share (frozen towers outside the engine run forward only in the step too)."""
    rows = (spec.data.val.samples if spec.data.val and spec.data.val.samples else 1000)
    fwd = sum(n["fwd_flops"] for n in report["nodes"].values())
    bwd = sum(n["bwd_flops"] for n in report["nodes"].values())
    per_row = report["step_parts_s"].get("micro_step_s", report["step_s"]) / max(report["run"]["micro_batch"], 1)
    return rows * per_row * (fwd / (fwd + bwd) if fwd + bwd else 1.0)


def stage_cost(run: StageRun, report: dict) -> StageCost:
    spec = run.spec
    kind = report["machine"]["kind"]
    accelerators = spec.distributed.world_size if kind != "cpu" else 1
    steps = spec.train.steps
    step = (report["step_s_low"], report["step_s"], report["step_s_high"])
    scale = [s / step[1] if step[1] else 1.0 for s in step]
    start_h = START_S.get(kind, START_S["cuda"]) * accelerators / 3600
    evals = _evals(spec, steps)
    eval_h = _eval_s(spec, report) * accelerators / 3600
    hours = tuple(round(steps * s * accelerators / 3600 + (start_h + evals * eval_h) * f, 4)
                  for s, f in zip(step, scale))
    low, high = MEMORY_SPREAD[bool(report["machine"]["calibrated"])]
    peak = report["peak_memory_mb"]
    frozen = tuple(sorted(n for n, row in report["nodes"].items() if row["frozen"] and row["params"]))
    return StageCost(run.variant, run.stage, frozen, sum(n["trainable"] for n in report["nodes"].values()), steps,
                     accelerators, step, round(start_h, 5), round(eval_h, 5), evals,
                     (hours[0], hours[1], hours[2]),
                     (round(peak * (1 - low), 1), peak, round(peak * (1 + high), 1)), report["peak_memory_kind"])


def estimate_study(study: Study, machine: str, show: Callable[[str], None] = lambda _: None
                   ) -> tuple[list[StageCost], dict, dict[str, dict]]:
    """Every (variant, stage)'s cost on `machine` (a cost-model profile name), the profile the ranges rest on
    (`machine` of a cost report, with its notes), and the cost reports by `cost_key` (a stage's build gets its
    own as cost.json, so its run does not predict it again)."""
    from graphspec.cost.predict import estimate

    reports: dict[str, dict] = {}
    costs = []
    for run in study.runs:
        key = cost_key(run.spec)
        if key not in reports:
            show(f"  predicting {run.variant} / {run.stage}")
            reports[key] = estimate(run.spec, machine)
        costs.append(stage_cost(run, reports[key]))
    first = next(iter(reports.values()))
    return costs, {**first["machine"], "notes": [n for n in first["notes"] if "calibrat" in n]}, reports


def fits(cost: StageCost, memory_gb: float) -> str:
    """'yes' (even the range's top fits), 'maybe' (the prediction fits, its top does not) or 'no'."""
    limit = memory_gb * 1024
    return "yes" if cost.peak_memory_mb[2] <= limit else "maybe" if cost.peak_memory_mb[1] <= limit else "no"


def hours_text(h: float) -> str:
    return f"{h:.3g}" if h >= 0.01 else f"{h * 60:.2g} min"


def total(costs: list[StageCost], which: int = 1) -> float:
    return sum(c.hours[which] for c in costs)


def ceil_steps(hours: float, cost: StageCost) -> int:
    """The steps `hours` buys a stage after its start and one validation."""
    left = hours - cost.start_h - (cost.eval_h if cost.evals else 0)
    return max(0, math.floor(left / cost.hours_per_step())) if cost.hours_per_step() else cost.steps


__all__ = ["START_S", "StageCost", "cost_key", "estimate_study", "fits", "stage_cost", "total"]
