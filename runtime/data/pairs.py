"""Image-text pairs from builtin:shapes, for masked LM and image-text matching.

Scenes of a split are rendered and transformed once (they are small and
deterministic) and kept as one tensor. Training batches are drawn with a
generator seeded by (seed, batch index, rank), so a batch is a pure function of
its index: runs are reproducible and a resumed run sees the same data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from graphspec.errors import Issue, SpecError
from graphspec.schema import DataSource

from . import shapes as gen

NEGATIVE_TRIES = 50  # a caption of another scene is true of this one ~4% of the time; retry past that


@dataclass
class Pairs:
    texts: list[str]
    images: torch.Tensor  # (B, 3, S, S)
    match: torch.Tensor  # (B,) 1 = the text describes the image


def shapes_config(source: DataSource, image_size: int, where: tuple) -> gen.ShapesConfig:
    """The generator's config for a data block; what it cannot make is a located spec error."""
    opts = source.shapes
    config = gen.ShapesConfig(
        min_shapes=opts.min_shapes, max_shapes=opts.max_shapes,
        colors=tuple(opts.colors) if opts.colors else tuple(gen.COLORS),
        shapes=tuple(opts.shapes) if opts.shapes else gen.SHAPES, image_size=image_size, seed=opts.seed)
    problems = config.validate()
    if problems:
        raise SpecError([Issue(where + ("shapes",), p, "see the builtin:shapes options") for p in problems],
                        title="the data block asks for scenes the generator cannot make")
    return config


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
