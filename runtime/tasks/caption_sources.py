"""The image-caption pairs captions pretraining draws from: the built-in scenes, or captioned images from
files (ViLT/METER/Renaissance caption tables, a JSONL manifest).

Both give the same interface, in two halves. `plan` decides a micro batch from (seed, index) alone: which
image each row shows, its text (a caption of it, or for an ITM negative a caption of another image) and
whether they match; every rank plans the whole global micro batch alike, reading no image. `image(i)` is a
reference to image i (`runtime.data.images`), which a worker reads, decodes and transforms only for the rows
of its own rank. So batches are pure functions of their index (reproducible, resumable, the same for 1 and N
ranks and any number of workers) and a rank decodes only what it trains on.

Captions from files are grouped by image (a table row, or a manifest line); an ITM negative is a caption of
another image, drawn at random as ViLT does: real captions cannot be checked against an image, so a rare
negative that happens to fit stays a negative. Built-in negatives are checked against the scene.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from graphspec.language.errors import Issue, SpecError
from graphspec.language.schema import DataSource

from ..data import scenes as gen
from ..data.images import SceneImage, image_ref
from ..data.records import ReadStats
from .base import shapes_config

NEGATIVE_TRIES = 50  # a caption of another scene is true of this one ~4% of the time; retry past that


@dataclass
class PairPlan:
    """One batch of image-text pairs, before any image is read."""

    images: list[int]  # the image each row shows (an index into the source)
    texts: list[str]
    match: list[int]  # 1: the text describes the image; 0: an ITM negative

    def rows(self, part: slice) -> "PairPlan":
        return PairPlan(self.images[part], self.texts[part], self.match[part])


class _Pairs:
    """What both sources share: batch plans from their captions, and fixed evaluation pairs."""

    def __len__(self) -> int:
        return len(self.refs)

    def image(self, i: int):
        return self.refs[i]

    def plan_rows(self, indices: list[int], negatives: list[bool], rng: random.Random) -> PairPlan:
        texts = [self.negative_caption(i, rng) if neg else self.caption(i, rng) for i, neg in zip(indices, negatives)]
        return PairPlan(list(indices), texts, [0 if n else 1 for n in negatives])

    def plan(self, size: int, negative_prob: float, seed: int, index: int) -> PairPlan:
        """Micro batch `index` of the run: a function of (seed, index) alone."""
        rng = random.Random(f"train:{seed}:{index}:0")
        indices = [rng.randrange(len(self)) for _ in range(size)]
        return self.plan_rows(indices, [rng.random() < negative_prob for _ in range(size)], rng)

    def eval_plans(self, per_image: int) -> list[PairPlan]:
        """Fixed pairs, half negatives, the same at every evaluation: one plan per image."""
        return [self.plan_rows([i] * per_image, [k % 2 == 1 for k in range(per_image)], random.Random(f"eval:{i}"))
                for i in range(len(self))]


def swap_images(plan: PairPlan, share: float, rng: random.Random, other) -> PairPlan:
    """The ITM pass of the two-pass recipe (ViLT, METER, Renaissance): the plan's true pairs, exactly `share`
    of them (rounded up: half of an odd batch) with the image swapped for another, `other(image, text, rng)`."""
    n = len(plan.texts)
    negatives = set(rng.sample(range(n), n - int(n * (1 - share) + 1e-9))) if n > 1 else set()
    images = [other(img, text, rng) if k in negatives else img
              for k, (img, text) in enumerate(zip(plan.images, plan.texts))]
    return PairPlan(images, list(plan.texts), [0 if k in negatives else 1 for k in range(n)])


def batched(plans: list[PairPlan], size: int) -> list[PairPlan]:
    """Regroup per-image plans into batches of `size`."""
    images = [i for p in plans for i in p.images]
    texts = [t for p in plans for t in p.texts]
    match = [m for p in plans for m in p.match]
    return [PairPlan(images[k:k + size], texts[k:k + size], match[k:k + size]) for k in range(0, len(texts), size)]


class SceneSet(_Pairs):
    """The scenes of one split; each image is rendered when a batch needs it."""

    def __init__(self, source: DataSource, where: tuple, image_size: int):
        config = shapes_config(source, image_size, where)
        available = gen.split_size(config, source.split)
        n = source.samples or available
        if n > available:
            raise SpecError([Issue(where + ("samples",), f"asked for {n} {source.split} scenes, but these options "
                                   f"give only {available} distinct {source.split} scenes",
                                   f"use samples <= {available}, or allow more variety (e.g. shapes.max_shapes: 4)")],
                            title="the data block asks for scenes the generator cannot make")
        self.scenes = gen.scenes(config, source.split, n)
        self.refs = [SceneImage(s, f"builtin scene {k}") for k, s in enumerate(self.scenes)]

    def caption(self, i: int, rng: random.Random) -> str:
        return gen.caption(self.scenes[i], rng)

    def negative_image(self, i: int, text: str, rng: random.Random) -> int:
        """Another scene, one the text is not true of."""
        for _ in range(NEGATIVE_TRIES):
            j = rng.randrange(len(self.scenes) - 1)
            j += j >= i
            if not gen.describes(self.scenes[j], text):
                return j
        raise RuntimeError(f"no scene found that '{text}' is false of in {NEGATIVE_TRIES} tries")

    def negative_caption(self, i: int, rng: random.Random) -> str:
        for _ in range(NEGATIVE_TRIES):
            j = rng.randrange(len(self.scenes) - 1)
            j += j >= i  # never the same scene
            text = gen.caption(self.scenes[j], rng)
            if not gen.describes(self.scenes[i], text):
                return text
        raise RuntimeError(f"no false caption found for scene {i} in {NEGATIVE_TRIES} tries")

    def texts(self, per_scene: int = 8) -> list[str]:
        """Captions to train a vocabulary on: several per training scene."""
        rng = random.Random("vocabulary")
        return [gen.caption(s, rng) for s in self.scenes for _ in range(per_scene)]


class CaptionFiles(_Pairs):
    """The captioned images of one split from file records (their images stay where they are: references)."""

    def __init__(self, source: DataSource, where: tuple, records, stats: ReadStats):
        self.stats = stats
        self.refs: list = []  # one image reference per distinct image
        self.captions: list[list[str]] = []
        index: dict[tuple, int] = {}
        for rec in records:
            key = (rec["table"], rec["row"])  # a row (table) or a line (manifest) is one image
            if key not in index:
                if source.samples and len(self.refs) >= source.samples:
                    break
                index[key] = len(self.refs)
                self.refs.append(image_ref(rec["image"], f"{rec['where']} {rec['image_refs'][0]}"))
                self.captions.append([])
            self.captions[index[key]].append(rec["text"])
        if len(self.refs) < 2:
            raise SpecError([Issue(where + ("source",), f"{source.source} holds {len(self.refs)} captioned image(s) "
                                   f"for split '{source.split}'; image-text matching needs at least two (a negative "
                                   "caption comes from another image)", "check the split and the files")])

    def caption(self, i: int, rng: random.Random) -> str:
        return rng.choice(self.captions[i])

    def negative_image(self, i: int, text: str, rng: random.Random) -> int:
        """Another image, drawn at random as ViLT draws its `false_image` (its captions are not checked)."""
        j = rng.randrange(len(self.refs) - 1)
        return j + (j >= i)

    def negative_caption(self, i: int, rng: random.Random) -> str:
        j = rng.randrange(len(self.refs) - 1)
        j += j >= i  # never the same image
        return rng.choice(self.captions[j])

    def texts(self) -> list[str]:
        """Every caption, to train a vocabulary on."""
        return [c for caps in self.captions for c in caps]
