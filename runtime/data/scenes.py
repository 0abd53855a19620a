"""Deterministic, offline scenes of coloured shapes with true captions.

Small vision-language encoders need image-text pairs that are cheap to make,
reproducible, and learnable in minutes on a CPU.  Scenes here are a 2x2 grid
with at most one shape per cell, so spatial words ('left of', 'above') are
never ambiguous and every caption can be checked against any scene.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
SPLITS: tuple[str, ...] = ("train", "val", "test")

_CELLS = 4  # 2x2 grid: 0=top-left, 1=top-right, 2=bottom-left, 3=bottom-right
_BUCKETS = ("train",) * 8 + ("val", "test")  # content hash mod 10 -> split
_NUMBERS = ("one", "two", "three", "four")
RELATIONS: dict[str, Callable[[int, int], bool]] = {
    "left of": lambda a, b: a % 2 < b % 2,
    "right of": lambda a, b: a % 2 > b % 2,
    "above": lambda a, b: a // 2 < b // 2,
    "below": lambda a, b: a // 2 > b // 2,
}
_DESCRIPTORS = set(itertools.product(COLORS, SHAPES))
_COMBOS = {k: list(itertools.combinations(range(_CELLS), k)) for k in range(_CELLS + 1)}


@dataclass(frozen=True)
class ShapesConfig:
    """Everything that decides which scenes exist, so one value reproduces a dataset."""

    min_shapes: int = 1
    max_shapes: int = 2
    colors: tuple[str, ...] = tuple(COLORS)
    shapes: tuple[str, ...] = SHAPES
    image_size: int = 64
    min_size: float = 0.18
    max_size: float = 0.30
    seed: int = 0

    def problems(self) -> list[str]:
        """List every problem at once so a bad config is fixed in one round."""
        problems = []
        if self.min_shapes < 1:
            problems.append(f"min_shapes ({self.min_shapes}) must be at least 1")
        if self.min_shapes > self.max_shapes:
            problems.append(f"min_shapes ({self.min_shapes}) is more than "
                            f"max_shapes ({self.max_shapes})")
        if self.max_shapes > _CELLS:
            problems.append(f"max_shapes ({self.max_shapes}) is more than the {_CELLS} "
                            "non-overlapping positions a scene can hold")
        problems += _check_names("colors", "colour", self.colors, tuple(COLORS))
        problems += _check_names("shapes", "shape", self.shapes, SHAPES)
        if self.image_size < 16:
            problems.append(f"image_size ({self.image_size}) is less than 16 pixels")
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            if not 0 < value <= 0.5:
                problems.append(f"{name} ({value}) must be in (0, 0.5] so a shape fits in its cell")
        if self.min_size > self.max_size:
            problems.append(f"min_size ({self.min_size}) is more than max_size ({self.max_size})")
        return problems

    def capacity(self) -> int:
        """Exact count of distinct scenes, so callers can refuse impossible requests early."""
        kinds = len(self.colors) * len(self.shapes)
        return sum(math.comb(_CELLS, k) * kinds**k
                   for k in range(max(self.min_shapes, 0), min(self.max_shapes, _CELLS) + 1))


def _check_names(field_name: str, noun: str, names: tuple[str, ...],
                 known: tuple[str, ...]) -> list[str]:
    if not names:
        return [f"{field_name}: at least one {noun} is needed"]
    problems = [f"{field_name}: unknown {noun} {name!r} (known: {', '.join(known)})"
                for name in names if name not in known]
    problems += [f"{field_name}: {name!r} is listed {count} times"
                 for name, count in Counter(names).items() if count > 1]
    return problems


@dataclass(frozen=True)
class Shape:
    """One object; size and jitter vary the pixels but not what the scene means."""

    kind: str
    color: str
    cell: int
    size: float = field(default=0.24, compare=False)  # fraction of the image side
    dx: float = field(default=0.0, compare=False)  # offset in [-1, 1] of the free room in the cell
    dy: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Scene:
    """Shapes in distinct cells; equality and key() ignore size and jitter."""

    shapes: tuple[Shape, ...]
    image_size: int = field(default=64, compare=False)

    def __post_init__(self) -> None:
        cells = [s.cell for s in self.shapes]
        if len(set(cells)) != len(cells) or not all(0 <= c < _CELLS for c in cells):
            raise ValueError(f"shapes need distinct cells in 0..{_CELLS - 1}, got {cells}")

    def key(self) -> str:
        """Content hash that is stable across processes, for split assignment and dedup."""
        return _content_key([(s.cell, s.kind, s.color) for s in self.shapes])


def _content_key(items: list[tuple[int, str, str]]) -> str:
    text = "|".join(f"{cell}:{color}:{kind}" for cell, kind, color in sorted(items))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@functools.lru_cache(maxsize=4)
def _order(capacity: int, seed: int) -> tuple[int, ...]:
    """A seeded permutation of scene ranks: a stream with no repeats and stable prefixes."""
    ranks = list(range(capacity))
    random.Random(f"shapes-order:{seed}").shuffle(ranks)
    return tuple(ranks)


def _unrank(config: ShapesConfig, rank: int) -> list[tuple[int, str, str]]:
    """Map 0..capacity-1 onto distinct (cell, kind, colour) lists, fewest shapes first."""
    kinds = len(config.colors) * len(config.shapes)
    for count in range(config.min_shapes, config.max_shapes + 1):
        block = len(_COMBOS[count]) * kinds**count
        if rank < block:
            break
        rank -= block
    cells = _COMBOS[count][rank // kinds**count]
    rank %= kinds**count
    items = []
    for cell in cells:
        rank, digit = divmod(rank, kinds)
        kind, color = divmod(digit, len(config.colors))
        items.append((cell, config.shapes[kind], config.colors[color]))
    return items


def scenes(config: ShapesConfig, split: str, n: int) -> list[Scene]:
    """The first n scenes of a split; splits are disjoint by content hash, so no scene leaks."""
    problems = config.problems()
    if problems:
        raise ValueError("invalid ShapesConfig: " + "; ".join(problems))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    total = config.capacity()
    if not 0 <= n <= total:
        raise ValueError(f"asked for {n} {split} scenes but the config only has {total} "
                         "distinct scenes across all splits")
    geometry = random.Random(f"shapes-geometry:{config.seed}:{split}")
    out: list[Scene] = []
    for rank in _order(total, config.seed):
        if len(out) == n:
            return out
        items = _unrank(config, rank)
        if _BUCKETS[int(_content_key(items), 16) % len(_BUCKETS)] != split:
            continue
        shapes = tuple(Shape(kind, color, cell, geometry.uniform(config.min_size, config.max_size),
                             geometry.uniform(-1, 1), geometry.uniform(-1, 1))
                       for cell, kind, color in items)
        out.append(Scene(shapes, config.image_size))
    if len(out) == n:
        return out
    raise ValueError(f"asked for {n} {split} scenes but the config only has {len(out)} distinct "
                     f"{split} scenes ({total} in all, split about 80/10/10 by content hash)")


def _placement(shape: Shape, side: int) -> tuple[float, float, float]:
    """Centre x, centre y and radius in pixels of a shape drawn on a side x side image."""
    half = side / 2
    radius = shape.size * side / 2
    room = max(half / 2 - radius - 1, 0)
    return (shape.cell % 2 + 0.5) * half + shape.dx * room, (shape.cell // 2 + 0.5) * half + shape.dy * room, radius


def shape_box(shape: Shape, scene: Scene) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a shape as render(scene) draws it, as fractions of the image side.

    The box is the drawn geometry; rasterised pixels lie within one pixel of it.
    """
    side = scene.image_size
    cx, cy, radius = _placement(shape, side)
    return tuple(min(max(v / side, 0.0), 1.0) for v in (cx - radius, cy - radius, cx + radius, cy + radius))


def render(scene: Scene, size: int | None = None) -> np.ndarray:
    """Rasterise to uint8 (H, W, 3); shapes stay inside their cells so relations hold in pixels."""
    side = size or scene.image_size
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        cx, cy, radius = _placement(shape, side)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            corners = [(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)]
            draw.polygon(corners, fill=fill)
    return np.array(image, dtype=np.uint8)


def _phrase(shape: Shape, article: str = "a") -> str:
    if article == "a" and shape.color[0] in "aeiou":
        article = "an"
    return f"{article} {shape.color} {shape.kind}"


def _unique(scene: Scene, shape: Shape) -> bool:
    return sum((s.color, s.kind) == (shape.color, shape.kind) for s in scene.shapes) == 1


def caption(scene: Scene, rng: random.Random) -> str:
    """A true, varied description; every form is parseable again by describes()."""
    shapes = list(scene.shapes)
    forms = ["object", "there is", "count"] + (["relation", "the"] if len(shapes) > 1 else [])
    form = rng.choice(forms)
    if form == "object":
        return _phrase(rng.choice(shapes))
    if form == "there is":
        return "there is " + _phrase(rng.choice(shapes))
    if form == "count":
        phrases = [_phrase(s) for s in rng.sample(shapes, len(shapes))]
        listing = " and ".join([", ".join(phrases[:-1]), phrases[-1]] if phrases[:-1] else phrases)
        noun = "shape" if len(shapes) == 1 else "shapes"
        return f"{_NUMBERS[len(shapes) - 1]} {noun}: {listing}"
    a, b = rng.sample(shapes, 2)
    relation = rng.choice([name for name, holds in RELATIONS.items() if holds(a.cell, b.cell)])
    if form == "the" and _unique(scene, a) and _unique(scene, b):
        return f"{_phrase(a, 'the')} is {relation} {_phrase(b, 'the')}"
    return f"{_phrase(a)} {relation} {_phrase(b)}"


def tokens(text: str) -> list[str]:
    """Split a caption into the words vocabulary() lists (':' and ',' are words)."""
    return text.lower().replace(":", " : ").replace(",", " , ").split()


def _object(words: list[str], article: str) -> tuple[tuple[str, str], list[str]]:
    articles = ("a", "an") if article == "a" else (article,)
    if len(words) < 3 or words[0] not in articles or (words[1], words[2]) not in _DESCRIPTORS:
        raise ValueError(f"expected '{article} <colour> <shape>' at {' '.join(words)!r}")
    return (words[1], words[2]), words[3:]


def _relation(words: list[str]) -> tuple[str, list[str]]:
    for name in RELATIONS:
        if words[:len(name.split())] == name.split():
            return name, words[len(name.split()):]
    raise ValueError(f"expected a relation at {' '.join(words)!r}")


def _count_true(scene: Scene, words: list[str]) -> bool:
    if words[0] not in _NUMBERS or words[1] != ("shape" if words[0] == "one" else "shapes"):
        raise ValueError(f"bad count {' '.join(words[:2])!r}")
    objects, rest = [], words[3:]
    while True:
        obj, rest = _object(rest, "a")
        objects.append(obj)
        if not rest:
            break
        if rest[0] not in (",", "and"):
            raise ValueError(f"expected ',' or 'and' at {' '.join(rest)!r}")
        rest = rest[1:]
    if _NUMBERS.index(words[0]) + 1 != len(objects):
        raise ValueError(f"says {words[0]} but lists {len(objects)} shapes")
    return Counter(objects) == Counter((s.color, s.kind) for s in scene.shapes)


def _relation_true(scene: Scene, words: list[str], article: str) -> bool:
    first, rest = _object(words, article)
    if article == "the":
        if rest[:1] != ["is"]:
            raise ValueError(f"expected 'is' at {' '.join(rest)!r}")
        rest = rest[1:]
    relation, rest = _relation(rest)
    second, rest = _object(rest, article)
    if rest:
        raise ValueError(f"unexpected words {' '.join(rest)!r}")
    a = [s for s in scene.shapes if (s.color, s.kind) == first]
    b = [s for s in scene.shapes if (s.color, s.kind) == second]
    if article == "the" and (len(a) != 1 or len(b) != 1):
        return False
    return any(x is not y and RELATIONS[relation](x.cell, y.cell) for x in a for y in b)


def describes(scene: Scene, text: str) -> bool:
    """Whether a caption from caption() (of any scene) is true here, for safe ITM negatives.

    Raises ValueError for text that none of the caption templates could have written.
    """
    words = tokens(text)
    if len(words) > 2 and words[2] == ":":
        return _count_true(scene, words)
    if words[:1] == ["the"]:
        return _relation_true(scene, words, "the")
    if words[:2] == ["there", "is"]:
        words = words[2:]
        if len(words) != 3:
            raise ValueError(f"expected 'there is a <colour> <shape>', got {text!r}")
    if len(words) == 3:
        obj, _ = _object(words, "a")
        return any((s.color, s.kind) == obj for s in scene.shapes)
    return _relation_true(scene, words, "a")


def vocabulary(config: ShapesConfig) -> list[str]:
    """Every token captions of this config can contain, sorted, for building tokenizers."""
    words = {"a", "there", "is", ":"} | set(config.colors) | set(config.shapes)
    if any(color[0] in "aeiou" for color in config.colors):
        words.add("an")
    for count in range(max(config.min_shapes, 1), min(config.max_shapes, _CELLS) + 1):
        words |= {_NUMBERS[count - 1], "shape" if count == 1 else "shapes"}
    if config.max_shapes > 1:
        words |= {"and", "the", "left", "right", "of", "above", "below"}
    if config.max_shapes > 2:
        words.add(",")
    return sorted(words)


@functools.lru_cache(maxsize=32)
def split_size(config: ShapesConfig, split: str) -> int:
    """How many distinct scenes a split holds under this config (counted once, then cached)."""
    return sum(1 for rank in range(config.capacity())
               if _BUCKETS[int(_content_key(_unrank(config, rank)), 16) % len(_BUCKETS)] == split)
