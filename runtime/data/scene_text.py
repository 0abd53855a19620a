"""Shared machinery of the downstream tasks' generators on the built-in scenes: a split's scenes handed out
once each, balanced plans of labels and templates, and the phrases the templates fill in (each task's own
generator lives in its module, graphspec.runtime.tasks.NAME).

Every task picks its text (and label) first, independently of any image, and only
then looks for the first unused scene of the split that gives that text that label.
That is what keeps a text-only model at chance: the same text is as likely under
every label.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Sequence, TypeVar

from .scenes import Scene, Shape, ShapesConfig, scenes, split_size

T = TypeVar("T")

LOOKAHEAD = 1024  # unused scenes one text may look through before it is redrawn
TRIES = 20  # texts drawn for one example before the split counts as spent
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # by cell
NUMBERS = ("zero", "one", "two", "three", "four")
GRAINS = ("both", "color", "kind")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def at(scene: Scene, cell: int) -> Shape | None:
    """The shape in a cell, or None when the cell is empty."""
    return next((s for s in scene.shapes if s.cell == cell), None)


@dataclass(frozen=True)
class Thing:
    """What a noun phrase picks out: shapes of a colour, of a kind, or of both."""

    color: str | None = None
    kind: str | None = None

    def matches(self, shape: Shape) -> bool:
        return self.color in (None, shape.color) and self.kind in (None, shape.kind)

    def count(self, scene: Scene) -> int:
        return sum(self.matches(s) for s in scene.shapes)

    def noun(self) -> str:  # "red circle", "red shape", "circle"
        return " ".join(w for w in (self.color, self.kind or "shape") if w)

    def phrase(self, adjective: str = "") -> str:  # "an orange circle", "a wooden circle"
        words = f"{adjective} {self.noun()}".strip()
        return f"{article(words)} {words}"

    def plural(self) -> str:  # "red shapes", "circles"
        return self.noun() + "s"

    def implies(self, other: Thing) -> bool:
        """Whether every shape this picks out is one `other` picks out too."""
        return other.color in (None, self.color) and other.kind in (None, self.kind)


def random_thing(config: ShapesConfig, rng: random.Random, grains: Sequence[str] = GRAINS) -> Thing:
    grain = rng.choice(grains)
    color = rng.choice(config.colors) if grain in ("both", "color") else None
    return Thing(color, rng.choice(config.shapes) if grain in ("both", "kind") else None)


class Cycle:
    """Values in shuffled rounds, so any prefix holds each value equally often, give or take one."""

    def __init__(self, values: Sequence[T], rng: random.Random):
        self.values, self.rng, self.queue = list(values), rng, []

    def next(self) -> T:
        if not self.queue:
            self.queue = self.rng.sample(self.values, len(self.values))
        return self.queue.pop()


class Plan:
    """(outer, inner) per example: outer values balanced overall, inner values balanced within each outer."""

    def __init__(self, rng: random.Random, outer: Sequence, inner: Callable[[Hashable], Sequence]):
        self.rng, self.inner = rng, inner
        self.outer = Cycle(outer, rng)
        self.inners = {value: Cycle(inner(value), rng) for value in outer}

    def next(self) -> tuple:
        value = self.outer.next()
        return value, self.inners[value].next()

    def redraw(self, planned: tuple, dead: set[tuple]) -> tuple:
        """Keep the outer value, pick another inner one: for configs where the planned pair cannot happen."""
        alive = [v for v in self.inner(planned[0]) if (planned[0], v) not in dead]
        return planned[0], self.rng.choice(alive or list(self.inner(planned[0])))


class Pool:
    """The scenes of one split in stream order; each is handed out at most once, so examples never share one."""

    def __init__(self, config: ShapesConfig, split: str, task: str):
        scenes(config, split, 0)  # raises ValueError for a bad config or split
        self.config, self.split, self.task = config, split, task
        self.buffer: list[Scene] = []  # looked at, not yet handed out, in stream order
        self.used = 0
        self.exhausted = False
        self._stream = self._scenes()

    def _scenes(self) -> Iterator[Scene]:
        have, size, capacity = 0, 256, self.config.capacity()
        while True:
            size = min(size, capacity)
            try:
                batch = scenes(self.config, self.split, size)
            except ValueError:  # fewer left in the split: take exactly what it has
                batch = scenes(self.config, self.split, split_size(self.config, self.split))
            yield from batch[have:]
            if len(batch) < size or size == capacity:
                return
            have, size = len(batch), size * 2

    def _scan(self) -> Iterator[int]:
        for j in range(LOOKAHEAD):
            if j == len(self.buffer):
                scene = next(self._stream, None)
                if scene is None:
                    self.exhausted = True
                    return
                self.buffer.append(scene)
            yield j

    def _hand_out(self, *indices: int) -> list[Scene]:
        out = [self.buffer[i] for i in indices]
        for i in sorted(indices, reverse=True):
            del self.buffer[i]
        self.used += len(out)
        return out

    def take(self, accept: Callable[[Scene], bool]) -> Scene | None:
        """The first unused scene that accept() likes, or None."""
        return next((self._hand_out(j)[0] for j in self._scan() if accept(self.buffer[j])), None)

    def take_pair(self, feature: Callable[[Scene], Hashable], wanted: Callable[[Hashable, Hashable], bool],
                  rng: random.Random) -> tuple[Scene, Scene] | None:
        """The earliest two unused scenes whose features (left, right) are wanted, or None."""
        first: dict[Hashable, int] = {}
        for j in self._scan():
            value = feature(self.buffer[j])
            for seen, i in first.items():
                orders = [order for order, (a, b) in (((i, j), (seen, value)), ((j, i), (value, seen)))
                          if wanted(a, b)]
                if orders:
                    left, right = self._hand_out(*rng.choice(orders))
                    return left, right
            first.setdefault(value, j)
        return None

    def shortage(self, made: int, n: int) -> str:
        why = (f"its {self.used + len(self.buffer)} scenes are used up ({self.used} handed out, each to one "
               f"example only; {len(self.buffer)} fit none of the texts drawn)") if self.exhausted else (
               f"no scene among the next {LOOKAHEAD} unused ones fit any of {TRIES} texts drawn")
        return (f"{self.task}: the {self.split} split cannot supply {n} distinct examples: it ran out after "
                f"{made}, because {why}. Ask for fewer, or use a config with more scenes "
                "(e.g. ShapesConfig(max_shapes=4), more colours or shapes).")


def draw(pool: Pool, n: int, plan: Plan, make: Callable[..., T | None]) -> list[T]:
    """n examples of make(*planned), each with its own texts redrawn up to TRIES times.

    A planned (outer, inner) pair that misses TRIES // 2 times in a row cannot happen under
    this config (e.g. a position template can find no empty cell when min_shapes=4): it is
    dropped for the rest of the run and another inner value is used in its place.
    """
    if n < 0:
        raise ValueError(f"{pool.task}: n must be at least 0, got {n}")
    out: list[T] = []
    misses: Counter[tuple] = Counter()  # per planned pair, in a row
    for _ in range(n):
        planned = plan.next()
        for _ in range(TRIES):
            if misses[planned] >= TRIES // 2:
                planned = plan.redraw(planned, {p for p, m in misses.items() if m >= TRIES // 2})
            example = make(*planned)
            if example is not None:
                misses[planned] = 0
                out.append(example)
                break
            misses[planned] += 1
        else:
            raise ValueError(pool.shortage(len(out), n))
    return out


def task_rng(task: str, split: str, seed: int) -> random.Random:
    return random.Random(f"tasks:{task}:{split}:{seed}")
