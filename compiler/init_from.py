"""Starting from a checkpoint: match its weights to the model by name, report every key that does not fit.

Read at compile time from the safetensors header alone (names and shapes, no
tensors), so a fine-tuning spec that cannot load its checkpoint fails at
`compile`; loaded at run time by `load_into`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from graphspec.language.errors import Issue, SpecError

from .checksums import damage

WEIGHTS = "model.safetensors"
WHERE = ("init_from",)


@dataclass
class Match:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint: keep their init
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model: ignored
    mismatched: list[str] = field(default_factory=list)  # same name, other shape: an error
    resized: list[str] = field(default_factory=list)  # rows of a table that may grow or shrink: the first ones

    def as_dict(self) -> dict:
        return {"loaded": len(self.loaded), "missing": self.missing, "unexpected": self.unexpected,
                "mismatched": self.mismatched, "resized": self.resized}


def _rows_resize(model: nn.Module, name: str, old: tuple, new: tuple) -> bool:
    """Whether `name` is a table whose layer lets a checkpoint with another number of rows fill it (the new text
    positions of a one tower, fine-tuned at another text length)."""
    owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return bool(getattr(owner, "rows_resize", False)) and len(old) == len(new) and old[1:] == new[1:]


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_checkpoint(directory: str, model: nn.Module, frozen: frozenset[str]) -> tuple[Match, list[Issue]]:
    from safetensors import safe_open

    path = Path(directory) / WEIGHTS
    if not path.is_file():
        return Match(), [Issue(WHERE, f"no checkpoint weights at {path}", "point init_from at a run's checkpoint/ directory")]
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError: a file cut short or not safetensors at all
        return Match(), [Issue(WHERE, f"cannot read the checkpoint weights {path}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]}", "point init_from at an intact checkpoint/")]
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    m, resized = Match(), []
    for name, shape in params.items():
        if name not in shapes:
            m.missing.append(name)
        elif shapes[name] != shape and _rows_resize(model, name, shapes[name], shape):
            m.resized.append(name)
            resized.append(f"{name} {shapes[name][0]} -> {shape[0]} rows")
        elif shapes[name] != shape:
            m.mismatched.append(f"{name} {shapes[name]} -> {shape}")
        else:
            m.loaded.append(name)
    m.unexpected = sorted(set(shapes) - set(params))
    issues = _issues(m, frozen)
    if resized:
        issues.append(Issue(WHERE, f"{len(resized)} tables take the checkpoint's first rows, the rest start fresh: "
                            f"{_listing(resized)}", "expected when fine-tuning at another text length", "warning"))
    return m, issues


def _issues(m: Match, frozen: frozenset[str]) -> list[Issue]:
    issues = []
    if m.mismatched:
        issues.append(Issue(WHERE, f"{len(m.mismatched)} weights have another shape in the checkpoint: {_listing(m.mismatched)}",
                            "make the spec's sizes match the checkpoint's, or rename the node to start it fresh"))
    fresh = [n for n in m.missing if n not in frozen]
    if fresh:
        issues.append(Issue(WHERE, f"{len(fresh)} weights are not in the checkpoint and start fresh: {_listing(fresh)}",
                            "expected for new heads", "warning"))
    restored = [n for n in m.missing if n in frozen]
    if restored:
        issues.append(Issue(WHERE, f"{len(restored)} frozen weights are not in the checkpoint (checkpoints keep trainable "
                            f"weights only) and come from their source: {_listing(restored)}", "", "warning"))
    if m.unexpected:
        issues.append(Issue(WHERE, f"{len(m.unexpected)} checkpoint weights have no place in this model: {_listing(m.unexpected)}",
                            "expected for heads the fine-tuning spec dropped", "warning"))
    return issues


@torch.no_grad()
def load_into(model: nn.Module, directory: str) -> Match:
    """Copy the matching weights in; names and shapes were checked at compile time, the files' checksums here."""
    from safetensors.torch import load_file

    problem = damage(Path(directory), required=False)  # checkpoints of graphspec 0.1 have no list
    if problem is not None:
        raise SpecError([Issue(WHERE, f"{problem.loc}: {problem.message}", problem.hint)],
                        title="the checkpoint to start from is damaged")
    state = load_file(str(Path(directory) / WEIGHTS))
    m, _ = match_checkpoint(directory, model, frozenset())
    params = dict(model.named_parameters())
    for name in m.loaded:
        params[name].copy_(state[name])
    for name in m.resized:
        rows = min(len(state[name]), len(params[name]))
        params[name][:rows].copy_(state[name][:rows])
    return m
