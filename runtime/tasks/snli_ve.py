"""SNLI-VE: an image and a hypothesis, entailment / neutral / contradiction (a `classify` head, 3 classes).

Built-in examples join visible claims with an invisible property P (made of wood, heavy, ...), so one and the
same text can take any label, decided by the image; files are METER's `snli` Arrow tables (the hypothesis is
the text) or a JSONL manifest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from graphspec.language.schema import TASKS

from ..data.jsonl import JsonlLayout, field_error, text_field
from ..data.records import short_repr
from ..data.scene_text import (
    POSITIONS,
    Plan,
    Pool,
    Thing,
    at,
    draw,
    random_thing,
    task_rng,
)
from ..data.scenes import Scene, ShapesConfig
from .base import Example, ExampleTask, example_images, register

LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}


@dataclass(frozen=True)
class Entailment:
    """SNLI-VE: does the image entail (2), leave open (1) or contradict (0) the hypothesis?"""

    scene: Scene
    hypothesis: str
    label: int


CONTRADICTION, NEUTRAL, ENTAILMENT = 0, 1, 2

# properties no picture of a flat coloured shape can show: (adjective, predicate)
INVISIBLE = (("wooden", "made of wood"), ("metal", "made of metal"), ("glass", "made of glass"),
             ("heavy", "heavy"), ("hollow", "hollow"), ("soft", "soft"))
SNLI_VE_TEMPLATES = {
    "exists or": "there is {thing} or {adjective} {thing}",
    "kind then color": "the {position} shape is a {kind} that is {color} or {predicate}",
    "color then kind": "the {position} shape is {color} and is a {kind} or {predicate}",
}


def generate(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[Entailment]:
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


def _parse(obj: dict, where: str) -> tuple[list[dict], list]:
    label = obj["label"]
    if isinstance(label, str) and label.strip().lower() in LABELS:
        label = LABELS[label.strip().lower()]
    if isinstance(label, bool) or label not in (0, 1, 2):
        raise field_error(where, "label", f"must be 0 (contradiction), 1 (neutral) or 2 (entailment) "
                                          f"(got {short_repr(obj['label'])})")
    premise = obj.get("premise")
    if premise is not None and not isinstance(premise, str):
        raise field_error(where, "premise", f"must be a string (got {short_repr(premise)})")
    return [{"text": text_field(obj, where), "premise": premise, "label": label}], [obj["image"]]


@register
class SnliVe(ExampleTask):
    name = "snli_ve"
    jsonl = JsonlLayout(name, TASKS[name].fields, TASKS[name].optional, "image", _parse)

    @classmethod
    def class_names(cls, vocabulary: dict) -> list[str] | None:
        return [name for name, _ in sorted(LABELS.items(), key=lambda item: item[1])]

    @classmethod
    def generate_examples(cls, config, source, n, image):
        return [Example((image(e.scene),), e.hypothesis, e.label) for e in generate(config, source.split, n,
                                                                                   source.shapes.seed)]

    @classmethod
    def example(cls, record):
        return Example(example_images(record), record["text"], int(record["label"]))
