"""Periodic training checkpoints and exact resume.

A training checkpoint is `RUN/checkpoints/step-NNNNNNNN/`: DeepSpeed's own files
for the trainable weights, the optimizer and the learning-rate schedule (frozen
parameters excluded), and `state.pt` (`state-R.pt` for rank R) with the step
and every random state the run draws from (dropout, MLM masking). Every rank
writes its part; rank 0 renames the `.partial` folder once all have, so a crash
mid-write never leaves one that looks done;
only the newest `train.keep_checkpoints` are kept. Batches are pure functions of
the step, so a resumed run sees the data the uninterrupted one would have seen.

Frozen weights are not stored: a resumed run reloads them from their source, as
the first start did, and checks them against the hashes recorded here; a source
that changed in between is an error, not a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from graphspec.errors import GraphspecError, Issue, Loc

from . import ranks

FOLDER = "checkpoints"


def frozen_record(spec, module: torch.nn.Module, towers: torch.nn.Module, frozen: set[str]) -> dict:
    """{node: {"source": where its weights come from, "sha256": hash of its frozen tensors}}."""
    named = [(n, p) for n, p in module.named_parameters() if n in frozen]
    named += [(n, p) for n, p in towers.named_parameters()]  # towers outside the engine are frozen whole
    by_node: dict[str, list] = {}
    for name, p in named:
        by_node.setdefault(name.split(".")[0], []).append((name, p))
    return {node: {"source": _source(spec, node), "sha256": digest(held)} for node, held in by_node.items()}


def digest(named) -> str:
    """sha256 over (name, tensor) pairs, in name order, as fp32 (the same weights in bf16 hash alike only if
    they are the same numbers)."""
    h = hashlib.sha256()
    for name, p in sorted(named, key=lambda item: item[0]):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _source(spec, node: str) -> str:
    n = spec.nodes.get(node)
    if n is None:
        return "init_from" if spec.init_from else "random init"
    where = getattr(n, "weights", None) or getattr(n, "source", None) or getattr(n, "model_type", None) or "random"
    return f"{where} ({getattr(n, 'init', 'random')})"


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete training checkpoints, oldest first."""
    folder = run_dir / FOLDER
    done = [p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")]
    return sorted(done, key=lambda p: p.name)


def _state_file(folder: Path, rank: int) -> Path:
    return folder / ("state.pt" if rank == 0 else f"state-{rank}.pt")


def save(run_dir: Path, step: int, trainer, task, frozen: dict, keep: int) -> Path:
    """Collective: every rank writes its shards and random state; rank 0 renames the folder once all have."""
    final = run_dir / FOLDER / f"step-{step:08d}"
    tmp = final.with_name(final.name + ".partial")
    if ranks.is_main():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    ranks.barrier()
    trainer.engine.save_checkpoint(str(tmp), tag="engine", exclude_frozen_parameters=True)
    torch.save({"step": step, "world": ranks.world(), "torch_rng": torch.get_rng_state(),
                "task_rng": task.rng_state()}, _state_file(tmp, ranks.rank()))
    ranks.barrier()
    if ranks.is_main():
        (tmp / "frozen.json").write_text(json.dumps(frozen, indent=2) + "\n")
        os.replace(tmp, final)  # atomic: the folder appears complete or not at all
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    return final


class ResumeError(GraphspecError):
    """A run that cannot be continued as it was: no checkpoint, or frozen weights that changed."""

    exit_code = 2


def _refuse(path: Path, message: str, hint: str) -> ResumeError:
    return ResumeError([Issue((), message, hint, loc=Loc(str(path)))], title="cannot resume this run")


def restore(run_dir: Path, trainer, task, frozen: dict) -> int:
    """Load the newest checkpoint into the trainer and the task (on every rank); return its step."""
    if ranks.is_main():
        for partial in (run_dir / FOLDER).glob("*.partial"):  # cut off while being written: never complete
            shutil.rmtree(partial)
    ranks.barrier()
    found = checkpoints(run_dir)
    if not found:
        raise _refuse(run_dir, "no complete training checkpoint to resume from",
                      "set `train.checkpoint_every` so the run writes them, or start it anew")
    path = found[-1]
    recorded = json.loads((path / "frozen.json").read_text())
    changed = sorted(n for n in set(recorded) | set(frozen) if recorded.get(n) != frozen.get(n))
    if changed:
        node = changed[0]
        raise _refuse(path / "frozen.json", f"the frozen weights of {', '.join(changed)} differ from those the run "
                      f"trained with (now {frozen.get(node, {}).get('source', 'absent')}, then "
                      f"{recorded.get(node, {}).get('source', 'absent')})",
                      "restore the original weights at their source, or start the run anew")
    state = torch.load(_state_file(path, ranks.rank()), weights_only=False) \
        if _state_file(path, ranks.rank()).is_file() else {}
    if state.get("world", 1) != ranks.world() or not state:
        raise _refuse(path, f"this checkpoint was written by {state.get('world', 'another number of')} ranks; "
                      f"this run has {ranks.world()}", "resume with the world size the run started with")
    _, client = trainer.engine.load_checkpoint(str(path), tag="engine", load_module_strict=False)
    if client is None:
        raise _refuse(path, "DeepSpeed could not read this checkpoint", "start the run anew")
    torch.set_rng_state(state["torch_rng"])
    task.set_rng_state(state["task_rng"])
    return int(state["step"])
