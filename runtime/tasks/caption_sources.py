"""The image-caption pairs captions pretraining draws from: the built-in scenes, or captioned images from
files (ViLT/METER/Renaissance caption tables, a JSONL manifest).

Both give the same interface. Training batches are drawn with a generator seeded by (seed, batch index,
rank), so a batch is a pure function of its index: runs are reproducible and a resumed run sees the same data.
Built-in scenes of a split are rendered and transformed once (they are small and deterministic) and kept as
one tensor. Captions from files are grouped by image (a table row, or a manifest line); an ITM negative is a
caption of another image, drawn at random as ViLT does: real captions cannot be checked against an image, so
a rare negative that happens to fit stays a negative. Their images stay encoded in memory and are decoded and
transformed per batch, so a large split costs its file size, not its pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from graphspec.errors import Issue, SpecError
from graphspec.schema import DataSource

from ..data import scenes as gen
from ..data.records import ReadStats, decode_image
from .base import shapes_config

NEGATIVE_TRIES = 50  # a caption of another scene is true of this one ~4% of the time; retry past that


@dataclass
class Pairs:
    texts: list[str]
    images: torch.Tensor  # (B, 3, S, S)
    match: torch.Tensor  # (B,) 1 = the text describes the image


class SceneSet:
    """The scenes of one split, with their transformed images."""

    def __init__(self, source: DataSource, where: tuple, image_size: int, transform: Callable[[np.ndarray], torch.Tensor]):
        config = shapes_config(source, image_size, where)
        available = gen.split_size(config, source.split)
        n = source.samples or available
        if n > available:
            raise SpecError([Issue(where + ("samples",), f"asked for {n} {source.split} scenes, but these options "
                                        f"give only {available} distinct {source.split} scenes",
                                        f"use samples <= {available}, or allow more variety (e.g. shapes.max_shapes: 4)")],
                                 title="the data block asks for scenes the generator cannot make")
        self.scenes = gen.scenes(config, source.split, n)
        self.images = torch.stack([transform(gen.render(s)) for s in self.scenes])  # (N, 3, S, S)

    def __len__(self) -> int:
        return len(self.scenes)

    def negative_caption(self, i: int, rng: random.Random) -> str:
        for _ in range(NEGATIVE_TRIES):
            j = rng.randrange(len(self.scenes) - 1)
            j += j >= i  # never the same scene
            text = gen.caption(self.scenes[j], rng)
            if not gen.describes(self.scenes[i], text):
                return text
        raise RuntimeError(f"no false caption found for scene {i} in {NEGATIVE_TRIES} tries")

    def pairs(self, indices: list[int], negatives: list[bool], rng: random.Random) -> Pairs:
        texts = [self.negative_caption(i, rng) if neg else gen.caption(self.scenes[i], rng)
                 for i, neg in zip(indices, negatives)]
        return Pairs(texts, self.images[indices], torch.tensor([0 if n else 1 for n in negatives]))

    def train_batch(self, size: int, negative_prob: float, seed: int, index: int, rank: int = 0) -> Pairs:
        rng = random.Random(f"train:{seed}:{index}:{rank}")
        indices = [rng.randrange(len(self.scenes)) for _ in range(size)]
        return self.pairs(indices, [rng.random() < negative_prob for _ in range(size)], rng)

    def texts(self) -> list[str]:
        return all_texts(self)

    def eval_pairs(self, per_scene: int) -> list[Pairs]:
        """Fixed pairs, half negatives, the same at every evaluation: one Pairs per scene."""
        out = []
        for i in range(len(self.scenes)):
            rng = random.Random(f"eval:{i}")
            out.append(self.pairs([i] * per_scene, [k % 2 == 1 for k in range(per_scene)], rng))
        return out


def batched(pairs: list[Pairs], size: int) -> list[Pairs]:
    """Regroup per-scene pairs into batches of `size`."""
    texts = [t for p in pairs for t in p.texts]
    images = torch.cat([p.images for p in pairs])
    match = torch.cat([p.match for p in pairs])
    return [Pairs(texts[k:k + size], images[k:k + size], match[k:k + size]) for k in range(0, len(texts), size)]


def all_texts(scenes: SceneSet, per_scene: int = 8) -> list[str]:
    """Captions to train a vocabulary on: several per training scene."""
    rng = random.Random("vocabulary")
    return [gen.caption(s, rng) for s in scenes.scenes for _ in range(per_scene)]


class CaptionFiles:
    """The images of one split with their captions; batches are pure functions of (seed, index, rank)."""

    def __init__(self, source: DataSource, where: tuple, transform: Callable[[np.ndarray], torch.Tensor],
                 records, stats: ReadStats):
        self.transform, self.stats = transform, stats
        self.images: list = []  # encoded bytes (or decoded PIL images), one per distinct image
        self.wheres: list[str] = []
        self.captions: list[list[str]] = []
        index: dict[tuple, int] = {}
        for rec in records:
            key = (rec["table"], rec["row"])  # a row (table) or a line (manifest) is one image
            if key not in index:
                if source.samples and len(self.images) >= source.samples:
                    break
                index[key] = len(self.images)
                self.images.append(rec["image"])
                self.wheres.append(f"{rec['where']} {rec['image_refs'][0]}")
                self.captions.append([])
            self.captions[index[key]].append(rec["text"])
        if len(self.images) < 2:
            raise SpecError([Issue(where + ("source",), f"{source.source} holds {len(self.images)} captioned image(s) "
                                   f"for split '{source.split}'; image-text matching needs at least two (a negative "
                                   "caption comes from another image)", "check the split and the files")])

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, i: int) -> torch.Tensor:
        image = self.images[i]
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = decode_image(image, self.wheres[i])
        return self.transform(np.asarray(image.convert("RGB")))  # (3, S, S)

    def negative_caption(self, i: int, rng: random.Random) -> str:
        j = rng.randrange(len(self.images) - 1)
        j += j >= i  # never the same image
        return rng.choice(self.captions[j])

    def pairs(self, indices: list[int], negatives: list[bool], rng: random.Random) -> Pairs:
        texts = [self.negative_caption(i, rng) if neg else rng.choice(self.captions[i])
                 for i, neg in zip(indices, negatives, strict=True)]
        decoded = {i: self.pixels(i) for i in set(indices)}  # an image drawn twice is decoded once
        images = torch.stack([decoded[i] for i in indices])  # (B, 3, S, S)
        return Pairs(texts, images, torch.tensor([0 if n else 1 for n in negatives]))

    def train_batch(self, size: int, negative_prob: float, seed: int, index: int, rank: int = 0) -> Pairs:
        rng = random.Random(f"train:{seed}:{index}:{rank}")
        indices = [rng.randrange(len(self.images)) for _ in range(size)]
        return self.pairs(indices, [rng.random() < negative_prob for _ in range(size)], rng)

    def eval_pairs(self, per_scene: int) -> list[Pairs]:
        """Fixed pairs, half negatives, the same at every evaluation: one Pairs per image."""
        return [self.pairs([i] * per_scene, [k % 2 == 1 for k in range(per_scene)], random.Random(f"eval:{i}"))
                for i in range(len(self.images))]

    def texts(self) -> list[str]:
        """Every caption, to train a vocabulary on."""
        return [c for caps in self.captions for c in caps]
