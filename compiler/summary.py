"""The compile report: parameters per node, and bytes of weights, gradients and optimizer state per ZeRO stage."""

from __future__ import annotations

from torch import nn

from graphspec.language.schema import Spec

from .freeze import FreezePlan
from .placement import format_placement, frozen_dtype


def param_counts(spec: Spec, model: nn.Module, plan: FreezePlan) -> dict[str, dict]:
    """Per node and head: total, trainable and frozen parameters; `parts` too for a module that breaks its total
    down (a one tower: layers, embeddings, [CLS] + positions, type + projections)."""
    rows: dict[str, dict] = {}
    prefixes = list(spec.nodes) + [f"heads.{h}" for h in spec.heads]
    seen: set[int] = set()  # a tied weight counts once, under the node that owns it first
    for prefix in prefixes:
        total = frozen = 0
        module = model.get_submodule(prefix)
        for name, p in module.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            frozen += p.numel() if f"{prefix}.{name}" in plan.frozen else 0
        rows[prefix] = {"total": total, "trainable": total - frozen, "frozen": frozen}
        parts = module.parts() if callable(getattr(module, "parts", None)) else None
        if parts is not None:
            rows[prefix]["parts"] = {k: v for k, v in parts.items() if v}
    rows["total"] = {k: sum(r[k] for r in rows.values()) for k in ("total", "trainable", "frozen")}
    return rows


def memory_per_rank(trainable: int, frozen: int, stage: int, world: int, precision: str, outside: int = 0,
                    outside_bytes: int = 4) -> dict[str, int]:
    """Bytes per process, the usual mixed-precision accounting.

    fp32: weights 4 B, grads 4 B, Adam 8 B per trainable parameter. bf16/fp16: weights
    and grads 2 B, plus fp32 master weights and Adam (12 B) in the optimizer. Frozen
    parameters have no grads or optimizer state. ZeRO-1 shards the optimizer, 2 also
    grads, 3 also the weights (frozen ones in the engine included: DeepSpeed shards
    them too). `outside` of the frozen parameters run outside the engine, replicated,
    at `outside_bytes` each.
    """
    half = precision in ("bf16", "fp16")
    w_bytes = 2 if half else 4
    weights = (trainable + frozen - outside) * w_bytes
    grads = trainable * w_bytes
    optim = trainable * (12 if half else 8)
    if stage >= 1:
        optim //= world
    if stage >= 2:
        grads //= world
    if stage >= 3:
        weights //= world
    weights += outside * outside_bytes
    return {"weights": weights, "grads": grads, "optimizer": optim, "total": weights + grads + optim}


def build_summary(spec: Spec, model: nn.Module, plan: FreezePlan, shapes: dict[str, object],
                  placed: dict[str, dict]) -> dict:
    counts = param_counts(spec, model, plan)
    t = counts["total"]
    d = spec.distributed
    outside = sum(counts[n]["total"] for n, r in placed.items() if r["where"] == "outside")
    memory = {f"zero_{s}": memory_per_rank(t["trainable"], t["frozen"], s, d.world_size, spec.train.precision,
                                           outside, 2 if frozen_dtype(spec) == "bf16" else 4) for s in (0, 1, 2, 3)}
    return {"name": spec.name, "params": counts, "memory_per_rank": memory, "zero_stage": d.zero_stage,
            "world_size": d.world_size, "precision": spec.train.precision, "shapes": shapes,
            "frozen_nodes": list(plan.frozen_nodes), "accelerator": d.accelerator, "placement": placed,
            "cache_outputs": d.frozen.cache_outputs}


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_summary(summary: dict) -> str:
    lines = [f"model {summary['name']}", "", f"{'node':<24}{'total':>14}{'trainable':>14}{'frozen':>14}  output"]
    for node, row in summary["params"].items():
        shape = summary["shapes"].get(node, "")
        lines.append(f"{node:<24}{row['total']:>14,}{row['trainable']:>14,}{row['frozen']:>14,}  {shape}")
        for part, count in row.get("parts", {}).items():
            lines.append(f"  {part:<22}{count:>14,}")
    lines += ["", f"memory per process ({summary['precision']}, world size {summary['world_size']}; "
              f"this spec uses ZeRO-{summary['zero_stage']}):",
              f"{'stage':<10}{'weights':>14}{'grads':>14}{'optimizer':>14}{'total':>14}"]
    for stage, m in summary["memory_per_rank"].items():
        mark = " <" if stage == f"zero_{summary['zero_stage']}" else ""
        lines.append(f"{stage:<10}{_mb(m['weights']):>14}{_mb(m['grads']):>14}{_mb(m['optimizer']):>14}{_mb(m['total']):>14}{mark}")
    if "placement" in summary:
        lines += ["", format_placement(summary["placement"], summary["zero_stage"], summary["world_size"],
                                       summary["accelerator"], summary["cache_outputs"])]
    return "\n".join(lines)
