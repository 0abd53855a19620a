"""The DeepSpeed config, emitted from the spec and checked at compile time.

Checked twice: by DeepSpeed's own config parser and scheduler classes, and by
the rules DeepSpeed itself skips (unknown top-level keys, fp16 on CPU, every
parameter frozen, ...), so an inconsistent config fails at `compile`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from graphspec.language.schema import Spec

_SCHEDULERS = {"linear": "WarmupDecayLR", "cosine": "WarmupCosineLR", "constant": "WarmupLR"}
# Top-level keys read outside DeepSpeedConfig's parser (by the engine or launcher).
ENGINE_KEYS = {"optimizer", "scheduler", "zero_allow_untested_optimizer", "compression_training",
                "data_efficiency", "curriculum_learning", "autotuning", "elasticity", "flops_profiler"}


def warmup_steps(spec: Spec) -> int:
    w = spec.train.schedule.warmup
    return int(w) if w >= 1 else int(math.ceil(w * spec.train.steps))


def resolve_accelerator(spec: Spec) -> str:
    if spec.distributed.accelerator != "auto":
        return spec.distributed.accelerator
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _optimizer(spec: Spec) -> dict:
    opt = spec.train.optimizer
    if opt.name == "sgd":
        return {"type": "SGD", "params": {"lr": opt.lr, "momentum": opt.momentum, "weight_decay": opt.weight_decay}}
    params: dict[str, Any] = {"lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps,
                              "weight_decay": opt.weight_decay, "adam_w_mode": opt.name == "adamw"}
    if spec.distributed.offload_optimizer == "none":
        params["torch_adam"] = True  # skip building the fused_adam C++ op (~50 s) for no gain on CPU
        # passed on to torch.optim.AdamW; the fused kernel halves ZeRO-2's step on this CPU (measured)
        params["fused"] = opt.kernel == "fused"
        params["foreach"] = opt.kernel == "foreach"
    return {"type": "Adam", "params": params}


def _scheduler(spec: Spec, groups: list[dict]) -> dict:
    s = spec.train.schedule
    peak = [spec.train.optimizer.lr * g["lr_scale"] for g in groups] or [spec.train.optimizer.lr]
    warm = warmup_steps(spec)
    if s.decay == "cosine":
        return {"type": "WarmupCosineLR", "params": {
            "total_num_steps": spec.train.steps, "warmup_num_steps": max(1, warm),
            "warmup_min_ratio": 0.0 if warm else 1.0, "cos_min_ratio": s.min_lr_ratio, "warmup_type": "linear"}}
    # DeepSpeed rejects warmup_num_steps <= 0; with no warm-up, start at the peak.
    params: dict[str, Any] = {"warmup_min_lr": [0.0] * len(peak) if warm else peak, "warmup_max_lr": peak,
                              "warmup_num_steps": max(1, warm), "warmup_type": "linear"}
    if s.decay == "linear":
        params["total_num_steps"] = spec.train.steps
    return {"type": _SCHEDULERS[s.decay], "params": params}


def buckets(spec: Spec, trainable: int) -> dict[str, Any]:
    """ZeRO's communication buckets sized to the trainable weights. DeepSpeed's defaults (5e8 elements, 2 GB of
    fp32 per bucket and per rank) are sized for models of billions of parameters; a quarter of the trainable
    weights, between 1e6 and 5e8 elements, keeps a few buckets per step, so that reducing one overlaps the
    backward of the next, which `overlap_comm` lets DeepSpeed do on several GPUs (on the CPU there are no
    streams to overlap on). A multiple of 8 elements: ZeRO-1/2 assert that the allgather bucket is one of
    their alignment (2), which an odd quarter is not."""
    d = spec.distributed
    if d.zero_stage == 0:
        return {}
    size = d.reduce_bucket_size or int(min(5e8, max(1e6, -(-trainable // 32) * 8)))
    out: dict[str, Any] = {"reduce_bucket_size": size}
    out.update({"allgather_bucket_size": size} if d.zero_stage in (1, 2) else {"stage3_prefetch_bucket_size": size})
    if d.world_size > 1 and resolve_accelerator(spec) == "cuda":
        out["overlap_comm"] = True
    return out


def emit_ds_config(spec: Spec, groups: list[dict], trainable: int = 0) -> dict:
    """`trainable`: the number of trainable weights, which sizes ZeRO's buckets (`buckets`)."""
    d, t = spec.distributed, spec.train
    micro, accum = spec.batch_plan()
    zero: dict[str, Any] = {"stage": d.zero_stage, **buckets(spec, trainable)}
    # Pinned host buffers let an accelerator copy to and from them asynchronously; on the CPU DeepSpeed's
    # accelerator pins nothing, so the same config serves both.
    if d.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": d.offload_optimizer, "pin_memory": True}
    if d.offload_param != "none":
        zero["offload_param"] = {"device": d.offload_param, "pin_memory": True}
    if (t.grad_clip is None and d.zero_stage in (1, 2) and d.offload_optimizer == "none"
            and "data_types" not in d.deepspeed and t.precision == "bf16"
            and d.deepspeed.get("bf16", {}).get("check_grad_overflow", True) is not False):
        # Without clipping nothing reads the global gradient norm, which ZeRO 1-2 otherwise compute per
        # parameter every step: measured 0.10-0.12 s against 0.18-0.23 s for Experiment 1's step() here.
        # Only in bf16, where DeepSpeed still checks the gradients for inf/NaN and skips such a step (the
        # run notices: runtime.run.deepspeed_skipped); in fp32 the norm is that check.
        zero["compute_grad_norm"] = False
    config = {
        "train_batch_size": t.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "steps_per_print": max(t.steps, 1),  # graphspec logs itself; keep DeepSpeed quiet
        "optimizer": _optimizer(spec),
        "scheduler": _scheduler(spec, groups),
        "zero_optimization": zero,
        "gradient_clipping": t.grad_clip or 0.0,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16"},
    }
    return _deep_update(config, d.deepspeed)


def _deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
