"""A step and a validation of every task, with the training device made observable (tests/runtime/devices.py):
the losses read the batch the step moved to the device, validation's metrics read outputs brought back to the
host, and a frozen tower's cache meets its stored and computed rows on the host and moves them once. A tensor
on the wrong side raises here as it would on a GPU."""

from __future__ import annotations

import pytest

from graphspec.runtime.report import Silent
from graphspec.runtime.train import prepare, step_losses, validation

from .devices import Device, compute_underneath, observe_device, observed
from .test_downstream import TASKS


def _spec(train_spec: dict, case: str) -> dict:
    spec = train_spec
    if case == "captions+itc, two passes":
        spec["heads"]["itc"] = {"kind": "itc", "inputs": {"text": "text_tower", "image": "vision_tower"}, "dim": 16}
        spec["objectives"]["itc"] = {"weight": 1.0}
        spec["objectives"]["itm"] = {"weight": 1.0, "recipe": "two_pass"}
    elif case == "captions, frozen towers cached":
        spec["nodes"]["vision_tower"]["freeze"] = spec["nodes"]["text_tower"]["freeze"] = True
        spec["distributed"] = {"frozen": {"cache_outputs": True}}
        spec["data"]["train"]["samples"] = 8  # batches of 8 draw again from 8 scenes: some cached, some not
    elif case in TASKS:
        head = TASKS[case][0]
        if case == "refexp":
            spec["inputs"]["regions"] = {"modality": "boxes", "max_candidates": 4}
        spec.update(heads={case: head}, objectives={case: {"kind": head["kind"]}},
                    data={"train": {"task": case, "samples": 24}, "val": {"task": case, "split": "val", "samples": 8}})
    spec["train"].update(batch_size=8, steps=4)
    return spec


CASES = ["captions", "captions+itc, two passes", "captions, frozen towers cached", *TASKS]


@pytest.mark.parametrize("case", CASES)
def test_a_step_and_a_validation_read_each_tensor_where_it_is(case, train_spec, compile_build, monkeypatch,
                                                               tmp_path):
    monkeypatch.setenv("GRAPHSPEC_CACHE", str(tmp_path / "cache"))
    s = prepare(compile_build(_spec(train_spec, case)))
    found = 0
    with observe_device(s.trainer, monkeypatch):
        for index in range(2):
            batch = s.task.train_batch(8, index)
            batch.pop("_data", None)
            found = len(batch.get("_cache", {}).get("vision_tower", {}).get("found", {}))
            parts = step_losses(s, batch)
            assert isinstance(parts["loss"], Device)  # computed on the device, from the moved batch
            s.trainer.engine.backward(parts["loss"])
            s.trainer.engine.step()
        if case == "captions, frozen towers cached":
            assert 0 < found < 8  # the second batch met stored and computed rows together
        val = validation(s, Silent(), 1)
    assert val and all(not isinstance(v, Device) for v in val.values())


def test_eval_computes_its_metrics_on_the_host(train_spec, compile_build, tmp_path, monkeypatch, capsys):
    """`graphspec eval --device`: the batches move to the device, the outputs come back for the metrics (the
    same metrics training logged)."""
    import json

    from graphspec.cli import main
    from graphspec.runtime import evaluate
    from graphspec.runtime.train import run

    summary = run(compile_build(train_spec, ["train.steps=4", "train.val_every=4"]), tmp_path / "run",
                  show_bar=False)
    real = evaluate.load_checkpoint

    def load(ckpt):
        spec, model = real(ckpt)
        compute_underneath(model, monkeypatch)
        return spec, model

    monkeypatch.setattr(evaluate, "load_checkpoint", load)
    capsys.readouterr()
    with observed(monkeypatch):
        assert main(["eval", str(tmp_path / "run"), "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert all(metrics[k] == v for k, v in summary["val"].items())


def test_a_device_that_is_not_one_or_not_here_is_named(tmp_path, capsys):
    from graphspec.cli import main

    assert main(["eval", str(tmp_path), "--device", "gpu0"]) == 2
    assert "--device gpu0: not a device torch knows" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert main(["predict", str(tmp_path), "--image", "x.png", "--text", "a", "--device", "cuda"]) == 3
        assert "--device cuda: this machine shows no GPU(s)" in capsys.readouterr().err
