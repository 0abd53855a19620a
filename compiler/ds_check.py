"""Checking an emitted DeepSpeed config: DeepSpeed's own parser, then what it skips."""

from __future__ import annotations

import copy
import logging
import os
from typing import Iterator

from graphspec.language.errors import Issue
from graphspec.language.schema import Spec

from .ds_config import ENGINE_KEYS, resolve_accelerator

WHERE = ("distributed",)


class _Recorder(dict):
    """A dict that remembers which keys were read, to find top-level keys DeepSpeed never looks at."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read: set = set()

    def __reduce_ex__(self, protocol):  # copy.copy keeps the same `read` set
        return (_Recorder._rebuild, (dict(self), self.read))

    @staticmethod
    def _rebuild(items, read):
        r = _Recorder(items)
        r.read = read
        return r

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def deepspeed_parses(config: dict, spec: Spec) -> Iterator[Issue]:
    """DeepSpeed's own parser, on the per-process view (it assumes world size 1 outside a launch)."""
    os.environ.setdefault("DS_ACCELERATOR", resolve_accelerator(spec))  # else DeepSpeed probes and warns
    from deepspeed.runtime.config import DeepSpeedConfig

    single = copy.deepcopy(config)
    single["train_batch_size"] = config["train_batch_size"] // spec.distributed.world_size
    recorder = _Recorder(single)
    try:
        DeepSpeedConfig(recorder)
    except Exception as e:  # DeepSpeed raises AssertionError, ValueError, TypeError, pydantic errors
        yield Issue(WHERE, f"DeepSpeed rejects the config: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                    "see `distributed.deepspeed` and the settings it overrides")
        return
    unknown = sorted(set(config) - recorder.read - ENGINE_KEYS)
    for key in unknown:
        yield Issue(WHERE + ("deepspeed", key), f"DeepSpeed does not know the top-level key '{key}' and would ignore it silently",
                    "remove it, or check its spelling in the DeepSpeed config docs")


def scheduler_builds(config: dict, groups: list[dict]) -> Iterator[Issue]:
    """Build the scheduler on a dummy optimizer: DeepSpeed only checks its params at initialize."""
    import torch
    from deepspeed.runtime import lr_schedules

    sched = config.get("scheduler")
    if not sched:
        return
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0} for _ in groups or [0]]
    level = lr_schedules.logger.level
    lr_schedules.logger.setLevel(logging.ERROR)  # it warns about reading an lr before the first step
    try:
        getattr(lr_schedules, sched["type"])(torch.optim.SGD(params, lr=1.0), **sched.get("params", {}))
    except Exception as e:
        yield Issue(("train", "schedule"), f"the learning-rate scheduler {sched['type']} fails: {type(e).__name__}: {e}",
                    "check train.schedule and train.steps")
    finally:
        lr_schedules.logger.setLevel(level)


def precision_fits_accelerator(config: dict, spec: Spec) -> Iterator[Issue]:
    if config.get("fp16", {}).get("enabled") and resolve_accelerator(spec) == "cpu":
        yield Issue(("train", "precision"), "fp16 does not train on the CPU (DeepSpeed fails at initialize)",
                    "use `precision: bf16` (or fp32) on the CPU")
    if config.get("fp16", {}).get("enabled") and config.get("bf16", {}).get("enabled"):
        yield Issue(("train", "precision"), "fp16 and bf16 are both enabled", "enable one")


def something_trains(groups: list[dict], spec: Spec) -> Iterator[Issue]:
    if not any(g["params"] for g in groups):
        yield Issue(("nodes",), "every parameter is frozen: there is nothing to train (DeepSpeed would crash at initialize)",
                    "unfreeze at least one node or head")


def offload_has_cpu_optimizer(config: dict, spec: Spec) -> Iterator[Issue]:
    zero = config.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    opt = config.get("optimizer", {})
    if offload and opt.get("params", {}).get("torch_adam"):
        yield Issue(WHERE + ("offload_optimizer",), "an offloaded optimizer needs DeepSpeedCPUAdam, not torch's Adam",
                    "remove `torch_adam` from distributed.deepspeed")
    if offload and opt.get("type", "").lower() not in ("adam", "adamw", "adagrad", "lion"):
        yield Issue(WHERE + ("offload_optimizer",), f"DeepSpeed cannot offload a {opt.get('type')} optimizer",
                    "use adamw")
    if zero.get("offload_param") and zero.get("stage") != 3:
        yield Issue(WHERE + ("offload_param",), "offload_param is ignored below ZeRO stage 3", "use zero_stage: 3")
    if zero.get("reduce_bucket_size", 1) <= 0:
        yield Issue(WHERE + ("reduce_bucket_size",), "reduce_bucket_size must be positive", "remove it or set it > 0")


def check_ds_config(config: dict, spec: Spec, groups: list[dict]) -> list[Issue]:
    issues = list(something_trains(groups, spec))
    issues += precision_fits_accelerator(config, spec)
    issues += offload_has_cpu_optimizer(config, spec)
    issues += deepspeed_parses(config, spec)
    issues += scheduler_builds(config, groups)
    return issues
