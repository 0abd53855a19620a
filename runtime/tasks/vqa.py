"""VQA: a question about an image, soft scores over an answer vocabulary (a `vqa` head, trained with binary
cross-entropy against the scores; the metric is the VQA score of the predicted answer).

Built-in questions ask a shape's colour, a colour's shape, a count or an existence; files are ViLT's `vqav2`
Arrow tables or a JSONL manifest. The answer vocabulary is the built-in one, or every answer the training data
scores (as ViLT); a checkpoint keeps it, so evaluation on a file source scores the same answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

from graphspec.language.errors import Issue, SpecError
from graphspec.language.schema import TASKS

from ..data.jsonl import JsonlLayout, field_error, is_number, text_field
from ..data.records import short_repr
from ..data.scene_text import (
    NUMBERS,
    POSITIONS,
    Plan,
    Pool,
    at,
    draw,
    random_thing,
    task_rng,
)
from ..data.scenes import Scene, ShapesConfig
from ..metrics import vqa_loss, vqa_score
from .base import Example, ExampleTask, TaskContext, example_images, register, shapes_config

Answers = dict[str, float]
QUESTION_TYPES = ("colour", "shape", "count", "exists")
COUNT_MAX = 3  # counting questions have answers zero..min(max_shapes, COUNT_MAX)


@dataclass(frozen=True)
class Question:
    """VQAv2-style: soft scores in [0, 1] per acceptable answer."""

    scene: Scene
    question: str
    answers: dict[str, float]


def _count_max(config: ShapesConfig) -> int:
    return min(config.max_shapes, COUNT_MAX)


def answer_vocabulary(config: ShapesConfig) -> list[str]:
    """Every answer any vqa() question of this config can have, sorted."""
    numbers = NUMBERS[:_count_max(config) + 1]
    return sorted({*config.colors, *config.shapes, "yes", "no", *numbers})


def generate(config: ShapesConfig, split: str, n: int, seed: int = 0) -> list[Question]:
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


def _parse(obj: dict, where: str) -> tuple[list[dict], list]:
    answers = obj["answers"]
    if not isinstance(answers, dict) or not all(is_number(s) and 0 <= s <= 1 for s in answers.values()):
        raise field_error(where, "answers", f"must map each answer to a score in [0, 1] (got {short_repr(answers)})")
    scores = {str(a): float(s) for a, s in answers.items()}
    return [{"text": text_field(obj, where), "answers": scores, "answer_labels": None,
             "answer_scores": list(scores.values())}], [obj["image"]]


@register
class Vqa(ExampleTask):
    name = "vqa"
    jsonl = JsonlLayout(name, TASKS[name].fields, TASKS[name].optional, "image", _parse)

    @classmethod
    def class_names(cls, vocabulary: dict) -> list[str] | None:
        return list(vocabulary["answers"]) if vocabulary.get("answers") else None

    def __init__(self, spec, roles, data, tokenizer, context: TaskContext = TaskContext()):
        super().__init__(spec, roles, data, tokenizer, context)
        self.answers = (context.vocabulary or {}).get("answers") or self._answer_vocabulary()

    @classmethod
    def generate_examples(cls, config, source, n, image):
        return [Example((image(e.scene),), e.question, answers=e.answers)
                for e in generate(config, source.split, n, source.shapes.seed)]

    @classmethod
    def example(cls, record):
        answers = record["answers"]
        scores = dict(zip(answers or [], record.get("answer_scores") or [])) if isinstance(answers, list) \
            else dict(answers or {})
        return Example(example_images(record), record["text"], answers=scores)

    def _answer_vocabulary(self) -> list[str]:
        if self.spec.data.train.source == "builtin:shapes":
            vocab = answer_vocabulary(shapes_config(self.spec.data.train, 16, ("data", "train")))
        else:  # as ViLT: every answer the training data scores (evaluation reads the checkpoint's instead)
            vocab = sorted({a for e in self.train for a in e.answers or {}})
        head = self.spec.heads[self.roles.head]
        if head.answers != len(vocab):
            raise SpecError([Issue(("heads", self.roles.head, "answers"), f"the data has {len(vocab)} answers, the "
                                   f"head scores {head.answers}", f"set `answers: {len(vocab)}`")])
        return vocab

    def vocabulary(self) -> dict:
        return {"answers": self.answers}

    def collate_more(self, examples, sizes, batch) -> None:
        batch["scores"] = torch.tensor([[e.answers.get(a, 0.0) for a in self.answers] for e in examples])

    def loss(self, logits, batch):
        return vqa_loss(logits, batch["scores"])

    def score(self, logits, batch):
        return vqa_score(logits, batch["scores"])
