"""Image-text retrieval: an `itc` head over unimodal features, trained with the symmetric InfoNCE loss and
evaluated by recall@1/5/10 both ways over the whole validation split, ranked by ITC and, where the graph has
an ITM head, re-ranked by it (ALBEF's procedure). Built-in scenes only (three distinct true captions each).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.scene_text import Plan, Pool, draw
from ..data.scenes import Scene, ShapesConfig, caption
from ..metrics import contrastive_loss, recall_at_k
from .base import Example, ExampleTask, register

CAPTIONS_PER_SCENE = 3
RERANK_K = 16  # the ITM re-rank's k where the itc objective sets none


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
        """Recall@1/5/10 both ways over the whole split, as ALBEF evaluates: each text's and each image's
        unimodal ITC features computed once, all pairs ranked by their similarity; where the graph also has an
        ITM head, each text's top k images and each image's top k texts re-ranked by its match logit margin
        (k: the itc objective's `rerank_k`). The model runs max(T, I) rows to encode and at most k(T + I) pairs
        to re-rank, not T x I; the counts come with the metrics."""
        if not self.val:
            return {}
        images = {e.label: e for e in self.val}  # one image per scene
        scenes = sorted(images)
        loaded = dict(zip(scenes, self.load_all([images[s] for s in scenes])))  # each image read once
        texts = [e.text for e in self.val]
        truth = [scenes.index(e.label) for e in self.val]
        size = self.spec.batch_plan()[0]
        head = self.roles.head

        def run(pairs: list[tuple[int, int]]) -> list[dict]:
            """The model's outputs for (text, image) index pairs, batch by batch."""
            outs = []
            for start in range(0, len(pairs), size):
                chunk = pairs[start:start + size]
                rows = [Example(images[scenes[i]].images, texts[t]) for t, i in chunk]
                outs.append(forward(self.rows(rows, [loaded[scenes[i]] for _, i in chunk])))
            return outs

        n = max(len(texts), len(scenes))  # row r: text r mod T with image r mod I: every text and image once
        encoded = run([(r % len(texts), r % len(scenes)) for r in range(n)])
        text_feats = torch.cat([o[head]["text"].float() for o in encoded])[:len(texts)]
        image_feats = torch.cat([o[head]["image"].float() for o in encoded])[:len(scenes)]
        sim = float(encoded[0][head]["scale"]) * text_feats @ image_feats.T  # (T, I)
        out = {f"retrieval_{k}": v for k, v in recall_at_k(sim, truth).items()}
        out.update(retrieval_encoded_rows=n, retrieval_pairs_scored_by_itc=len(texts) * len(scenes))
        itm = next((h for h, obj in self.spec.heads.items() if obj.kind == "itm"), None)
        if itm is None:
            return out
        k = self.spec.objectives[self.roles.objective].rerank_k or RERANK_K
        t2i = {(t, int(i)) for t in range(len(texts)) for i in sim[t].topk(min(k, len(scenes))).indices}
        i2t = {(int(t), i) for i in range(len(scenes)) for t in sim[:, i].topk(min(k, len(texts))).indices}
        pairs = sorted(t2i | i2t)
        logits = torch.cat([o[itm].float() for o in run(pairs)])
        margin = dict(zip(pairs, (logits[:, 1] - logits[:, 0]).tolist()))
        # candidates ranked by ITM above every other image (text), which keep their ITC order below
        below = sim - sim.max() - 1.0 - max(abs(m) for m in margin.values())
        by_text, by_image = below.clone(), below.clone()
        for t, i in t2i:
            by_text[t, i] = margin[(t, i)]
        for t, i in i2t:
            by_image[t, i] = margin[(t, i)]
        texts_ranked, images_ranked = recall_at_k(by_text, truth), recall_at_k(by_image, truth)
        out.update({f"retrieval_itm_{key}": (texts_ranked if key.startswith("t2i") else images_ranked)[key]
                    for key in texts_ranked})
        out.update(retrieval_rerank_k=k, retrieval_fusion_pairs=len(pairs))
        return out
