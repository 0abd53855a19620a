"""The study's controller under a budget, driven through stand-in runs: a job is played at once by writing what
`graphspec run` would (its pause or summary, a checkpoint, its validation metric from a synthetic learning
curve, an attempt whose hours are synthetic), so rungs, promotions, requeues and the hard cap are checked in
well under a second per case."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from graphspec.studies import execute, forecast as forecast_module
from graphspec.studies.costs import StageCost
from graphspec.studies.executors import Executor, Resources, StageJob
from graphspec.studies.plan import plan_study

STEPS = 400
# hours per step of each variant's pretraining (a frozen tower makes it cheaper) and its ITM accuracy curve
HOURS_PER_STEP = {"a": 1e-4, "b": 0.8e-4, "c": 0.6e-4, "d": 0.4e-4}
BEST = {"a": 0.80, "b": 0.75, "c": 0.70, "d": 0.60}


def _curve(variant: str, step: int) -> float:
    return 0.5 + (BEST[variant] - 0.5) * (1 - math.exp(-step / 120))


class StandIn(Executor):
    """Plays each job at once. `over` scales the hours a job takes against its prediction; `preempt` names
    variants whose first job is stopped by a signal halfway (exit 75 after a checkpoint)."""

    kind = "stand-in"

    def __init__(self, over: float = 1.0, preempt: tuple[str, ...] = ()):
        self.over, self.preempt = over, set(preempt)
        self.argv: list[list[str]] = []
        self.clock = 1.0e9

    def submit(self, job: StageJob, name: str, resources: Resources, after: str | None = None) -> str:
        self.argv.append(job.argv)
        d = Path(job.log).parent
        run = d / "run"
        variant, stage = d.parent.name.removeprefix("jobs-"), d.name
        spec = json.loads((d / "spec.json").read_text())
        steps = spec["train"]["steps"]
        to = int(job.argv[job.argv.index("--stop-at") + 1]) if "--stop-at" in job.argv else steps
        stopped = run / "stopped.json"
        at = json.loads(stopped.read_text())["stopped_at"] if stopped.is_file() else 0
        if "--resume" not in job.argv:
            assert at == 0
        code = 0
        if variant in self.preempt:
            self.preempt.discard(variant)
            to, code = (at + to) // 2, 75
        per_step = HOURS_PER_STEP[variant] if stage == "pretrain" else 0.5e-4
        hours = (0.005 + (to - at) * per_step + 0.001) * self.over
        run.mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / f"step-{to:08d}").mkdir(parents=True, exist_ok=True)
        metric = {"itm_acc": _curve(variant, to)} if stage == "pretrain" else {"snli_ve_acc": 0.4}
        if code == 0 and to == steps:
            (run / "summary.json").write_text(json.dumps({"steps": steps, "val": metric, "wall_time_s": 1.0,
                                                          "peak_rss_mb": 100.0}))
        elif code == 0:
            stopped.write_text(json.dumps({"stopped_at": to, "steps": steps, "val": metric, "wall_time_s": 1.0,
                                           "peak_rss_mb": 100.0}))
        with open(job.record, "a") as f:
            f.write(json.dumps({"started": self.clock, "ended": self.clock + hours * 3600, "exit": code}) + "\n")
        self.clock += hours * 3600 + 1
        return f"job-{len(self.argv)}"

    def state(self, job_id: str) -> str:
        return "ended"

    def cancel(self, job_id: str) -> None:
        return None


def _costs(study) -> list[StageCost]:
    out = []
    for run in study.runs:
        variant = run.variant.removeprefix("jobs-")
        per_step = HOURS_PER_STEP[variant] if run.stage == "pretrain" else 0.5e-4
        step_s = per_step * 3600
        hours = 0.005 + STEPS * per_step + 0.001
        out.append(StageCost(run.variant, run.stage, (), 1000, STEPS, 1, (step_s * 0.8, step_s, step_s * 1.2), 0.005,
                             0.001, 1, (hours * 0.8, hours, hours * 1.2), (90.0, 100.0, 120.0), "host"))
    return out


@pytest.fixture
def study(tiny, tmp_path, monkeypatch):
    tiny["data"] = {"train": {"samples": 32}, "val": {"split": "val", "samples": 8}}
    tiny["train"].update(steps=STEPS, batch_size=4, val_every=None)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny))
    (tmp_path / "ve.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml", "name": "ve", "heads": {"itm": None, "mlm": None,
                                                        "ve": {"kind": "classify", "input": "pooled", "classes": 3}},
        "objectives": {"itm": None, "mlm": None, "ve": {"kind": "classify"}},
        "data": {"train": {"task": "snli_ve", "samples": 24}, "val": {"task": "snli_ve", "split": "val",
                                                                      "samples": 6}}}))
    (tmp_path / "study.yaml").write_text("""\
name: budget
base: base.yaml
variants: [{name: a}, {name: b, train.seed: 1}, {name: c, train.seed: 2}, {name: d, train.seed: 3}]
stages:
  pretrain: {}
  ve: {spec: ve.yaml, from: pretrain, changes: false}
compare: [pretrain.itm_acc, ve.snli_ve_acc]
""")
    tiny["name"] = "jobs"
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny))
    found = plan_study(tmp_path / "study.yaml", compile_check=False)
    monkeypatch.setattr(forecast_module, "estimate_study",
                        lambda s, machine, show: (_costs(s), {"name": "synthetic", "kind": "cpu", "calibrated": True,
                                                              "memory_gb": 8}, {}))
    return found


@pytest.fixture(autouse=True)
def no_builds(monkeypatch):
    """The stand-in runs need no build folder (a fine-tune's would need its pretraining's real weights), nor
    plots."""
    from graphspec.studies import compare

    monkeypatch.setattr(execute.Controller, "build", lambda self, spec_file, folder: folder.mkdir())
    monkeypatch.setattr(compare, "_plots", lambda study, out, table: [])  # drawn by test_study's tests


def _run(study, out: Path, budget: float | None, executor: StandIn, monkeypatch):
    monkeypatch.setattr(execute, "make_executor", lambda *args, **kwargs: executor)
    lines: list[str] = []
    written = execute.run_study(study, out, lines.append, execute.Options("inline", budget_h=budget))
    return written, lines


def _full_h() -> float:
    return sum(0.005 + STEPS * h + 0.001 for h in HOURS_PER_STEP.values()) + 4 * (0.005 + STEPS * 0.5e-4 + 0.001)


def test_a_budget_that_fits_runs_every_stage_whole(study, tmp_path, monkeypatch):
    stand_in = StandIn()
    written, _ = _run(study, tmp_path / "out", _full_h() * 1.2, stand_in, monkeypatch)
    assert len(stand_in.argv) == 8 and not any("--stop-at" in a for a in stand_in.argv)
    assert all(r["status"] == "complete" for r in written["spent_table"])


def test_successive_halving_promotes_the_best_and_fine_tunes_only_the_survivors(study, tmp_path, monkeypatch):
    budget = 0.6 * _full_h()
    stand_in = StandIn()
    written, lines = _run(study, tmp_path / "out", budget, stand_in, monkeypatch)
    state = json.loads((tmp_path / "out" / "study.json").read_text())
    schedule = state["schedule"]
    rungs = [r["steps"] for r in schedule["rungs"]]
    assert schedule["eta"] and rungs[-1] == STEPS and len(rungs) >= 2
    first = [a for a in stand_in.argv if "--resume" not in a]
    assert len([a for a in first if "pretrain" in " ".join(a)]) == 4
    assert all(a[a.index("--stop-at") + 1] == str(rungs[0]) for a in first if "pretrain" in " ".join(a))
    survivors = schedule["rungs"][-1]["arms"]
    done = {r["variant"]: r["status"] for r in written["spent_table"] if r["stage"] == "pretrain"}
    assert done["a"] == "complete"  # variant a learns best: it runs to the end
    fine_tuned = [r["variant"] for r in written["spent_table"] if r["stage"] == "ve" and r["status"] == "complete"]
    assert len(fine_tuned) == survivors and "a" in fine_tuned
    spent = sum(r["spent h"] or 0 for r in written["spent_table"])
    assert spent <= budget and state["ladder"]["spent_h"] == pytest.approx(spent)
    assert spent == pytest.approx(schedule["planned_h"], rel=0.25)  # the predictions hold here


def test_the_budget_is_a_hard_cap_when_runs_cost_more_than_predicted(study, tmp_path, monkeypatch):
    budget = 0.6 * _full_h()
    written, _ = _run(study, tmp_path / "out", budget, StandIn(over=1.6), monkeypatch)
    spent = sum(r["spent h"] or 0 for r in written["spent_table"])
    assert spent <= budget
    statuses = [r["status"] for r in written["spent_table"]]
    assert any("budget" in s or "paused" in s for s in statuses)  # something was shortened to stay within it


def test_a_preempted_stage_is_submitted_again_with_resume(study, tmp_path, monkeypatch):
    stand_in = StandIn(preempt=("a",))
    written, lines = _run(study, tmp_path / "out", None, stand_in, monkeypatch)
    a_pretrain = [argv for argv in stand_in.argv if "jobs-a/pretrain" in " ".join(argv)]
    assert len(a_pretrain) == 2 and "--resume" in a_pretrain[1] and "--resume" not in a_pretrain[0]
    assert any("requeued" in line for line in lines)
    assert all(r["status"] == "complete" for r in written["spent_table"])


def test_a_budget_below_the_first_rung_is_refused_before_anything_runs(study, tmp_path, monkeypatch):
    from graphspec.language.errors import SpecError

    stand_in = StandIn()
    with pytest.raises(SpecError) as info:
        _run(study, tmp_path / "out", 0.001, stand_in, monkeypatch)
    assert "give a larger --budget" in info.value.format() and not stand_in.argv


def test_a_variant_that_does_not_fit_the_memory_is_refused_with_its_reason(study, tmp_path, monkeypatch):
    stand_in = StandIn()
    lines: list[str] = []
    monkeypatch.setattr(execute, "make_executor", lambda *args, **kwargs: stand_in)
    costs = _costs(study)
    big = [c if c.variant != "jobs-a" else StageCost(**{**c.to_json(), "peak_memory_mb": (9e3, 1e4, 1.2e4)})
           for c in costs]
    monkeypatch.setattr(forecast_module, "estimate_study", lambda s, m, show: (big, {"name": "synthetic",
                                                                                       "kind": "cpu",
                                                                                       "calibrated": True,
                                                                                       "memory_gb": 8}, {}))
    monkeypatch.setenv("GRAPHSPEC_COST", "on")  # the suite's default is off: no prediction without a budget
    written = execute.run_study(study, tmp_path / "out", lines.append, execute.Options("inline"))
    assert not any("jobs-a/" in " ".join(a) for a in stand_in.argv) and len(stand_in.argv) == 6
    assert any("jobs-a: refused, stage pretrain: predicted peak 10,000 MB per rank > 8 GB" in line for line in lines)
    assert [r["status"].startswith("refused") for r in written["spent_table"]].count(True) == 2


REAL_BUILD = execute.Controller.build  # before the fixture above replaces it


def test_a_stage_build_holds_the_plans_prediction_so_its_run_does_not_predict_again(study, tmp_path, monkeypatch):
    import types

    from graphspec.compiler.folders import read_build
    from graphspec.cost import predict
    from graphspec.studies.costs import cost_key

    run = study.runs[0]
    spec_file = tmp_path / "stage.json"
    spec_file.write_text(json.dumps(run.spec.model_dump(mode="json", exclude={"extends"}, exclude_none=True)))
    report = {"format": predict.FORMAT, "spec": run.spec.name, "step_s": 0.25}
    planned = types.SimpleNamespace(forecast=types.SimpleNamespace(reports={cost_key(run.spec): report}))
    REAL_BUILD(cast(Any, planned), spec_file, tmp_path / "build")  # all `build` reads of its controller
    build = read_build(tmp_path / "build")

    def never(*args, **kwargs):
        raise AssertionError("predicted again")

    monkeypatch.setenv("GRAPHSPEC_COST", "on")
    monkeypatch.setattr(predict, "estimate", never)
    found = predict.ensure(build.dir, build.spec)
    assert found is not None and found["step_s"] == 0.25
