"""Inside the engine: frozen parameters hold no gradient and no optimizer state, and stay in eval mode."""

from __future__ import annotations

import pytest
import torch

from graphspec.compiler import build_model
from graphspec.runtime.engine import make_trainer
from graphspec.runtime.tasks.captions import Captions
from graphspec.runtime.text import load_tokenizer


def _steps(build, n: int = 3):
    spec = build.spec
    model, plan = build_model(spec)
    trainer = make_trainer(spec, model, build.plan, build.groups, build.ds_config)
    data = Captions.read(spec, spec.roles(), lambda img: torch.rand(3, 32, 32))
    task = Captions(spec, spec.roles(), data,
                    load_tokenizer(spec, "text", 128, build.dir, lambda: ["a red circle left of a blue square"] * 4))
    for i in range(n):
        batch = task.train_batch(8, i)
        trainer.engine.backward(task.losses(trainer.forward(batch), batch)["loss"])
        trainer.engine.step()
    return trainer, model, plan


@pytest.mark.parametrize("stage", [0, 2])
def test_frozen_parameters_have_no_grad_and_no_optimizer_state(train_spec, compile_build, stage):
    train_spec["nodes"]["vision_tower"]["freeze"] = True
    train_spec["nodes"]["fusion"]["freeze"] = {"layers": "0:1"}  # frozen between trainable blocks
    trainer, model, plan = _steps(compile_build(train_spec, [f"distributed.zero_stage={stage}"]))
    named = dict(model.named_parameters())
    frozen = [named[n] for n in plan.frozen]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    trainable = sum(p.numel() for n, p in named.items() if n not in plan.frozen)
    inner = trainer.optimizer.optimizer if stage else trainer.optimizer  # ZeRO wraps torch's AdamW
    state_numel = sum(s["exp_avg"].numel() for s in inner.state.values())
    assert state_numel == trainable  # Adam moments for trainable parameters, none for frozen ones
    if stage == 0:
        assert not any(id(p) in {id(q) for q in frozen} for p in inner.state)
    assert all(g["params"] for g in inner.param_groups)  # never an empty group
    assert "vision_tower" not in dict(trainer.engine.module.named_children())  # it runs outside the engine


def test_frozen_modules_stay_in_eval_after_train(train_spec, compile_build):
    train_spec["nodes"]["vision_tower"]["freeze"] = True
    train_spec["nodes"]["text_tower"]["freeze"] = {"layers": "0:1"}
    trainer, _, _ = _steps(compile_build(train_spec), n=1)
    trainer.eval()
    trainer.train()
    module = trainer.engine.module
    assert not trainer.cut.towers["vision_tower"].training
    assert not module.get_submodule("text_tower.model.encoder.layer.0").training
    assert module.get_submodule("text_tower.model.encoder.layer.1").training
    assert module.get_submodule("fusion").training
