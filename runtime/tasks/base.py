"""What every task shares: the protocol the run loop uses, the registry, and the machinery of the downstream
tasks (examples from built-in scenes or from file records, batches of them, a head's loss and metric).

A task is one module (graphspec.runtime.tasks.NAME) plus its row in the spec package's task table
(graphspec.language.schema.tasks), which says which head and objectives it trains, which inputs it feeds and which
Arrow families and JSONL fields it reads. Readers yield records and know no task; a task turns records (or
built-in scenes) into examples, examples into batches, and head outputs into losses and metrics.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Protocol, Sequence

import torch

from graphspec.language.errors import Issue, SpecError
from graphspec.language.schema import TASKS, DataSource, Roles, Spec, TaskFacts
from graphspec.language.schema.tasks import resolve_family

from .. import ranks
from ..data import scenes
from ..data.arrow import read_arrow
from ..data.jsonl import JsonlLayout, read_jsonl
from ..data.images import SceneImage, image_ref
from ..data.records import BadData, ReadStats
from ..text import padded_length
from ..metrics import accuracy, classify_loss

Forward = Callable[[dict], dict]


@dataclass(frozen=True)
class TaskContext:
    """What a task is given at construction beside its data and tokenizer.

    vocabulary: what a checkpoint remembers of the training data (the VQA answers its head scores), when
    evaluating or resuming. caches: image tensor name -> (frozen tower, TowerCache) for towers whose outputs
    are cached: a worker looks a sample up there before decoding it. share_images: a batch whose rows repeat
    images may hold each distinct image once (the build's `shared_images`: the towers reading it compute a
    fixed function of it)."""

    vocabulary: dict | None = None
    caches: dict = field(default_factory=dict)
    share_images: bool = False


class Task(Protocol):
    """Everything the run loop, evaluation and checkpoints use of a task (tests/runtime/test_tasks.py checks
    that every registered task has each member). A task is constructed as
    `cls(spec, roles, data, tokenizer, context)` from `cls.read(spec, roles, transform, split)`."""

    data_stats: dict  # what each split's reader read and skipped, for the run summary
    tokenizer: object  # the tokenizer its batches were encoded with: the final checkpoint saves it
    two_pass: bool  # whether its batches hold two passes of each row (the run summary reports the images')
    caches: dict  # as given in the TaskContext
    share_images: bool  # as given in the TaskContext

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

    @classmethod
    def class_names(cls, vocabulary: dict) -> list[str] | None:
        """The names of its head's classes for an export (VQA's answers, SNLI-VE's labels); None: indices."""

    def resume_reading(self, samples_done: int, position: list[int]) -> None:
        """A resumed run's stream goes on from `position` (what the checkpoint recorded) after `samples_done`
        samples; a task whose batches are a function of their index alone ignores it."""


@dataclass
class TaskData:
    """A task's examples (or pairs), read before the tokenizer exists: a trained vocabulary needs the texts.
    Their images are references; `transform` makes the model's pixels of one, at the input's `size`."""

    train: object
    val: object
    stats: dict = field(default_factory=dict)
    texts: Callable[[], list[str]] = lambda: []
    transform: Callable | None = None
    size: int | None = None


@dataclass
class Loaded:
    """One image of a batch row: its pixels (placeholder zeros when a cached tower output stands in for them),
    its own (width, height), and for a cached tower the sample's key and the stored output found."""

    pixels: torch.Tensor  # (3, S, S)
    size: tuple[int, int]
    key: str | None = None
    found: dict | None = None


class ImageReader:
    """Reads an image reference for a batch: a frozen tower's stored output when the sample has one (then
    nothing is decoded or transformed), else the image decoded and transformed."""

    def __init__(self, transform, size: int, channels: int, cache=None):
        self.transform, self.size, self.channels, self.cache = transform, size, channels, cache
        self.decoded = self.saved = self.corrupt = 0

    def __call__(self, ref) -> Loaded:
        key = found = None
        if self.cache is not None:
            before = self.cache.corrupt
            key = ref.key()
            found, meta = self.cache.read(key)
            self.corrupt += self.cache.corrupt - before
            if found is not None and "width" in meta:
                self.saved += 1
                placeholder = torch.zeros(self.channels, self.size, self.size)  # the tower never sees it
                return Loaded(placeholder, (int(meta["width"]), int(meta["height"])), key, found)
        self.decoded += 1
        pixels, size = ref.load(self.size)
        return Loaded(self.transform(pixels), size, key, None)


def cache_rows(tower: str | None, loaded: list[Loaded], reader: ImageReader) -> dict:
    """What a batch tells the tower runner of its rows: their keys, the outputs found, the sizes to record."""
    if tower is None:
        return {}
    info = {"keys": [item.key for item in loaded],
            "found": {r: item.found for r, item in enumerate(loaded) if item.found is not None},
            "meta": {r: {"width": item.size[0], "height": item.size[1]} for r, item in enumerate(loaded)
                     if item.found is None},
            "corrupt": reader.corrupt}
    reader.corrupt = 0
    return {"_cache": {tower: info}}


def hash_seed(*parts) -> int:
    """A generator seed from parts (the run's seed, a batch index): stable across processes, unlike hash()."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def load_rows(count: int, mine, load: Callable[[int], object], skip_bad: bool) -> tuple[list[tuple[int, object]], dict]:
    """Read this rank's rows of a planned micro batch of `count` rows: for each row of `mine`, (the plan row used,
    what `load(row)` gave) and the count {"replaced"}.

    A row whose image does not read is, with `skip_bad`, replaced by the next row of the plan (wrapping
    around) that does: a rule of the plan alone, so every rank and every worker replaces a bad sample alike
    and 1 and N ranks still train on the same batch. Without it the first bad image is a located error.
    """
    out, replaced = [], 0
    for row in mine:
        for k in range(count):
            try:
                out.append(((row + k) % count, load((row + k) % count)))
                break
            except BadData as bad:
                if not skip_bad:
                    raise SpecError([bad.issue()], title="an image could not be read") from None
                replaced += k == 0
        else:
            raise SpecError([Issue((), f"every one of the {count} samples of this micro batch is bad",
                                   "check the data: `graphspec check-data SPEC`")], title="no sample to train on")
    return out, {"replaced": replaced}


REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Register a task class under its `name`, which must be a row of the task table."""
    if cls.name not in TASKS:
        raise ValueError(f"task '{cls.name}' has no row in graphspec.language.schema.tasks.TASKS")
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
def spec_field(where: tuple):
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
    with spec_field(where):
        if kind == "jsonl":
            yield from read_jsonl(path, layout, skip_bad=source.skip_bad, stats=stats, lazy=True)
            return
        families = source.family if isinstance(source.family, list) else [source.family or task.families[0]]
        for family in families:
            yield from read_arrow(path, resolve_family(family), source.split, skip_bad=source.skip_bad, stats=stats,
                                  refs=True)


# --------------------------------------------------------------------------- downstream tasks


@dataclass
class Example:
    images: tuple  # references (runtime.data.images): one image, two for NLVR2
    text: str
    label: int = 0  # class, truth (NLVR2), target box or scene (retrieval)
    answers: dict[str, float] | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # in pixels of the image, or fractions of it


def example_images(record: dict) -> tuple:
    """A record's image(s) as references, named for messages by file, row and column."""
    images = list(record["images"]) if "images" in record else [record["image"]]
    refs = list(record.get("image_refs") or [f"image {i}" for i in range(len(images))])
    return tuple(image_ref(img, f"{record.get('where', '')} {ref}") for img, ref in zip(images, refs))


def shapes_config(source: DataSource, image_size: int, where: tuple) -> scenes.ShapesConfig:
    """The generator's config for a data block; what it cannot make is a located spec error."""
    opts = source.shapes
    config = scenes.ShapesConfig(
        min_shapes=opts.min_shapes, max_shapes=opts.max_shapes,
        colors=tuple(opts.colors) if opts.colors else tuple(scenes.COLORS),
        shapes=tuple(opts.shapes) if opts.shapes else scenes.SHAPES, image_size=image_size, seed=opts.seed)
    problems = config.problems()
    if problems:
        raise SpecError([Issue(where + ("shapes",), p, "see the builtin:shapes options") for p in problems],
                        title="the data block asks for scenes the generator cannot make")
    return config


class ExampleTask:
    """A downstream task: one head trained by one objective on examples of one or two images and a text.

    A task module sets `name` and defines `generate` (its built-in examples), `example` (one from a file
    record) and, where they differ from classification, `collate_more`, `loss` and `score`. NLVR2's two
    image-text passes of an example are consecutive rows (its pair_classify head joins them).
    """

    name: ClassVar[str]
    jsonl: ClassVar[JsonlLayout | None] = None
    two_pass = False

    def __init__(self, spec: Spec, roles: Roles, data: TaskData, tokenizer, context: TaskContext = TaskContext()):
        self.spec, self.roles, self.tokenizer = spec, roles, tokenizer
        self.train, self.val, self.data_stats = data.train, data.val, data.stats
        self.transform, self.size = data.transform, data.size
        self.caches, self.share_images = context.caches, context.share_images

    def resume_reading(self, samples_done: int, position: list[int]) -> None:
        """Examples are drawn by batch index: nothing to go on from."""

    @classmethod
    def class_names(cls, vocabulary: dict) -> list[str] | None:
        """The names of its head's classes, where the task names them (an export's labels); None: indices."""
        return None

    def reader(self) -> tuple[str | None, ImageReader]:
        """How this task's images are read for training: (the cached tower reading them, or None; the reader)."""
        (image,) = self.spec.inputs[self.roles.image].tensors(self.roles.image)
        tower, cache = self.caches.get(image, (None, None))
        return tower, ImageReader(self.transform, self.size, self.spec.inputs[self.roles.image].channels, cache)

    @classmethod
    def read(cls, spec: Spec, roles: Roles, transform, split: str | None = None) -> TaskData:
        """The training examples (none when only evaluating a `split`) and the validation ones."""
        stats: dict = {}
        train = cls._examples(spec, roles, spec.data.train, "train", stats) if split is None else []
        val_source = eval_source(spec, split)
        val = cls._examples(spec, roles, val_source, "val", stats) if val_source else []
        return TaskData(train, val, stats, lambda: [e.text for e in train], transform,
                        spec.inputs[roles.image].size)

    @classmethod
    def _examples(cls, spec: Spec, roles: Roles, source: DataSource, key: str, stats: dict) -> list:
        where = ("data", key)
        if source.source == "builtin:shapes":
            config = shapes_config(source, spec.inputs[roles.image].size, where)
            n = source.samples or scenes.split_size(config, source.split)
            try:
                return cls.generate_examples(config, source, n, lambda scene: SceneImage(scene, "a built-in scene"))
            except ValueError as e:
                raise SpecError([Issue(where + ("samples",), str(e), "ask for fewer samples, or allow more "
                                       "shapes")]) from None
        examples, read = [], ReadStats()
        with spec_field(where):  # a malformed record names the file, row and the spec field
            for record in file_records(source, where, roles.task, cls.jsonl, read):
                examples.append(cls.example(record))
                if source.samples and len(examples) >= source.samples:
                    break
        stats[key] = read.as_dict()
        if not examples:
            raise SpecError([Issue(where + ("source",), f"{source.source} holds no {cls.name} examples for split "
                                   f"'{source.split}'", "check the split and the files")])
        return examples

    @classmethod
    def generate_examples(cls, config, source: DataSource, n: int, image) -> list[Example]:
        """n examples of the built-in scenes; `image(scene)` is a scene's image reference."""
        raise NotImplementedError

    @classmethod
    def example(cls, record: dict) -> Example:
        """One example from a file record (its images as references: `example_images`)."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{len(self.train)} train examples ({self.name})"

    def vocabulary(self) -> dict:
        return {}

    def load(self, example: Example, reader: ImageReader | None = None) -> tuple[Loaded, ...]:
        """An example's images read: decoded and transformed, or (a cached tower's) found in its cache."""
        reader = reader or ImageReader(self.transform, self.size, self.spec.inputs[self.roles.image].channels)
        return tuple(reader(ref) for ref in example.images)

    def load_all(self, examples: list[Example]) -> list[tuple]:
        """Validation examples loaded in order; a bad image (with the val block's skip_bad) gives way to the
        next example, as in training."""
        source = self.spec.data.val or self.spec.data.train
        with spec_field(("data", "val")):
            rows, _ = load_rows(len(examples), range(len(examples)), lambda k: self.load(examples[k]), source.skip_bad)
        return [loaded for _, loaded in rows]

    def rows(self, examples: list[Example], loaded: list[tuple[Loaded, ...]],
             texts: Sequence[str] | None = None) -> dict:
        """Model inputs and targets for examples and their loaded images (`load`); text padded to the longest
        of `texts` (the global micro batch's; default these examples') or to max_length (`pad_to`)."""
        r = self.roles
        pairs = [(e.text, item) for e, items in zip(examples, loaded) for item in items]  # NLVR2: two rows
        length = padded_length(self.spec, r.text, self.tokenizer, [e.text for e in examples] if texts is None
                               else texts)
        enc = self.tokenizer([t for t, _ in pairs], padding="max_length", truncation=True, return_tensors="pt",
                             max_length=length or self.spec.inputs[r.text].max_length)
        ids, mask = self.spec.inputs[r.text].tensors(r.text)
        (image,) = self.spec.inputs[r.image].tensors(r.image)
        batch = {ids: enc["input_ids"], mask: enc["attention_mask"],
                 image: torch.stack([item.pixels for _, item in pairs]),
                 "label": torch.tensor([e.label for e in examples])}
        self.collate_more(examples, [tuple(item.size for item in items) for items in loaded], batch)
        return batch

    def collate_more(self, examples: list[Example], sizes: list[tuple], batch: dict) -> None:
        """Targets beyond `label` (VQA's scores, the candidate boxes, which need each image's size)."""

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
        """This rank's `size` examples of the step's global micro batch: every rank draws the whole batch alike
        (a function of the index) and reads, decodes and transforms only its own rows."""
        rng = random.Random(f"train:{self.spec.train.seed}:{index}")
        total = size * ranks.world()
        drawn = [self.train[rng.randrange(len(self.train))] for _ in range(total)]
        mine = range(total)[ranks.part(total)]
        tower, reader = self.reader()
        with spec_field(("data", "train")):
            rows, stats = load_rows(total, mine, lambda k: self.load(drawn[k], reader), self.spec.data.train.skip_bad)
        loaded = [items for _, items in rows]
        batch = self.rows([drawn[k] for k, _ in rows], loaded, [e.text for e in drawn])
        batch.update(cache_rows(tower, [item for items in loaded for item in items], reader))
        batch["_data"] = {**stats, "decoded": reader.decoded, "decodes_saved": reader.saved}
        return batch

    def losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        loss = self.loss(out[self.roles.head], batch)
        weight = self.spec.objectives[self.roles.objective].weight
        return {self.roles.objective: loss, "loss": weight * loss}

    @torch.no_grad()
    def evaluate(self, forward: Forward) -> dict:
        right = total = loss = 0.0
        size = self.spec.batch_plan()[0]
        for start in range(0, len(self.val), size):
            examples = self.val[start:start + size]
            batch = self.rows(examples, self.load_all(examples))
            logits = forward(batch)[self.roles.head].float()
            r, n = self.score(logits, batch)
            right, total = right + r, total + n
            loss += float(self.losses({self.roles.head: logits}, batch)["loss"]) * n
        if not total:
            return {}
        return {self.roles.task.metric: right / total, f"{self.name}_loss": round(loss / total, 6)}
