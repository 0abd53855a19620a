"""A study's stages as jobs: submitit's local executor (a killed controller re-attaches, a stopped stage is
requeued and resumes, nothing finished runs twice) and its Slurm executor against stand-ins for sbatch, sacct
and scancel (each stage's resources, dependency, time limit and signal)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from graphspec.cli import main
from graphspec.studies import forecast

STEPS = 60


def _study(tiny, folder: Path, steps: int = STEPS) -> Path:
    """Four variants x two stages of the tiny spec; variants `a` and `b` are the same spec under two names (b is
    the one stopped and requeued, a the uninterrupted reference)."""
    tiny["data"] = {"train": {"samples": 32}, "val": {"split": "val", "samples": 8}}
    tiny["nodes"]["text_tower"]["size"]["vocab_size"] = 128
    tiny["nodes"]["fusion"]["dropout"] = 0.1  # the random state matters across the stop
    tiny["train"].update(steps=steps, batch_size=4, schedule={"warmup": 0}, log_every=1, val_every=None,
                         checkpoint_every=10)
    (folder / "specs").mkdir(parents=True)
    (folder / "specs" / "base.yaml").write_text(yaml.safe_dump(tiny))
    (folder / "specs" / "ve.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml", "name": "ve", "heads": {"itm": None, "mlm": None,
                                                        "ve": {"kind": "classify", "input": "pooled", "classes": 3}},
        "objectives": {"itm": None, "mlm": None, "ve": {"kind": "classify"}},
        "train": {"steps": 3, "checkpoint_every": None},
        "data": {"train": {"task": "snli_ve", "samples": 24}, "val": {"task": "snli_ve", "split": "val",
                                                                      "samples": 6}}}))
    (folder / "study.yaml").write_text("""\
name: jobs
base: specs/base.yaml
variants:
  - {name: a, nodes.vision_tower.freeze: false}
  - {name: b, nodes.vision_tower.freeze: false}
  - {name: c, nodes.vision_tower.freeze: true}
  - {name: d, nodes.text_tower.freeze: true}
stages:
  pretrain: {}
  ve: {spec: specs/ve.yaml, from: pretrain, changes: false}
compare: [pretrain.itm_acc, ve.snli_ve_acc]
slurm: {partition: gpu, gpus_per_node: 4, options: {qos: high}}
""")
    return folder / "study.yaml"


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r.get("split", "train") == "train"}


def _attempts(out: Path, variant: str, stage: str) -> list[dict]:
    path = out / "runs" / f"tiny-{variant}" / stage / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _wait(condition, process, what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the study ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {seconds} s"
        time.sleep(0.02)


def _step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1])["step"] if lines else 0


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    """The shared run: the controller starts the stages as local jobs (two at once), is killed while they run,
    and stage b/pretrain is stopped (SIGTERM to its job, as a scheduler would) after a few steps; a second
    invocation re-attaches and finishes, requeueing b/pretrain with --resume; a third finds everything done."""
    from tests.conftest import TINY
    import copy

    folder = tmp_path_factory.mktemp("local")
    study = _study(copy.deepcopy(TINY), folder)
    out = folder / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRAPHSPEC_COST": "off"}
    args = ["study", str(study), "-o", str(out), "--executor", "local", "--max-parallel", "2"]
    controller = subprocess.Popen([sys.executable, "-m", "graphspec.cli", *args], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b = out / "runs" / "tiny-b" / "pretrain" / "run"
    state = out / "study.json"
    _wait(lambda: _step(b) >= 3, controller, "step 3 of tiny-b / pretrain")
    controller.kill()  # the controller alone: its jobs run on
    controller.wait()
    job = json.loads(state.read_text())["stages"]["tiny-b/pretrain"]["parts"][-1]["job"]
    os.kill(int(job), signal.SIGTERM)  # submitit's local job passes it to the stage's job process
    deadline = time.monotonic() + 120
    while not _attempts(out, "b", "pretrain") and time.monotonic() < deadline:
        time.sleep(0.05)
    running = {k: s["parts"][-1]["job"] for k, s in json.loads(state.read_text())["stages"].items() if s["parts"]}
    old = dict(os.environ)
    os.environ.update({"OMP_NUM_THREADS": "1"})
    try:
        second = main(args)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            third = main(args)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return {"out": out, "second": second, "third": (third, printed.getvalue()), "submitted_before_kill": running}


@pytest.mark.integration
def test_a_stage_stopped_by_its_scheduler_is_requeued_and_resumes_on_the_uninterrupted_trajectory(local_study):
    out = local_study["out"]
    assert local_study["second"] == 0
    stopped, resumed = _attempts(out, "b", "pretrain")
    assert stopped["exit"] == 75 and stopped["signal"] == "SIGTERM" and resumed["exit"] == 0
    b, a = out / "runs" / "tiny-b" / "pretrain" / "run", out / "runs" / "tiny-a" / "pretrain" / "run"
    assert sorted(_losses(b)) == list(range(1, STEPS + 1))
    assert _losses(b) == pytest.approx(_losses(a), rel=0, abs=1.5e-5)
    assert "resuming at step" in (b.parent / "log.txt").read_text()


@pytest.mark.integration
def test_a_new_invocation_re_attaches_and_reruns_nothing_finished(local_study):
    out = local_study["out"]
    stages = json.loads((out / "study.json").read_text())["stages"]
    for key, job in local_study["submitted_before_kill"].items():  # what ran when the controller died
        if key != "tiny-b/pretrain":  # re-attached to, never submitted again
            variant, stage = key.removeprefix("tiny-").split("/")
            assert stages[key]["parts"][0]["job"] == job and len(_attempts(out, variant, stage)) == 1, key
    for variant in "abcd":
        for stage in ("pretrain", "ve"):
            assert (out / "runs" / f"tiny-{variant}" / stage / "run" / "summary.json").is_file()
            assert len(_attempts(out, variant, stage)) == (2 if (variant, stage) == ("b", "pretrain") else 1)
    code, printed = local_study["third"]
    assert code == 0 and printed.count("complete, skipped") == 8 and "starting" not in printed
    table = (out / "results.md").read_text()
    assert all(f"| tiny-{v} |" in table for v in "abcd")
    spent = (out / "spent.md").read_text()
    assert "| b | pretrain | 60/60 |" in spent


def _stand_ins(bin_dir: Path, record: Path) -> None:
    """sbatch (records its argument and script, answers a job id), sacct (every job pending), scancel and srun
    (submitit looks for srun to know it is on a Slurm cluster)."""
    bin_dir.mkdir()
    record.mkdir()
    scripts = {
        "sbatch": f"""#!/bin/sh
n=$(ls {record} | grep -c '^job-' || true)
id=$((1000 + n))
cp "$1" {record}/job-$id.sh
echo "Submitted batch job $id"
""",
        "sacct": f"""#!/bin/sh
echo "$@" >> {record}/sacct.log
echo PENDING
""",
        "scancel": f"""#!/bin/sh
echo "$@" >> {record}/scancel.log
""",
        "srun": "#!/bin/sh\nexit 0\n"}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)


def _predicted(study, machine, show):
    """Predictions as the cost model gives them, made up: a pretraining step of 0.5 s at the high end, 10,000 steps
    (1.4 h), a fine-tune's 3 steps; 1.5 GB of peak memory."""
    from graphspec.studies.costs import StageCost

    costs = []
    for run in study.runs:
        steps = run.spec.train.steps
        low, mid, high = (0.002 + steps * s / 3600 for s in (0.3, 0.4, 0.5))
        costs.append(StageCost(run.variant, run.stage, (), 1000, steps, 1, (0.3, 0.4, 0.5), 0.002, 0.0005, 1,
                               (low, mid, high), (1000.0, 1500.0, 2000.0), "device memory of each rank"))
    return costs, {"name": "made-up", "kind": "cuda", "calibrated": False, "memory_gb": 80}, {}


def _sbatch(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)=?(.*)$", script, re.M))


@pytest.mark.integration
def test_the_slurm_executor_asks_each_stage_for_its_resources_dependency_time_and_signal(tiny, tmp_path,
                                                                                        monkeypatch, capsys):
    study = _study(tiny, tmp_path / "s", steps=10_000)  # predicted, never run: hours that show the margin
    record = tmp_path / "record"
    _stand_ins(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GRAPHSPEC_COST", "on")
    monkeypatch.setattr(forecast, "estimate_study", _predicted)  # the cost model is tested on its own
    out = tmp_path / "out"
    assert main(["study", str(study), "-o", str(out), "--executor", "slurm", "--detach", "--account", "vl",
                 "--sbatch", "constraint=h100"]) == 0
    assert "run the same command again to re-attach" in capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    predicted = {(r["variant"], r["stage"]): r for r in plan["rows"]}
    stages = json.loads((out / "study.json").read_text())["stages"]
    jobs = {key: s["parts"][0]["job"] for key, s in stages.items()}
    assert len(jobs) == 8 and sorted(p.name for p in record.glob("job-*.sh")) == [f"job-{1000 + k}.sh"
                                                                                  for k in range(8)]
    for key, job in jobs.items():
        variant, stage = key.split("/")
        flags = _sbatch((record / f"job-{job}.sh").read_text())
        assert flags["job-name"] == f"jobs:{variant}:{stage}" and flags["partition"] == "gpu"
        assert flags["account"] == "vl" and flags["qos"] == "high" and flags["constraint"] == "h100"
        assert flags["nodes"] == "1" and flags["ntasks-per-node"] == "1" and flags["cpus-per-task"] == "2"
        assert flags["signal"] == "USR2@120" and flags["open-mode"] == "append"
        row = predicted[(variant, stage)]  # the time limit: the predicted hours' high end x 1.5, plus 10 min
        hours = row["start_h"] + row["steps"] * row["step_s"][2] * 1 / 3600 + row["eval_h"] * 2
        assert int(flags["time"]) == math.ceil(hours / 1 * 60 * 1.5) + 10
        assert flags["gpus-per-node"] == "1" and flags["mem"] == "32GB"  # one rank: one GPU, its host memory
        if stage == "ve":  # after its own pretraining, and only if that succeeds
            assert flags["dependency"] == f"afterok:{jobs[f'{variant}/pretrain']}"
            assert flags["kill-on-invalid-dep"] == "yes"
        else:
            assert "dependency" not in flags
    assert main(["study", str(study), "-o", str(out), "--executor", "slurm", "--detach", "--account", "vl",
                 "--sbatch", "constraint=h100"]) == 0  # a second look: all pending, nothing submitted again
    assert len(list(record.glob("job-*.sh"))) == 8 and (record / "sacct.log").is_file()
