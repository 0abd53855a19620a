"""Optimizer parameter groups: weight decay or not, times each node's learning-rate multiplier.

Built once from the compiled model and the freeze plan, so frozen parameters
are never in a group and no group is empty.
"""

from __future__ import annotations

from torch import nn

from graphspec.language.errors import Issue
from graphspec.language.schema import Spec


def lr_multiplier(spec: Spec, param: str) -> float:
    """The multiplier of the longest `train.lr_multipliers` key that prefixes the parameter name."""
    best, scale = -1, 1.0
    for key, value in spec.train.lr_multipliers.items():
        if (param == key or param.startswith(key + ".")) and len(key) > best:
            best, scale = len(key), value
    return scale


def unmatched_multipliers(spec: Spec, model: nn.Module) -> list[Issue]:
    """A key naming a part of a node (`fusion.type_embed`) must prefix at least one parameter name."""
    names = [n for n, _ in model.named_parameters()]
    issues = []
    for key in spec.train.lr_multipliers:
        if not any(n == key or n.startswith(key + ".") for n in names):
            node = key.split(".")[0] if not key.startswith("heads.") else ".".join(key.split(".")[:2])
            parts = sorted({n[len(node) + 1:].split(".")[0] for n in names if n.startswith(node + ".")})
            issues.append(Issue(("train", "lr_multipliers", key), f"no parameter of the model is named '{key}' "
                                "or starts with it", "use a node name, or one of its parts: "
                                + ", ".join(f"{node}.{p}" for p in parts[:8])))
    return issues


def param_groups(spec: Spec, model: nn.Module, frozen: frozenset[str]) -> list[dict]:
    """[{name, lr_scale, weight_decay, params: [names]}] over trainable parameters only."""
    groups: dict[tuple[float, bool], list[str]] = {}
    for name, p in model.named_parameters():
        if name in frozen:
            continue
        decay = p.dim() >= 2  # biases and norm scales are not decayed
        groups.setdefault((lr_multiplier(spec, name), decay), []).append(name)
    out = []
    for (scale, decay), names in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        out.append({
            "name": f"lr_x{scale:g}/{'decay' if decay else 'no_decay'}",
            "lr_scale": scale,
            "weight_decay": spec.train.optimizer.weight_decay if decay else 0.0,
            "params": names,
        })
    return out
