"""The emitted DeepSpeed config: batch relations, groups, schedule, and the checks DeepSpeed skips."""

from __future__ import annotations

import pytest

import graphspec
from graphspec.compiler import build_model, compile_spec
from graphspec.language.errors import SpecError


def _compile(tiny, write_spec, **sets):
    return compile_spec(graphspec.load(write_spec(tiny), overrides=[f"{k}={v}" for k, v in sets.items()]))


def _errors(tiny, write_spec, **sets) -> str:
    with pytest.raises(SpecError) as info:
        _compile(tiny, write_spec, **sets)
    return "\n".join(i.format() for i in info.value.errors)


def test_batch_relation(tiny, write_spec):
    ds = _compile(tiny, write_spec, **{"train.batch_size": 256, "train.micro_batch_size": 32}).ds_config
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (256, 32, 8)
    ds = _compile(tiny, write_spec, **{"train.batch_size": 256, "train.micro_batch_size": 32,
                                        "distributed.world_size": 2}).ds_config
    assert ds["gradient_accumulation_steps"] == 4


def test_groups_carry_lr_multipliers_into_the_schedule(tiny, write_spec):
    tiny["train"]["lr_multipliers"] = {"fusion": 5, "heads.itm": 10}
    c = _compile(tiny, write_spec)
    scales = {g["name"]: g["lr_scale"] for g in c.groups}
    assert scales == {"lr_x1/decay": 1, "lr_x1/no_decay": 1, "lr_x5/decay": 5, "lr_x5/no_decay": 5,
                      "lr_x10/decay": 10, "lr_x10/no_decay": 10}
    assert c.ds_config["scheduler"]["params"]["warmup_max_lr"] == [1e-3 * g["lr_scale"] for g in c.groups]
    assert all(g["weight_decay"] == 0 for g in c.groups if g["name"].endswith("no_decay"))
    fusion = next(g for g in c.groups if g["name"] == "lr_x5/decay")["params"]
    assert fusion and all(n.startswith("fusion.") for n in fusion)


def test_no_warmup_starts_at_the_peak(tiny, write_spec):
    sched = _compile(tiny, write_spec, **{"train.schedule.warmup": 0}).ds_config["scheduler"]["params"]
    assert sched["warmup_min_lr"] == sched["warmup_max_lr"] and sched["warmup_num_steps"] == 1


def test_unknown_top_level_key_is_an_error(tiny, write_spec):
    tiny["distributed"] = {"deepspeed": {"wall_clock_breakdown": True, "gradient_clipping_typo": 1.0}}
    text = _errors(tiny, write_spec)
    assert "distributed.deepspeed.gradient_clipping_typo: DeepSpeed does not know the top-level key" in text
    assert "wall_clock_breakdown" not in text  # a real key passes


def test_deepspeed_own_parser_runs(tiny, write_spec):
    tiny["distributed"] = {"deepspeed": {"zero_optimization": {"stage": 2, "no_such_option": 1}}}
    assert "DeepSpeed rejects the config" in _errors(tiny, write_spec)


def test_fp16_on_cpu(tiny, write_spec):
    text = _errors(tiny, write_spec, **{"train.precision": "fp16", "distributed.accelerator": "cpu"})
    assert "train.precision: fp16 does not train on the CPU" in text and "use `precision: bf16`" in text


def test_offload_with_torch_adam_forced(tiny, write_spec):
    tiny["distributed"] = {"zero_stage": 2, "offload_optimizer": "cpu",
                           "deepspeed": {"optimizer": {"params": {"torch_adam": True}}}}
    assert "an offloaded optimizer needs DeepSpeedCPUAdam" in _errors(tiny, write_spec)


def test_offload_emits_cpu_adam(tiny, write_spec):
    ds = _compile(tiny, write_spec, **{"distributed.zero_stage": 2, "distributed.offload_optimizer": "cpu"}).ds_config
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "torch_adam" not in ds["optimizer"]["params"]


@pytest.mark.parametrize("clip", ["1.0", "null"])  # null: ZeRO-2 without the gradient norm
def test_deepspeed_initialize_accepts_the_config(clip, tiny, write_spec, monkeypatch):
    import deepspeed

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29531"}.items():
        monkeypatch.setenv(key, value)
    tiny["nodes"]["vision_tower"]["freeze"] = True
    tiny["train"]["lr_multipliers"] = {"fusion": 5}
    spec = graphspec.load(write_spec(tiny), overrides=["distributed.zero_stage=2", f"train.grad_clip={clip}",
                                                       "train.precision=bf16"])
    compiled = compile_spec(spec)
    assert compiled.ds_config["zero_optimization"].get("compute_grad_norm", True) is (clip != "null")
    model, plan = build_model(spec)
    params = dict(model.named_parameters())
    groups = [{"params": [params[n] for n in g["params"]], "weight_decay": g["weight_decay"],
               "lr": spec.train.optimizer.lr * g["lr_scale"]} for g in compiled.groups]
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, model_parameters=groups,
                                                          config=compiled.ds_config)
    assert engine.train_batch_size() == 8 and engine.zero_optimization_stage() == 2
    assert len(optimizer.param_groups) == len(compiled.groups)
    assert scheduler.get_lr()[0] == 0.0  # warm-up starts at zero
    handed = [p for g in optimizer.bit16_groups for p in g]  # ZeRO-2 keeps the params it was given here
    frozen = {id(params[n]) for n in plan.frozen}
    assert len(handed) == sum(len(g["params"]) for g in compiled.groups) and not any(id(p) in frozen for p in handed)


def test_without_clipping_zero_1_and_2_skip_the_gradient_norm(tiny, write_spec):
    """Nothing reads the norm then; with clipping, ZeRO 0 or 3, an offloaded optimizer, or where the norm is the
    only check of the gradients (fp32, bf16 without DeepSpeed's overflow check) it stays."""
    import graphspec

    def zero(**changes):
        changes = {"train.precision": "bf16", **changes}
        spec = graphspec.load(write_spec(tiny), overrides=[f"{k}={v}" for k, v in changes.items()])
        return graphspec.compile(spec).ds_config["zero_optimization"]

    assert "compute_grad_norm" not in zero(**{"train.grad_clip": "null", "distributed.zero_stage": 2,
                                              "train.precision": "fp32"})
    assert "compute_grad_norm" not in zero(**{"train.grad_clip": "null", "distributed.zero_stage": 2,
                                              "distributed.deepspeed": "{bf16: {check_grad_overflow: false}}"})

    assert zero(**{"train.grad_clip": "null", "distributed.zero_stage": 2})["compute_grad_norm"] is False
    assert zero(**{"train.grad_clip": "null", "distributed.zero_stage": 1})["compute_grad_norm"] is False
    assert "compute_grad_norm" not in zero(**{"train.grad_clip": 1.0, "distributed.zero_stage": 2})
    assert "compute_grad_norm" not in zero(**{"train.grad_clip": "null", "distributed.zero_stage": 3})
    assert "compute_grad_norm" not in zero(**{"train.grad_clip": "null", "distributed.zero_stage": 2,
                                              "distributed.offload_optimizer": "cpu"})


@pytest.mark.parametrize("trainable", [4_000_006, 4_000_010, 3_999_999, 12])
def test_buckets_are_a_multiple_of_zero_alignment(tiny, write_spec, trainable):
    """ZeRO-1/2 assert that the allgather bucket is a multiple of 2 when the optimizer starts: a quarter of an
    odd count of weights (4,000,006 / 4 = 1,000,001) once stopped a run there."""
    from graphspec.compiler.ds_config import buckets

    for stage in (1, 2, 3):
        spec = graphspec.load(write_spec(tiny), overrides=[f"distributed.zero_stage={stage}"])
        size = buckets(spec, trainable)["reduce_bucket_size"]
        assert size % 8 == 0 and size >= trainable // 4


def test_an_odd_bucket_size_is_a_located_error(tiny, write_spec):
    with pytest.raises(SpecError, match="multiple of 2"):
        graphspec.load(write_spec(tiny), overrides=["distributed.zero_stage=2", "distributed.reduce_bucket_size=1000001"])
