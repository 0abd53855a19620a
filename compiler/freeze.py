"""Freeze annotations -> one set of parameter names.

That one set drives everything downstream: requires_grad, eval mode, the
optimizer's groups, offload placement, what a checkpoint stores, the report.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from graphspec.language.errors import Issue
from graphspec.language.schema import Spec

from .layers.adapter import Adapter


@dataclass(frozen=True)
class FreezePlan:
    frozen: frozenset[str]  # parameter names in the emitted model
    frozen_nodes: tuple[str, ...]  # nodes (or heads.X) frozen whole: run under no_grad
    eval_modules: tuple[str, ...]  # maximal submodules whose parameters are all frozen: kept in eval mode
    train_mode: tuple[str, ...]  # nodes whose spec asks to keep frozen parts in train mode

    def to_json(self) -> dict:
        """The plan as written to a build's and a checkpoint's freeze.json."""
        return {"frozen": sorted(self.frozen), "frozen_nodes": list(self.frozen_nodes),
                "eval_modules": list(self.eval_modules), "train_mode": list(self.train_mode)}

    @classmethod
    def from_json(cls, data: dict) -> "FreezePlan":
        return cls(frozenset(data["frozen"]), tuple(data["frozen_nodes"]), tuple(data["eval_modules"]),
                   tuple(data["train_mode"]))


def _node_params(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters()]


def _slice(text: str, count: int) -> range:
    start, _, stop = text.partition(":")
    return range(count)[slice(int(start) if start else None, int(stop) if stop else None)]


def _freeze_part(name: str, path: tuple, freeze, module: nn.Module) -> tuple[set[str], list[Issue]]:
    params = _node_params(module)
    chosen: set[str] = set()
    issues: list[Issue] = []
    if freeze.layers is not None:
        prefixes = module.layer_prefixes() if isinstance(module, Adapter) else []
        if not prefixes:
            issues.append(Issue(path + ("layers",), f"'{name}' has no layers to choose from", "freeze it whole, or by `params`"))
        else:
            picked = _slice(freeze.layers, len(prefixes))
            start = freeze.layers.partition(":")[0]
            if not picked or (start and int(start) >= len(prefixes)):
                issues.append(Issue(path + ("layers",), f"'{freeze.layers}' selects none of the {len(prefixes)} layers of '{name}'",
                                    f"use a range within 0:{len(prefixes)}"))
            for i in picked:
                chosen.update(p for p in params if p.startswith(prefixes[i]))
    if freeze.embeddings:
        prefixes = module.embedding_prefixes() if isinstance(module, Adapter) else []
        chosen.update(p for p in params if any(p == e or p.startswith(e) for e in prefixes))
    for i, pattern in enumerate(freeze.params):
        # Patterns name parameters as the backbone library does ('patch_embed.*'), or as graphspec does ('model.patch_embed.*').
        hits = [p for p in params if fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p.removeprefix("model."), pattern)]
        if not hits:
            short = [p.removeprefix("model.") for p in params]
            tops = sorted({p.split(".")[0] for p in short})
            example = f" (e.g. '{short[0]}')" if short else ""
            issues.append(Issue(path + ("params", i), f"'{pattern}' matches no parameter of '{name}'",
                                f"names start with: {', '.join(tops[:8])}{example}"))
        chosen.update(hits)
    return chosen, issues


def _maximal_frozen(model: nn.Module, frozen: set[str]) -> list[str]:
    out: list[str] = []

    def visit(prefix: str, mod: nn.Module) -> None:
        names = [f"{prefix}{n}" for n, _ in mod.named_parameters()]
        if names and all(n in frozen for n in names):
            out.append(prefix.rstrip("."))
            return
        for child_name, child in mod.named_children():
            visit(f"{prefix}{child_name}.", child)

    for name, child in model.named_children():
        visit(f"{name}.", child)
    return out


def _owner(param: str) -> tuple[str, str]:
    parts = param.split(".")
    return ("heads", parts[1]) if parts[0] == "heads" else ("nodes", parts[0])


def _shared_with_frozen(model: nn.Module, frozen: set[str]) -> list[Issue]:
    """A parameter shared by two modules (a tied MLM decoder) is frozen under both names if under one."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    issues = []
    for group in names.values():
        held = next((n for n in group if n in frozen), None)
        for name in group:
            if held is not None and name not in frozen:
                frozen.add(name)
                issues.append(Issue(_owner(name), f"{name} is tied to the frozen {held}, so it is frozen too",
                                    "untie it, or unfreeze the embeddings", "warning"))
    return issues


def resolve_freeze(spec: Spec, model: nn.Module) -> tuple[FreezePlan, list[Issue]]:
    frozen: set[str] = set()
    prefixes: list[str] = []
    train_mode: list[str] = []
    issues: list[Issue] = []
    for section in ("nodes", "heads"):
        for name, obj in getattr(spec, section).items():
            prefix = f"heads.{name}" if section == "heads" else name
            module = model.get_submodule(prefix)
            prefixes.append(prefix)
            if obj.freeze is True:
                frozen.update(f"{prefix}.{p}" for p in _node_params(module))
            elif obj.freeze:
                part, problems = _freeze_part(name, (section, name, "freeze"), obj.freeze, module)
                frozen.update(f"{prefix}.{p}" for p in part)
                issues += problems
                if obj.freeze.train_mode:
                    train_mode.append(prefix)
    issues += _shared_with_frozen(model, frozen)
    whole = [p for p in prefixes if _node_params(model.get_submodule(p))
             and all(f"{p}.{n}" in frozen for n in _node_params(model.get_submodule(p)))]
    eval_modules = [m for m in _maximal_frozen(model, frozen) if not any(m == t or m.startswith(t + ".") for t in train_mode)]
    return FreezePlan(frozenset(frozen), tuple(whole), tuple(eval_modules), tuple(train_mode)), issues
