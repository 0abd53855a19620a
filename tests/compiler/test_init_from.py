"""Fine-tuning from a checkpoint: weights load by name, and every key that does not fit is reported."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import graphspec
from graphspec.compiler import build_model, compile_spec
from graphspec.language.errors import SpecError


@pytest.fixture
def checkpoint(tiny, write_spec, tmp_path):
    """A 'pretraining' checkpoint of the tiny model: its weights, perturbed so loading is visible."""
    model, _ = build_model(graphspec.load(write_spec(tiny, "pretrain.yaml")))
    weights = {n: p.detach() + 0.5 for n, p in model.named_parameters()}
    (tmp_path / "ckpt").mkdir()
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"))
    return tmp_path / "ckpt", weights


def test_new_heads_start_fresh_and_old_weights_load(tiny, write_spec, checkpoint):
    directory, weights = checkpoint
    tiny["init_from"] = str(directory)
    tiny["heads"] = {"ve": {"kind": "classify", "input": "pooled", "classes": 3}}
    tiny["objectives"] = {"ve": {"kind": "classify"}}
    tiny["data"] = {"train": {"task": "snli_ve"}}
    spec = graphspec.load(write_spec(tiny, "finetune.yaml"))
    compiled = compile_spec(spec)
    report = compiled.summary["init_from"]
    assert report["missing"] == ["heads.ve.net.weight", "heads.ve.net.bias"] and report["mismatched"] == []
    assert {"heads.itm.net.weight", "heads.mlm.decoder.weight"} <= set(report["unexpected"])
    messages = [w.message for w in compiled.warnings]
    assert any(m.startswith("2 weights are not in the checkpoint and start fresh: heads.ve.net.weight") for m in messages)
    assert any("checkpoint weights have no place in this model" in m for m in messages)
    model, _ = build_model(spec)
    assert torch.equal(model.fusion.layers[0].text.cross.q.weight, weights["fusion.layers.0.text.cross.q.weight"])


def test_a_weight_of_another_shape_is_an_error(tiny, write_spec, checkpoint):
    directory, _ = checkpoint
    tiny["init_from"] = str(directory)
    tiny["nodes"]["fusion"]["mlp_ratio"] = 3
    with pytest.raises(SpecError) as info:
        compile_spec(graphspec.load(write_spec(tiny, "finetune.yaml")))
    text = info.value.format()
    assert "init_from: 12 weights have another shape in the checkpoint: fusion.layers.0.text.ffn.up.weight (64, 32) -> (96, 32)" in text


def test_a_missing_checkpoint(tiny, write_spec, tmp_path):
    tiny["init_from"] = str(tmp_path / "nowhere")
    with pytest.raises(SpecError) as info:
        compile_spec(graphspec.load(write_spec(tiny)))
    assert f"init_from: no checkpoint weights at {tmp_path / 'nowhere' / 'model.safetensors'}" in info.value.format()
