"""`graphspec study`: run every (variant, stage) of a study, within a budget when one is given, then compare.

This process is a light controller. Each stage runs as `graphspec run` in a process (or job) of its own, on an
executor (`executors`): `inline`, one after another, forked from a server that has imported the libraries
once (`stages`); `local`, submitit's local jobs, several at once; `slurm`, sbatch jobs. What was submitted is
recorded in the study folder (`study.json`) before it runs, so a new invocation re-attaches to jobs still
running and skips what finished. A stage whose `run/summary.json` exists is complete. A stage that stopped
with a checkpoint (a signal, a time limit: exit 75; a rung's `--stop-at`) continues with `--resume`; one
that stopped before its first checkpoint starts over.

With a budget (hours), the plan (`forecast`) decides: everything, or successive halving of the first stage
(`halving.Ladder`) with the later stages for the survivors. The budget is a hard cap: each run is given the
steps the hours left pay for (`--stop-at`), and a time limit past which it checkpoints and stops.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from graphspec.language.errors import EnvironmentProblem, GraphspecError, Issue, Loc, SpecError
from graphspec.language.reading import load

from .compare import write_comparison
from .costs import cost_key
from .executors import (Executor, Resources, StageJob, default_parallel, fresh_env, make_executor,
                        resources_of)
from .folder import at_step, attempts, is_complete, log_tail, read_json, spec_file, stage_dir, write_json
from .plan import StageRun, Study
from .writing import write_variants

STATE_FORMAT = 1
MAX_STOPS = 8  # resumable stops of one stage in a row before the study gives up on it
RESUMABLE = 75


@dataclass
class Options:
    """How a study runs: where, within what, and how many stages at once."""

    executor: str = "inline"
    budget_h: float | None = None
    machine: str = "this"
    memory_gb: float | None = None
    max_parallel: int | None = None
    partition: str | None = None
    account: str | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)
    detach: bool = False  # submit what can be submitted, record it, and return (slurm: run again to continue)
    poll_s: float = 5.0


class Controller:
    """Submits each (variant, stage) when it is ready, polls what runs, and records everything in study.json."""

    def __init__(self, study: Study, out: Path, options: Options, show: Callable[[str], None]):
        self.study, self.out, self.options, self.show = study, out, options, show
        self.first = next(iter(study.config.stages))
        self.state = self._load_state()
        self.forecast = None
        self.ladder = None
        self.executor: Executor = make_executor(options.executor, out / "jobs", options.partition or
                                                study.config.slurm.partition, options.account or
                                                study.config.slurm.account,
                                                {**study.config.slurm.options, **options.sbatch})

    # --- state ---------------------------------------------------------------------------------------------

    def _load_state(self) -> dict:
        state = read_json(self.out / "study.json")
        if state is None:
            return {"format": STATE_FORMAT, "budget_h": self.options.budget_h, "stages": {}}
        if state.get("budget_h") != self.options.budget_h and any(s.get("parts") for s in state["stages"].values()):
            raise SpecError([Issue((), f"this study folder was started with --budget {state.get('budget_h')}, "
                                        f"not {self.options.budget_h}", "give the same budget to continue it, or "
                                        "another folder (-o) to start anew", loc=Loc(str(self.out / "study.json")))],
                            title="the study cannot continue")
        return state

    def save(self) -> None:
        if self.ladder is not None:
            self.state["ladder"] = self.ladder.to_state()
        write_json(self.out / "study.json", self.state)

    def entry(self, run: StageRun) -> dict:
        return self.state["stages"].setdefault(f"{run.variant}/{run.stage}", {"parts": [], "stops": 0})

    def active(self, run: StageRun) -> dict | None:
        parts = self.entry(run)["parts"]
        return parts[-1] if parts and not parts[-1].get("ended") else None

    # --- planning ------------------------------------------------------------------------------------------

    def plan(self) -> None:
        from .forecast import forecast, format_plan
        from .halving import Schedule
        from .ladder import Ladder

        if self.options.budget_h is None and os.environ.get("GRAPHSPEC_COST", "").lower() == "off":
            return  # nothing to plan against: run everything (the spent table has no predictions)
        saved = read_json(self.out / "plan.json")
        self.forecast = forecast(self.study, self.options.machine, self.options.memory_gb, self.options.budget_h,
                                 self.show, saved)
        write_json(self.out / "plan.json", {**self.forecast.to_json(), "reports": self.forecast.reports})
        self.show(format_plan(self.forecast))
        for variant, why in self.forecast.refused.items():
            self.show(f"{variant}: refused, {why}")
        if len(self.forecast.refused) == len(self.study.variants):
            raise EnvironmentProblem([Issue((), "every variant is predicted not to fit the memory: "
                                        + "; ".join(self.forecast.refused.values()),
                                        "give --memory if the machine has more, or make the specs smaller "
                                        "(ZeRO stage, micro batch, checkpoint: true)")],
                                 title="the study cannot start")
        schedule = self.forecast.schedule
        if schedule is None:
            return
        if not schedule.rungs:
            raise SpecError([Issue((), " ".join(schedule.cut), "give a larger --budget")],
                                 title="the study cannot start")
        if "schedule" in self.state:  # continue the ladder the study began with
            schedule = Schedule.from_json(self.state["schedule"])
        self.state["schedule"] = schedule.to_json()
        from .forecast import arms

        metric = self.study.rank_by or ""
        key = metric.partition(".")[2]
        self.ladder = Ladder(schedule, arms(self.forecast.costs, self.study, self.forecast.refused),
                             maximise="loss" not in key, metric=key or "metric")
        if "ladder" in self.state:
            self.ladder = Ladder.from_state(schedule, arms(self.forecast.costs, self.study, self.forecast.refused),
                                            self.state["ladder"])
        elif schedule.eta is not None and not metric:
            raise SpecError([Issue(("rank_by",), "the budget calls for successive halving, which needs a "
                                        f"validation metric of stage {self.first} to promote variants",
                                        f"add `rank_by: {self.first}.METRIC` (or a compare metric of it) to the "
                                        "study file", loc=Loc(str(self.study.file)))], title="the study cannot start")

    # --- one stage part ------------------------------------------------------------------------------------

    def cost(self, run: StageRun):
        return self.forecast.cost(run.variant, run.stage) if self.forecast is not None else None

    def target(self, run: StageRun) -> int | None:
        """The step this stage should run to now (None: not now, or never)."""
        if (self.forecast is not None and run.variant in self.forecast.refused) or self.entry(run).get("cut"):
            return None
        steps = run.spec.train.steps
        if run.stage == self.first and self.ladder is not None:
            return next((t for a, t in self.ladder.next_runs() if a == run.variant), None)
        if self.ladder is not None and (not self.ladder.done or run.variant not in self.ladder.survivors()):
            return None
        return steps

    def ready_after(self, run: StageRun) -> tuple[bool, str | None]:
        """Whether the stage it starts from is complete (or, on Slurm, submitted to its end: a dependency)."""
        if run.after is None:
            return True, None
        before = next(r for r in self.study.runs if r.variant == run.variant and r.stage == run.after)
        if is_complete(self.out, before):
            return True, None
        part = self.active(before)
        if self.options.executor == "slurm" and part and part.get("target") == before.spec.train.steps:
            return True, part["job"]
        return False, None

    def submit(self, run: StageRun, target: int, after: str | None) -> None:
        d = stage_dir(self.out, run)
        at = at_step(d)
        resume = at > 0 and not is_complete(self.out, run)
        if not resume:  # nothing to continue from: start it (over)
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            written = spec_file(self.out, run)
            if after is None:  # compiled here (a mistake shows now); after a job still queued: by its own job
                self.build(written, d / "build")
            (d / "log.txt").write_text("")
        cost = self.cost(run)
        to = target
        if self.ladder is not None and run.stage == self.first:
            to = self.ladder.cap(run.variant, target, at)
        elif self.ladder is not None and cost is not None:
            to = min(target, at + _affordable(self.ladder.left_h, cost, self.ladder.ratio))
        if to <= at:
            self.entry(run)["status"] = f"not run past step {at}: the budget is spent"
            self.entry(run)["cut"] = True
            if self.ladder is not None and run.stage == self.first:
                self.ladder.report(run.variant, self.ladder.rung, self._metric(d), step=at)
            self.save()
            self.show(f"{run.variant} / {run.stage}: {self.entry(run)['status']}")
            return
        stop = ["--stop-at", str(to)] if to < run.spec.train.steps else []
        built = d / "build" if (d / "build").is_dir() else d / "spec.json"
        argv = ["run", "--resume", str(d / "run"), *stop] if resume else \
            ["run", str(built), "--run-dir", str(d / "run"), *stop] + (
                ["--build-dir", str(d / "build")] if built.name == "spec.json" else [])
        part = {"job": None, "target": to, "asked": target, "from": at, "submitted": time.time(),
                "attempts_before": len(attempts(d)),
                "rung": self.ladder.rung if self.ladder is not None and run.stage == self.first else None}
        self.entry(run)["parts"].append(part)
        self.save()
        job = StageJob(argv, str(d / "log.txt"), str(d / "attempts.jsonl"))
        self.show(f"{run.variant} / {run.stage}: {'resuming at step ' + str(at) if resume else 'starting'}, to "
                  f"step {to} of {run.spec.train.steps} ({self.options.executor}; log {d / 'log.txt'})")
        part["job"] = self.executor.submit(job, f"{self.study.name}:{run.variant}:{run.stage}",
                                           self.resources(run, at, to), after)
        self.save()

    def build(self, spec_path: Path, folder: Path) -> None:
        """Compile a stage's spec into its build folder (a stage's job then starts from it)."""
        from graphspec.compiler import compile_spec, write_build
        from graphspec.compiler.folders import read_build
        from graphspec.cost.predict import write
        from graphspec.runtime.report import spec_digest

        spec = load(spec_path)
        write_build(compile_spec(spec), folder)
        report = self.forecast.reports.get(cost_key(spec)) if self.forecast is not None else None
        if report is not None:  # the run's prediction, made once for the plan: its run does not make it again
            write({**report, "spec_digest": spec_digest(read_build(folder).spec)}, folder)

    def resources(self, run: StageRun, at: int, to: int) -> Resources:
        return resources_of(run.spec, self.study.config.slurm, self.cost(run), to - at,
                            self.options.executor == "slurm", self.ladder.left_h if self.ladder is not None else None)

    def _metric(self, d: Path) -> float | None:
        metric = (self.study.rank_by or "").partition(".")[2]
        found = read_json(d / "run" / "summary.json") or read_json(d / "run" / "stopped.json") or {}
        value = found.get("val", {}).get(metric)
        return float(value) if isinstance(value, (int, float)) else None

    def finish(self, run: StageRun, part: dict) -> None:
        """A part whose job has ended: charge its hours, then decide from the run's files."""
        d = stage_dir(self.out, run)
        part["ended"] = time.time()
        mine = attempts(d)[part.get("attempts_before", 0):]  # this part's jobs wrote these
        cost = self.cost(run)
        accelerators = cost.accelerators if cost else 1
        hours = sum(a["ended"] - a["started"] for a in mine) * accelerators / 3600
        part["hours"] = hours
        part["exit"] = mine[-1]["exit"] if mine else None
        if self.ladder is not None and run.variant in self.ladder.arms:
            self.ladder.charge(hours, run.variant)
        at = at_step(d)
        entry = self.entry(run)
        if is_complete(self.out, run) or (at >= part["target"] and part["target"] < run.spec.train.steps):
            entry["stops"] = 0
            if part["rung"] is not None and self.ladder is not None:
                self.ladder.report(run.variant, part["rung"], self._metric(d), step=min(at, part["target"])
                                   if not is_complete(self.out, run) else run.spec.train.steps)
            entry["status"] = "complete" if is_complete(self.out, run) else f"paused at step {at}"
            summary = read_json(d / "run" / "summary.json") if is_complete(self.out, run) else \
                read_json(d / "run" / "stopped.json")
            first = (summary or {}).get("first_step_at")
            note = "done" if is_complete(self.out, run) else entry["status"]
            if first and mine:
                note += f", first step {first - mine[-1]['started']:.1f} s after the stage's start"
            self.show(_done(run, summary or {}, note, hours * 3600 / accelerators))
        elif at > 0 and part["exit"] in (RESUMABLE, None) and entry["stops"] < MAX_STOPS:
            entry["stops"] += 1
            entry["status"] = f"stopped at step {at} (exit {part['exit']}): requeued"
            self.show(f"{run.variant} / {run.stage}: {entry['status']}")
        else:
            self.save()
            raise GraphspecError([Issue((), f"variant {run.variant}, stage {run.stage} failed (exit "
                                        f"{part['exit']}):\n    {log_tail(d)}", "fix it and run the study again: "
                                        "completed stages are kept", loc=Loc(str(d / "log.txt")))],
                                 title="the study stopped")
        self.save()

    # --- the loop ------------------------------------------------------------------------------------------

    def max_parallel(self) -> int:
        return self.options.max_parallel if self.options.max_parallel and self.options.executor == "local" else \
            default_parallel(self.options.executor, max(r.spec.distributed.world_size for r in self.study.runs))

    def loop(self) -> None:
        total = len(self.study.runs)
        for k, run in enumerate(self.study.runs, 1):
            if is_complete(self.out, run) and self.active(run) is None:
                summary = read_json(stage_dir(self.out, run) / "run" / "summary.json") or {}
                self.show(_done(run, summary, f"[{k}/{total}] complete, skipped", summary.get("wall_time_s", 0)))
        while True:
            running = 0
            for run in self.study.runs:  # what ended since the last look
                part = self.active(run)
                if part is not None and part["job"] is not None:
                    if self.executor.state(part["job"]) == "ended":
                        self.finish(run, part)
                    else:
                        running += 1
                elif part is not None:  # recorded, never submitted (the controller died in between)
                    self.entry(run)["parts"].pop()
            submitted = False
            for run in self.study.runs:
                if running >= self.max_parallel():
                    break
                if self.active(run) is not None or is_complete(self.out, run):
                    continue
                target = self.target(run)
                ready, after = self.ready_after(run)
                if target is None or not ready or at_step(stage_dir(self.out, run)) >= target:
                    continue
                self.submit(run, target, after)
                submitted = True
                part = self.active(run)
                if part is not None and self.executor.state(part["job"]) == "ended":
                    self.finish(run, part)  # inline: it has run
                else:
                    running += 1
            if not running and not submitted:
                return
            if self.options.detach and not submitted:
                return
            if not submitted:
                time.sleep(self.options.poll_s)


def _done(run: StageRun, summary: dict, note: str, seconds: float) -> str:
    val = " ".join(f"{k} {v:.4f}" for k, v in summary.get("val", {}).items() if isinstance(v, float))
    return f"{run.variant} / {run.stage}: {note} ({seconds:.0f} s; {val})"


def _affordable(left_h: float, cost, ratio: float) -> int:
    """The steps the hours left pay for after a start and one validation."""
    room = left_h / max(ratio, 1.0) - cost.start_h - cost.eval_h
    return max(0, math.floor(room / cost.hours_per_step())) if cost.hours_per_step() > 0 else 10**9


def run_study(study: Study, out: Path, show: Callable[[str], None] = print, options: Options | None = None) -> dict:
    """Run (or re-attach to) what is not complete yet, then write the comparison; returns the paths written
    (with `detach`, once everything that can be submitted is)."""
    options = options or Options()
    out.mkdir(parents=True, exist_ok=True)
    write_variants(study.variants, out / "variants", study.base_file)
    control = Controller(study, out, options, show)
    control.plan()
    if options.executor == "inline" and not all(is_complete(out, r) for r in study.runs):
        from .stages import start_server

        start_server()  # its imports overlap with the first stage's compile
    control.loop()
    control.save()
    if options.detach and not all(is_complete(out, r) or control.target(r) is None for r in study.runs):
        return {"detached": True, "state": out / "study.json"}
    return write_comparison(study, out, control.forecast, control.state)


__all__ = ["Options", "fresh_env", "is_complete", "run_study", "stage_dir"]
