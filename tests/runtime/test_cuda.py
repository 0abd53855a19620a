"""What only a GPU can show: a run on CUDA in each precision, frozen-tower offload with its side stream, and an
exact resume under deterministic kernels. Skipped where torch sees no GPU (the CI machine); the GPU smoke script
(benchmarks/gpu_smoke.py) runs them with DS_ACCELERATOR=cuda."""

from __future__ import annotations

import json

import pytest
import torch

from graphspec.cli import main

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")]


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "split" not in r}


@pytest.mark.parametrize("precision, zero", [("fp32", 0), ("bf16", 2), ("bf16", 3), ("fp16", 2)])
def test_a_run_trains_and_validates_on_the_gpu(precision, zero, train_spec, write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    train_spec["train"].update(steps=12, val_every=12, log_every=1, precision=precision)
    run_dir = tmp_path / "run"
    assert main(["run", str(write_spec(train_spec)), "--set", f"distributed.zero_stage={zero}", "--run-dir",
                 str(run_dir), "--build-dir", str(tmp_path / "b")]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = _losses(run_dir)
    assert len(losses) == 12 and all(v == v for v in losses.values()) and "itm_acc" in summary["val"]


def test_offloaded_frozen_layers_give_the_outputs_of_the_resident_tower(train_spec, compile_build, monkeypatch):
    """vision_tower frozen, its weights in pinned CPU memory, each layer copied on a side stream while the one
    before computes: the same outputs as the tower kept on the GPU."""
    from graphspec.runtime.train import prepare

    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    train_spec["nodes"]["vision_tower"]["freeze"] = True
    outs = {}
    for offload in ("none", "cpu"):
        s = prepare(compile_build(train_spec, [f"distributed.frozen.offload={offload}"]))
        assert bool(s.trainer.towers.streams) == (offload == "cpu")
        batch = s.trainer.move(s.task.train_batch(8, 0))
        with torch.no_grad():
            outs[offload] = s.trainer.towers(batch)["vision_tower"]["seq"][0].float().cpu()
    assert torch.allclose(outs["none"], outs["cpu"], atol=1e-6)


def test_a_deterministic_run_stopped_and_resumed_logs_the_uninterrupted_losses(train_spec, write_spec, tmp_path,
                                                                              monkeypatch):
    """Dropout on the GPU draws from its generator: the resumed run continues it (its state is checkpointed);
    deterministic kernels make the rest exact."""
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    train_spec["nodes"]["fusion"]["dropout"] = 0.1
    train_spec["train"].update(steps=10, val_every=None, log_every=1, checkpoint_every=5, deterministic=True)
    train_spec["data"]["val"] = None
    spec = write_spec(train_spec)
    assert main(["run", str(spec), "--run-dir", str(tmp_path / "whole"), "--build-dir", str(tmp_path / "b")]) == 0
    assert main(["run", str(spec), "--run-dir", str(tmp_path / "cut"), "--build-dir", str(tmp_path / "b"),
                 "--set", "train.steps=10"]) == 0
    (tmp_path / "cut" / "summary.json").unlink()
    import shutil

    shutil.rmtree(tmp_path / "cut" / "checkpoint")
    assert main(["run", "--resume", str(tmp_path / "cut")]) == 0  # from step 5: steps 6-10 again
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "whole"), rel=0, abs=1.5e-5)
