"""What a training step's time is made of: the matrix products it runs, the GEMM rate this machine reaches
at those shapes alone, and a per-operation profile. Used by the freeze benchmark (`freeze.py`)."""

from __future__ import annotations

import time


def gemm_shapes(run) -> list[dict]:
    """The matrix products `run()` executes, by shape: [{op, a, b, calls, gflop}], most FLOPs first.
    (addmm counts as its product; a bmm's shapes carry the batch.)"""
    from torch.utils._python_dispatch import TorchDispatchMode

    found: dict[tuple, dict] = {}

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("mm", "addmm", "bmm"):
                a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
                key = ("bmm" if name == "bmm" else "mm", tuple(a.shape), tuple(b.shape))
                flop = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if name == "bmm" else 1)
                entry = found.setdefault(key, {"op": key[0], "a": key[1], "b": key[2], "calls": 0, "gflop": 0.0})
                entry["calls"] += 1
                entry["gflop"] += flop / 1e9
            return func(*args, **(kwargs or {}))

    with Shapes():
        run()
    return sorted(found.values(), key=lambda e: -e["gflop"])


def model_shape_peak(shapes: list[dict], dtype_name: str, share: float = 0.8, rounds: int = 7,
                     round_s: float = 0.1) -> tuple[float, int]:
    """(GFLOP/s, shapes timed): the GEMM rate this machine reaches at the model's own shapes, alone. The
    shapes holding `share` of the products' FLOPs are timed in `rounds` rounds after a warm-up, each round
    going through all of them (so a passing disturbance touches one round of each, not every round of one)
    and running each for at least `round_s`; each shape keeps its best round, and the rates combine as the
    model spends them: their FLOPs over the time they take."""
    import torch

    dtype = getattr(torch, dtype_name)
    total, chosen = sum(s["gflop"] for s in shapes), []
    for s in shapes:
        if sum(c["gflop"] for c in chosen) >= share * total:
            break
        chosen.append(s)
    operands = [(torch.bmm if s["op"] == "bmm" else torch.mm, torch.randn(s["a"], dtype=dtype),
                 torch.randn(s["b"], dtype=dtype)) for s in chosen]
    best = [float("inf")] * len(chosen)
    for op, a, b in operands:  # warm-up: first calls pick and prepare kernels
        op(a, b)
    for _ in range(rounds):
        for k, (op, a, b) in enumerate(operands):
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < round_s or calls == 0:
                op(a, b)
                calls += 1
            best[k] = min(best[k], elapsed / calls)
    flop = sum(s["gflop"] for s in chosen)
    return flop / sum(b * s["calls"] for b, s in zip(best, chosen)), len(chosen)


def op_table(run, rows: int = 14) -> list[dict]:
    """Where `run()`'s time goes, by torch operation: [{op, s, calls}] by self CPU time, the rest as one row."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    table = [{"op": e.key, "s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in ops[:rows]]
    rest = ops[rows:]
    table.append({"op": "(the rest)", "s": sum(e.self_cpu_time_total for e in rest) / 1e6,
                  "calls": sum(e.count for e in rest)})
    return table
