"""Examples from files: the ViLT/METER/Renaissance Arrow tables or a JSONL manifest.

Records from either reader become the same `Example`s the built-in tasks give
(captions: the same image-text pair sets pretraining draws from builtin scenes);
a missing file or a bad sample is a located error unless `skip_bad` is set, and
then it is counted for the run summary.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from graphspec.errors import Issue, SpecError
from graphspec.schema import DataSource

FAMILY = {"captions": "coco_caption_karpathy", "snli_ve": "snli", "nlvr2": "nlvr2", "vqa": "vqav2", "refexp": "refcoco"}


def _pixels(data, where: str, transform):
    from .data.arrow import decode_image

    image = data if hasattr(data, "convert") else decode_image(data, where)
    return transform(np.asarray(image.convert("RGB"))), image.size  # (3, S, S), (width, height)


def _boxes(boxes, size) -> tuple:
    """Pixel boxes -> fractions of the image; boxes already in [0, 1] stay."""
    w, h = size
    scale = (1.0, 1.0) if all(max(b) <= 1.0 for b in boxes) else (float(w), float(h))
    return tuple((b[0] / scale[0], b[1] / scale[1], b[2] / scale[0], b[3] / scale[1]) for b in boxes)


def _example(task: str, record: dict, transform):
    from .supervised import Example

    where = record.get("where", "")
    if task == "nlvr2":
        pixels = tuple(_pixels(img, where, transform)[0] for img in record["images"])
        return Example(pixels, record["text"], int(record["label"]))
    px, size = _pixels(record["image"], where, transform)
    if task == "snli_ve":
        return Example((px,), record["text"], int(record["label"]))
    if task == "vqa":
        scores = dict(zip(record["answers"] or [], record.get("answer_scores") or [])) \
            if isinstance(record["answers"], list) else dict(record["answers"] or {})
        return Example((px,), record["text"], answers=scores)
    return Example((px,), record["text"], int(record["target"]), boxes=_boxes(record["boxes"], size))


def _records(task: str, source: DataSource, family: str | None, stats):
    from .data.arrow import read_arrow
    from .data.jsonl import read_jsonl

    kind, _, path = source.source.partition(":")
    if kind == "arrow":
        return read_arrow(path, family or FAMILY[task], source.split, skip_bad=source.skip_bad, stats=stats)
    return read_jsonl(path, task, skip_bad=source.skip_bad, stats=stats)


@contextmanager
def _located(where: tuple):
    """Reader errors carry the file and row; the spec field that named the file is added here."""
    try:
        yield
    except SpecError as e:
        e.issues = [i if i.path else Issue(where + ("source",), i.message, i.hint, i.severity) for i in e.issues]
        raise


def _families(source: DataSource, where: tuple, task: str) -> list[str | None]:
    families = source.family if isinstance(source.family, list) else [source.family]
    if len(families) > 1 and task != "captions":
        raise SpecError([Issue(where + ("family",), f"the {task} task reads one table family, not {len(families)}",
                               "name one family; several are for captions pretraining (e.g. [coco, vg])")])
    return families


def file_examples(task: str, source: DataSource, where: tuple, transform) -> tuple[list, dict]:
    """(examples, read statistics) of an `arrow:` or `jsonl:` source."""
    from .data.arrow import ReadStats

    stats = ReadStats()
    examples = []
    with _located(where):
        for record in _records(task, source, _families(source, where, task)[0], stats):
            examples.append(_example(task, record, transform))
            if source.samples and len(examples) >= source.samples:
                break
    if not examples:
        raise SpecError([Issue(where + ("source",), f"{source.source} holds no {task} examples for split "
                               f"'{source.split}'", "check the split and the files")])
    return examples, stats.as_dict()


def file_captions(source: DataSource, where: tuple, transform):
    """The captioned images of an `arrow:` (one or more caption table families) or `jsonl:` source."""
    from .data.arrow import ReadStats
    from .data.caption_files import CaptionFiles

    stats = ReadStats()
    families = _families(source, where, "captions")
    with _located(where):
        records = (r for family in families for r in _records("captions", source, family, stats))
        return CaptionFiles(source, where, transform, records, stats)
