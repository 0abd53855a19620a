"""Reference resolution: an expression picks out one of an image's candidate boxes (a `ref` head, one score
per box, padded candidates masked; needs a `boxes` input).

Built-in expressions name a position, an attribute, a descriptor or a relation to another shape; files are
Renaissance's `refcoco` Arrow tables or a JSONL manifest. Boxes in pixels become fractions of the image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch

from graphspec.language.errors import Issue, SpecError
from graphspec.language.schema import TASKS

from ..data.jsonl import JsonlLayout, field_error, is_number, text_field
from ..data.records import short_repr
from ..data.scene_text import (
    POSITIONS,
    Plan,
    Pool,
    Thing,
    at,
    draw,
    task_rng,
)
from ..data.scenes import RELATIONS, Scene, ShapesConfig, shape_box
from .base import Example, ExampleTask, example_images, register

Box = tuple[float, float, float, float]
REFERENCE_FAMILIES = ("position", "attribute", "descriptor", "relation")


@dataclass(frozen=True)
class Reference:
    """RefCOCO-style: `target` indexes the box (in scene.shapes order) the expression picks out."""

    scene: Scene
    expression: str
    boxes: tuple[Box, ...]
    target: int


def generate(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[Reference]:
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


def fractions(boxes, size) -> tuple:
    """Pixel boxes -> fractions of the image; boxes already in [0, 1] stay."""
    w, h = size
    scale = (1.0, 1.0) if all(max(b) <= 1.0 for b in boxes) else (float(w), float(h))
    return tuple((b[0] / scale[0], b[1] / scale[1], b[2] / scale[0], b[3] / scale[1]) for b in boxes)


def _parse(obj: dict, where: str) -> tuple[list[dict], list]:
    boxes = obj["boxes"]
    if not isinstance(boxes, list) or not boxes:
        raise field_error(where, "boxes", f"must be a non-empty list of [x0, y0, x1, y1] (got {short_repr(boxes)})")
    for k, b in enumerate(boxes):
        if not (isinstance(b, list) and len(b) == 4 and all(is_number(v) for v in b) and b[2] >= b[0]
                and b[3] >= b[1]):
            raise field_error(where, "boxes", f"box {k} is {short_repr(b)}, expected [x0, y0, x1, y1] with "
                                              f"x1 >= x0 and y1 >= y0")
    target = obj["target"]
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(boxes):
        raise field_error(where, "target", f"must be the index of one of the {len(boxes)} boxes "
                                           f"(got {short_repr(target)})")
    return [{"text": text_field(obj, where), "boxes": [[float(v) for v in b] for b in boxes], "target": target}], \
        [obj["image"]]


@register
class Refexp(ExampleTask):
    name = "refexp"
    jsonl = JsonlLayout(name, TASKS[name].fields, TASKS[name].optional, "image", _parse)

    @classmethod
    def generate_examples(cls, config, source, n, image):
        return [Example((image(e.scene),), e.expression, e.target, boxes=e.boxes)
                for e in generate(config, source.split, n, source.shapes.seed)]

    @classmethod
    def example(cls, record):
        return Example(example_images(record), record["text"], int(record["target"]),
                       boxes=tuple(tuple(b) for b in record["boxes"]))

    def collate_more(self, examples, sizes, batch) -> None:
        examples = [replace(e, boxes=fractions(e.boxes, size[0])) for e, size in zip(examples, sizes)]
        name = self.roles.boxes
        k = self.spec.inputs[name].max_candidates
        most = max(len(e.boxes) for e in examples)
        if most > k:
            raise SpecError([Issue(("inputs", name, "max_candidates"), f"a sample has {most} candidate boxes, "
                                   f"more than max_candidates {k}", f"set `max_candidates: {most}` or more")])
        boxes = torch.zeros(len(examples), k, 4)
        mask = torch.zeros(len(examples), k, dtype=torch.bool)
        for i, e in enumerate(examples):
            boxes[i, :len(e.boxes)] = torch.tensor(e.boxes[:k])
            mask[i, :len(e.boxes)] = True
        keys = self.spec.inputs[name].tensors(name)
        batch[keys[0]], batch[keys[1]] = boxes, mask
