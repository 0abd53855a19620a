"""Periodic checkpoints and exact resume: a run killed with SIGKILL and resumed follows the uninterrupted
loss trajectory; only the newest checkpoints are kept; half-written ones and changed frozen weights are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from graphspec.cli import main

STEPS, EVERY = 120, 20


@pytest.fixture
def spec_file(train_spec, tmp_path):
    """The tiny spec, long enough to be killed midway, checkpointing every 40 steps; the text tower frozen
    (so that frozen weights are recorded) and dropout on (so that the random state matters)."""
    train_spec["nodes"]["text_tower"]["freeze"] = True
    train_spec["nodes"]["fusion"]["dropout"] = 0.1
    train_spec["data"]["val"] = None
    train_spec["train"].update(steps=STEPS, log_every=1, val_every=None, checkpoint_every=EVERY, keep_checkpoints=2)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(train_spec))
    return path


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("split", "train") == "train"]
    assert steps == sorted(set(steps)), "every step logged once, in order"
    return {r["step"]: r["loss"] for r in records if r.get("split", "train") == "train"}


def _start(spec_file, run_dir):
    from graphspec.study_run import fresh_env

    return subprocess.Popen([sys.executable, "-m", "graphspec.cli", "run", str(spec_file), "--run-dir",
                             str(run_dir), "--build-dir", str(run_dir.parent / "build-killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=fresh_env())


def _kill_after_first_checkpoint(process, run_dir, seconds=240):
    deadline = time.monotonic() + seconds
    while not (run_dir / "checkpoints" / f"step-{EVERY:08d}").is_dir():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "summary.json").exists(), "killed midway, not after the end"


def test_a_killed_run_resumes_on_the_uninterrupted_trajectory(spec_file, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["run", str(spec_file), "--run-dir", str(whole), "--build-dir", str(tmp_path / "build")]) == 0
    _kill_after_first_checkpoint(_start(spec_file, killed), killed)
    assert main(["run", "--resume", str(killed)]) == 0
    a, b = _losses(whole), _losses(killed)
    assert sorted(b) == list(range(1, STEPS + 1))
    # Logged to 5 decimals; the killed part ran in a process of its own, where float sums may round otherwise
    # (seen once in 120 steps after other tests ran ZeRO-3 in this process: 3.18791 against 3.18790).
    assert b == pytest.approx(a, rel=0, abs=1.5e-5)
    assert [p.name for p in sorted((killed / "checkpoints").iterdir())] == \
        [f"step-{s:08d}" for s in (STEPS - 2 * EVERY, STEPS - EVERY)]  # keep_checkpoints: 2
    assert json.loads((killed / "summary.json").read_text())["steps"] == STEPS


def test_a_half_written_checkpoint_is_never_resumed_from(spec_file, tmp_path):
    run_dir = tmp_path / "run"
    _kill_after_first_checkpoint(_start(spec_file, run_dir), run_dir)
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    fake = run_dir / "checkpoints" / "step-99999999.partial"
    shutil.copytree(newest, fake)
    (fake / "state.pt").write_bytes(b"cut off")
    assert main(["run", "--resume", str(run_dir)]) == 0  # reading the cut-off state.pt would have failed
    assert sorted(_losses(run_dir)) == list(range(1, STEPS + 1)) and not fake.exists()


def test_changed_frozen_weights_are_refused_naming_the_tower(spec_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    _kill_after_first_checkpoint(_start(spec_file, run_dir), run_dir)
    for ckpt in (run_dir / "checkpoints").glob("step-*"):
        record = json.loads((ckpt / "frozen.json").read_text())
        record["text_tower"]["sha256"] = "0" * 64
        (ckpt / "frozen.json").write_text(json.dumps(record))
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "frozen.json" in err and "the frozen weights of text_tower differ from those the run trained with" in err


def test_resume_without_checkpoints_says_how_to_get_them(train_spec, tmp_path, capsys):
    train_spec["train"].update(steps=2, val_every=None, schedule={"warmup": 0})
    train_spec["data"]["val"] = None
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(train_spec))
    assert main(["run", str(tmp_path / "spec.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
    assert main(["run", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no complete training checkpoint to resume from" in err and "train.checkpoint_every" in err


def test_resume_of_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_run_written_into_its_own_build_directory_resumes_too(spec_file, tmp_path):
    """--run-dir equal to --build-dir: the build is not copied into itself, and --resume still finds it."""
    same = tmp_path / "same"
    spec = yaml.safe_load(spec_file.read_text())
    spec["train"].update(steps=2 * EVERY + 2)
    spec_file.write_text(yaml.safe_dump(spec))
    assert main(["run", str(spec_file), "--run-dir", str(same), "--build-dir", str(same)]) == 0
    assert not (same / "build").exists()
    shutil.rmtree(same / "checkpoints" / f"step-{2 * EVERY:08d}")  # as if killed between the two checkpoints
    assert main(["run", "--resume", str(same)]) == 0
    assert sorted(_losses(same)) == list(range(1, 2 * EVERY + 3))
