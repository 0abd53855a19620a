"""Periodic training checkpoints and exact resume, from folders graphspec does not have to trust.

A training checkpoint is `RUN/checkpoints/step-NNNNNNNN/`:

- `engine/`: DeepSpeed's own files for the trainable weights, the optimizer and the learning-rate schedule
  (frozen parameters excluded). They are pickles; they are read back only with `torch.load(weights_only=True)`
  and an allow-list of the few DeepSpeed classes they hold (`SAFE_GLOBALS`), so a file replaced by a payload
  is refused, never run. (graphspec's own format for ZeRO's partitioned optimizer state would re-implement
  DeepSpeed's checkpoint layout for every stage; the allow-list keeps DeepSpeed's exact resume and closes the
  code-execution door.)
- `state.json` / `state-R.json` (rank R): the format, step and world size; `rng.safetensors` /
  `rng-R.safetensors`: every random state the run draws from (dropout, MLM masking), as tensors.
- `frozen.json`: each frozen node's source and weight hash (frozen weights are not stored: a resumed run
  reloads them and refuses to go on if they changed).
- `checksums.json`, written last: every file's size and sha256. A file cut short or altered since is named
  before anything is loaded.

Every rank writes its part; rank 0 renames the `.partial` folder once all have, so a crash mid-write never
leaves one that looks done; only the newest `train.keep_checkpoints` are kept. A write that fails (a full
disk) removes its partial folder and leaves the previous checkpoint as it was. Batches are pure functions of
the step, so a resumed run sees the data the uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from graphspec.compiler.checksums import checksums, damage, write_checksums
from graphspec.compiler.folders import TRAINING_FOLDER, TRAINING_FORMAT
from graphspec.language.errors import GraphspecError, Issue, Loc

from . import ranks

__all__ = ["ResumeError", "UnsafeFile", "checkpoints", "checksums", "digest", "frozen_digests",
           "frozen_record", "random_states", "restore", "save", "set_random_states", "unsafe_refusal", "verify",
           "weights_only"]



def frozen_record(spec, module: torch.nn.Module, towers: torch.nn.Module, frozen: set[str]) -> dict:
    """{node: {"source": where its weights come from, "sha256": hash of its frozen tensors}}."""
    named = [(n, p) for n, p in module.named_parameters() if n in frozen]
    named += [(n, p) for n, p in towers.named_parameters()]  # towers outside the engine are frozen whole
    return {node: {"source": _source(spec, node), "sha256": sha} for node, sha in _node_digests(named).items()}


def frozen_digests(module: torch.nn.Module, frozen: set[str]) -> dict[str, str]:
    """{node: hash of its frozen parameters} of a model as built (full fp32 weights, before an engine casts or
    shards them): final and training checkpoints record it, and an export checks the weights it rebuilds
    against it."""
    return _node_digests([(n, p) for n, p in module.named_parameters() if n in frozen])


def _node_digests(named) -> dict[str, str]:
    """{node: digest of its (name, tensor) pairs}; a name's first part is its node."""
    by_node: dict[str, list] = {}
    for name, p in named:
        by_node.setdefault(name.split(".")[0], []).append((name, p))
    return {node: digest(held) for node, held in by_node.items()}


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
    folder = run_dir / TRAINING_FOLDER
    done = [p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")]
    return sorted(done, key=lambda p: p.name)


def _suffix(rank: int) -> str:
    return "" if rank == 0 else f"-{rank}"


# --------------------------------------------------------------------------- writing


def _write_rank_files(tmp: Path, step: int, trainer, task, reading: dict, built: dict) -> None:
    trainer.engine.save_checkpoint(str(tmp), tag="engine", exclude_frozen_parameters=True)
    suffix = _suffix(ranks.rank())
    rng = random_states()
    task_rng = task.rng_state()
    if task_rng is not None:
        rng["task"] = task_rng
    save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / f"rng{suffix}.safetensors"))
    (tmp / f"state{suffix}.json").write_text(json.dumps({"format_version": TRAINING_FORMAT, "step": step,
                                                         "world": ranks.world(), "reading": reading,
                                                         "frozen_sha256": built}) + "\n")


def save(run_dir: Path, step: int, trainer, task, frozen: dict, keep: int, reading: dict | None = None,
         built: dict | None = None) -> Path | None:
    """Collective: every rank writes its shards and random state; rank 0 renames the folder once all have.
    `built`: the hashes of the frozen weights as built (`frozen_digests`), which an export checks.

    A write that fails on any rank (a full disk) is undone on all: the partial folder goes, the previous
    checkpoint stays, a warning says so, and None is returned.
    """
    final = run_dir / TRAINING_FOLDER / f"step-{step:08d}"
    tmp = final.with_name(final.name + ".partial")
    failed = ""
    if ranks.is_main():
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        except OSError as e:
            failed = e.strerror or str(e)
    failed = ranks.any_text(failed)
    if not failed:
        try:
            _write_rank_files(tmp, step, trainer, task, reading or {}, built or {})
        except (OSError, RuntimeError, SafetensorError) as e:  # torch reports a short write as RuntimeError
            failed = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
        failed = ranks.any_text(failed)
    if not failed and ranks.is_main():
        try:
            (tmp / "frozen.json").write_text(json.dumps(frozen, indent=2) + "\n")
            write_checksums(tmp)
        except OSError as e:
            failed = e.strerror or str(e)
    failed = ranks.any_text(failed)
    if failed:
        if ranks.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            kept = checkpoints(run_dir)
            print(f"warning: the checkpoint of step {step} could not be written ({failed}); "
                  + (f"the previous one, {kept[-1]}, is intact" if kept else "there is no earlier checkpoint"),
                  file=sys.stderr, flush=True)
        ranks.barrier()
        return None
    ranks.barrier()
    if ranks.is_main():
        os.replace(tmp, final)  # atomic: the folder appears complete or not at all
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    ranks.barrier()
    return final


# --------------------------------------------------------------------------- reading


class ResumeError(GraphspecError):
    """A run that cannot be continued as it was: no checkpoint, a damaged one, or frozen weights that changed."""

    exit_code = 2


def _refuse(path: Path, message: str, hint: str) -> ResumeError:
    return ResumeError([Issue((), message, hint, loc=Loc(str(path)))], title="cannot resume this run")


def _safe_globals() -> list:
    """The classes DeepSpeed's checkpoint files hold besides tensors and plain containers (found with
    torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO 0-3 checkpoints): an enum, a dataclass of
    two ints and the loss scalers' plain attribute holders. None runs code when rebuilt."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


class UnsafeFile(Exception):
    def __init__(self, path: str, cause: Exception):
        super().__init__(f"{path}: {cause}")
        self.path, self.cause = path, cause


@contextlib.contextmanager
def weights_only():
    """Every torch.load in the block (DeepSpeed's included) reads tensors and allow-listed classes only: a
    pickle that names anything else (a payload) fails, naming its file, before any of it runs."""
    original = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            raise UnsafeFile(str(f), e) from None

    with torch.serialization.safe_globals(_safe_globals()):
        torch.load = load
        try:
            yield
        finally:
            torch.load = original


def unsafe_refusal(e: UnsafeFile) -> ResumeError:
    """The refusal of a checkpoint file that names what the allow-list does not load (a payload)."""
    lines = [ln.strip() for ln in str(e.cause).splitlines() if ln.strip()]
    why = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), lines[0] if lines else "")
    return _refuse(Path(e.path), f"this file holds objects graphspec does not load (only tensors and DeepSpeed's "
                   f"own state): {why[:300]}", "a checkpoint file was replaced: restore the run folder from a copy "
                   "you trust")


def verify(folder: Path) -> None:
    """Every file of a checkpoint is the one written: same size, same sha256; none missing."""
    problem = damage(folder)
    if problem is not None:
        raise ResumeError([problem], title="cannot resume this run")


def _read_state(folder: Path) -> tuple[dict, dict]:
    suffix = _suffix(ranks.rank())
    if (folder / f"state{suffix}.pt").is_file() and not (folder / f"state{suffix}.json").is_file():
        raise _refuse(folder, "a training checkpoint of format 1 (graphspec 0.1, random states pickled); this "
                      f"graphspec resumes format {TRAINING_FORMAT}", "start the run anew with this graphspec")
    state_file = folder / f"state{suffix}.json"
    if not state_file.is_file():
        raise _refuse(folder, f"this checkpoint has no state for rank {ranks.rank()}: it was written by "
                      "another number of ranks", "resume with the world size the run started with")
    verify(folder)  # every file as written, before any is read
    try:
        state = json.loads(state_file.read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:  # cut short or altered: named before anything loads
        raise _refuse(state_file, f"this file is damaged ({str(e).splitlines()[0][:200]})",
                      "delete this checkpoint folder to resume from the one before it, or start the run anew"
                      ) from None
    if state.get("format_version") != TRAINING_FORMAT:
        raise _refuse(state_file, f"training checkpoint format {state.get('format_version')!r}; this graphspec "
                      f"resumes format {TRAINING_FORMAT}", "resume it with the graphspec that wrote it")
    if state.get("world", 1) != ranks.world():
        raise _refuse(folder, f"this checkpoint was written by {state.get('world')} ranks; this run has "
                      f"{ranks.world()}", "resume with the world size the run started with")
    try:
        rng = load_file(str(folder / f"rng{suffix}.safetensors"))
    except (OSError, SafetensorError) as e:
        raise _refuse(folder / f"rng{suffix}.safetensors", f"cannot read it: {e}", "start the run anew") from None
    return state, rng


def restore(run_dir: Path, trainer, task, frozen: dict) -> tuple[int, dict]:
    """Load the newest checkpoint into the trainer and the task (on every rank); return its step and where
    this rank's data stream was (`reading`: a stream's position; empty for sources read by index)."""
    if ranks.is_main():
        for partial in (run_dir / TRAINING_FOLDER).glob("*.partial"):  # cut off while being written: never complete
            shutil.rmtree(partial)
    ranks.barrier()
    found = checkpoints(run_dir)
    if not found:
        raise _refuse(run_dir, "no complete training checkpoint to resume from",
                      "set `train.checkpoint_every` so the run writes them, or start it anew")
    path = found[-1]
    state, rng = _read_state(path)
    recorded = json.loads((path / "frozen.json").read_text())
    changed = sorted(n for n in set(recorded) | set(frozen) if recorded.get(n) != frozen.get(n))
    if changed:
        node = changed[0]
        raise _refuse(path / "frozen.json", f"the frozen weights of {', '.join(changed)} differ from those the run "
                      f"trained with (now {frozen.get(node, {}).get('source', 'absent')}, then "
                      f"{recorded.get(node, {}).get('source', 'absent')})",
                      "restore the original weights at their source, or start the run anew")
    try:
        with weights_only():
            _, client = trainer.engine.load_checkpoint(str(path), tag="engine", load_module_strict=False)
    except UnsafeFile as e:
        raise unsafe_refusal(e) from None
    if client is None:
        raise _refuse(path, "DeepSpeed could not read this checkpoint", "start the run anew")
    set_random_states(rng, path)
    if "task" in rng:
        task.set_rng_state(rng["task"])
    return int(state["step"]), state.get("reading") or {}


def _cuda():
    """torch.cuda where this machine has a GPU, else None."""
    return torch.cuda if torch.cuda.is_available() else None


def random_states() -> dict[str, torch.Tensor]:
    """Every generator this rank's run draws from: the CPU's, and (once CUDA is in use) its GPU's, whose
    dropout a resumed run must continue, not restart."""
    states = {"torch": torch.get_rng_state()}
    cuda = _cuda()
    if cuda is not None and cuda.is_initialized():
        states["cuda"] = cuda.get_rng_state()  # this rank's device
    return states


def set_random_states(states: dict[str, torch.Tensor], path: Path) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        cuda = _cuda()
        if cuda is None:
            raise _refuse(path, "this checkpoint was written on a GPU, and this machine has none: its random "
                          "state cannot be continued", "resume on a GPU machine")
        cuda.set_rng_state(states["cuda"])
