"""What every task shares: the protocol the run loop uses, the registry, and the machinery of the downstream
tasks (examples from built-in scenes or from file records, batches of them, a head's loss and metric).

A task is one module (graphspec.runtime.tasks.NAME) plus its row in the spec package's task table
(graphspec.schema.tasks), which says which head and objectives it trains, which inputs it feeds and which
Arrow families and JSONL fields it reads. Readers yield records and know no task; a task turns records (or
built-in scenes) into examples, examples into batches, and head outputs into losses and metrics.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Protocol

import torch

from graphspec.errors import Issue, SpecError
from graphspec.schema import TASKS, DataSource, Roles, Spec, TaskFacts
from graphspec.schema.tasks import resolve_family

from .. import ranks
from ..data import scenes
from ..data.arrow import read_arrow
from ..data.jsonl import JsonlLayout, read_jsonl
from ..data.records import ReadStats
from ..metrics import accuracy, classify_loss

Forward = Callable[[dict], dict]


class Task(Protocol):
    """What the run loop, evaluation and checkpoints use of a task."""

    data_stats: dict  # what each split's reader read and skipped, for the run summary

    def describe(self) -> str: ...

    def train_batch(self, size: int, index: int) -> dict:
        """This rank's `size` rows of micro batch `index` of the run (a function of the index alone)."""

    def losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Each objective's loss and their weighted sum under "loss"."""

    def evaluate(self, forward: Forward) -> dict[str, float]: ...

    def vocabulary(self) -> dict:
        """What a checkpoint must remember of the training data (e.g. the VQA answer order)."""

    def rng_state(self): ...

    def set_rng_state(self, state) -> None: ...


@dataclass
class TaskData:
    """A task's examples (or pairs), read before the tokenizer exists: a trained vocabulary needs the texts."""

    train: object
    val: object
    stats: dict = field(default_factory=dict)
    texts: Callable[[], list[str]] = lambda: []


REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Register a task class under its `name`, which must be a row of the task table."""
    if cls.name not in TASKS:
        raise ValueError(f"task '{cls.name}' has no row in graphspec.schema.tasks.TASKS")
    if cls.name in REGISTRY:
        raise ValueError(f"task '{cls.name}' is already registered")
    REGISTRY[cls.name] = cls
    return cls


def eval_source(spec: Spec, split: str | None) -> DataSource | None:
    """What validation reads: the spec's val block, or (for `graphspec eval --split`) any split of it."""
    if split is None:
        return spec.data.val
    return (spec.data.val or spec.data.train).model_copy(update={"split": split})


@contextmanager
def _located(where: tuple):
    """Reader errors carry the file and row; the spec field that named the file is added here."""
    try:
        yield
    except SpecError as e:
        e.issues = [i if i.path else Issue(where + ("source",), i.message, i.hint, i.severity) for i in e.issues]
        raise


def file_records(source: DataSource, where: tuple, task: TaskFacts, layout: JsonlLayout | None,
                 stats: ReadStats) -> Iterator[dict]:
    """The records of an `arrow:` source (each family it names, in turn; the task's own by default) or a
    `jsonl:` manifest read with the task's layout; errors name the file and row, and the spec field."""
    kind, _, path = source.source.partition(":")
    with _located(where):
        if kind == "jsonl":
            yield from read_jsonl(path, layout, skip_bad=source.skip_bad, stats=stats)
            return
        families = source.family if isinstance(source.family, list) else [source.family or task.families[0]]
        for family in families:
            yield from read_arrow(path, resolve_family(family), source.split, skip_bad=source.skip_bad, stats=stats)


# --------------------------------------------------------------------------- downstream tasks


@dataclass
class Example:
    pixels: tuple[torch.Tensor, ...]  # (3, S, S) each: one image, two for NLVR2
    text: str
    label: int = 0  # class, truth (NLVR2), target box or scene (retrieval)
    answers: dict[str, float] | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()


def shapes_config(source: DataSource, image_size: int, where: tuple) -> scenes.ShapesConfig:
    """The generator's config for a data block; what it cannot make is a located spec error."""
    opts = source.shapes
    config = scenes.ShapesConfig(
        min_shapes=opts.min_shapes, max_shapes=opts.max_shapes,
        colors=tuple(opts.colors) if opts.colors else tuple(scenes.COLORS),
        shapes=tuple(opts.shapes) if opts.shapes else scenes.SHAPES, image_size=image_size, seed=opts.seed)
    problems = config.validate()
    if problems:
        raise SpecError([Issue(where + ("shapes",), p, "see the builtin:shapes options") for p in problems],
                        title="the data block asks for scenes the generator cannot make")
    return config


def pixels(data, where: str, transform):
    """An encoded image (or a PIL image) -> ((3, S, S) tensor, (width, height))."""
    import numpy as np

    from ..data.records import decode_image

    image = data if hasattr(data, "convert") else decode_image(data, where)
    return transform(np.asarray(image.convert("RGB"))), image.size


class ExampleTask:
    """A downstream task: one head trained by one objective on examples of one or two images and a text.

    A task module sets `name` and defines `generate` (its built-in examples), `example` (one from a file
    record) and, where they differ from classification, `collate_more`, `loss` and `score`. NLVR2's two
    image-text passes of an example are consecutive rows (its pair_classify head joins them).
    """

    name: ClassVar[str]
    jsonl: ClassVar[JsonlLayout | None] = None

    def __init__(self, spec: Spec, roles: Roles, data: TaskData, tokenizer, vocabulary: dict | None = None):
        self.spec, self.roles, self.tokenizer = spec, roles, tokenizer
        self.train, self.val, self.data_stats = data.train, data.val, data.stats

    @classmethod
    def read(cls, spec: Spec, roles: Roles, transform, split: str | None = None) -> TaskData:
        """The training examples (none when only evaluating a `split`) and the validation ones."""
        stats: dict = {}
        train = cls._examples(spec, roles, spec.data.train, "train", transform, stats) if split is None else []
        val_source = eval_source(spec, split)
        val = cls._examples(spec, roles, val_source, "val", transform, stats) if val_source else []
        return TaskData(train, val, stats, lambda: [e.text for e in train])

    @classmethod
    def _examples(cls, spec: Spec, roles: Roles, source: DataSource, key: str, transform, stats: dict) -> list:
        where = ("data", key)
        if source.source == "builtin:shapes":
            config = shapes_config(source, spec.inputs[roles.image].size, where)
            n = source.samples or scenes.split_size(config, source.split)
            try:
                return cls.generate_examples(config, source, n, lambda scene: transform(scenes.render(scene)))
            except ValueError as e:
                raise SpecError([Issue(where + ("samples",), str(e), "ask for fewer samples, or allow more "
                                       "shapes")]) from None
        examples, read = [], ReadStats()
        with _located(where):  # an image that does not decode names the file, row and the spec field
            for record in file_records(source, where, roles.task, cls.jsonl, read):
                examples.append(cls.example(record, transform))
                if source.samples and len(examples) >= source.samples:
                    break
        stats[key] = read.as_dict()
        if not examples:
            raise SpecError([Issue(where + ("source",), f"{source.source} holds no {cls.name} examples for split "
                                   f"'{source.split}'", "check the split and the files")])
        return examples

    @classmethod
    def generate_examples(cls, config, source: DataSource, n: int, px) -> list[Example]:
        """n examples of the built-in scenes; `px(scene)` is a scene's transformed image."""
        raise NotImplementedError

    @classmethod
    def example(cls, record: dict, transform) -> Example:
        """One example from a file record."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{len(self.train)} train examples ({self.name})"

    def vocabulary(self) -> dict:
        return {}

    def rows(self, examples: list[Example]) -> dict:
        """Model inputs and targets for a list of examples."""
        r = self.roles
        pairs = [(e.text, px) for e in examples for px in e.pixels]  # NLVR2: two rows per example
        enc = self.tokenizer([t for t, _ in pairs], padding="max_length", truncation=True, return_tensors="pt",
                             max_length=self.spec.inputs[r.text].max_length)
        ids, mask = self.spec.inputs[r.text].tensors(r.text)
        (image,) = self.spec.inputs[r.image].tensors(r.image)
        batch = {ids: enc["input_ids"], mask: enc["attention_mask"], image: torch.stack([px for _, px in pairs]),
                 "label": torch.tensor([e.label for e in examples])}
        self.collate_more(examples, batch)
        return batch

    def collate_more(self, examples: list[Example], batch: dict) -> None:
        """Targets beyond `label` (VQA's scores, the candidate boxes)."""

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return classify_loss(logits, batch["label"])

    def score(self, logits: torch.Tensor, batch: dict) -> tuple[float, int]:
        """(sum of the metric over the batch's examples, number of examples)."""
        return accuracy(logits, batch["label"])

    def rng_state(self) -> None:
        """Nothing to keep for a resume: a batch is a pure function of its index."""
        return None

    def set_rng_state(self, state: None) -> None:
        pass

    def train_batch(self, size: int, index: int) -> dict:
        """This rank's `size` examples of the step's global micro batch (the same draw on every rank)."""
        rng = random.Random(f"train:{self.spec.train.seed}:{index}")
        drawn = [self.train[rng.randrange(len(self.train))] for _ in range(size * ranks.world())]
        return self.rows(drawn[ranks.part(len(drawn))])

    def losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        loss = self.loss(out[self.roles.head], batch)
        weight = self.spec.objectives[self.roles.objective].weight
        return {self.roles.objective: loss, "loss": weight * loss}

    @torch.no_grad()
    def evaluate(self, forward: Forward) -> dict:
        right = total = loss = 0.0
        size = self.spec.batch_plan()[0]
        for start in range(0, len(self.val), size):
            batch = self.rows(self.val[start:start + size])
            logits = forward(batch)[self.roles.head].float()
            r, n = self.score(logits, batch)
            right, total = right + r, total + n
            loss += float(self.losses({self.roles.head: logits}, batch)["loss"]) * n
        if not total:
            return {}
        return {self.roles.task.metric: right / total, f"{self.name}_loss": round(loss / total, 6)}
