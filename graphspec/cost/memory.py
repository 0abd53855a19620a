"""The bytes of model state one rank holds between steps, as DeepSpeed 0.19 lays them out (measured here).

Counted from the compiled model's parameters on the meta device, each where
the build placed it, and the engine's config:

- weights: every parameter inside the engine in the training precision; under
  ZeRO-3 each rank holds its partition (ceil(n / world) elements of each
  parameter), and a parameter of at most `stage3_param_persistence_threshold`
  elements whole beside it when there are several ranks; wholly frozen towers
  outside the engine in their own precision, whole on every rank;
- fp32 master weights (bf16/fp16 only, and in fp32 too under ZeRO-1/2, whose
  optimizer keeps a flat fp32 partition of its own): 4 bytes per trainable
  parameter, its partition under ZeRO-1/2/3;
- optimizer state: Adam's two moments, 8 bytes per trainable parameter (its
  partition under ZeRO-1/2/3), DeepSpeed's BF16 optimizer (ZeRO-0) keeping it whole;
- gradients kept between steps: under ZeRO-3 the flat partition of gradients
  (training precision) and the reduce bucket (`reduce_bucket_size` elements);
  ZeRO-0/1/2 free them at every step (they are in the step's peak instead);
- buffers (position ids, norms' running statistics), cast like the weights.

Frozen parameters get no gradient, master or optimizer state at any stage
(DeepSpeed's optimizers never see them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

HALF = {"bf16": 2, "fp16": 2, "fp32": 4}
PERSISTENCE = 100_000  # DeepSpeed's default stage3_param_persistence_threshold (elements)


@dataclass
class ModelStates:
    """Bytes per rank, by kind; `host` of them offloaded to host memory (the rest on the device)."""

    weights: int = 0
    outside: int = 0  # weights of the frozen towers outside the engine
    master: int = 0
    optimizer: int = 0
    gradients: int = 0
    buffers: int = 0
    host: int = 0  # of the total, what DeepSpeed keeps in host memory (optimizer offload)
    step_gradients: int = 0  # not resident: gradients that exist during a step (in its peak)

    @property
    def total(self) -> int:
        return self.weights + self.outside + self.master + self.optimizer + self.gradients + self.buffers

    def as_mb(self) -> dict:
        out = {k: round(v / 2**20, 2) for k, v in asdict(self).items()}
        out["total"] = round(self.total / 2**20, 2)
        return out


def _part(n: int, world: int) -> int:
    return -(-n // world)


def model_states(model: nn.Module, frozen: set[str], outside: set[str], precision: str, outside_dtype: str,
                 zero: dict, world: int, offload_optimizer: bool = False) -> ModelStates:
    """`model`: the compiled model (meta device is enough); `frozen`: its frozen parameter names; `outside`:
    the nodes that run outside the engine; `zero`: the DeepSpeed config's zero_optimization block."""
    stage = int(zero.get("stage", 0))
    h = HALF[precision]
    s = ModelStates()
    trainable_part = trainable = 0
    for name, p in model.named_parameters():
        n = p.numel()
        if name.split(".")[0] in outside:
            s.outside += n * HALF[outside_dtype]
            continue
        if stage == 3:
            s.weights += _part(n, world) * h + (n * h if world > 1 and n <= zero.get(
                "stage3_param_persistence_threshold", PERSISTENCE) else 0)
        else:
            s.weights += n * h
        if name not in frozen:
            trainable += n
            trainable_part += _part(n, world)
    for name, b in model.named_buffers():
        cast = b.is_floating_point()
        s.buffers += b.numel() * (
            (HALF[outside_dtype] if name.split(".")[0] in outside else h) if cast else b.element_size())
    kept = trainable if stage == 0 else trainable_part
    s.master = 4 * kept if (h == 2 or stage in (1, 2, 3)) else 0
    s.optimizer = 8 * kept
    if stage == 3:
        s.gradients = trainable_part * h + int(zero.get("reduce_bucket_size", 500_000_000)) * h
    s.step_gradients = trainable * h if stage in (0, 1) else trainable_part * h
    if offload_optimizer:
        s.host = s.master + s.optimizer
    return s


def cast_bytes(t: torch.Tensor, precision: str) -> int:
    return t.numel() * (HALF[precision] if t.is_floating_point() else t.element_size())
