"""Downstream tasks on builtin:shapes: NLVR2, SNLI-VE, VQA and reference resolution.

Every example becomes model rows the same way whatever its source: text
tokenised to the text input, images transformed once up front; NLVR2's two
image-text passes are consecutive rows (the pair_classify head joins them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

from compiler.ds_config import batch_plan
from graphspec.errors import Issue, SpecError
from graphspec.schema import DataSource, Spec

from . import ranks
from .data import shapes as gen
from .data import tasks as generators
from .data.pairs import shapes_config
from .metrics import accuracy, classify_loss, itc_loss, recall_at_k, vqa_loss, vqa_score
from .sources import file_examples

HEAD_FOR_TASK = {"nlvr2": "pair_classify", "snli_ve": "classify", "vqa": "vqa", "refexp": "ref", "retrieval": "itc"}


@dataclass
class Example:
    pixels: tuple[torch.Tensor, ...]  # (3, S, S) each: one image, two for NLVR2
    text: str
    label: int = 0  # class, truth (NLVR2) or target box
    answers: dict[str, float] | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()


def builtin_examples(task: str, source: DataSource, where: tuple, image_size: int, transform) -> list[Example]:
    config = shapes_config(source, image_size, where)
    n = source.samples or gen.split_size(config, source.split)
    try:
        made = {"nlvr2": generators.nlvr2, "snli_ve": generators.snli_ve, "vqa": generators.vqa,
                "refexp": generators.refexp, "retrieval": generators.retrieval}[task](config, source.split, n,
                                                                                     source.shapes.seed)
    except ValueError as e:
        raise SpecError([Issue(where + ("samples",), str(e), "ask for fewer samples, or allow more shapes")]) from None

    def px(scene):
        return transform(gen.render(scene))

    if task == "nlvr2":
        return [Example((px(e.scene_0), px(e.scene_1)), e.statement, int(e.label)) for e in made]
    if task == "snli_ve":
        return [Example((px(e.scene),), e.hypothesis, e.label) for e in made]
    if task == "vqa":
        return [Example((px(e.scene),), e.question, answers=e.answers) for e in made]
    if task == "retrieval":  # one example per caption; the label names its scene
        return [Example((image,), text, i) for i, e in enumerate(made) for image in [px(e.scene)] for text in e.captions]
    return [Example((px(e.scene),), e.expression, e.target, boxes=e.boxes) for e in made]


@dataclass(frozen=True)
class Names:
    text: str
    image: str
    boxes: str | None
    head: str
    objective: str


def names_for(spec: Spec, task: str) -> Names:
    kind = HEAD_FOR_TASK[task]
    heads = [n for n, h in spec.heads.items() if h.kind == kind]
    objectives = [n for n, o in spec.objectives.items() if o.kind == kind]
    if len(heads) != 1 or len(objectives) != 1 or len(spec.objectives) != 1:
        raise SpecError([Issue(("objectives",), f"the {task} task trains one {kind} head with one {kind} objective; "
                               f"this spec has heads {heads} and objectives {objectives}",
                               f"add e.g. `objectives: {{{heads[0] if heads else kind}: {{kind: {kind}}}}}`")])
    by = {m: [n for n, i in spec.inputs.items() if i.modality == m] for m in ("text", "image", "boxes")}
    return Names(by["text"][0], by["image"][0], (by["boxes"] or [None])[0], heads[0], objectives[0])


class SupervisedTask:
    def __init__(self, spec: Spec, transform, split: str | None = None, answers: list[str] | None = None):
        self.spec, self.task = spec, spec.data.train.task
        self.names = names_for(spec, self.task)
        self.data_stats: dict = {}
        self.train = self._examples(spec.data.train, "train", transform) if split is None else []
        val = spec.data.val if split is None else (spec.data.val or spec.data.train).model_copy(update={"split": split})
        self.val = self._examples(val, "val", transform) if val else []
        self.answers = (answers or self._answer_vocabulary()) if self.task == "vqa" else []
        self.tokenizer = None

    def _examples(self, source: DataSource, key: str, transform) -> list[Example]:
        where = ("data", key)
        if source.source == "builtin:shapes":
            return builtin_examples(self.task, source, where, self.spec.inputs[self.names.image].size, transform)
        examples, stats = file_examples(self.task, source, where, transform)
        self.data_stats[key] = stats
        return examples

    def _answer_vocabulary(self) -> list[str]:
        if self.spec.data.train.source == "builtin:shapes":
            vocab = generators.answer_vocabulary(shapes_config(self.spec.data.train, 16, ("data", "train")))
        else:  # as ViLT: every answer the training data scores (evaluation reads the checkpoint's instead)
            vocab = sorted({a for e in self.train for a in e.answers or {}})
        head = self.spec.heads[self.names.head]
        if head.answers != len(vocab):
            raise SpecError([Issue(("heads", self.names.head, "answers"), f"the data has {len(vocab)} answers, the head "
                                   f"scores {head.answers}", f"set `answers: {len(vocab)}`")])
        return vocab

    def describe(self) -> str:
        return f"{len(self.train)} train examples ({self.task})"

    def texts(self) -> list[str]:
        return [e.text for e in self.train]

    def rows(self, examples: list[Example]) -> dict:
        n = self.names
        pairs = [(e.text, px) for e in examples for px in e.pixels]  # NLVR2: two rows per example
        enc = self.tokenizer([t for t, _ in pairs], padding="max_length", truncation=True, return_tensors="pt",
                             max_length=self.spec.inputs[n.text].max_length)
        batch = {f"{n.text}_ids": enc["input_ids"], f"{n.text}_mask": enc["attention_mask"],
                 n.image: torch.stack([px for _, px in pairs]), "label": torch.tensor([e.label for e in examples])}
        if self.task == "vqa":
            batch["scores"] = torch.tensor([[e.answers.get(a, 0.0) for a in self.answers] for e in examples])
        if n.boxes:
            k = self.spec.inputs[n.boxes].max_candidates
            most = max(len(e.boxes) for e in examples)
            if most > k:
                raise SpecError([Issue(("inputs", n.boxes, "max_candidates"), f"a sample has {most} candidate boxes, "
                                       f"more than max_candidates {k}", f"set `max_candidates: {most}` or more")])
            boxes = torch.zeros(len(examples), k, 4)
            mask = torch.zeros(len(examples), k, dtype=torch.bool)
            for i, e in enumerate(examples):
                boxes[i, :len(e.boxes)] = torch.tensor(e.boxes[:k])
                mask[i, :len(e.boxes)] = True
            batch[n.boxes], batch[f"{n.boxes}_mask"] = boxes, mask
        return batch

    def rng_state(self) -> None:
        """Nothing to keep for a resume: a batch is a pure function of its index."""
        return None

    def set_rng_state(self, state: None) -> None:
        pass

    def train_batch(self, size: int, index: int) -> dict:
        """This rank's `size` examples of the step's global micro batch (the same draw on every rank)."""
        rng = random.Random(f"train:{self.spec.train.seed}:{index}")
        drawn = [self.train[rng.randrange(len(self.train))] for _ in range(size * ranks.world())]
        return self.rows(drawn[ranks.part(len(drawn))])

    def losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        logits = out[self.names.head]
        if self.task == "vqa":
            loss = vqa_loss(logits, batch["scores"])
        elif self.task == "retrieval":
            loss = itc_loss(logits)
        else:
            loss = classify_loss(logits, batch["label"])
        weight = self.spec.objectives[self.names.objective].weight
        return {self.names.objective: loss, "loss": weight * loss}

    @torch.no_grad()
    def evaluate(self, forward: Callable[[dict], dict]) -> dict:
        if self.task == "retrieval":
            return self._recall(forward) if self.val else {}
        right = total = loss = 0.0
        size = batch_plan(self.spec)[0]
        for start in range(0, len(self.val), size):
            batch = self.rows(self.val[start:start + size])
            logits = forward(batch)[self.names.head].float()
            if self.task == "vqa":
                r, n = vqa_score(logits, batch["scores"])
            else:
                r, n = accuracy(logits, batch["label"])
            right, total = right + r, total + n
            loss += float(self.losses({self.names.head: logits}, batch)["loss"]) * n
        if not total:
            return {}
        metric = "vqa_score" if self.task == "vqa" else "acc"
        return {f"{self.task}_{metric}": right / total, f"{self.task}_loss": round(loss / total, 6)}

    def _recall(self, forward: Callable[[dict], dict]) -> dict:
        """Recall@1/5/10 both ways over the whole split: the itc head scores every text of a block against
        every image of a block (towers are unimodal), so the full matrix is filled block by block."""
        images = {e.label: e for e in self.val}  # one image per scene
        scenes = sorted(images)
        size = batch_plan(self.spec)[0]
        sim = torch.zeros(len(self.val), len(scenes))
        for t0 in range(0, len(self.val), size):
            texts = self.val[t0:t0 + size]
            for i0 in range(0, len(scenes), size):
                block = [images[s] for s in scenes[i0:i0 + size]]
                n = max(len(texts), len(block))
                rows = [Example(block[min(k, len(block) - 1)].pixels, texts[min(k, len(texts) - 1)].text)
                        for k in range(n)]  # padded by repetition to one batch size
                logits = forward(self.rows(rows))[self.names.head].float()
                sim[t0:t0 + len(texts), i0:i0 + len(block)] = logits[:len(texts), :len(block)]
        position = {s: i for i, s in enumerate(scenes)}
        return {f"retrieval_{k}": v for k, v in recall_at_k(sim, [position[e.label] for e in self.val]).items()}
