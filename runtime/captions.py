"""The captions task (pretraining): masked LM, image-text matching and contrast on builtin scenes or caption files."""

from __future__ import annotations

from typing import Callable

import torch

from compiler.ds_config import batch_plan
from graphspec.schema import DataSource, Spec

from . import ranks
from .batches import Roles, encode
from .data.caption_files import CaptionFiles
from .data.pairs import SceneSet, batched
from .metrics import itc_loss
from .objectives import IGNORE, itm_loss, mlm_loss
from .sources import file_captions


def matching(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """The ITC similarity among matching pairs only: a mismatched row's image is not its text's positive."""
    keep = match.bool()
    return logits[keep][:, keep]  # (P, P)


class CaptionsTask:
    """Batches, losses and validation metrics of MLM + ITM pretraining."""

    def __init__(self, spec: Spec, roles: Roles, transform, split: str | None = None):
        self.data_stats: dict = {}
        self.spec, self.roles = spec, roles
        self.train_set = self._pairs(spec.data.train, "train", transform) if split is None else None
        val = spec.data.val if split is None else (spec.data.val or spec.data.train).model_copy(update={"split": split})
        self.val_set = self._pairs(val, "val", transform) if val else None
        self.negative_prob = spec.objectives[roles.itm].negative_prob if roles.itm else 0.0
        self.gen = torch.Generator().manual_seed(spec.train.seed)  # masking
        self.tokenizer = None  # set once the vocabulary is known

    def _pairs(self, source: DataSource, key: str, transform) -> SceneSet | CaptionFiles:
        """builtin scenes, or captioned images from arrow:/jsonl: files (their read counts go to the summary)."""
        if source.source == "builtin:shapes":
            return SceneSet(source, ("data", key), self.spec.inputs[self.roles.image].size, transform)
        pairs = file_captions(source, ("data", key), transform)
        self.data_stats[key] = pairs.stats.as_dict()
        return pairs

    def describe(self) -> str:
        return f"{len(self.train_set)} train images"

    def texts(self) -> list[str]:
        return self.train_set.texts()

    def rng_state(self) -> torch.Tensor:
        """The running state of MLM masking, which a resumed run must continue from."""
        return self.gen.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)

    def train_batch(self, size: int, index: int) -> dict:
        """This rank's `size` rows of the step's global micro batch, which every rank builds alike (masking
        included), so a batch is a function of the step whatever the number of ranks."""
        total = size * ranks.world()
        pairs = self.train_set.train_batch(total, self.negative_prob, self.spec.train.seed, index)
        batch = encode(pairs, self.spec, self.roles, self.tokenizer, self.gen)
        return batch if total == size else self._share(batch, ranks.part(total))

    def _share(self, batch: dict, rows: slice) -> dict:
        """A rank's rows. Its MLM loss is weighted by its share of the masked tokens: the ranks' average
        (what data parallelism takes) is then the mean over every masked token of the global batch."""
        mine = {k: v[rows] for k, v in batch.items()}
        if self.roles.mlm:
            key = f"{self.spec.objective_head(self.roles.mlm)}_labels"
            total = int((batch[key] != IGNORE).sum())
            if total:
                mine["mlm_weight"] = int((mine[key] != IGNORE).sum()) * ranks.world() / total
        return mine

    def losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        spec, roles = self.spec, self.roles
        parts: dict[str, torch.Tensor] = {}
        if roles.itm:
            parts[roles.itm] = itm_loss(out[spec.objective_head(roles.itm)], batch["match"])
        if roles.mlm:
            head = spec.objective_head(roles.mlm)
            parts[roles.mlm] = mlm_loss(out[head], batch[f"{head}_labels"]) * batch.get("mlm_weight", 1.0)
        if roles.itc:
            parts[roles.itc] = itc_loss(matching(out[spec.objective_head(roles.itc)], batch["match"]))
        parts["loss"] = sum(spec.objectives[k].weight * v for k, v in parts.items())
        return parts

    @torch.no_grad()
    def evaluate(self, forward: Callable[[dict], dict]) -> dict:
        """ITM accuracy and loss on unmasked text over fixed balanced pairs; MLM on a fixed masking."""
        if self.val_set is None:
            return {}
        spec, roles = self.spec, self.roles
        sums = {f"{t}_{k}": 0.0 for t in ("itm", "mlm", "itc") for k in ("hit", "loss", "n")}
        gen = torch.Generator().manual_seed(1234)
        for pairs in batched(self.val_set.eval_pairs(spec.data.val_pairs), batch_plan(spec)[0]):
            if roles.itm:
                logits = forward(encode(pairs, spec, roles, self.tokenizer, gen=None))[spec.objective_head(roles.itm)]
                sums["itm_hit"] += int((logits.float().argmax(-1) == pairs.match).sum())
                sums["itm_loss"] += float(itm_loss(logits, pairs.match)) * len(pairs.texts)
                sums["itm_n"] += len(pairs.texts)
            if roles.mlm:
                self._mlm(forward, pairs, gen, sums)
            if roles.itc:
                self._itc(forward, pairs, sums)
        out = {}
        for task in ("itm", "mlm", "itc"):
            if sums[f"{task}_n"]:
                out[f"{task}_acc"] = sums[f"{task}_hit"] / sums[f"{task}_n"]
                out[f"{task}_loss"] = round(sums[f"{task}_loss"] / sums[f"{task}_n"], 6)
        return out

    def _itc(self, forward, pairs, sums) -> None:
        """In-batch: how often a caption's own image scores highest among the batch's matching pairs."""
        batch = encode(pairs, self.spec, self.roles, self.tokenizer, gen=None)
        logits = matching(forward(batch)[self.spec.objective_head(self.roles.itc)].float(), pairs.match)
        n = logits.shape[0]
        if n > 1:
            sums["itc_hit"] += float((logits.argmax(-1) == torch.arange(n)).sum())
            sums["itc_loss"] += float(itc_loss(logits)) * n
            sums["itc_n"] += n

    def _mlm(self, forward, pairs, gen, sums) -> None:
        batch = encode(pairs, self.spec, self.roles, self.tokenizer, gen=gen)
        head = self.spec.objective_head(self.roles.mlm)
        labels = batch[f"{head}_labels"]
        target = labels[labels != IGNORE]
        if target.numel():
            logits = forward(batch)[head].float()
            sums["mlm_hit"] += int((logits.argmax(-1) == target).sum())
            sums["mlm_loss"] += float(mlm_loss(logits, labels)) * target.numel()
            sums["mlm_n"] += target.numel()
