"""Divergence: a loss that is not finite stops the run before that step's update, naming the step, the losses
and the last good checkpoint, or (train.nonfinite.action: skip) skips the step; with two ranks, both decide
together even when only one of them sees the bad loss."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from graphspec.cli import main


@pytest.fixture
def spec_file(train_spec, tmp_path):
    train_spec["data"]["val"] = None
    train_spec["train"].update(steps=16, log_every=1, val_every=None, schedule={"warmup": 0})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(train_spec))
    return path


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_diverging_learning_rate_stops_at_the_first_non_finite_loss(spec_file, tmp_path, capsys):
    """SGD at lr 10 without clipping: the losses grow by orders of magnitude, then are NaN (measured: step 9).
    The finite-loss guard only warns here (train.exploding.action: warn), so the non-finite one is reached."""
    run_dir = tmp_path / "run"
    code = main(["run", str(spec_file), "--set", "train.optimizer={name: sgd, lr: 10.0}", "--set",
                 "train.grad_clip=null", "--set", "train.checkpoint_every=3", "--set", "train.steps=30",
                 "--set", "train.exploding.action=warn", "--run-dir", str(run_dir), "--build-dir", str(tmp_path / "b")])
    out, err = capsys.readouterr()
    assert code == 4, err
    assert "the loss exploded" in out and "trained on (train.exploding.action: warn)" in out
    logged = _records(run_dir)
    stopped = logged[-1]["step"] + 1  # every logged step was finite; the next one was not
    assert all(math.isfinite(r["loss"]) for r in logged) and logged[-1]["loss"] > 1e6
    last_good = run_dir / "checkpoints" / f"step-{(stopped - 1) // 3 * 3:08d}"
    assert f"train: step {stopped}: the loss is not finite (" in err and "nan" in err
    assert f"the run stopped before this step's update; the last good checkpoint is {last_good}" in err
    assert f"graphspec run --resume {run_dir} goes on from it" in err and "1 error: the run diverged" in err
    assert last_good.is_dir() and "Traceback" not in err and not (run_dir / "summary.json").exists()


@pytest.fixture
def nan_images(monkeypatch):
    """NaN pixels in the micro batches of the given indices (0-based: step - 1): the model's own forward then
    gives a NaN loss, as a corrupt input would."""
    from graphspec.runtime.tasks.captions import Captions

    real = Captions.train_batch
    bad: set[int] = set()

    def train_batch(self, size, index):
        batch = real(self, size, index)
        if index in bad:
            batch["image"] = torch.full_like(batch["image"], float("nan"))
        return batch

    monkeypatch.setattr(Captions, "train_batch", train_batch)
    return bad


def test_skip_drops_the_steps_counts_them_and_trains_on(spec_file, tmp_path, nan_images, capsys):
    nan_images.update({3, 8, 9})  # steps 4, 9 and 10
    run_dir = tmp_path / "run"
    assert main(["run", str(spec_file), "--set", "train.nonfinite={action: skip, max_in_a_row: 2}", "--run-dir",
                 str(run_dir), "--build-dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "step 4: the loss is not finite; step skipped (1 in a row)" in out
    assert "step 10: the loss is not finite; step skipped (2 in a row)" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["nonfinite_skipped"] == 3
    assert [r["step"] for r in _records(run_dir)] == [s for s in range(1, 17) if s not in (4, 9, 10)]
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())  # no NaN reached the weights


def test_skip_stops_after_too_many_in_a_row(spec_file, tmp_path, nan_images, capsys):
    nan_images.update({5, 6, 7})  # steps 6, 7, 8
    assert main(["run", str(spec_file), "--set", "train.nonfinite={action: skip, max_in_a_row: 2}", "--run-dir",
                 str(tmp_path / "run"), "--build-dir", str(tmp_path / "b")]) == 4
    err = capsys.readouterr().err
    assert "step 8: the loss is not finite" in err and "after 2 skipped steps in a row" in err


def test_a_non_finite_gradient_norm_stops_after_the_update_it_could_not_prevent(spec_file, tmp_path, monkeypatch,
                                                                                capsys):
    """DeepSpeed knows the norm only after its step (with clipping): the run stops then, and says the update was
    applied; skip mode cannot skip it."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    real, seen = DeepSpeedEngine.get_global_grad_norm, {"n": 0}

    def norm(self):
        seen["n"] += 1
        return float("inf") if seen["n"] == 5 else real(self)

    monkeypatch.setattr(DeepSpeedEngine, "get_global_grad_norm", norm)
    run_dir = tmp_path / "run"
    assert main(["run", str(spec_file), "--set", "train.grad_clip=1.0", "--set",
                 "train.nonfinite={action: skip, max_in_a_row: 3}", "--run-dir", str(run_dir), "--build-dir",
                 str(tmp_path / "b")]) == 4
    err = capsys.readouterr().err
    assert "train: step 5: the gradient norm is not finite (" in err and "Traceback" not in err
    assert "the run stopped after this step's update (not saved)" in err
    assert "skipping applies to non-finite losses only" in err
    assert [r["step"] for r in _records(run_dir)] == [1, 2, 3, 4]


@pytest.fixture
def infinite_gradient(monkeypatch):
    """At the given backward calls (1-based), every gradient is inf or NaN while the loss stays finite."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    real, calls, bad = DeepSpeedEngine.backward, {"n": 0}, set()

    def backward(self, loss, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] in bad:
            loss.register_hook(lambda g: g * float("inf"))
        return real(self, loss, *args, **kwargs)

    monkeypatch.setattr(DeepSpeedEngine, "backward", backward)
    from deepspeed.utils import logger

    # DeepSpeed says it skipped through its own StreamHandler, whose stream is the sys.stdout of the moment
    # DeepSpeed was imported (an earlier test's capture, closed since). Point it at whatever stderr is current
    # when it writes. Only DeepSpeed's own handler: pytest adds its capture handlers (StreamHandler subclasses
    # with a StringIO it reads back) to the same logger while a test runs.
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler:
            monkeypatch.setattr(handler, "stream", _CurrentStderr())
    return bad


class _CurrentStderr:
    """A stream that writes to the sys.stderr of each call."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


BF16_ZERO2 = ["--set", "train.precision=bf16", "--set", "distributed.zero_stage=2", "--set", "train.grad_clip=null"]


def test_a_gradient_deepspeed_skips_stops_the_run_before_its_update(spec_file, tmp_path, infinite_gradient, capsys):
    """bf16, ZeRO-2, no clipping: no gradient norm is computed, but DeepSpeed's own check skips the update, and
    the run says so instead of counting the step as trained."""
    infinite_gradient.add(5)
    run_dir = tmp_path / "run"
    assert main(["run", str(spec_file), *BF16_ZERO2, "--run-dir", str(run_dir), "--build-dir",
                 str(tmp_path / "b")]) == 4
    err = capsys.readouterr().err
    assert "train: step 5: a gradient is not finite (DeepSpeed skipped the update) (" in err, err
    assert "the run stopped before this step's update" in err and "Traceback" not in err
    assert [r["step"] for r in _records(run_dir)] == [1, 2, 3, 4]


def test_skip_counts_a_gradient_deepspeed_skipped(spec_file, tmp_path, infinite_gradient, capsys):
    infinite_gradient.update({5, 11})
    run_dir = tmp_path / "run"
    assert main(["run", str(spec_file), *BF16_ZERO2, "--set", "train.nonfinite={action: skip, max_in_a_row: 1}",
                 "--run-dir", str(run_dir), "--build-dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "step 5: a gradient is not finite; step skipped (1 in a row)" in out
    assert json.loads((run_dir / "summary.json").read_text())["nonfinite_skipped"] == 2
    assert [r["step"] for r in _records(run_dir)] == [s for s in range(1, 17) if s not in (5, 11)]
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())


def test_a_full_disk_at_the_final_checkpoint_is_named_and_leaves_nothing_half_written(spec_file, tmp_path,
                                                                                      monkeypatch, capsys):
    import errno

    from graphspec.runtime import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    run_dir = tmp_path / "run"
    assert main(["run", str(spec_file), "--set", "train.steps=3", "--run-dir", str(run_dir), "--build-dir",
                 str(tmp_path / "b")]) == 3
    err = capsys.readouterr().err
    assert f"{run_dir / 'checkpoint'}: the final checkpoint could not be written (No space left on device)" in err
    assert "Traceback" not in err and not (run_dir / "checkpoint.partial").exists()
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "summary.json").exists()


HOOK = """
import os
if os.environ.get("RANK") == "1":  # only rank 1 sees the bad micro batch: the ranks must agree anyway
    import torch
    from graphspec.runtime.tasks.captions import Captions
    real = Captions.train_batch
    def train_batch(self, size, index):
        batch = real(self, size, index)
        if index == 4:
            batch["image"] = torch.full_like(batch["image"], float("nan"))
        return batch
    Captions.train_batch = train_batch
"""


def test_two_ranks_agree_when_only_one_sees_a_bad_loss(spec_file, tmp_path):
    """Without the all-reduce, rank 0 would wait in its backward's collective for a rank 1 that stopped (skip
    takes the same decision, so agreeing on it is the same test)."""
    action, code = "stop", 4
    from graphspec.studies.execute import fresh_env

    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(textwrap.dedent(HOOK))
    env = {**fresh_env(), "PYTHONPATH": str(tmp_path / "hook")}
    done = subprocess.run([sys.executable, "-m", "graphspec.cli", "run", str(spec_file), "--nproc", "2", "--set",
                           f"train.nonfinite.action={action}", "--set", "distributed.zero_stage=2", "--run-dir",
                           str(tmp_path / "run"), "--build-dir", str(tmp_path / "b")], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == code, done.stderr[-3000:]
    steps = [r["step"] for r in _records(tmp_path / "run")]
    assert steps == [1, 2, 3, 4] and "step 5: the loss is not finite" in done.stderr
    assert "rank 0: error:" in done.stderr and "rank 1: error:" in done.stderr  # both stopped, neither hung


def test_a_finite_loss_that_explodes_stops_the_run_by_default(spec_file, tmp_path, capsys):
    """The same learning rate with the default guard: the run stops at the first loss over 50 x the first
    steps', before that step's update, exit 4, naming the step and the losses."""
    run_dir = tmp_path / "run"
    code = main(["run", str(spec_file), "--set", "train.optimizer={name: sgd, lr: 10.0}", "--set",
                 "train.grad_clip=null", "--set", "train.steps=30", "--run-dir", str(run_dir),
                 "--build-dir", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 4 and "the loss exploded: " in err and "over 50 x the first steps'" in err, err
    stopped = _records(run_dir)[-1]["step"] + 1
    assert f"train: step {stopped}: the loss exploded" in err and "Traceback" not in err
    assert "train.exploding.action: skip" in err and all(math.isfinite(r["loss"]) for r in _records(run_dir))


def test_the_loss_guard_judges_bounds_and_spikes():
    from graphspec.runtime.guard import LossGuard

    guard = LossGuard(bound=50, spike=10, window=5)
    assert guard.judge(1e9) is None  # no reference yet
    for loss in (6.0, 6.2, 5.8):
        guard.accept(loss)
    assert guard.judge(300.0) is None and "exploded" in (guard.judge(301.0) or "")  # 50 x the first three's 6.0
    for loss in (1.0, 1.0, 1.0, 1.0, 1.0):  # the window is full: the spike bound applies
        guard.accept(loss)
    assert guard.judge(9.9) is None  # 9.9 x the recent median 1.0
    assert "spiked" in (guard.judge(10.5) or "")
    for _ in range(5):
        guard.accept(0.01)
    assert guard.judge(0.5) is None  # 50 x the recent median, but under the first steps' loss: noise, not a spike


def test_skip_drops_exploded_steps_then_stops_after_too_many_in_a_row(spec_file, tmp_path, capsys):
    """With action skip, an exploded step leaves the weights as they were; the weights that exploded the loss
    explode it again on the next batches, so the run stops after max_in_a_row of them (3 by default)."""
    code = main(["run", str(spec_file), "--set", "train.optimizer={name: sgd, lr: 10.0}", "--set",
                 "train.grad_clip=null", "--set", "train.steps=30", "--set", "train.exploding.action=skip",
                 "--run-dir", str(tmp_path / "run"), "--build-dir", str(tmp_path / "b")])
    out, err = capsys.readouterr()
    assert code == 4 and "the loss exploded" in out and "step skipped (1 in a row)" in out, (out, err)
    assert "after 3 skipped steps in a row" in err and "Traceback" not in err, err
