"""Where each node runs in training: outside the DeepSpeed engine or inside it, with which precision, weight
placement and output cache. Decided here from the graph and the freeze plan; printed by `graphspec compile`
and followed by the runtime.

A node frozen whole that reads only model inputs (an input-side tower) needs no
gradient and no optimizer state, and under ZeRO-3 DeepSpeed would shard it and
re-gather its weights every step: it runs outside the engine, replicated. A
frozen block in the middle of the graph stays in the engine, without gradients.
"""

from __future__ import annotations

import torch.fx as fx

from graphspec.language.errors import Issue
from graphspec.language.schema import Spec

from .freeze import FreezePlan


def outside_towers(gm: fx.GraphModule, frozen_nodes) -> list[str]:
    """Frozen nodes whose every argument is a model input."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in frozen_nodes:
            if all(isinstance(a, fx.Node) and a.op == "placeholder" for a in node.all_input_nodes):
                out.append(node.target)
    return out


def tower_inputs(gm: fx.GraphModule, tower: str) -> list[str]:
    """The model inputs (placeholder names) a tower reads, in argument order."""
    call = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == tower)
    return [a.name for a in call.args]


def uncacheable(spec: Spec, gm: fx.GraphModule, plan: FreezePlan, tower: str) -> str | None:
    """Why an outside tower's outputs cannot be cached (its inputs differ each time a sample returns), or None."""
    if tower in plan.train_mode:
        return "it keeps dropout on (freeze.train_mode)"
    masked = spec.data.train.task == "captions" and any(o.kind == "mlm" for o in spec.objectives.values())
    for arg in tower_inputs(gm, tower):
        name = spec.input_of(arg)
        if masked and name and spec.inputs[name].modality == "text":
            return f"it reads '{name}', which MLM masks anew every step"
    return None


def image_readers(gm: fx.GraphModule, spec: Spec) -> dict[str, str]:
    """Nodes that read one image input alone (vision towers): node -> the image input's argument."""
    images = {n for name, i in spec.inputs.items() if i.modality == "image" for n in i.tensors(name)}
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            args = {a.name for a in node.all_input_nodes}
            if len(args) == 1 and args <= images and all(a.op == "placeholder" for a in node.all_input_nodes):
                out[node.target] = next(iter(args))
    return out


def stochastic_parts(module) -> list[str]:
    """Submodules that draw random numbers in train mode: a dropout with p > 0, or a positive dropout or
    drop-path rate held as a number (attention kernels take it as an argument). Names relative to `module`."""
    from torch import nn

    found = []
    for name, m in module.named_modules():
        # a dropout, or a compile-time stand-in of one (a library tower rebuilt from its record, tower_records)
        if isinstance(m, nn.modules.dropout._DropoutNd) or "Dropout" in getattr(m, "recorded_class", ""):
            if getattr(m, "p", 0) > 0:
                found.append(name)
            continue
        if any("drop" in k.lower() and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
               for k, v in vars(m).items()):
            found.append(name)
    return found


def shared_images(spec: Spec, gm: fx.GraphModule, plan: FreezePlan) -> tuple[bool, str]:
    """Whether a batch whose rows repeat images (the two-pass recipe) may pass each distinct image once through
    the towers reading it alone (`<image>_rows`, see graphspec.compiler.emit): only when such a tower computes
    a fixed function of its image, so that the result is what a pass per row computes. (yes, why)."""
    if spec.train.kernels == "plain":
        return False, "train.kernels: plain reads every row's image, as graphspec 0.2 did"
    towers = image_readers(gm, spec)

    def pinned(name: str) -> bool:  # frozen, kept in eval mode: draws nothing
        return any(name == m or name.startswith(m + ".") for m in plan.eval_modules)

    for tower in towers:
        parts = [f"{tower}.{p}" if p else tower for p in stochastic_parts(gm.get_submodule(tower))]
        drawing = [p for p in parts if not pinned(p)]
        if drawing:
            return False, f"{drawing[0]} draws dropout in training: each row's image gets its own draw"
    return True, f"each distinct image once through {', '.join(towers) or 'no tower'}"


def frozen_dtype(spec: Spec) -> str:
    """The outside towers' precision: as asked, else bf16 when training in bf16 (as they would be inside the
    engine), else fp32."""
    return spec.distributed.frozen.dtype or ("bf16" if spec.train.precision == "bf16" else "fp32")


def placement(spec: Spec, gm: fx.GraphModule, plan: FreezePlan) -> dict[str, dict]:
    """{node: {"where", "frozen", and for outside towers "dtype", "weights", "cache" (bool), "why"}}."""
    frozen = spec.distributed.frozen
    outside = set(outside_towers(gm, plan.frozen_nodes))
    accelerator = spec.distributed.accelerator
    rows: dict[str, dict] = {}
    for node in spec.nodes:
        names = [n for n, _ in gm.get_submodule(node).named_parameters()]
        held = sum(f"{node}.{n}" in plan.frozen for n in names)
        state = "whole" if node in plan.frozen_nodes else "part" if held else "no"
        if node not in outside:
            rows[node] = {"where": "engine", "frozen": state}
            continue
        why = uncacheable(spec, gm, plan, node)
        weights = "cpu, moved per layer" if frozen.offload == "cpu" and accelerator != "cpu" else "the training device"
        rows[node] = {"where": "outside", "frozen": state, "dtype": frozen_dtype(spec), "weights": weights,
                      "cache": frozen.cache_outputs and why is None, "why": why}
    return rows


def placement_issues(spec: Spec, rows: dict[str, dict]) -> list[Issue]:
    """Warnings for `distributed.frozen` settings that would act on nothing."""
    f, where = spec.distributed.frozen, ("distributed", "frozen")
    asked = [k for k, on in (("dtype", f.dtype is not None), ("offload", f.offload != "none"),
                             ("cache_outputs", f.cache_outputs)) if on]
    outside = {n: r for n, r in rows.items() if r["where"] == "outside"}
    if asked and not outside:
        return [Issue(where + (asked[0],), "no tower is frozen whole and reads only model inputs, so "
                      f"distributed.frozen.{', '.join(asked)} acts on nothing", "freeze an input tower "
                      "(`nodes.NAME.freeze: true`), or remove the setting", severity="warning")]
    issues = []
    if f.cache_outputs and not any(r["cache"] for r in outside.values()):
        node, r = next(iter(outside.items()))
        issues.append(Issue(where + ("cache_outputs",), f"no output is cached: {node} is not cacheable ({r['why']})",
                            "cache a tower whose inputs repeat (e.g. a frozen vision tower), or remove the setting",
                            severity="warning"))
    if f.offload == "cpu" and spec.distributed.accelerator == "cpu":
        issues.append(Issue(where + ("offload",), "offload: cpu moves weights to an accelerator layer by layer; "
                            "with accelerator: cpu nothing moves", "remove it, or train on an accelerator",
                            severity="warning"))
    return issues


def format_placement(rows: dict[str, dict], zero_stage: int, world: int, accelerator: str, cache: bool) -> str:
    lines = [f"placement (ZeRO-{zero_stage}, {world} rank{'s' if world > 1 else ''}, accelerator {accelerator}):"]
    for node, r in rows.items():
        if r["where"] == "outside":
            text = (f"frozen, outside the engine: replicated, no_grad, eval, {r['dtype']}, weights on {r['weights']}"
                    + ("; outputs cached" if r["cache"] else f"; outputs not cached: {r['why']}"
                       if cache and r["why"] else ""))
        elif r["frozen"] == "whole":
            text = "frozen, in the engine (reads other nodes' outputs): no grads, no optimizer state" + (
                ", sharded by ZeRO-3" if zero_stage == 3 else "")
        elif r["frozen"] == "part":
            text = "partly frozen, in the engine: frozen parts get no grads and no optimizer state"
        else:
            text = "trainable, in the engine"
        lines.append(f"  {node:<22}{text}")
    return "\n".join(lines)
