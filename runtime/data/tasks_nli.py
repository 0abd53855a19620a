"""NLVR2- and SNLI-VE-style tasks on the built-in scenes: statements judged against images.

Text comes first: the label is planned, the template and its fill-ins are drawn
without looking at any image, and then the first unused scene (or pair) that gives
that text the planned label is taken.  So every template occurs equally often with
every label (exactly, give or take one), and every filled-in text is equally likely
under every label: a model that reads only the text is at chance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .shapes import Scene, ShapesConfig
from .tasks_base import POSITIONS, Plan, Pool, Thing, at, draw, random_thing, task_rng


@dataclass(frozen=True)
class PairStatement:
    """NLVR2: is the statement true of the two images together (scene_0 is the left one)?"""

    scene_0: Scene
    scene_1: Scene
    statement: str
    label: bool


@dataclass(frozen=True)
class Entailment:
    """SNLI-VE: does the image entail (2), leave open (1) or contradict (0) the hypothesis?"""

    scene: Scene
    hypothesis: str
    label: int


CONTRADICTION, NEUTRAL, ENTAILMENT = 0, 1, 2

# family -> (template, truth of (left contains it, right contains it))
EXISTS: dict[str, tuple[str, Callable[[bool, bool], bool]]] = {
    "both": ("both images contain {}", lambda a, b: a and b),
    "exactly one": ("exactly one image contains {}", lambda a, b: a != b),
    "neither": ("neither image contains {}", lambda a, b: not a and not b),
}
# family -> (template, truth of (count in left, count in right))
COUNTS: dict[str, tuple[str, Callable[[int, int], bool]]] = {
    "more": ("the left image has more {} than the right image", lambda a, b: a > b),
    "fewer": ("the left image has fewer {} than the right image", lambda a, b: a < b),
    "same": ("both images have the same number of {}", lambda a, b: a == b),
}
NLVR2_TEMPLATES = {**{k: v[0] for k, v in EXISTS.items()}, **{k: v[0] for k, v in COUNTS.items()}}

# properties no picture of a flat coloured shape can show: (adjective, predicate)
INVISIBLE = (("wooden", "made of wood"), ("metal", "made of metal"), ("glass", "made of glass"),
             ("heavy", "heavy"), ("hollow", "hollow"), ("soft", "soft"))
SNLI_VE_TEMPLATES = {
    "exists or": "there is {thing} or {adjective} {thing}",
    "kind then color": "the {position} shape is a {kind} that is {color} or {predicate}",
    "color then kind": "the {position} shape is {color} and is a {kind} or {predicate}",
}


def nlvr2(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[PairStatement]:
    """n statements about two images, half true; each scene is used in one example only.

    Templates (NLVR2_TEMPLATES) about a thing T ('a red circle', 'a red shape', 'a circle'):
    'both / exactly one / neither image(s) contain T' and 'the left image has more / fewer T
    than the right image', 'both images have the same number of T'.  For the existence
    templates, false pairs are drawn evenly over the ways of being false (for 'both': only
    left, only right, neither), so no single image decides the answer.
    """
    rng, pool = task_rng("nlvr2", split, seed), Pool(config, split, "nlvr2")

    def make(label: bool, family: str) -> PairStatement | None:
        thing = random_thing(config, rng)
        if family in EXISTS:
            template, truth = EXISTS[family]
            combo = rng.choice([(a, b) for a in (False, True) for b in (False, True) if truth(a, b) == label])
            pair = pool.take_pair(lambda s: thing.count(s) > 0, lambda a, b: (a, b) == combo, rng)
            text = template.format(thing.phrase())
        else:
            template, truth = COUNTS[family]
            pair = pool.take_pair(thing.count, lambda a, b: truth(a, b) == label, rng)
            text = template.format(thing.plural())
        return None if pair is None else PairStatement(pair[0], pair[1], text, label)

    return draw(pool, n, Plan(rng, (False, True), lambda _: list(NLVR2_TEMPLATES)), make)


def snli_ve(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[Entailment]:
    """n hypotheses about one image each, a third per label (0 contradiction, 1 neutral, 2 entailment).

    Each hypothesis joins visible claims with an invisible property P (made of wood, heavy, ...),
    so one and the same text can take any label, decided by the image:
    - 'there is A or <P> B': entailment if the image shows A; else neutral if it shows B (which
      may or may not be P); else contradiction (neither A nor B is there, P or not).
    - 'the <pos> shape is a K that is C or P': contradiction if the cell is empty or its shape is
      not a K; entailment if it is a K of colour C; neutral if it is a K of another colour.
    - 'the <pos> shape is C and is a K or P': the same with colour and kind swapped.
    A hypothesis about a shape that is not there counts as contradicted, as in SNLI-VE.
    """
    rng, pool = task_rng("snli_ve", split, seed), Pool(config, split, "snli_ve")

    def make(label: int, family: str) -> Entailment | None:
        made = _hypothesis(config, family, rng)
        if made is None:
            return None
        text, judge = made
        scene = pool.take(lambda s: judge(s) == label)
        return None if scene is None else Entailment(scene, text, label)

    labels = (CONTRADICTION, NEUTRAL, ENTAILMENT)
    return draw(pool, n, Plan(rng, labels, lambda _: list(SNLI_VE_TEMPLATES)), make)


def _hypothesis(config: ShapesConfig, family: str, rng: random.Random
                ) -> tuple[str, Callable[[Scene], int]] | None:
    """A hypothesis text and the rule that labels it for any scene (None: redraw)."""
    adjective, predicate = rng.choice(INVISIBLE)
    if family == "exists or":
        first, second = random_thing(config, rng), random_thing(config, rng)
        if second.implies(first):  # then B without A, i.e. neutral, could never happen
            return None
        text = f"there is {first.phrase()} or {second.phrase(adjective)}"
        return text, lambda s: ENTAILMENT if first.count(s) else NEUTRAL if second.count(s) else CONTRADICTION
    cell, kind, color = rng.randrange(len(POSITIONS)), rng.choice(config.shapes), rng.choice(config.colors)
    position = POSITIONS[cell]
    if family == "kind then color":
        text = f"the {position} shape is a {kind} that is {color} or {predicate}"
        presupposed, claimed = Thing(kind=kind), Thing(color=color)
    else:
        text = f"the {position} shape is {color} and is a {kind} or {predicate}"
        presupposed, claimed = Thing(color=color), Thing(kind=kind)

    def judge(scene: Scene) -> int:
        shape = at(scene, cell)
        if shape is None or not presupposed.matches(shape):
            return CONTRADICTION
        return ENTAILMENT if claimed.matches(shape) else NEUTRAL
    return text, judge
