"""Checkpoints: trainable weights as safetensors, the resolved spec, the freeze record and the tokenizer.

Written to a temporary directory and renamed into place, so a crash mid-write
never leaves a checkpoint that looks complete; `checksums.json`, written last,
lets evaluation and fine-tuning name a file damaged since. Nothing in it is a
pickle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from graphspec.compiler import FreezePlan
from graphspec.compiler.checksums import write_checksums
from graphspec.compiler.folders import CHECKPOINT_FORMAT, WEIGHTS
from graphspec.language.errors import EnvironmentProblem, Issue, Loc



def trainable_weights(module: torch.nn.Module, frozen: set[str]) -> dict[str, torch.Tensor]:
    """Full copies of the trainable weights; under ZeRO-3 each is gathered from its shards first (a
    collective: every rank calls this, rank 0 writes)."""
    named = [(n, p) for n, p in module.named_parameters() if n not in frozen]
    sharded = [p for _, p in named if hasattr(p, "ds_id")]
    if sharded:
        from deepspeed.runtime.zero import GatheredParameters

        with GatheredParameters(sharded, modifier_rank=None):
            return {n: p.detach().float().cpu().contiguous().clone() for n, p in named}
    return {n: p.detach().float().cpu().contiguous().clone() for n, p in named}


def save_checkpoint(path: Path, weights: dict[str, torch.Tensor], spec_json: dict, plan: FreezePlan, extra: dict,
                    tokenizer) -> Path:
    """Write the checkpoint; a write that fails (a full disk) leaves no partial folder and an existing
    checkpoint at `path` as it was, and is an EnvironmentProblem naming the folder."""
    tmp = path.with_name(path.name + ".partial")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / WEIGHTS))
        (tmp / "spec.resolved.json").write_text(json.dumps(spec_json, indent=2) + "\n")
        (tmp / "freeze.json").write_text(json.dumps(plan.to_json(), indent=2) + "\n")
        (tmp / "state.json").write_text(json.dumps({"format_version": CHECKPOINT_FORMAT, **extra}, indent=2) + "\n")
        tokenizer.save_pretrained(str(tmp / "tokenizer"))  # the exact vocabulary the weights were trained with
        write_checksums(tmp)  # last: a file cut short or altered later is named by whoever reads it
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        why = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
        raise EnvironmentProblem([Issue((), f"the final checkpoint could not be written ({why})",
                                        "free disk space, then `graphspec run --resume` the run (its training "
                                        "checkpoints, if any, are intact) or run it again", loc=Loc(str(path)))],
                                 title="the run trained but its checkpoint was not saved") from None
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path
