"""Where a run's tensors live, and the only two moves between the host and the training device.

A batch is made on the host (by the task, in worker processes), moved to the training device once per micro
batch (`to_device`), and everything that step computes reads the moved batch: the forward, the losses, the
collectives. What the host needs back leaves through `to_host`: validation outputs (metrics are computed on
the host, beside the targets the task made there) and a frozen tower's rows for its disk cache. Nothing else in
the runtime moves tensors, so a test can replace these two functions to make "the device" observable on a
machine that has only a CPU (tests/runtime/devices.py): a tensor that crossed without them meets a tensor of the
other side and raises, as a CPU tensor meeting a CUDA one does.

Keys starting with "_" in a batch are the run's bookkeeping (`_cache`: what a worker found in a frozen tower's
cache, host data), never moved.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import torch

T = TypeVar("T")


def to_device(value: T, device: torch.device, dtype: torch.dtype | None = None) -> T:
    """Tensors (also inside the dicts, tuples and lists ports carry) to `device`; floating ones to `dtype` when
    given. From pinned host memory (workers feeding an accelerator) the copy is asynchronous."""
    out: Any = value
    if isinstance(value, torch.Tensor):
        out = value.to(device, non_blocking=True)
        out = out.to(dtype) if dtype is not None and out.is_floating_point() else out
    elif isinstance(value, dict):
        out = {k: v if isinstance(k, str) and k.startswith("_") else to_device(v, device, dtype)
               for k, v in value.items()}
    elif isinstance(value, (tuple, list)):
        out = type(value)(to_device(v, device, dtype) for v in value)
    return cast(T, out)


def to_host(value: T) -> T:
    """Tensors (in dicts, tuples and lists too) to the host's memory, detached; the rest as it is."""
    out: Any = value
    if isinstance(value, torch.Tensor):
        out = value.detach().cpu()
    elif isinstance(value, dict):
        out = {k: to_host(v) for k, v in value.items()}
    elif isinstance(value, (tuple, list)):
        out = type(value)(to_host(v) for v in value)
    return cast(T, out)


def configure_kernels(tf32: bool, deterministic: bool, accelerator: str) -> None:
    """The spec's kernel choices (`train.tf32`, `train.deterministic`) for this process, before anything runs
    on the accelerator. On the CPU there is nothing to choose."""
    if accelerator != "cuda":
        return
    import os

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's own condition for it
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
