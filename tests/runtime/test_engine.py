"""Inside the engine: frozen parameters hold no gradient and no optimizer state, and stay in eval mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graphspec.compiler import build_model
from graphspec.runtime.engine import make_trainer
from graphspec.runtime.tasks.captions import Captions
from graphspec.runtime.text import load_tokenizer


def _steps(build, n: int = 3):
    spec = build.spec
    model, plan = build_model(spec)
    trainer = make_trainer(spec, model, build.plan, build.groups, build.ds_config, build.placed)
    data = Captions.read(spec, spec.roles(), lambda img: torch.rand(3, 32, 32))
    task = Captions(spec, spec.roles(), data,
                    load_tokenizer(spec, "text", 128, build.dir, lambda: ["a red circle left of a blue square"] * 4))
    for i in range(n):
        batch = trainer.move(task.train_batch(8, i))
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


def test_the_first_run_on_a_machine_says_deepspeed_is_compiling_its_ops(tiny, tmp_path, monkeypatch, capsys):
    """Found by the folder torch compiles each op into: missing, the run says so before the silent minute."""
    import graphspec
    from graphspec.runtime.engine import announce_op_builds, unbuilt_ops

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    spec = graphspec.loads(json.dumps(tiny))
    assert unbuilt_ops(spec) == ["deepspeed_shm_comm"]
    offloaded = graphspec.override(spec, {"distributed.zero_stage": 2, "distributed.offload_optimizer": "cpu"})
    assert unbuilt_ops(offloaded) == ["deepspeed_shm_comm", "cpu_adam"]
    assert announce_op_builds(spec) is not None
    assert "DeepSpeed compiles deepspeed_shm_comm first, once per installation" in capsys.readouterr().out
    built = next((tmp_path / "extensions").rglob("deepspeed_shm_comm"))  # where torch would put it
    (built / "deepspeed_shm_comm.so").write_bytes(b"")
    (built / "build.ninja").write_text("build shm.o: compile /elsewhere/deepspeed/ops/csrc/shm.cpp\n")
    assert unbuilt_ops(spec) == ["deepspeed_shm_comm"]  # built from another installation's sources: again
    import deepspeed

    here = Path(deepspeed.__file__).resolve().parent
    (built / "build.ninja").write_text(f"build shm.o: compile {here}/ops/csrc/cpu/comm/shm.cpp\n")
    assert unbuilt_ops(spec) == [] and announce_op_builds(spec) is None
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    assert unbuilt_ops(spec) == []  # no shared-memory collectives on an accelerator
    assert unbuilt_ops(offloaded) == ["cpu_adam"]  # but the offloaded optimizer's Adam, built with nvcc


def test_an_offloaded_optimizer_on_a_gpu_machine_without_nvcc_is_named_before_the_engine(tiny, monkeypatch):
    import graphspec
    from graphspec.language.errors import EnvironmentProblem
    from graphspec.runtime.engine import check_toolchain
    from torch.utils import cpp_extension

    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    spec = graphspec.override(graphspec.loads(json.dumps(tiny)), {"distributed.zero_stage": 2,
                                                                "distributed.offload_optimizer": "cpu"})
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    with pytest.raises(EnvironmentProblem) as e:
        check_toolchain(spec, ["cpu_adam"])
    assert "torch finds none here (no CUDA_HOME, no nvcc on PATH)" in e.value.format()
    assert "DS_BUILD_CPU_ADAM=1" in e.value.format() and e.value.exit_code == 3
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    check_toolchain(spec, ["cpu_adam"])  # with the toolkit: DeepSpeed builds it
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    check_toolchain(spec, ["cpu_adam"])  # on the CPU, gcc builds it
