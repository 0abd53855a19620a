"""A JSONL manifest + image folder: the format for users' own data.

One JSON object per line; image paths are relative to the image root (the
manifest's folder unless given), or absolute. Blank lines are ignored. The reader
knows no task: which fields a line holds and what they mean is the task's
`JsonlLayout` (graphspec.runtime.tasks.NAME, its fields from the task table in
graphspec.language.schema.tasks). ``id`` is optional everywhere; any other field is kept
in ``extra``. The built-in tasks read::

    captions  {"image": "imgs/1.jpg", "text": "a dog on a sofa"}
              "text" may also be a list of captions: one example each
    nlvr2     {"images": ["left.png", "right.png"], "text": "both images show dogs", "label": true}
    snli_ve   {"image": "imgs/1.jpg", "text": "a dog sleeps", "label": 2, "premise": "..."}
              label 0 contradiction, 1 neutral, 2 entailment (or those words); premise optional
    vqa       {"image": "imgs/1.jpg", "text": "what animal is this?", "answers": {"dog": 1.0, "puppy": 0.3}}
              scores in [0, 1]; {} for unlabeled (test) questions
    refexp    {"image": "imgs/1.jpg", "text": "the dog on the left",
               "boxes": [[x0, y0, x1, y1], ...], "target": 0}
              boxes in pixels; target indexes boxes

The records are those of `graphspec.runtime.data.arrow` (same keys per task), with
``table`` = the manifest's name, ``row`` = the line number and ``where`` =
``"<manifest>:<line>"``; VQA records have ``answer_labels`` None (a manifest
has no label vocabulary). Problems raise a `SpecError` naming file:line; with
``skip_bad=True`` bad lines are skipped and counted in a `ReadStats` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from graphspec.language.errors import Issue, SpecError, suggest

from .images import FileImage
from .records import MAX_MESSAGES, SKIP_HINT, BadData, ReadStats, need_stats, open_image, short_repr, raise_if_skipped


@dataclass(frozen=True)
class JsonlLayout:
    """How one task reads a manifest line.

    fields: the required fields and what each holds (the task table's); optional: fields read when present;
    images: the field that holds the image path ("image") or paths ("images"); parse(obj, where): the line's
    examples without images, and its image paths, or BadData.
    """

    name: str
    fields: dict[str, str]
    optional: tuple[str, ...]
    images: str
    parse: Callable[[dict, str], tuple[list[dict], list]]


def field_error(where: str, name: str, what: str) -> BadData:
    return BadData("malformed entry", f"{where}: field '{name}' {what}", SKIP_HINT)


def text_field(obj: dict, where: str, name: str = "text") -> str:
    v = obj[name]
    if not isinstance(v, str) or not v.strip():
        raise field_error(where, name, f"must be a non-empty string (got {short_repr(v)})")
    return v


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _resolve(root: Path, rel: Any, where: str, name: str) -> tuple[Path, str]:
    if not isinstance(rel, str) or not rel.strip():
        raise field_error(where, name, f"must be an image path (got {short_repr(rel)})")
    try:
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        found = path.is_file()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        raise BadData("missing image file", f"{where}: image path {short_repr(rel)} cannot name a file "
                      f"({getattr(e, 'strerror', None) or e})", SKIP_HINT) from None
    if not found:
        raise BadData("missing image file", f"{where}: image file '{rel}' not found (looked for {path})",
                      f"image paths are relative to {root} (the image root); " + SKIP_HINT)
    return path, rel


MAX_LINE = 16 * 2**20  # bytes: a manifest line longer than this is a bad line, never held in memory whole


def _lines(f) -> Iterator[bytes | None]:
    """A file's lines, each up to MAX_LINE bytes; None for a longer one (read past in chunks, not kept)."""
    while True:
        raw = f.readline(MAX_LINE + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while (rest := f.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield raw


def _manifest_lines(manifest: Path) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None when it is not UTF-8 or too long, error)."""
    with open(manifest, "rb") as f:
        for n, raw in enumerate(_lines(f), 1):
            if raw is None:
                yield n, None, f"the line is longer than {MAX_LINE:,} bytes (not read)"
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield n, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                continue
            if n == 1:
                text = text.lstrip("\ufeff")
            yield n, text, ""


def read_jsonl(manifest, layout: JsonlLayout, *, image_root=None, skip_bad: bool = False,
               stats: ReadStats | None = None, decode_images: bool = False, lazy: bool = False) -> Iterator[dict]:
    """The examples of a JSONL manifest read with a task's `layout` (see the module docstring), in file order.

    A missing manifest or image root raises at once; lines are read lazily. With `lazy` (what training
    reads) each image is a `FileImage` reference: its file must exist, and is read and checked when decoded.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        parent = manifest.parent
        there = (", ".join(sorted(p.name for p in parent.iterdir())[:20]) or "none (the directory is empty)") \
            if parent.is_dir() else f"none ({parent} does not exist)"
        raise SpecError([Issue((), f"no manifest file {manifest}; files in {parent}: {there}",
                               "a manifest is a .jsonl file with one JSON object per line")],
                        title="the JSONL manifest is missing")
    root = Path(image_root) if image_root is not None else manifest.parent
    if not root.is_dir():
        raise SpecError([Issue((), f"the image root {root} of {manifest} is not a directory")],
                        title="the image folder is missing")
    stats = need_stats(skip_bad, stats)
    return _read(manifest, layout, root, skip_bad, stats, decode_images, lazy)


def _read(manifest: Path, layout: JsonlLayout, root: Path, skip_bad: bool, stats: ReadStats, decode_images: bool,
          lazy: bool = False):
    required, optional, task = layout.fields, layout.optional, layout.name
    name = manifest.name
    for line, text, error in _manifest_lines(manifest):
        where = f"{manifest}:{line}"
        if text is not None and not text.strip():
            continue
        stats.rows += 1
        try:
            if text is None:
                raise BadData("bad JSON", f"{where}: {error}", SKIP_HINT)
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BadData("bad JSON", f"{where}: not valid JSON ({exc.msg} at column {exc.colno})",
                              "each line must be one complete JSON object; " + SKIP_HINT) from None
            if not isinstance(obj, dict):
                raise BadData("malformed entry", f"{where}: expected a JSON object, found {type(obj).__name__}",
                              SKIP_HINT)
            missing = [f for f in required if f not in obj]
            if missing:
                extra = [k for k in obj if k not in required and k not in optional]
                hints = [h for h in (suggest(m, extra) for m in missing) if h.startswith("did you")]
                raise BadData("malformed entry",
                              f"{where}: missing field{'s' if len(missing) > 1 else ''} "
                              + ", ".join(f"'{m}' ({required[m]})" for m in missing)
                              + f" for task {task}; fields present: {', '.join(obj) or 'none'}",
                              "; ".join(hints) or f"a {task} line has " + ", ".join(required))
            examples, rels = layout.parse(obj, where)
            images, refs = [], []
            for rel in rels:
                path, rel = _resolve(root, rel, where, layout.images)
                ref = f"image '{rel}'"
                if lazy:
                    images.append(FileImage(str(path), f"{where} {ref}"))
                else:
                    images.append(open_image(path.read_bytes(), f"{where} {ref}", full=decode_images)
                                  if decode_images else _checked(path.read_bytes(), f"{where} {ref}"))
                refs.append(ref)
            ident = obj.get("id")
            extra = {k: v for k, v in obj.items() if k not in required and k not in optional}
        except BadData as bad:
            if not skip_bad:
                raise SpecError([bad.issue()], title="a manifest line cannot be read") from None
            stats.skip(bad.reason, bad.message)
            continue
        for j, ex in enumerate(examples):
            rec = {"table": name, "row": line, "entry": j, "where": where, "image_refs": tuple(refs),
                   "id": ident, "extra": extra}
            if layout.images == "images":
                rec["images"] = tuple(images)
            else:
                rec["image"] = images[0]
            rec.update(ex)
            stats.read += 1
            yield rec


def _checked(data: bytes, where: str) -> bytes:
    open_image(data, where, full=False)
    return data


def check_jsonl(manifest, layout: JsonlLayout, *, image_root=None, decode_images: bool = False,
                max_issues: int = MAX_MESSAGES) -> ReadStats:
    """Read a whole manifest and report *every* bad line at once (a SpecError listing them), else the stats."""
    stats = ReadStats()
    for _ in read_jsonl(manifest, layout, image_root=image_root, skip_bad=True, stats=stats,
                        decode_images=decode_images):
        pass
    return raise_if_skipped(stats, max_issues)


__all__ = ["JsonlLayout", "read_jsonl", "check_jsonl", "field_error", "text_field", "is_number"]
