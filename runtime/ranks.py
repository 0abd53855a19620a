"""This process's place among the data-parallel ranks of a run, and the few collectives the runtime needs.

Every rank builds the same global micro batch (so data order and MLM masking
are functions of the step alone, whatever the world size) and trains on its own
slice; rank 0 alone reports and writes files. With one process these are no-ops.

The values reduced here are the host's (flags, counts, losses already read back): they go through a group on
the host. Where the run's own group is gloo (the CPU), that group; where it is NCCL (GPUs), which takes only
device tensors, a gloo group beside it, made once by every rank at its first collective. Device tensors
(features gathered for the contrastive loss, masked-token counts) go through the run's group, on the device
(`device_total`).
"""

from __future__ import annotations

import os
from typing import cast

import torch
import torch.distributed as dist


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def group_active() -> bool:
    return world() > 1 and dist.is_available() and dist.is_initialized()


def _backend() -> str:
    return str(dist.get_backend())


_host_group: "dist.ProcessGroup | None" = None  # set by `host_group`, dropped by `finish`


def host_group() -> "dist.ProcessGroup | None":
    """The group host tensors are reduced in: the run's own when it is gloo, else a gloo group beside it (made
    collectively: every rank reaches its first host collective at the same point of the same code)."""
    global _host_group
    if _host_group is None:
        _host_group = cast("dist.ProcessGroup", dist.group.WORLD if _backend() == "gloo"
                           else dist.new_group(backend="gloo"))
    return _host_group


def total(values: dict[str, float]) -> dict[str, float]:
    """The sum of each value over the ranks (in one all-reduce)."""
    if not group_active() or not values:
        return values
    keys = list(values)  # the same order on every rank: the same code made them
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t, group=host_group())
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def mean(values: dict[str, float]) -> dict[str, float]:
    """The average of each value over the ranks."""
    return {k: v / world() for k, v in total(values).items()} if group_active() else values


def maximum(value: float) -> float:
    if not group_active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=host_group())
    return float(t.item())


def gather_counts(value: int) -> list[int]:
    """Each rank's value, in rank order (one all-reduce of a vector with this rank's slot filled)."""
    if not group_active():
        return [int(value)]
    t = torch.zeros(world(), dtype=torch.float64)
    t[rank()] = value
    dist.all_reduce(t, group=host_group())
    return [int(v) for v in t.tolist()]


def any_true(flag: bool) -> bool:
    """Whether any rank's flag is set (one all-reduce): the ranks decide together, so none is left waiting."""
    if not group_active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=host_group())
    return bool(t.item())


def any_text(text: str) -> str:
    """"" when every rank's text is empty; else this rank's text, or a note that another rank's was not."""
    if any_true(bool(text)):
        return text or "another rank could not write its part"
    return ""


def device_total(t: torch.Tensor) -> torch.Tensor:
    """The sum over the ranks of a tensor on the training device, in the run's own group (no host copy)."""
    if not group_active():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def part(size: int) -> slice:
    """This rank's rows of a global batch of `size` (world x micro) rows."""
    share = size // world()
    return slice(rank() * share, (rank() + 1) * share)


def barrier() -> None:
    if group_active():
        dist.barrier(group=host_group())


def finish() -> None:
    """Leave the process group together: a rank that exits while another still talks to it can abort in gloo's
    teardown (seen once: 'terminate called without an active exception' after all work was done)."""
    global _host_group
    if group_active():
        dist.barrier(group=host_group())
        dist.destroy_process_group()
    _host_group = None
