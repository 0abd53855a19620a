"""One all-reduce through NCCL on each rank's GPU and one through the gloo group graphspec keeps beside it for host
values, under torchrun: `python -m torch.distributed.run --nproc_per_node N benchmarks/nccl_probe.py`.
Prints one line per rank; exits 1 where either sum is wrong."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def main() -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    from graphspec.runtime import ranks

    on_device = torch.full((4,), float(rank + 1), device="cuda")
    dist.all_reduce(on_device)
    host = ranks.total({"one": 1.0})["one"]  # through the gloo group beside NCCL
    want = world * (world + 1) / 2
    good = bool((on_device == want).all()) and host == world
    print(f"rank {rank}/{world} on {torch.cuda.get_device_name(local)}: NCCL sum {on_device[0].item():g} "
          f"(want {want:g}), host-group sum {host:g} (want {world}): {'ok' if good else 'WRONG'}", flush=True)
    ranks.finish()
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
