"""Activation checkpointing (`checkpoint: true`), through the emitted GraphModule: the same losses and gradients as
without it, dropout included; the checkpointed layers run again in the backward pass and keep fewer tensors; a node
that gets no gradient is left alone; the option is part of a tower's record; a tower whose library cannot checkpoint
it is a compile error."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import yaml

import graphspec
from graphspec.compiler import build_model, compile_spec
from graphspec.compiler.graph import build_graph
from graphspec.compiler.layers.adapter import Adapter
from graphspec.compiler.tower_records import RecordedTower, record_key
from graphspec.language.errors import SpecError
from graphspec.language.schema import NODE_CLASSES, Spec, kind_of
from graphspec.runtime.objectives import IGNORE, itm_loss, mlm_loss
from tests.compiler.test_kinds import CASES, _inputs, _spec

ONE_TOWER_VISION = {**CASES["one_tower"], "nodes": {**CASES["one_tower"]["nodes"], "joint": {
    **CASES["one_tower"]["nodes"]["joint"], "backbone": "vision", "model_type": None, "source": "vit_tiny_patch16_224",
    "vocab_size": 64, "max_text_positions": 16,
    "size": {"hidden": 32, "layers": 2, "heads": 2, "mlp_ratio": 2, "patch_size": 8}}}}
# case -> (changes to the tiny spec, the nodes checkpointed)
CHECKPOINTED = {
    "two_tower": ({}, ("text_tower", "vision_tower", "fusion")),
    "layer_ports": ({"nodes.fusion.inputs": {"text": "text_tower.layer_1", "image": "vision_tower.layer_1"}},
                    ("text_tower", "vision_tower")),  # an intermediate layer's output, read inside a checkpoint
    "hf_vision": (CASES["hf_vision"], ("vision_tower",)),
    "cross_attention": (CASES["cross_attention"], ("fusion",)),
    "merged_attention": (CASES["merged_attention"], ("fusion",)),
    "one_tower_text": (CASES["one_tower"], ("joint",)),
    "one_tower_vision": (ONE_TOWER_VISION, ("joint",)),
}


def _with(changes: dict, checkpoint: tuple = (), dropout: float = 0.1) -> Spec:
    """The tiny spec with `changes`, dropout on in every node that has it, `checkpoint: true` on `checkpoint`."""
    data = _spec(copy.deepcopy(changes)).model_dump(mode="json")  # (_spec keeps the values it is given)
    for name, node in data["nodes"].items():
        if "checkpoint" in node:
            node["checkpoint"] = name in checkpoint
        if "dropout" in node:
            node["dropout"] = dropout
    return Spec.model_validate(data)


@dataclass
class Step:
    """A training step (itm + mlm loss, as the captions task sums them) and what it did."""

    loss: torch.Tensor
    grads: dict[str, torch.Tensor | None]  # every parameter's gradient
    calls: dict[str, int]  # node -> how often a module inside its first layer ran (forward + backward)
    kept: int  # bytes autograd kept for the backward while the nodes ran (activations: parameters aside)


def _probe(model, node: str):
    """A module inside the node's first layer: it runs again when that layer is recomputed (transformers
    checkpoints a layer's `forward`, so hooks on the layer itself run once)."""
    module = model.get_submodule(node)
    assert isinstance(module, Adapter) and module.stack is not None
    first = next(module.get_submodule(module.stack).children())
    return next(first.children())


def _step(model, inputs: dict, nodes) -> Step:
    calls, inside, kept = dict.fromkeys(nodes, 0), [], {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor):
        if inside and t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()  # each storage once
        return t

    def count(node: str):
        calls[node] += 1

    hooks = [_probe(model, node).register_forward_hook(lambda m, i, o, node=node: count(node)) for node in nodes]
    for node in nodes:
        hooks.append(model.get_submodule(node).register_forward_pre_hook(lambda m, i, node=node: inside.append(node)))
        hooks.append(model.get_submodule(node).register_forward_hook(lambda m, i, o: inside.pop() and None))  # o kept
    model.train()
    model.zero_grad(set_to_none=True)
    labels = torch.full(inputs["text_ids"].shape, IGNORE)
    labels[:, 1:4] = inputs["text_ids"][:, 1:4]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            torch.manual_seed(7)  # the same dropout draws in both models
            out = model(**inputs, mlm_labels=labels)
            loss = itm_loss(out["itm"], torch.arange(len(labels)) % 2) + mlm_loss(out["mlm"], labels)
            loss.backward()
    finally:
        for h in hooks:
            h.remove()
    return Step(loss.detach(), {n: p.grad for n, p in model.named_parameters()}, calls, sum(kept.values()))


@pytest.fixture(scope="module", params=sorted(CHECKPOINTED))
def steps(request) -> tuple[Step, Step]:
    """A step of the plain model and of the checkpointed one with the plain one's weights, on the same batch."""
    changes, nodes = CHECKPOINTED[request.param]
    plain, _ = build_model(_with(changes))
    spec = _with(changes, nodes)
    checkpointed, _ = build_model(spec)
    checkpointed.load_state_dict(plain.state_dict())
    inputs = _inputs(spec, 3)
    torch.manual_seed(1)
    assert not torch.equal(plain(**inputs)["itm"], plain(**inputs)["itm"])  # dropout is on: its draws matter
    return _step(plain, inputs, nodes), _step(checkpointed, inputs, nodes)


def test_every_kind_with_the_option_has_a_case():
    kinds = {kind_of(c) for c in NODE_CLASSES if "checkpoint" in c.model_fields}
    assert kinds == {"hf_text", "hf_vision", "timm_vision", "one_tower", "co_attention", "cross_attention",
                     "merged_attention"}
    covered = {_with(changes).nodes[n].kind for changes, nodes in CHECKPOINTED.values() for n in nodes}
    assert covered == kinds


def test_the_losses_and_gradients_are_those_without_checkpointing(steps):
    plain, checkpointed = steps
    torch.testing.assert_close(checkpointed.loss, plain.loss, rtol=0, atol=0)
    assert plain.grads.keys() == checkpointed.grads.keys()
    got = {n for n, g in plain.grads.items() if g is not None}  # all but the layers after a layer_N port read
    assert got == {n for n, g in checkpointed.grads.items() if g is not None} and len(got) > len(plain.grads) // 2
    for name in got:
        torch.testing.assert_close(checkpointed.grads[name], plain.grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointed_layers_run_again_in_the_backward_and_keep_fewer_tensors(steps):
    plain, checkpointed = steps
    assert set(plain.calls.values()) == {1}
    assert set(checkpointed.calls.values()) == {2}  # the forward, and its recomputation in the backward
    assert checkpointed.kept < 0.5 * plain.kept  # the layers keep only their inputs


def test_a_frozen_tower_that_gets_no_gradient_is_not_recomputed():
    spec = _with({"nodes.text_tower.freeze": True}, ("text_tower", "fusion"))
    model, _ = build_model(spec)
    inputs = _inputs(spec, 3)
    model.train()  # even in train mode (dropout on), as `freeze: {train_mode: true}` keeps a frozen part
    out = model.get_submodule("text_tower")(inputs["text_ids"], inputs["text_mask"])
    assert not out["seq"][0].requires_grad  # transformers' hook for reentrant checkpointing is off
    assert _step(model, inputs, ("text_tower", "fusion")).calls == {"text_tower": 1, "fusion": 2}


def test_the_option_is_part_of_a_towers_record(tiny, tmp_path, monkeypatch):
    """A recorded tower stands in only for the same option (the record of one without it would skip the check
    that its library can checkpoint), and compiles as the tower itself does."""
    monkeypatch.setenv("GRAPHSPEC_TOWER_RECORDS", str(tmp_path))
    plain = graphspec.loads(yaml.safe_dump(tiny))
    tiny["nodes"]["text_tower"]["checkpoint"] = tiny["nodes"]["vision_tower"]["checkpoint"] = True
    spec = graphspec.loads(yaml.safe_dump(tiny))
    for tower in ("text_tower", "vision_tower"):
        assert record_key(spec, build_graph(spec), tower) != record_key(plain, build_graph(plain), tower)
    built = compile_spec(spec)
    recorded = compile_spec(spec)
    assert isinstance(recorded.module.text_tower, RecordedTower) and isinstance(recorded.module.vision_tower,
                                                                                  RecordedTower)
    assert recorded.summary == built.summary and recorded.plan == built.plan


def test_a_timm_model_without_checkpointing_is_a_compile_error(tiny, write_spec, line_of):
    tiny["nodes"]["vision_tower"] = {"kind": "timm_vision", "source": "dla34", "init": "random", "input": "image",
                                     "checkpoint": True}
    tiny["nodes"]["fusion"]["width"] = 32
    path = write_spec(tiny)
    with pytest.raises(SpecError) as info:
        compile_spec(graphspec.load(path))
    text = info.value.format()
    assert f"spec.yaml:{line_of(path, 'checkpoint: true')}:" in text
    assert "nodes.vision_tower.checkpoint: timm's 'dla34' has no activation checkpointing" in text
    assert "fix: remove `checkpoint: true` from this node, or use an architecture that has it" in text


def test_a_transformers_model_without_checkpointing_is_a_compile_error(tiny, monkeypatch):
    from transformers import BertModel

    monkeypatch.setattr(BertModel, "supports_gradient_checkpointing", False)
    monkeypatch.setenv("GRAPHSPEC_TOWER_RECORDS", "off")  # a record would stand in for the build
    tiny["nodes"]["text_tower"]["checkpoint"] = True
    with pytest.raises(SpecError) as info:
        compile_spec(graphspec.loads(yaml.safe_dump(tiny)))
    text = info.value.format()
    assert "nodes.text_tower.checkpoint: transformers' BertModel has no activation checkpointing" in text
    assert "fix: remove `checkpoint: true`" in text
