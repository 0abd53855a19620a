"""Freeze annotations resolve to one set of parameter names, and everything follows that set."""

from __future__ import annotations

import graphspec
from graphspec.compiler import build_model, compile_spec


def _plan(tiny, write_spec):
    return compile_spec(graphspec.load(write_spec(tiny))).plan


def test_whole_node(tiny, write_spec):
    tiny["nodes"]["vision_tower"]["freeze"] = True
    compiled = compile_spec(graphspec.load(write_spec(tiny)))
    names = [n for n, _ in compiled.module.named_parameters()]
    assert compiled.plan.frozen == {n for n in names if n.startswith("vision_tower.")}
    assert compiled.plan.frozen_nodes == ("vision_tower",)
    assert compiled.plan.eval_modules == ("vision_tower",)
    counts = compiled.summary["params"]["vision_tower"]
    assert counts["trainable"] == 0 and counts["frozen"] == counts["total"] > 0
    assert not any(n in compiled.plan.frozen for g in compiled.groups for n in g["params"])


def test_layer_range_and_embeddings(tiny, write_spec):
    tiny["nodes"]["text_tower"]["freeze"] = {"layers": "0:1", "embeddings": True}
    frozen = _plan(tiny, write_spec).frozen
    assert any(n.startswith("text_tower.model.encoder.layer.0.") for n in frozen)
    assert not any(n.startswith("text_tower.model.encoder.layer.1.") for n in frozen)
    assert any(n.startswith("text_tower.model.embeddings.") for n in frozen)


def test_vit_layers_and_param_patterns(tiny, write_spec):
    tiny["nodes"]["vision_tower"]["freeze"] = {"layers": "1:", "params": ["patch_embed.*"]}
    frozen = _plan(tiny, write_spec).frozen
    assert {n for n in frozen if "blocks" in n} and all(".blocks.1." in n for n in frozen if "blocks" in n)
    assert "vision_tower.model.patch_embed.proj.weight" in frozen
    assert "vision_tower.model.pos_embed" not in frozen


def test_frozen_parameters_get_no_gradient(tiny, write_spec):
    tiny["nodes"]["fusion"]["freeze"] = {"layers": "0:1"}
    model, plan = build_model(graphspec.load(write_spec(tiny)))
    assert plan.eval_modules == ("fusion.layers.0",)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in plan.frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in plan.frozen)


def test_train_mode_keeps_frozen_parts_out_of_eval(tiny, write_spec):
    tiny["nodes"]["vision_tower"]["freeze"] = {"layers": "0:2", "train_mode": True}
    plan = _plan(tiny, write_spec)
    assert plan.frozen and plan.eval_modules == () and plan.train_mode == ("vision_tower",)
