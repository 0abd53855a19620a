"""`graphspec run`: train a compiled model on its data, validate, report, checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from compiler import build_model
from compiler.ds_config import batch_plan
from graphspec.errors import EnvironmentProblem, Issue, Loc

from .batches import Roles, encode
from .build import Build
from .checkpoint import save_checkpoint
from .data.pairs import SceneSet, all_texts, batched
from .engine import Trainer, make_trainer
from .images import image_transform
from .objectives import IGNORE, itm_loss, mlm_loss
from .report import Reporter, format_summary
from .text import load_tokenizer, text_node


def prepare_run_dir(run_dir: Path) -> Path:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise EnvironmentProblem([Issue((), f"cannot write the run directory: {e.strerror or e}",
                                    "choose another with --run-dir, or fix its permissions", loc=Loc(str(run_dir)))],
                             title="the run cannot start") from None
    return run_dir


def losses(trainer: Trainer, batch: dict, roles: Roles, spec) -> dict[str, torch.Tensor]:
    out = trainer.forward(batch)
    parts: dict[str, torch.Tensor] = {}
    if roles.itm:
        parts[roles.itm] = itm_loss(out[spec.objective_head(roles.itm)], batch["match"])
    if roles.mlm:
        head = spec.objective_head(roles.mlm)
        parts[roles.mlm] = mlm_loss(out[head], batch[f"{head}_labels"])
    parts["loss"] = sum(spec.objectives[k].weight * v for k, v in parts.items())
    return parts


@torch.no_grad()
def evaluate(forward: Callable[[dict], dict], val_batches: list, roles: Roles, spec, tokenizer) -> dict:
    """ITM accuracy and loss on unmasked text over fixed balanced pairs; MLM accuracy and loss on a fixed masking.

    `forward` maps a batch to the head outputs: the training engine's, or a plain
    model's in `graphspec eval`; both see exactly the same batches.
    """
    sums = {"itm_hit": 0.0, "itm_loss": 0.0, "itm_n": 0, "mlm_hit": 0.0, "mlm_loss": 0.0, "mlm_n": 0}
    gen = torch.Generator().manual_seed(1234)
    for pairs in val_batches:
        if roles.itm:
            logits = forward(encode(pairs, spec, roles, tokenizer, gen=None))[spec.objective_head(roles.itm)].float()
            sums["itm_hit"] += int((logits.argmax(-1) == pairs.match).sum())
            sums["itm_loss"] += float(itm_loss(logits, pairs.match)) * len(pairs.texts)
            sums["itm_n"] += len(pairs.texts)
        if roles.mlm:
            batch = encode(pairs, spec, roles, tokenizer, gen=gen)
            head = spec.objective_head(roles.mlm)
            labels = batch[f"{head}_labels"]
            target = labels[labels != IGNORE]
            if target.numel():
                logits = forward(batch)[head].float()
                sums["mlm_hit"] += int((logits.argmax(-1) == target).sum())
                sums["mlm_loss"] += float(mlm_loss(logits, labels)) * target.numel()
                sums["mlm_n"] += target.numel()
    out = {}
    for task in ("itm", "mlm"):
        if sums[f"{task}_n"]:
            out[f"{task}_acc"] = sums[f"{task}_hit"] / sums[f"{task}_n"]
            out[f"{task}_loss"] = round(sums[f"{task}_loss"] / sums[f"{task}_n"], 6)
    return out


@dataclass
class Session:
    """Everything a run needs, built once from the build directory."""

    roles: Roles
    plan: object
    trainer: Trainer
    tokenizer: object
    train_set: SceneSet
    val_batches: list


def prepare(build: Build) -> Session:
    spec = build.spec
    roles = Roles.of(spec)
    model, plan = build_model(spec)
    transform = image_transform(spec, roles.image, model)
    size = spec.inputs[roles.image].size
    train_set = SceneSet(spec.data.train, ("data", "train"), size, transform)
    val_set = SceneSet(spec.data.val, ("data", "val"), size, transform) if spec.data.val else None
    vocab = model.get_submodule(text_node(spec, roles.text)[0]).vocab_size
    tokenizer = load_tokenizer(spec, roles.text, vocab, build.dir, all_texts(train_set))
    trainer = make_trainer(spec, model, build.freeze, build.groups, build.ds_config)
    micro, _ = batch_plan(spec)
    val_batches = batched(val_set.eval_pairs(spec.data.val_pairs), micro) if val_set else []
    return Session(roles, plan, trainer, tokenizer, train_set, val_batches)


def train_step(s: Session, spec, step: int, gen: torch.Generator) -> dict[str, float]:
    """One optimizer step over `accumulation` micro batches; the losses averaged over them."""
    micro, accum = batch_plan(spec)
    neg = spec.objectives[s.roles.itm].negative_prob if s.roles.itm else 0.0
    shown: dict[str, float] = {}
    for m in range(accum):
        pairs = s.train_set.train_batch(micro, neg, spec.train.seed, (step - 1) * accum + m)
        parts = losses(s.trainer, encode(pairs, spec, s.roles, s.tokenizer, gen), s.roles, spec)
        s.trainer.engine.backward(parts["loss"])
        s.trainer.engine.step()
        for k, v in parts.items():
            shown[k] = shown.get(k, 0.0) + float(v.detach()) / accum
    return shown


def run(build: Build, run_dir: Path, show_bar: bool | None = None) -> dict:
    spec = build.spec
    run_dir = prepare_run_dir(run_dir)
    s = prepare(build)
    micro, accum = batch_plan(spec)
    reporter = Reporter(run_dir, spec.train.steps, spec.train.batch_size, spec.train.log_every, show_bar=show_bar)
    reporter.line(f"training {spec.name}: {len(s.train_set)} train scenes, {spec.train.steps} steps of "
                  f"{spec.train.batch_size} ({micro} x {accum}), run dir {run_dir}")
    gen = torch.Generator().manual_seed(spec.train.seed)  # masking
    torch.manual_seed(spec.train.seed)  # dropout: the same run twice gives the same losses
    val: dict = {}
    for step in range(1, spec.train.steps + 1):
        reporter.train_step(step, train_step(s, spec, step, gen), s.trainer.scheduler.get_last_lr()[0])
        every = spec.train.val_every
        if s.val_batches and ((every and step % every == 0) or step == spec.train.steps):
            s.trainer.eval()
            val = evaluate(s.trainer.forward, s.val_batches, s.roles, spec, s.tokenizer)
            s.trainer.train()
            reporter.log({"step": step, "split": "val", **val})
            reporter.line(f"step {step} validation: " + " ".join(f"{k} {v:.4f}" for k, v in val.items()))
    wall = reporter.elapsed
    reporter.close()
    return _finish(build, run_dir, s, val, wall)


def _finish(build: Build, run_dir: Path, s: Session, val: dict, wall: float) -> dict:
    spec, trainer, plan = build.spec, s.trainer, s.plan
    ckpt = save_checkpoint(run_dir / "checkpoint", trainer.engine.module, set(plan.frozen),
                           spec.model_dump(mode="json", exclude={"extends"}), build.freeze,
                           {"step": spec.train.steps, "val": val}, s.tokenizer)
    total = sum(p.numel() for p in trainer.engine.module.parameters()) + sum(
        p.numel() for p in trainer.split.towers.parameters())
    frozen = sum(p.numel() for n, p in trainer.engine.module.named_parameters() if n in plan.frozen) + sum(
        p.numel() for p in trainer.split.towers.parameters())
    summary = {"run_dir": str(run_dir), "spec": spec.name, "steps": spec.train.steps, "wall_time_s": round(wall, 1),
               "samples_per_s": round(spec.train.steps * spec.train.batch_size / max(wall, 1e-9), 2),
               "params": {"trainable": total - frozen, "frozen": frozen}, "val": val, "checkpoint": str(ckpt)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary), flush=True)
    return summary
