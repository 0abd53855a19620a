"""Captions pretraining: masked LM, image-text matching and contrast on the built-in scenes or caption files.

A batch pairs images with captions (a share of them captions of other images, for ITM), tokenised to the
text input and masked for MLM on matching pairs; validation reports ITM accuracy on fixed balanced pairs,
MLM accuracy on a fixed masking and in-batch ITC accuracy.
"""

from __future__ import annotations

from typing import Callable

import torch

from graphspec.schema import TASKS, DataSource, Roles, Spec

from .. import ranks
from ..data.jsonl import JsonlLayout, field_error
from ..data.records import ReadStats, _short
from ..metrics import itc_loss
from ..objectives import IGNORE, itm_loss, mask_tokens, mlm_loss
from .base import TaskData, _located, eval_source, file_records, register
from .caption_sources import CaptionFiles, Pairs, SceneSet, batched


def _parse(obj: dict, where: str) -> tuple[list[dict], list]:
    texts = obj["text"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise field_error(where, "text", f"must be a non-empty string or a list of them (got {_short(obj['text'])})")
    return [{"text": t, "region": None} for t in texts], [obj["image"]]


def matching(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """The ITC similarity among matching pairs only: a mismatched row's image is not its text's positive."""
    keep = match.bool()
    return logits[keep][:, keep]  # (P, P)


def pair_source(spec: Spec, roles: Roles, source: DataSource, key: str, transform, stats: dict):
    """The built-in scenes, or captioned images from arrow:/jsonl: files (their read counts go to `stats`)."""
    where = ("data", key)
    if source.source == "builtin:shapes":
        return SceneSet(source, where, spec.inputs[roles.image].size, transform)
    read = ReadStats()
    with _located(where):
        pairs = CaptionFiles(source, where, transform, file_records(source, where, roles.task, Captions.jsonl, read),
                             read)
    stats[key] = read.as_dict()
    return pairs


def encode(pairs: Pairs, spec: Spec, roles: Roles, tokenizer, gen: torch.Generator | None) -> dict:
    """Model inputs for a batch; with `gen`, text is masked for MLM (labels on matching pairs only)."""
    enc = tokenizer(pairs.texts, padding="max_length", truncation=True, return_tensors="pt",
                    max_length=spec.inputs[roles.text].max_length, return_special_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ids_key, mask_key = spec.inputs[roles.text].tensors(roles.text)
    (image_key,) = spec.inputs[roles.image].tensors(roles.image)
    batch = {ids_key: ids, mask_key: mask, image_key: pairs.images, "match": pairs.match}
    if roles.mlm is not None and gen is not None:
        obj = spec.objectives[roles.mlm]
        special = enc["special_tokens_mask"].bool() | (mask == 0)
        word_ids = [enc.word_ids(i) for i in range(len(pairs.texts))]
        masked, labels = mask_tokens(ids, special, word_ids, obj.mask_prob, obj.whole_word, tokenizer.mask_token_id,
                                     len(tokenizer), pairs.match.bool(), gen)
        batch[ids_key] = masked
        batch[spec.labels_of(spec.objective_head(roles.mlm))] = labels
    return batch


@register
class Captions:
    """Batches, losses and validation metrics of MLM + ITM (+ ITC) pretraining."""

    name = "captions"
    jsonl = JsonlLayout(name, TASKS[name].fields, TASKS[name].optional, "image", _parse)

    def __init__(self, spec: Spec, roles: Roles, data: TaskData, tokenizer, vocabulary: dict | None = None):
        self.spec, self.roles, self.tokenizer = spec, roles, tokenizer
        self.train_set, self.val_set, self.data_stats = data.train, data.val, data.stats
        self.negative_prob = spec.objectives[roles.itm].negative_prob if roles.itm else 0.0
        self.gen = torch.Generator().manual_seed(spec.train.seed)  # masking

    @classmethod
    def read(cls, spec: Spec, roles: Roles, transform, split: str | None = None) -> TaskData:
        stats: dict = {}
        train = pair_source(spec, roles, spec.data.train, "train", transform, stats) if split is None else None
        val_source = eval_source(spec, split)
        val = pair_source(spec, roles, val_source, "val", transform, stats) if val_source else None
        return TaskData(train, val, stats, lambda: train.texts())

    def describe(self) -> str:
        return f"{len(self.train_set)} train images"

    def vocabulary(self) -> dict:
        return {}

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
            key = self.spec.labels_of(self.spec.objective_head(self.roles.mlm))
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
            parts[roles.mlm] = mlm_loss(out[head], batch[spec.labels_of(head)]) * batch.get("mlm_weight", 1.0)
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
        for pairs in batched(self.val_set.eval_pairs(spec.data.val_pairs), spec.batch_plan()[0]):
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
        labels = batch[self.spec.labels_of(head)]
        target = labels[labels != IGNORE]
        if target.numel():
            logits = forward(batch)[head].float()
            sums["mlm_hit"] += int((logits.argmax(-1) == target).sum())
            sums["mlm_loss"] += float(mlm_loss(logits, labels)) * target.numel()
            sums["mlm_n"] += target.numel()
