"""NLVR2: two images and a statement, true or false (a `pair_classify` head over two image-text passes).

Built-in statements about a thing T in both / exactly one / neither image, or more / fewer / the same number
of T; files are ViLT's `nlvr2` Arrow tables or a JSONL manifest (two image paths per line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from graphspec.language.schema import TASKS

from ..data.jsonl import JsonlLayout, field_error, text_field
from ..data.records import short_repr
from ..data.scene_text import Plan, Pool, draw, random_thing, task_rng
from ..data.scenes import Scene, ShapesConfig
from .base import Example, ExampleTask, example_images, register


@dataclass(frozen=True)
class PairStatement:
    """NLVR2: is the statement true of the two images together (scene_0 is the left one)?"""

    scene_0: Scene
    scene_1: Scene
    statement: str
    label: bool


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


def generate(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[PairStatement]:
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


def _parse(obj: dict, where: str) -> tuple[list[dict], list]:
    paths = obj["images"]
    if not (isinstance(paths, list) and len(paths) == 2):
        raise field_error(where, "images", f"must be a list of two image paths (got {short_repr(paths)})")
    if not isinstance(obj["label"], bool):
        raise field_error(where, "label", f"must be true or false (got {short_repr(obj['label'])})")
    return [{"text": text_field(obj, where), "label": obj["label"]}], paths


@register
class Nlvr2(ExampleTask):
    name = "nlvr2"
    jsonl = JsonlLayout(name, TASKS[name].fields, TASKS[name].optional, "images", _parse)

    @classmethod
    def generate_examples(cls, config, source, n, image):
        return [Example((image(e.scene_0), image(e.scene_1)), e.statement, int(e.label))
                for e in generate(config, source.split, n, source.shapes.seed)]

    @classmethod
    def example(cls, record):
        return Example(example_images(record), record["text"], int(record["label"]))
