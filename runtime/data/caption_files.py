"""Image-caption pairs from files (ViLT/METER/Renaissance caption tables or a JSONL manifest), for MLM, ITM and ITC.

The same interface as `pairs.SceneSet`, so pretraining reads either. Captions are
grouped by image (a table row, or a manifest line); an ITM negative is a caption
of another image, drawn at random as ViLT does: real captions cannot be checked
against an image, so a rare negative that happens to fit stays a negative.
Images stay encoded in memory and are decoded and transformed per batch, so a
large split costs its file size, not its pixels.
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch

from graphspec.errors import Issue, SpecError
from graphspec.schema import DataSource

from .pairs import Pairs
from .records import ReadStats, decode_image


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
