"""The tasks a run trains and evaluates, one module each, registered by name (see `base` for the protocol).

`make_task` builds the task the spec's data block names: it reads the data first, then the tokenizer (a
trained vocabulary needs the training texts), then the task with both.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from graphspec.compiler.preprocess import image_transform
from graphspec.language.errors import Issue, SpecError, suggest
from graphspec.language.schema import Spec

from ..data.jsonl import JsonlLayout
from . import captions, nlvr2, refexp, retrieval, snli_ve, vqa  # noqa: F401  (each registers its task)
from .base import REGISTRY, Example, Task, TaskContext, TaskData


def make_task(spec: Spec, model: nn.Module, tokenizer: Callable[[TaskData], object], split: str | None = None,
              context: TaskContext = TaskContext()) -> Task:
    """The spec's task over `model`'s inputs. `tokenizer(data)` gives the tokenizer (from the text tower, a
    checkpoint, or trained on `data.texts()`); `split`: evaluation only (no training data read); `context`:
    a checkpoint's vocabulary, the frozen towers' caches, whether images may be shared (see TaskContext)."""
    roles = spec.roles()
    cls = REGISTRY[roles.task.name]
    data = cls.read(spec, roles, image_transform(spec, roles.image, model), split)
    return cls(spec, roles, data, tokenizer(data), context)


def jsonl_layout(task: str) -> JsonlLayout:
    """How the task `task` reads a JSONL manifest."""
    layout = getattr(REGISTRY.get(task), "jsonl", None)
    if layout is None:
        readers = [n for n, cls in REGISTRY.items() if getattr(cls, "jsonl", None)]
        raise SpecError([Issue((), f"unknown task '{task}' for a JSONL manifest", suggest(task, readers))],
                        title="the data block names an unknown task")
    return layout


__all__ = ["Example", "REGISTRY", "Task", "TaskContext", "TaskData", "jsonl_layout", "make_task"]
