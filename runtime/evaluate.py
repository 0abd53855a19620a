"""`graphspec eval`: a checkpoint's metrics on a split, computed exactly as training validated.

The checkpoint holds everything needed: the resolved spec, the trainable
weights and the tokenizer; frozen weights come from their source, as at the
start of training.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer

from graphspec.compiler import FreezePlan, build_weights
from graphspec.compiler.folders import CHECKPOINT_FORMAT
from graphspec.compiler.checksums import damage
from graphspec.language.errors import GraphspecError, Issue, Loc, SpecError
from graphspec.language.schema import Spec

from . import devices


class CheckpointError(GraphspecError):
    """A checkpoint that is not one, or not one this graphspec reads, or damaged since it was written."""

    exit_code = 2
from .tasks import TaskContext, make_task


def find_checkpoint(target: str | Path) -> Path:
    """A checkpoint directory, or a run directory holding one."""
    path = Path(target)
    for candidate in (path, path / "checkpoint"):
        if (candidate / "model.safetensors").is_file() and (candidate / "spec.resolved.json").is_file():
            return candidate
    raise CheckpointError([Issue((), "not a checkpoint or a run directory with one", "give a run directory "
                                "(runs/NAME/TIMESTAMP) or its checkpoint/", loc=Loc(str(path)))],
                         title="nothing to evaluate")


def read_state(ckpt: Path) -> dict:
    """The checkpoint's state.json (step, validation metrics, vocabulary); a newer format is refused."""
    path = ckpt / "state.json"
    state = json.loads(path.read_text()) if path.is_file() else {}
    version = state.get("format_version", 1)
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError([Issue((), f"checkpoint format version {version}; this graphspec reads versions 1 to "
                                    f"{CHECKPOINT_FORMAT}", "evaluate it with the graphspec that wrote it",
                                    loc=Loc(str(path)))], title="cannot read this checkpoint")
    return state


def load_checkpoint(ckpt: Path) -> tuple[Spec, torch.nn.Module]:
    problem = damage(ckpt, required=False)  # checkpoints of graphspec 0.1 have no list
    if problem is not None:
        raise CheckpointError([problem], title="cannot evaluate this checkpoint")
    try:
        spec = Spec.model_validate(json.loads((ckpt / "spec.resolved.json").read_text()))
    except (ValidationError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError([Issue((), f"the checkpoint's spec does not fit this graphspec: {str(e)[:200]}",
                                    loc=Loc(str(ckpt / "spec.resolved.json")))]) from None
    freeze = ckpt / "freeze.json"
    if freeze.is_file():
        try:
            plan = FreezePlan.from_json(json.loads(freeze.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError([Issue((), f"not a freeze record this graphspec reads: {str(e)[:200]}",
                                        "use an intact checkpoint", loc=Loc(str(freeze)))]) from None
    else:  # a checkpoint of graphspec 0.1, which kept no freeze record: the spec's annotations, resolved again
        from graphspec.compiler import compile_spec

        plan = compile_spec(spec).plan
    _weights_fit(ckpt, spec, plan)
    model = build_weights(spec, plan)
    try:
        weights = load_file(str(ckpt / "model.safetensors"))
    except (OSError, SafetensorError) as e:
        raise CheckpointError([Issue((), f"cannot read the weights: {e}", "use an intact checkpoint",
                                    loc=Loc(str(ckpt / "model.safetensors")))]) from None
    params = dict(model.named_parameters())
    trainable = {n for n in params if n not in plan.frozen}
    if set(weights) != trainable:
        raise CheckpointError([Issue((), f"the checkpoint's weights do not match its spec: missing "
                                    f"{sorted(trainable - set(weights))[:5]}, unexpected {sorted(set(weights) - trainable)[:5]}",
                                    loc=Loc(str(ckpt / "model.safetensors")))])
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    return spec, model.eval()


def _weights_fit(ckpt: Path, spec: Spec, plan: FreezePlan) -> None:
    """Before any weight is allocated: the weights file's header holds together, and names exactly the
    trainable parameters of the spec's model on the meta device, with their shapes."""
    from .model_folder import ModelFolderError, weights_header

    file = ckpt / "model.safetensors"
    try:
        found = weights_header(file)
    except ModelFolderError as e:
        raise CheckpointError(e.issues, title="cannot read this checkpoint") from None
    meta = build_weights(spec, plan, meta=True)
    want = {n: list(p.shape) for n, p in meta.named_parameters() if n not in plan.frozen}
    got = {n: t["shape"] for n, t in found.items()}
    if got != want:
        differ = sorted(set(got) ^ set(want)) or sorted(n for n in got if got[n] != want[n])
        raise CheckpointError([Issue((), f"the weights do not fit the checkpoint's spec ({len(differ)} differ, e.g. "
                                    f"'{differ[0]}': {got.get(differ[0], 'absent')} in the file, "
                                    f"{want.get(differ[0], 'absent')} in the model)", "use an intact checkpoint",
                                    loc=Loc(str(file)))], title="cannot read this checkpoint")


def evaluate_checkpoint(target: str | Path, split: str = "val", device: str | torch.device = "cpu") -> dict:
    """The checkpoint's metrics on `split`, as training validated: batches made on the host, the model's
    outputs brought back to the host for the metrics. On an accelerator the model computes in the precision
    it trained in (bf16 or fp16); on the CPU in fp32."""
    ckpt = find_checkpoint(target)
    spec, model = load_checkpoint(ckpt)
    if spec.data.val is None and split == "val":
        raise SpecError([Issue(("data", "val"), "the spec has no validation data", "evaluate --split test")])
    device = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.train.precision) if device.type != "cpu" \
        else None
    model = model.to(device=device, dtype=dtype)
    state = read_state(ckpt)
    task = make_task(spec, model, lambda data: AutoTokenizer.from_pretrained(str(ckpt / "tokenizer"),
                                                                                      trust_remote_code=False), split,
                     TaskContext(vocabulary={"answers": state["answers"]} if state.get("answers") else None))
    names = set(inspect.signature(model.forward).parameters)

    def forward(batch: dict) -> dict:
        inputs = devices.to_device({k: v for k, v in batch.items() if k in names}, device, dtype)
        return devices.to_host(model(**inputs))

    metrics = task.evaluate(forward)
    return {"checkpoint": str(ckpt), "split": split, **metrics}
