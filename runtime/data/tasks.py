"""Downstream tasks of the Renaissance paper, generated on the built-in shapes scenes.

NLVR2, SNLI-VE, VQA, referring expressions and image-text retrieval, all
deterministic (seeded), offline and small.  Every task takes
(config, split, n, seed=0) and returns n examples; train, val and test draw their
scenes from shapes.scenes(config, split, ...), so splits never share a scene, and
within a task each scene is used by one example only.  A split that cannot supply
n distinct examples raises ValueError saying how far it got.  See docs/tasks.md.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable

from .shapes import Scene, ShapesConfig, caption, shape_box
from .tasks_base import (NUMBERS, POSITIONS, RELATIONS, Plan, Pool, Thing, at, draw, random_thing,
                         task_rng)
from .tasks_nli import Entailment, PairStatement, nlvr2, snli_ve

__all__ = ["PairStatement", "Entailment", "Question", "Reference", "CaptionedScene", "nlvr2", "snli_ve",
           "vqa", "answer_vocabulary", "refexp", "retrieval", "shape_box"]

Box = tuple[float, float, float, float]
Answers = dict[str, float]
QUESTION_TYPES = ("colour", "shape", "count", "exists")
COUNT_MAX = 3  # counting questions have answers zero..min(max_shapes, COUNT_MAX)
REFERENCE_FAMILIES = ("position", "attribute", "descriptor", "relation")
CAPTIONS_PER_SCENE = 3


@dataclass(frozen=True)
class Question:
    """VQAv2-style: soft scores in [0, 1] per acceptable answer."""

    scene: Scene
    question: str
    answers: dict[str, float]


@dataclass(frozen=True)
class Reference:
    """RefCOCO-style: `target` indexes the box (in scene.shapes order) the expression picks out."""

    scene: Scene
    expression: str
    boxes: tuple[Box, ...]
    target: int


@dataclass(frozen=True)
class CaptionedScene:
    """Image-text retrieval: distinct true captions of one scene."""

    scene: Scene
    captions: tuple[str, ...]


def _count_max(config: ShapesConfig) -> int:
    return min(config.max_shapes, COUNT_MAX)


def answer_vocabulary(config: ShapesConfig) -> list[str]:
    """Every answer any vqa() question of this config can have, sorted."""
    numbers = NUMBERS[:_count_max(config) + 1]
    return sorted({*config.colors, *config.shapes, "yes", "no", *numbers})


def vqa(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[Question]:
    """n questions, a quarter of each type, each on its own scene.

    - 'what colour is the <position> shape?' -> its colour
    - 'what shape is the <colour> one?' -> its kind; when shapes of that colour differ in kind the
      question is ambiguous and each of those kinds gets an equal share (0.5 for two)
    - 'how many <colour> shapes / <kind>s are there?' -> 'zero'..'three'; the count is planned
      evenly over zero..min(max_shapes, 3) before the scene is chosen, so no count dominates
    - 'is there <thing>?' -> 'yes' / 'no', planned half and half
    """
    rng, pool = task_rng("vqa", split, seed), Pool(config, split, "vqa")
    targets = {"colour": [None], "shape": [None], "count": list(range(_count_max(config) + 1)),
               "exists": [False, True]}

    def make(kind: str, target: int | bool | None) -> Question | None:
        text, answer = _question(config, kind, target, rng)
        scene = pool.take(lambda s: answer(s) is not None)
        return None if scene is None else Question(scene, text, answer(scene))

    return draw(pool, n, Plan(rng, QUESTION_TYPES, targets.__getitem__), make)


def _question(config: ShapesConfig, kind: str, target: int | bool | None, rng: random.Random
              ) -> tuple[str, Callable[[Scene], Answers | None]]:
    """A question and its answers for any scene (None where the scene cannot answer it as planned)."""
    if kind == "colour":
        cell = rng.randrange(len(POSITIONS))
        shape_at = lambda s: at(s, cell)  # noqa: E731
        return (f"what colour is the {POSITIONS[cell]} shape?",
                lambda s: None if shape_at(s) is None else {shape_at(s).color: 1.0})
    if kind == "shape":
        color = rng.choice(config.colors)

        def kinds(scene: Scene) -> Answers | None:
            found = sorted({s.kind for s in scene.shapes if s.color == color})
            return {k: 1.0 / len(found) for k in found} or None
        return f"what shape is the {color} one?", kinds
    if kind == "count":
        thing = random_thing(config, rng, ("color", "kind"))
        return (f"how many {thing.plural()} are there?",
                lambda s: {NUMBERS[target]: 1.0} if thing.count(s) == target else None)
    thing = random_thing(config, rng)
    return (f"is there {thing.phrase()}?",
            lambda s: {"yes" if target else "no": 1.0} if (thing.count(s) > 0) == target else None)


def refexp(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[Reference]:
    """n expressions that each pick out exactly one shape of a scene with two or more shapes.

    Families: 'the top left shape' (position), 'the red shape' / 'the circle' (attribute),
    'the red circle' (descriptor), 'the shape / the red shape / the circle left of the blue
    square' (relation to a uniquely named anchor, unique among the shapes in that relation).
    Target cells are planned evenly, and families evenly per cell.  Boxes are shape_box() of
    every shape, in scene.shapes order.
    """
    if config.max_shapes < 2:
        raise ValueError(f"refexp needs scenes with two or more shapes, but max_shapes is "
                         f"{config.max_shapes}: use ShapesConfig(max_shapes=2) or more")
    rng, pool = task_rng("refexp", split, seed), Pool(config, split, "refexp")

    def make(cell: int, family: str) -> Reference | None:
        scene = pool.take(lambda s: len(s.shapes) >= 2 and bool(expressions(s, cell, family)))
        if scene is None:
            return None
        target = next(i for i, s in enumerate(scene.shapes) if s.cell == cell)
        boxes = tuple(shape_box(s, scene) for s in scene.shapes)
        return Reference(scene, rng.choice(expressions(scene, cell, family)), boxes, target)

    return draw(pool, n, Plan(rng, list(range(len(POSITIONS))), lambda _: REFERENCE_FAMILIES), make)


def expressions(scene: Scene, cell: int, family: str) -> list[str]:
    """Every expression of a family that picks out the shape in `cell` and no other shape."""
    target = at(scene, cell)
    if target is None:
        return []
    if family == "position":
        return [f"the {POSITIONS[cell]} shape"]
    unique = lambda thing: thing.count(scene) == 1  # noqa: E731
    if family in ("descriptor", "attribute"):
        things = ([Thing(target.color, target.kind)] if family == "descriptor"
                  else [Thing(color=target.color), Thing(kind=target.kind)])
        return [f"the {t.noun()}" for t in things if unique(t)]
    out, nouns = [], (Thing(), Thing(color=target.color), Thing(kind=target.kind))
    for anchor in scene.shapes:
        name = Thing(anchor.color, anchor.kind)
        if anchor == target or not unique(name):
            continue
        for (relation, holds), noun in itertools.product(RELATIONS.items(), nouns):
            picked = [s for s in scene.shapes if s != anchor and noun.matches(s) and holds(s.cell, anchor.cell)]
            if picked == [target]:
                out.append(f"the {noun.noun()} {relation} the {name.noun()}")
    return out


def retrieval(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[CaptionedScene]:
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
