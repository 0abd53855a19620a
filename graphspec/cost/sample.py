"""A micro batch as the run would make it, for counting: the spec's own task over the first samples of its
own training data, so the text is as long as its longest caption, the MLM masks what the run masks and a
two-pass batch shares what the run shares. Where the data cannot be read on this machine (tables on the
cluster), the task's built-in scenes stand in, with text at `max_length`; where the text tower's tokenizer is
not here, one trained on the captions stands in. `Sampled.text` says which."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphspec.language.errors import GraphspecError
from graphspec.language.reading import override
from graphspec.language.schema import Spec
from graphspec.runtime.tasks import Task, TaskContext, make_task
from graphspec.runtime.text import load_tokenizer, text_node


@dataclass
class Sampled:
    task: Task
    batch: dict  # micro batch 0 of rank 0, as the host makes it
    text: dict = field(default_factory=dict)  # how its text was counted


def _read(spec: Spec, model: nn.Module, share: bool, folder: Path, own: bool, stand_in: bool = False) -> Task:
    """The spec's task; `stand_in`: over built-in scenes standing in for the spec's data, a head that scores
    answers keeping its own count of them (the scenes have fewer)."""
    text = spec.roles().text
    vocab = int(getattr(model.get_submodule(text_node(spec, text)[0]), "vocab_size"))
    answers = [getattr(h, "answers", None) for h in spec.heads.values()]
    count = next((a for a in answers if isinstance(a, int)), None)
    vocabulary = {"answers": [f"answer {i}" for i in range(count)]} if stand_in and count else None
    return make_task(spec, model, lambda data: load_tokenizer(spec, text, vocab, folder, data.texts, own=own),
                     context=TaskContext(vocabulary=vocabulary, share_images=share))


def sample_batch(spec: Spec, model: nn.Module, share_images: bool, rows: int | None = None) -> Sampled:
    """Micro batch 0 of rank 0 (`rows` of it; the spec's micro batch when None), from a task that reads only
    the first samples of the training data."""
    micro, _ = spec.batch_plan()
    rows = rows or micro
    want = max(64, 2 * rows)
    small = ["data.val=null"] + ([f"data.train.samples={want}"] if not spec.data.train.samples
                                 or spec.data.train.samples > want else [])
    text_input = spec.roles().text
    text_spec: Any = spec.inputs[text_input]  # a text input (the roles say so)
    max_length = text_spec.max_length
    info: dict = {"max_length": max_length}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        used = override(spec, small)
        try:
            task = _read_with_tokenizer(used, model, share_images, folder, info)
            info["from"] = f"the first {want} samples of {spec.data.train.source}"
        except (GraphspecError, OSError) as e:
            used = override(spec, small[:1] + [f"data.train={{source: 'builtin:shapes', task: {spec.data.train.task}"
                                               f", samples: {want}}}", f"inputs.{text_input}.pad_to=max_length"])
            task = _read_with_tokenizer(used, model, share_images, folder, info, stand_in=True)
            info["from"] = (f"built-in scenes with text at max_length ({spec.data.train.source} could not be read "
                            f"here: {str(e).splitlines()[0][:200]})")
        batch = task.train_batch(rows, 0)
    ids = next((v for k, v in batch.items() if k.endswith("_ids") and isinstance(v, torch.Tensor)), None)
    info["length"] = int(ids.shape[1]) if ids is not None else max_length
    info["padded_to"] = getattr(used.inputs[text_input], "pad_to", "max_length")
    return Sampled(task, batch, info)


def _read_with_tokenizer(spec: Spec, model: nn.Module, share: bool, folder: Path, info: dict,
                         stand_in: bool = False) -> Task:
    try:
        task = _read(spec, model, share, folder, True, stand_in)
        info["tokenizer"] = "the text tower's own"
    except GraphspecError as e:
        if "tokenizer" not in str(e):
            raise
        task = _read(spec, model, share, folder, False, stand_in)
        info["tokenizer"] = "a stand-in trained on the captions (the text tower's own is not on this machine)"
    return task
