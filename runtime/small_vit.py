"""A small ViT pretrained on the built-in scenes, for the vision arm of Experiment 2's CPU twin.

No vision transformer ships offline (the packaged vision weights are a CNN), so
this recipe makes one, the way DeiT is trained on labelled ImageNet: supervised,
on images alone (no captions). The model is timm's `vit_small_patch32_224` cut
to 6 blocks (width 384, 6 heads: MiniLM's width and depth) at 64-pixel images:
patch 32 makes one patch per cell of the scenes' 2x2 grid (4 patches and a
class token). The objective is multi-label: which of the 21 colour x shape
kinds a scene holds (binary cross-entropy on the class token; positions are not
labelled, so nothing of the captions' spatial words is taught). Data: 12,000
scenes of 1 to 3 shapes from the TRAIN split only, rendered and normalised as
graphspec feeds a one_tower (mean = std = 0.5); validation on 600 scenes of the
TEST split, so the VL runs' validation images (the val split) stay unseen.
AdamW (lr 1e-3, weight decay 0.05), warmup 10 % then cosine, gradient clipping
at 1, batch 32, 400 steps (about one pass over the 12,000), seeded: `build()`
gives the same file for the same seed and thread count.

Measured on the 2-core machine (1 thread, another process using the other
core): 72 s; BCE 0.70 -> 0.20 (predicting the label frequencies gives 0.39);
on the test-split scenes micro F1 0.55, every kind right in 7.5 % of scenes:
it has learned colours and part of the shapes, no more. At patch 16 (16
patches) the same 400 steps took 127 s (2 threads) and reached F1 0.32.

    python -m graphspec.runtime.small_vit OUT.safetensors [STEPS]   # prints the facts

A spec names it `weights: builtin:small-vit` in a one_tower of the same
architecture: the first build trains it and caches it
(graphspec.compiler.builtin_weights); it loads strictly (its classifier is not
saved):

    joint: {kind: one_tower, backbone: vision, source: vit_small_patch32_224,
            size: {layers: 6}, init: pretrained, weights: builtin:small-vit}
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import scenes as S

MODEL = "vit_small_patch32_224"  # timm name: a spec's `source:`
DEPTH = 6  # a spec's `size: {layers: 6}`
IMAGE_SIZE = 64  # the spec's image input size
PATCH = 32  # vit_small_patch32's own patch side: at 64 pixels, one patch per cell of the 2x2 scene grid
KWARGS = {"depth": DEPTH, "img_size": IMAGE_SIZE}  # what timm.create_model takes besides num_classes
KINDS = [(c, s) for c in S.COLORS for s in S.SHAPES]  # the 21 labels
STEPS, BATCH, LR, WEIGHT_DECAY, WARMUP = 400, 32, 1.0e-3, 0.05, 0.1
TRAIN_SCENES, VAL_SCENES, MAX_SHAPES = 12000, 600, 3


def labels(scene: S.Scene) -> np.ndarray:
    """Presence of each colour x shape kind (no positions, no counts)."""
    out = np.zeros(len(KINDS), dtype=np.float32)
    for shape in scene.shapes:
        out[KINDS.index((shape.color, shape.kind))] = 1.0
    return out


def pixels(scene_list: list[S.Scene]) -> torch.Tensor:
    """uint8 (N, 3, H, W), rendered at the input size: graphspec's transform of a built-in scene is then only
    the normalisation (a resize to the same size is a copy)."""
    return torch.from_numpy(np.stack([S.render(s) for s in scene_list])).permute(0, 3, 1, 2).contiguous()


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - 0.5) / 0.5  # timm's default data config for a ViT: mean = std = 0.5


def create(num_classes: int = 0, **overrides) -> nn.Module:
    """The architecture; num_classes=0 (and global_pool='') is what a spec's one_tower builds."""
    import timm

    return timm.create_model(MODEL, pretrained=False, num_classes=num_classes, **{**KWARGS, **overrides})


def _data(n_train: int, n_val: int, size: int):
    config = S.ShapesConfig(min_shapes=1, max_shapes=MAX_SHAPES, image_size=size)
    train, val = S.scenes(config, "train", n_train), S.scenes(config, "test", n_val)
    return (pixels(train), torch.from_numpy(np.stack([labels(s) for s in train])),
            pixels(val), torch.from_numpy(np.stack([labels(s) for s in val])))


@torch.no_grad()
def _score(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict:
    model.eval()
    logits = torch.cat([model(_normalise(images[i:i + 256])) for i in range(0, len(images), 256)])
    model.train()
    pred = (logits > 0).float()
    tp, fp, fn = (pred * targets).sum(), (pred * (1 - targets)).sum(), ((1 - pred) * targets).sum()
    return {"exact": (pred == targets).all(1).float().mean().item(), "f1": (2 * tp / (2 * tp + fp + fn)).item(),
            "loss": nn.functional.binary_cross_entropy_with_logits(logits, targets).item()}


def build(path: Path, seed: int = 0, steps: int = STEPS, train_scenes: int = TRAIN_SCENES,
          val_scenes: int = VAL_SCENES, threads: int | None = None, log=None) -> dict:
    """Train the small ViT and save its weights (no classifier) as safetensors at `path`; return what was measured."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(threads or torch.get_num_threads())  # the environment's (OMP_NUM_THREADS, else the cores)
    train_x, train_y, val_x, val_y = _data(train_scenes, val_scenes, IMAGE_SIZE)
    model = create(num_classes=len(KINDS), drop_rate=0.0, drop_path_rate=0.0)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": other, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.999))
    warm = max(1, int(WARMUP * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    gen = torch.Generator().manual_seed(seed)
    order, cursor, first, recent = torch.randperm(len(train_x), generator=gen), 0, None, []
    model.train()
    for step in range(steps):
        if cursor + BATCH > len(order):
            order, cursor = torch.randperm(len(train_x), generator=gen), 0
        idx = order[cursor:cursor + BATCH]
        cursor += BATCH
        loss = nn.functional.binary_cross_entropy_with_logits(model(_normalise(train_x[idx])), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        first = loss.item() if first is None else first
        recent = (recent + [loss.item()])[-20:]
        if log is not None and (step + 1) % 50 == 0:
            log(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} {time.perf_counter() - start:.0f} s")
    train_seconds = time.perf_counter() - start
    val = _score(model, val_x, val_y)
    seen = _score(model, train_x[:len(val_x)], train_y[:len(val_y)])
    head = model.pretrained_cfg.get("classifier", "head")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith(f"{head}.")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"timm_model": MODEL, "depth": str(DEPTH), "img_size": str(IMAGE_SIZE),
                                        "seed": str(seed), "steps": str(steps)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"path": str(path), "model": MODEL, **KWARGS, "patch": PATCH, "seed": seed, "steps": steps, "batch": BATCH,
            "train_scenes": len(train_x), "val_scenes (test split)": len(val_x), "threads": torch.get_num_threads(),
            "first_loss": round(first, 4), "last_loss (mean of 20)": round(sum(recent) / len(recent), 4),
            "train_exact": round(seen["exact"], 4), "train_f1": round(seen["f1"], 4),
            "val_exact": round(val["exact"], 4), "val_f1": round(val["f1"], 4), "val_loss": round(val["loss"], 4),
            "seconds": round(time.perf_counter() - start, 1), "train_seconds": round(train_seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: python -m graphspec.runtime.small_vit OUT.safetensors [STEPS]", file=sys.stderr)
        return 2
    facts = build(Path(argv[0]), steps=int(argv[1]) if len(argv) == 2 else STEPS,
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    for key, value in facts.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
