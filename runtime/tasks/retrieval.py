"""Image-text retrieval: an `itc` head over unimodal features, trained with the symmetric InfoNCE loss and
evaluated by recall@1/5/10 both ways over the whole validation split. Built-in scenes only (three distinct
true captions each).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.scene_text import Plan, Pool, draw
from ..data.scenes import Scene, ShapesConfig, caption
from ..metrics import contrastive_loss, itc_logits, recall_at_k
from .base import Example, ExampleTask, register

CAPTIONS_PER_SCENE = 3


@dataclass(frozen=True)
class CaptionedScene:
    """Image-text retrieval: distinct true captions of one scene."""

    scene: Scene
    captions: tuple[str, ...]


def generate(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[CaptionedScene]:
    """The first n scenes of a split, each with CAPTIONS_PER_SCENE distinct true captions.

    A scene's captions depend only on the scene and the seed, not on n.
    """
    pool = Pool(config, split, "retrieval")

    def make(*_: None) -> CaptionedScene | None:
        scene = pool.take(lambda s: True)
        if scene is None:
            return None
        rng, texts = random.Random(f"tasks:retrieval:{seed}:{scene.key()}"), []
        for _ in range(200):  # a one-shape scene has exactly three captions
            text = caption(scene, rng)
            texts += [text] if _listing(text) not in map(_listing, texts) else []
            if len(texts) == CAPTIONS_PER_SCENE:
                return CaptionedScene(scene, tuple(texts))
        return None

    return draw(pool, n, Plan(random.Random(0), [None], lambda _: [None]), make)


def _listing(text: str) -> str:
    """A caption with any shape listing sorted, so 'two shapes: A and B' and '...: B and A' count as one."""
    head, colon, listing = text.partition(": ")
    return head + colon + "|".join(sorted(listing.replace(" and ", ", ").split(", "))) if colon else text


@register
class Retrieval(ExampleTask):
    name = "retrieval"

    @classmethod
    def generate_examples(cls, config, source, n, image):
        """One example per caption; the label names its scene."""
        made = generate(config, source.split, n, source.shapes.seed)
        return [Example((image(e.scene),), text, i) for i, e in enumerate(made) for text in e.captions]

    @classmethod
    def example(cls, record):
        raise AssertionError("retrieval reads built-in scenes only (the task table lists no files for it)")

    def loss(self, out, batch):
        return contrastive_loss(out)  # every text against every rank's images

    @torch.no_grad()
    def evaluate(self, forward) -> dict:
        """Recall@1/5/10 both ways over the whole split: the itc head scores every text of a block against
        every image of a block (towers are unimodal), so the full matrix is filled block by block."""
        if not self.val:
            return {}
        images = {e.label: e for e in self.val}  # one image per scene
        scenes = sorted(images)
        loaded = dict(zip(scenes, self.load_all([images[s] for s in scenes])))  # each image read once
        size = self.spec.batch_plan()[0]
        sim = torch.zeros(len(self.val), len(scenes))
        for t0 in range(0, len(self.val), size):
            texts = self.val[t0:t0 + size]
            for i0 in range(0, len(scenes), size):
                block = scenes[i0:i0 + size]
                n = max(len(texts), len(block))
                picks = [(block[min(k, len(block) - 1)], texts[min(k, len(texts) - 1)]) for k in range(n)]
                rows = [Example(images[s].images, e.text) for s, e in picks]  # padded by repetition to one batch
                logits = itc_logits(forward(self.rows(rows, [loaded[s] for s, _ in picks]))[self.roles.head])
                sim[t0:t0 + len(texts), i0:i0 + len(block)] = logits[:len(texts), :len(block)]
        position = {s: i for i, s in enumerate(scenes)}
        return {f"retrieval_{k}": v for k, v in recall_at_k(sim, [position[e.label] for e in self.val]).items()}
