"""`graphspec study STUDY --plan`: what every (variant, stage) will cost, which fit the memory, and what a budget
buys, before any process starts.

One row per (variant, stage), ranked by predicted hours: its frozen towers, trainable parameters, steps, step
time, hours and peak memory per rank (each a range: low, predicted, high), whether it fits, and the decision.
Without a budget, or when the whole study fits it less a reserve, everything that fits runs. Otherwise the
first stage runs as successive halving (`halving.choose`, planned on the predicted hours) and the later
stages only for the survivors. A variant predicted not to fit the memory is refused with its reason (its later
stages too), before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .costs import StageCost, estimate_study, fits, hours_text
from .halving import Arm, Schedule, choose
from .names import short_name
from .plan import Study

RESERVE = 0.1  # of the budget, kept back from the plan for the predictions' error (the cap enforces the rest)


@dataclass
class Forecast:
    study: Study
    costs: list[StageCost]
    machine: dict
    memory_gb: float
    budget_h: float | None
    schedule: Schedule | None  # None: no budget given
    refused: dict[str, str]  # variant -> why
    decisions: dict[tuple[str, str], str]
    machine_asked: str = "this"
    reports: dict[str, dict] = field(default_factory=dict)  # cost reports by costs.cost_key

    @property
    def first(self) -> str:
        return next(iter(self.study.config.stages))

    def cost(self, variant: str, stage: str) -> StageCost:
        return next(c for c in self.costs if c.variant == variant and c.stage == stage)

    @property
    def halving(self) -> bool:
        return self.schedule is not None and self.schedule.eta is not None

    @property
    def planned_h(self) -> float:
        if self.schedule is not None:
            return self.schedule.planned_h
        return sum(c.hours[1] for c in self.costs if c.variant not in self.refused)

    def to_json(self) -> dict:
        rows = []
        for c in self.ranked():
            rows.append({**c.to_json(), "short": short_name(c.variant, self.study.base_name),
                         "fits": fits(c, self.memory_gb), "decision": self.decisions[(c.variant, c.stage)]})
        s = self.schedule
        return {"study": self.study.name, "machine_asked": self.machine_asked, "rows": rows, "budget_h": self.budget_h,
                "planned_h": round(self.planned_h, 4),
                "reserve_h": round(self.budget_h - self.planned_h, 4) if self.budget_h is not None else None,
                "full_h": round(sum(c.hours[1] for c in self.costs), 4),
                "eta": s.eta if s else None, "rungs": [{"steps": r.steps, "arms": r.arms} for r in s.rungs] if s
                else [], "cut": list(s.cut) if s else [], "memory_gb": self.memory_gb,
                "calibration": self.machine}

    def ranked(self) -> list[StageCost]:
        return sorted(self.costs, key=lambda c: (c.hours[1], c.variant, c.stage))


def arms(costs: list[StageCost], study: Study, refused: dict[str, str]) -> list[Arm]:
    """The first stage of every variant that runs, with its later stages' hours."""
    first = next(iter(study.config.stages))
    out = []
    for v in study.variants:
        if v.name in refused:
            continue
        head = next(c for c in costs if c.variant == v.name and c.stage == first)
        later = sum(c.hours[1] for c in costs if c.variant == v.name and c.stage != first)
        out.append(Arm(v.name, head.hours_per_step(), head.start_h, head.eval_h, later))
    return out


def _three(values) -> tuple[float, float, float]:
    low, mid, high = values
    return float(low), float(mid), float(high)


def _cost_of(row: dict) -> StageCost:
    """A StageCost from its JSON row (plan.json)."""
    return StageCost(str(row["variant"]), str(row["stage"]), tuple(row["frozen"]), int(row["trainable"]),
                     int(row["steps"]), int(row["accelerators"]), _three(row["step_s"]), float(row["start_h"]),
                     float(row["eval_h"]), int(row["evals"]), _three(row["hours"]), _three(row["peak_memory_mb"]),
                     str(row["memory_kind"]))


def _reuse(saved: dict | None, study: Study, machine: str) -> tuple[list[StageCost], dict, dict[str, dict]] | None:
    """The predictions a study folder's plan.json holds, when they are of these runs on this machine."""
    if not saved or saved.get("machine_asked") != machine:
        return None
    try:
        costs = [_cost_of(row) for row in saved.get("rows", [])]
    except (KeyError, TypeError, ValueError):
        return None
    if sorted((c.variant, c.stage) for c in costs) != sorted((r.variant, r.stage) for r in study.runs):
        return None
    order = {(r.variant, r.stage): k for k, r in enumerate(study.runs)}
    return sorted(costs, key=lambda c: order[(c.variant, c.stage)]), saved["calibration"], saved.get("reports", {})


def forecast(study: Study, machine: str = "this", memory_gb: float | None = None, budget_h: float | None = None,
             show: Callable[[str], None] = lambda _: None, saved: dict | None = None) -> Forecast:
    """The plan; `saved`: an earlier plan's JSON, whose predictions are reused when they are of these runs."""
    costs, profile, reports = _reuse(saved, study, machine) or estimate_study(study, machine, show)
    memory = memory_gb if memory_gb is not None else float(profile.get("memory_gb") or 0) or _host_memory_gb()
    refused = {}
    for c in costs:
        if fits(c, memory) == "no" and c.variant not in refused:
            refused[c.variant] = (f"stage {c.stage}: predicted peak {c.peak_memory_mb[1]:,.0f} MB per rank > "
                                  f"{memory:g} GB ({c.memory_kind})")
    first = next(iter(study.config.stages))
    steps = max((c.steps for c in costs if c.stage == first), default=0)
    schedule = None
    running = arms(costs, study, refused)
    if budget_h is not None and running:
        schedule = choose(running, steps, budget_h, reserve=RESERVE, min_steps=max(1, math.ceil(steps / 10)))
    decisions = {}
    for c in costs:
        decisions[(c.variant, c.stage)] = _decision(c, first, refused, schedule, len(running))
    return Forecast(study, costs, profile, memory, budget_h, schedule, refused, decisions, machine, reports)


def _decision(c: StageCost, first: str, refused: dict[str, str], schedule: Schedule | None, n: int) -> str:
    if c.variant in refused:
        return "refused: " + refused[c.variant]
    if schedule is None or schedule.eta is None and schedule.rungs:
        return "runs"
    if not schedule.rungs:
        return "cut: the budget does not cover the first rung"
    rungs = schedule.rungs
    if c.stage == first:
        ladder = "; ".join(f"best {r.arms} to {r.steps}" for r in rungs[1:])
        return f"to step {rungs[0].steps}; {ladder}" if ladder else f"to step {rungs[0].steps}"
    return f"runs if its variant is among the {schedule.survivors} of {n} left after the last rung"


def _host_memory_gb() -> float:
    import psutil

    return round(psutil.virtual_memory().total / 2**30, 1)


def _range(values: tuple[float, float, float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(values[1])} ({fmt(values[0])}-{fmt(values[2])})"


def format_plan(f: Forecast) -> str:
    """The table and its footer, as `--plan` prints them."""
    head = ["variant", "stage", "frozen", "trainable", "steps", "step s", "hours", "peak MB/rank", "fits",
            "decision"]
    rows = [head]
    for c in f.ranked():
        rows.append([short_name(c.variant, f.study.base_name), c.stage, ",".join(c.frozen) or "-",
                     f"{c.trainable:,}", str(c.steps), _range(c.step_s, lambda s: f"{s:.3g}"),
                     _range(c.hours, hours_text), _range(c.peak_memory_mb, lambda m: f"{m:,.0f}"),
                     fits(c, f.memory_gb), f.decisions[(c.variant, c.stage)]])
    widths = [max(len(r[k]) for r in rows[:]) for k in range(len(head) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * min(160, sum(widths) + 2 * len(widths) + 10))
    m = f.machine
    where = (f"calibrated on {m['name']} ({m.get('date') or 'date unknown'})" if m.get("calibrated")
             else f"{m['name']}: {m.get('source') or 'a prior, uncalibrated'}")
    full = sum(c.hours[1] for c in f.costs)
    lines += ["", f"hours are {'machine' if m.get('kind') == 'cpu' else 'accelerator'}-hours; ranges: {where}; "
              f"memory {f.memory_gb:.3g} GB per rank; peak memory: {f.costs[0].memory_kind if f.costs else ''}",
              f"whole study: {hours_text(full)} h predicted"]
    if f.budget_h is not None:
        s = f.schedule
        lines.append(f"budget {hours_text(f.budget_h)} h; planned {hours_text(f.planned_h)} h; reserve "
                     f"{hours_text(f.budget_h - f.planned_h)} h")
        if s is not None and s.eta is not None:
            lines.append(f"successive halving: eta {s.eta}; rungs " + ", ".join(f"{r.arms} to step {r.steps}"
                                                                               for r in s.rungs))
        for sentence in (s.cut if s else ()):
            lines.append("cut: " + sentence)
    for variant, why in f.refused.items():
        lines.append(f"refused before anything runs: {variant}: {why}")
    return "\n".join(lines)


__all__ = ["Forecast", "forecast", "format_plan"]
