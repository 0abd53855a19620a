"""Readers for the Arrow tables that ViLT, METER and Renaissance users already prepared.

The tables are Arrow IPC *files* (``pa.RecordBatchFileWriter``) made from a pandas
DataFrame, one row per image, by the scripts named below (layouts read from those
sources; the Arrow types are those pandas' inference gives). Files are
``<data_dir>/<name>.arrow``:

coco_caption_karpathy  (ViLT vilt/utils/write_coco_karpathy.py)
    coco_caption_karpathy_{train,restval,val,test}
    image binary, caption list<string>, image_id string (file name), split string
f30k_caption_karpathy  (ViLT vilt/utils/write_f30k_karpathy.py)
    f30k_caption_karpathy_{train,val,test}; columns as coco
conceptual_caption, alias gcc  (ViLT vilt/utils/write_conceptual_caption.py)
    conceptual_caption_{train,val}_<N> (shards of 100k rows); columns as coco, one caption a row
sbu  (ViLT vilt/utils/write_sbu.py)
    sbu_<N> (shards); columns as coco, one caption a row
vg  (ViLT vilt/utils/write_vg.py)
    vg; image binary, caption list<string>, width/height/x/y list<int64> (the region
    of each caption), image_id string
nlvr2  (ViLT vilt/utils/write_nlvr2.py)
    nlvr2_{train,dev,test1,balanced_dev,balanced_test1,unbalanced_dev,unbalanced_test1}
    image_0 binary, image_1 binary, questions list<string>, answers list<string>
    ("True"/"False"), identifier string
vqav2  (ViLT vilt/utils/write_vqa.py)
    vqav2_{train,val,trainable_val,rest_val,test,test-dev}
    image binary, questions list<string>, answers list<list<string>>, answer_labels
    list<list<int64>>, answer_scores list<list<double>> (those three are empty lists,
    typed list<null>, on test splits), image_id int64, question_id list<int64>, split string
snli  (METER meter/utils/write_snli.py)
    snli_{train,dev,test}
    image binary, sentences list<list<string>> ([premise, hypothesis] pairs),
    labels list<int64> (0 contradiction, 1 neutral, 2 entailment)
refcoco  (Renaissance renaissance/utils/write_refcoco.py)
    refcoco_<splitBy>_{train,val,test} (splitBy unc by default), one row per referred object
    image binary, sentences list<string> (its expressions), bboxes list<list<double>>
    (every COCO box of the image, [x, y, w, h]), labels int64 (the index of the
    referred box in bboxes)

A split name maps to the tables ViLT's dataset classes read for it (METER's for
snli, Renaissance's for refcoco), e.g. coco ``train`` = ``coco_caption_karpathy_train``
+ ``coco_caption_karpathy_restval`` and vqav2 ``train`` = ``vqav2_train`` +
``vqav2_trainable_val``; see FAMILIES. METER instead trains on coco train + val and
vqav2 train + val: pass ``tables=[...]`` to read any other set of files.

VQA ``answer_labels`` are ids in the answer vocabulary write_vqa.py built (answers
seen >= 9 times in train + val); the vocabulary is not stored in the tables, the
answer strings are: build a vocabulary from ``answers`` rather than trusting the ids
across differently prepared directories.

Readers yield one plain dict per training example, as ViLT indexes them: a
caption row with 5 captions gives 5 examples, an NLVR2/VQA/SNLI row one per
question/sentence, a RefCOCO row one per expression. Records of a task have the
same keys whichever format they came from (see `runtime.data.jsonl`):

- every record: ``task``, ``text``, ``id`` (the table's own id, or None),
  ``table`` (the file's name without .arrow), ``row``, ``entry`` (index in the row),
  ``where`` (``"<file> row <n>"``) and ``image_refs`` (``"column 'image'"`` per image), for messages
- captions: ``image``, ``region`` ([x0, y0, x1, y1] of the described region; VG only, else None)
- nlvr2: ``images`` (two images), ``label`` (bool)
- snli_ve: ``image``, ``premise``, ``label`` (0 contradiction, 1 neutral, 2 entailment)
- vqa: ``image``, ``answers`` ({answer: score}), ``answer_labels``, ``answer_scores``
  (ViLT's label ids and soft scores; all empty on test splits)
- refexp: ``image``, ``boxes`` ([[x0, y0, x1, y1], ...] in pixels), ``target`` (index into boxes)

Images stay encoded (bytes) unless ``decode_images=True``; `decode_image` turns
them into RGB PIL images and names the row when it cannot. Every problem raises a
`SpecError` that names the file; with ``skip_bad=True`` bad rows/entries are
skipped instead and counted in a `ReadStats`.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from graphspec.errors import EnvironmentProblem, Issue, SpecError, suggest

TASKS = ("captions", "nlvr2", "snli_ve", "vqa", "refexp")
SNLI_LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}
SLICE_ROWS = 256  # rows converted to Python at a time: images are copied out of the memory map only this many at once
MAX_MESSAGES = 50  # detailed messages kept in ReadStats


# --------------------------------------------------------------------------- stats, images


@dataclass
class ReadStats:
    """What a read yielded and what it skipped (only with skip_bad=True), for a run summary.

    ``read``: examples yielded. ``rows``: table rows / manifest lines looked at.
    ``skipped``: bad units skipped (a whole row when its image or row-level data is
    bad, one entry when only that question/sentence is), by ``reasons``.
    ``messages``: the first MAX_MESSAGES full messages (file, row, column).
    """

    read: int = 0
    rows: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    messages: list = field(default_factory=list)

    def skip(self, reason: str, message: str) -> None:
        self.skipped += 1
        self.reasons[reason] += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)

    def as_dict(self) -> dict:
        return {"read": self.read, "rows": self.rows, "skipped": self.skipped, "reasons": dict(self.reasons)}


class BadData(Exception):
    """A bad row or entry: reason (short, for counting) and a message naming file/row/column."""

    def __init__(self, reason: str, message: str, hint: str = ""):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.hint = hint

    def issue(self) -> Issue:
        return Issue((), self.message, self.hint)


SKIP_HINT = "fix or drop it, or read with skip_bad=True to skip such rows (they are counted in the run summary)"


def _open_image(data: Any, where: str, *, full: bool):
    from PIL import Image

    if not isinstance(data, (bytes, bytearray, memoryview)):
        kind = "no image (null)" if data is None else f"a {type(data).__name__}, not image bytes"
        raise BadData("unreadable image", f"cannot read the image in {where}: it holds {kind}", SKIP_HINT)
    if len(data) == 0:
        raise BadData("unreadable image", f"cannot read the image in {where}: it holds 0 bytes", SKIP_HINT)
    try:
        image = Image.open(io.BytesIO(bytes(data)))
        if not full:
            image.verify()  # header + (for PNG) chunk checksums, without decoding pixels
            return None
        image.load()
        return image.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise BadData("unreadable image", f"cannot read the image in {where}: {type(exc).__name__}: {exc}",
                      SKIP_HINT) from None


def decode_image(data: bytes, where: str):
    """Encoded image bytes -> an RGB ``PIL.Image.Image``; a SpecError naming `where` when they do not decode."""
    try:
        return _open_image(data, where, full=True)
    except BadData as bad:
        raise SpecError([bad.issue()], title="an image could not be read") from None


def check_image(data: bytes, where: str) -> None:
    """A cheap check that `data` is an image (header; PNG checksums) without decoding it."""
    try:
        _open_image(data, where, full=False)
    except BadData as bad:
        raise SpecError([bad.issue()], title="an image could not be read") from None


def load_images(record: Mapping) -> list:
    """The record's image(s) as RGB PIL images (one, or two for NLVR2); errors name the file, row and column."""
    images = list(record["images"]) if "images" in record else [record["image"]]
    refs = list(record.get("image_refs") or [f"image {i}" for i in range(len(images))])
    return [decode_image(img, f"{record['where']} {ref}") if isinstance(img, (bytes, bytearray, memoryview))
            else img for img, ref in zip(images, refs)]


# --------------------------------------------------------------------------- table layouts


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
    except ImportError:
        raise EnvironmentProblem([Issue((), "reading Arrow tables needs the pyarrow package, which is not installed",
                                        "pip install pyarrow")], title="a package is missing") from None
    return pyarrow


def _is(kind: str) -> Callable:
    pa = _pyarrow()

    t = pa.types
    is_list = lambda x: t.is_list(x) or t.is_large_list(x) or t.is_fixed_size_list(x)  # noqa: E731
    is_view = getattr(t, "is_string_view", lambda _: False)
    is_str = lambda x: t.is_string(x) or t.is_large_string(x) or is_view(x)  # noqa: E731
    is_bin = lambda x: t.is_binary(x) or t.is_large_binary(x) or t.is_fixed_size_binary(x)  # noqa: E731
    is_int = t.is_integer
    is_num = lambda x: t.is_integer(x) or t.is_floating(x)  # noqa: E731
    list_of = lambda inner, empty_ok=False: (  # noqa: E731
        lambda x: is_list(x) and (inner(x.value_type) or (empty_ok and t.is_null(x.value_type))))
    checks = {
        "image": is_bin,
        "str": is_str,
        "id": lambda x: is_str(x) or is_int(x),
        "int": is_int,
        "str_list": list_of(is_str),
        "int_list": list_of(is_int),
        "num_list": list_of(is_num),
        "str_pair_list": list_of(list_of(is_str)),
        "box_list": list_of(list_of(is_num)),
        "int_or_int_list": lambda x: is_int(x) or list_of(is_int)(x),
        # VQA answers: empty lists on test splits, which pandas/Arrow type as list<null>
        "str_list_list?": list_of(list_of(is_str), empty_ok=True),
        "int_list_list?": list_of(list_of(is_int), empty_ok=True),
        "num_list_list?": list_of(list_of(is_num), empty_ok=True),
        "id_list?": list_of(lambda x: is_str(x) or is_int(x), empty_ok=True),
    }
    return checks[kind]


KIND_TEXT = {
    "image": "binary (encoded image bytes)",
    "str": "string",
    "id": "string or integer",
    "int": "integer",
    "str_list": "list<string>",
    "int_list": "list<integer>",
    "num_list": "list<number>",
    "str_pair_list": "list<list<string>> ([premise, hypothesis] pairs)",
    "box_list": "list<list<number>> (boxes [x, y, w, h])",
    "int_or_int_list": "integer (or list<integer>, one per sentence)",
    "str_list_list?": "list<list<string>>",
    "int_list_list?": "list<list<integer>>",
    "num_list_list?": "list<list<number>>",
    "id_list?": "list<integer>",
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # a key of KIND_TEXT
    required: bool = True


@dataclass(frozen=True)
class TableSpec:
    """One family of tables: the files of each split, the columns, and the script that writes them."""

    family: str
    task: str
    splits: Mapping[str, tuple]  # split -> table names; "{N}" marks numbered shards (sbu_0, sbu_1, ...)
    columns: tuple
    image_columns: tuple
    writer: str

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


_CAPTION_COLUMNS = (Column("image", "image"), Column("caption", "str_list"),
                    Column("image_id", "id", required=False), Column("split", "str", required=False))

FAMILIES: dict[str, TableSpec] = {s.family: s for s in (
    TableSpec("coco_caption_karpathy", "captions",
              {"train": ("coco_caption_karpathy_train", "coco_caption_karpathy_restval"),
               "val": ("coco_caption_karpathy_val",), "test": ("coco_caption_karpathy_test",)},
              _CAPTION_COLUMNS, ("image",), "ViLT vilt/utils/write_coco_karpathy.py"),
    TableSpec("f30k_caption_karpathy", "captions",
              {"train": ("f30k_caption_karpathy_train", "f30k_caption_karpathy_val"),
               "val": ("f30k_caption_karpathy_test",), "test": ("f30k_caption_karpathy_test",)},
              _CAPTION_COLUMNS, ("image",), "ViLT vilt/utils/write_f30k_karpathy.py"),
    TableSpec("conceptual_caption", "captions",
              {"train": ("conceptual_caption_train_{N}",), "val": ("conceptual_caption_val_{N}",)},
              _CAPTION_COLUMNS, ("image",), "ViLT vilt/utils/write_conceptual_caption.py"),
    TableSpec("sbu", "captions", {"train": ("sbu_{N}",)},
              _CAPTION_COLUMNS, ("image",), "ViLT vilt/utils/write_sbu.py"),
    TableSpec("vg", "captions", {"train": ("vg",)},
              (Column("image", "image"), Column("caption", "str_list"),
               Column("x", "num_list", required=False), Column("y", "num_list", required=False),
               Column("width", "num_list", required=False), Column("height", "num_list", required=False),
               Column("image_id", "id", required=False)),
              ("image",), "ViLT vilt/utils/write_vg.py"),
    TableSpec("nlvr2", "nlvr2",
              {"train": ("nlvr2_train",), "val": ("nlvr2_dev", "nlvr2_test1"), "test": ("nlvr2_dev", "nlvr2_test1")},
              (Column("image_0", "image"), Column("image_1", "image"), Column("questions", "str_list"),
               Column("answers", "str_list"), Column("identifier", "str", required=False)),
              ("image_0", "image_1"), "ViLT vilt/utils/write_nlvr2.py"),
    TableSpec("vqav2", "vqa",
              {"train": ("vqav2_train", "vqav2_trainable_val"), "val": ("vqav2_rest_val",),
               "test": ("vqav2_test",), "test-dev": ("vqav2_test-dev",)},
              (Column("image", "image"), Column("questions", "str_list"),
               Column("answers", "str_list_list?"), Column("answer_labels", "int_list_list?"),
               Column("answer_scores", "num_list_list?"), Column("question_id", "id_list?", required=False),
               Column("image_id", "id", required=False), Column("split", "str", required=False)),
              ("image",), "ViLT vilt/utils/write_vqa.py"),
    TableSpec("snli", "snli_ve",
              {"train": ("snli_train",), "val": ("snli_dev", "snli_test"), "test": ("snli_dev", "snli_test")},
              (Column("image", "image"), Column("sentences", "str_pair_list"), Column("labels", "int_list")),
              ("image",), "METER meter/utils/write_snli.py"),
    TableSpec("refcoco", "refexp",
              {"train": ("refcoco_unc_train",), "val": ("refcoco_unc_val",), "test": ("refcoco_unc_test",)},
              (Column("image", "image"), Column("sentences", "str_list"), Column("bboxes", "box_list"),
               Column("labels", "int_or_int_list")),
              ("image",), "Renaissance renaissance/utils/write_refcoco.py"),
)}

ALIASES = {"gcc": "conceptual_caption", "coco": "coco_caption_karpathy", "f30k": "f30k_caption_karpathy",
           "vqa": "vqav2", "snli_ve": "snli", "refexp": "refcoco"}


def family_spec(family: str) -> TableSpec:
    name = ALIASES.get(family, family)
    if name not in FAMILIES:
        raise SpecError([Issue((), f"unknown Arrow table family '{family}'",
                               suggest(family, list(FAMILIES) + list(ALIASES)))],
                        title="the data block names an unknown table family")
    return FAMILIES[name]


# --------------------------------------------------------------------------- finding and opening files


def _listing(directory: Path, limit: int = 20) -> str:
    names = sorted(p.name for p in directory.iterdir())
    if not names:
        return "none (the directory is empty)"
    names.sort(key=lambda n: (not n.endswith(".arrow"), n))
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def table_files(directory, family: str, split: str = "train", tables: Sequence[str] | None = None) -> list[Path]:
    """The .arrow files a split reads, in order; a SpecError naming what is missing and what is there."""
    spec = family_spec(family)
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        raise SpecError([Issue((), f"the Arrow data directory {directory} {what}",
                               f"point it at the folder {spec.writer} wrote its .arrow files to")],
                        title="the data directory is missing")
    asked = "named in tables" if tables is not None else f"split '{split}'"
    if tables is None:
        if split not in spec.splits:
            raise SpecError([Issue((), f"the {spec.family} tables have no '{split}' split "
                                       f"(ViLT/METER/Renaissance read {', '.join(spec.splits)} from them)",
                                   "use one of: " + ", ".join(spec.splits) + ", or name the tables (tables: [...])")],
                            title="the data block asks for a split the tables do not have")
        tables = spec.splits[split]
    files, issues = [], []
    for name in tables:
        name = name[:-6] if name.endswith(".arrow") else name
        if "{N}" in name:
            pattern = re.compile("^" + re.escape(name).replace(re.escape("{N}"), r"(\d+)") + r"\.arrow$")
            shards = sorted(((int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name))),
                            key=lambda x: x[0])
            if not shards:
                issues.append(Issue((), f"no table files '{name.replace('{N}', '<N>')}.arrow' (numbered shards) in "
                                        f"{directory} (family {spec.family}, {asked}); files there: "
                                        f"{_listing(directory)}",
                                    f"write them with {spec.writer}, or point the data directory at them"))
            files += [p for _, p in shards]
        else:
            path = directory / f"{name}.arrow"
            if path.is_file():
                files.append(path)
            else:
                issues.append(Issue((), f"no table file '{name}.arrow' in {directory} (family {spec.family}, "
                                        f"{asked}); files there: {_listing(directory)}",
                                    f"write it with {spec.writer}, or point the data directory at it"))
    if issues:
        raise SpecError(issues, title="Arrow table files are missing")
    return files


def _open(path: Path):
    """(schema, iterator of record batches) of an Arrow IPC file (or stream)."""
    pa = _pyarrow()

    try:
        source = pa.memory_map(str(path), "r")
    except (OSError, pa.ArrowException) as exc:
        raise SpecError([Issue((), f"cannot open the table file {path}: {exc}")], title="a table file cannot be read")
    try:
        reader = pa.ipc.open_file(source)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        return reader.schema, batches
    except pa.ArrowInvalid:
        pass
    try:
        source.seek(0)
        reader = pa.ipc.open_stream(source)
        return reader.schema, iter(reader)
    except pa.ArrowInvalid as exc:
        raise SpecError([Issue((), f"{path} is not an Arrow IPC table file ({exc})",
                               "the tables are written by pa.RecordBatchFileWriter in ViLT's write_*.py scripts")],
                        title="a table file cannot be read") from None


def _columns_text(schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema) or "none"


def check_schema(schema, spec: TableSpec, path: Path) -> list[str]:
    """The columns to read (required + optional ones present); a SpecError for missing or mistyped columns."""
    names = schema.names
    issues, use = [], []
    for col in spec.columns:
        if col.name not in names:
            if col.required:
                issues.append(Issue((), f"{path}: no column '{col.name}' (the {spec.family} layout needs it: "
                                        f"{KIND_TEXT[col.kind]}); columns present: {_columns_text(schema)}",
                                    suggest(col.name, names) or f"the layout is the one {spec.writer} writes"))
            continue
        actual = schema.field(col.name).type
        if not _is(col.kind)(actual):
            issues.append(Issue((), f"{path}: column '{col.name}' has type {actual}, expected {KIND_TEXT[col.kind]}; "
                                    f"columns present: {_columns_text(schema)}",
                                f"the {spec.family} layout is the one {spec.writer} writes"))
            continue
        use.append(col.name)
    if issues:
        raise SpecError(issues, title=f"a table does not have the {spec.family} layout")
    return use


# --------------------------------------------------------------------------- rows -> examples


def _bad_row(where: str, column: str, what: str) -> BadData:
    return BadData("malformed entry", f"{where} column '{column}': {what}", SKIP_HINT)


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _list(row: dict, column: str, where: str) -> list:
    value = row[column]
    if not isinstance(value, list):
        raise _bad_row(where, column, f"expected a list, found {_short(value)}")
    return value


def _captions(row, ctx):
    caps = _list(row, "caption", ctx.where)
    region_cols = ("x", "y", "width", "height")
    regions = None
    if all(c in row for c in region_cols):
        lists = [row[c] for c in region_cols]
        if not all(isinstance(v, list) and len(v) == len(caps) for v in lists):
            raise _bad_row(ctx.where, "x", f"the region columns x/y/width/height do not have one entry per caption "
                                           f"({len(caps)} captions)")
        regions = list(zip(*lists))
    seen = set()
    for j, cap in enumerate(caps):
        if not isinstance(cap, str) or not cap.strip():
            yield _bad_row(ctx.where, "caption", f"caption {j} is {_short(cap)}, not a non-empty string")
            continue
        if ctx.dedupe:
            if cap in seen:
                continue  # ViLT reads list(set(captions)) from caption tables
            seen.add(cap)
        region = None
        if regions is not None:
            x, y, w, h = regions[j]
            if any(v is None for v in (x, y, w, h)):
                yield _bad_row(ctx.where, "x", f"region {j} of the caption has a missing coordinate")
                continue
            region = [x, y, x + w, y + h]
        yield ctx.record(j, text=cap, image=row["image"], id=row.get("image_id"), region=region)


def _nlvr2(row, ctx):
    questions, answers = _list(row, "questions", ctx.where), _list(row, "answers", ctx.where)
    if len(questions) != len(answers):
        raise _bad_row(ctx.where, "answers", f"{len(answers)} answers for {len(questions)} questions")
    for j, (q, a) in enumerate(zip(questions, answers)):
        if not isinstance(q, str) or not q.strip():
            yield _bad_row(ctx.where, "questions", f"question {j} is {_short(q)}, not a non-empty string")
            continue
        if isinstance(a, bool):
            label = a
        elif isinstance(a, str) and a.strip().lower() in ("true", "false"):
            label = a.strip().lower() == "true"
        else:
            yield _bad_row(ctx.where, "answers", f"answer {j} is {_short(a)}, expected \"True\" or \"False\"")
            continue
        yield ctx.record(j, text=q, images=(row["image_0"], row["image_1"]),
                         image_refs=("column 'image_0'", "column 'image_1'"),
                         label=label, id=row.get("identifier"))


def _vqa(row, ctx):
    questions = _list(row, "questions", ctx.where)
    cols = ("answers", "answer_labels", "answer_scores")
    lists = [_list(row, c, ctx.where) for c in cols]
    labeled = any(len(v) for v in lists)
    if labeled:
        for c, v in zip(cols, lists):
            if len(v) != len(questions):
                raise _bad_row(ctx.where, c, f"{len(v)} entries for {len(questions)} questions")
    qids = row.get("question_id")
    if qids is not None and (not isinstance(qids, list) or len(qids) != len(questions)):
        raise _bad_row(ctx.where, "question_id", f"expected one question id per question ({len(questions)})")
    for j, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            yield _bad_row(ctx.where, "questions", f"question {j} is {_short(q)}, not a non-empty string")
            continue
        answers, labels, scores = (v[j] for v in lists) if labeled else ([], [], [])
        if not (isinstance(answers, list) and isinstance(labels, list) and isinstance(scores, list)
                and len(answers) == len(labels) == len(scores)):
            yield _bad_row(ctx.where, "answer_scores", f"question {j}: answers {_short(answers)}, answer_labels "
                                                       f"{_short(labels)} and answer_scores {_short(scores)} "
                                                       f"are not lists of one length")
            continue
        if any(not isinstance(a, str) for a in answers) or any(
                isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1 for s in scores):
            yield _bad_row(ctx.where, "answer_scores", f"question {j}: answers must be strings and scores numbers "
                                                       f"in [0, 1] (got {_short(answers)}, {_short(scores)})")
            continue
        yield ctx.record(j, text=q, image=row["image"], answers=dict(zip(answers, (float(s) for s in scores))),
                         answer_labels=list(labels), answer_scores=[float(s) for s in scores],
                         id=qids[j] if qids is not None else None)


def _snli(row, ctx):
    sentences, labels = _list(row, "sentences", ctx.where), _list(row, "labels", ctx.where)
    if len(sentences) != len(labels):
        raise _bad_row(ctx.where, "labels", f"{len(labels)} labels for {len(sentences)} sentence pairs")
    for j, (pair, label) in enumerate(zip(sentences, labels)):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
                and pair[1].strip()):
            yield _bad_row(ctx.where, "sentences", f"entry {j} is {_short(pair)}, expected [premise, hypothesis]")
            continue
        if isinstance(label, bool) or label not in (0, 1, 2):
            yield _bad_row(ctx.where, "labels", f"label {j} is {_short(label)}, expected 0 (contradiction), "
                                                f"1 (neutral) or 2 (entailment)")
            continue
        # METER and Renaissance feed the hypothesis (t[1].strip()) as the text
        yield ctx.record(j, text=pair[1].strip(), premise=pair[0], image=row["image"], label=label, id=None)


def _refcoco(row, ctx):
    sentences, bboxes = _list(row, "sentences", ctx.where), _list(row, "bboxes", ctx.where)
    boxes = []
    for k, b in enumerate(bboxes):
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                             for v in b) and b[2] >= 0 and b[3] >= 0):
            raise _bad_row(ctx.where, "bboxes", f"box {k} is {_short(b)}, expected [x, y, w, h] with w, h >= 0")
        x, y, w, h = (float(v) for v in b)
        boxes.append([x, y, x + w, y + h])
    if not boxes:
        raise _bad_row(ctx.where, "bboxes", "the image has no candidate boxes")
    label = row["labels"]
    targets = label if isinstance(label, list) else [label] * len(sentences)
    if len(targets) != len(sentences):
        raise _bad_row(ctx.where, "labels", f"{len(targets)} labels for {len(sentences)} sentences")
    for j, (s, t) in enumerate(zip(sentences, targets)):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(boxes):
            yield _bad_row(ctx.where, "labels", f"label {_short(t)} is not the index of one of the "
                                                f"{len(boxes)} boxes")
            continue
        if not isinstance(s, str) or not s.strip():
            yield _bad_row(ctx.where, "sentences", f"sentence {j} is {_short(s)}, not a non-empty string")
            continue
        yield ctx.record(j, text=s, image=row["image"], boxes=[list(b) for b in boxes], target=t, id=None)


EXPANDERS = {"captions": _captions, "nlvr2": _nlvr2, "vqa": _vqa, "snli_ve": _snli, "refexp": _refcoco}


class _RowContext:
    def __init__(self, task: str, table: str, dedupe: bool):
        self.task, self.table, self.dedupe = task, table, dedupe
        self.row, self.where = 0, ""

    def record(self, entry: int, **fields) -> dict:
        rec = {"task": self.task, "table": self.table, "row": self.row, "entry": entry, "where": self.where,
               "image_refs": ("column 'image'",)}
        rec.update(fields)
        return rec


def expand_row(task: str, row: dict, ctx: _RowContext, images: Sequence[str], *, decode_images: bool,
               skip_bad: bool, stats: ReadStats) -> Iterator[dict]:
    """Check a row's images, then yield its examples; bad rows/entries raise, or are counted and skipped.

    Shared by the Arrow and JSONL readers: `row` holds the columns/fields, `images` the keys of its images.
    """
    stats.rows += 1
    try:
        decoded = {}
        for col in images:
            img = _open_image(row[col], f"{ctx.where} column '{col}'", full=decode_images)
            if decode_images:
                decoded[col] = img
        if decoded:
            row = {**row, **decoded}
        for item in EXPANDERS[task](row, ctx):
            if isinstance(item, BadData):
                if not skip_bad:
                    raise item
                stats.skip(item.reason, item.message)
                continue
            stats.read += 1
            yield item
    except BadData as bad:
        if not skip_bad:
            raise SpecError([bad.issue()], title="a data row cannot be read") from None
        stats.skip(bad.reason, bad.message)


# --------------------------------------------------------------------------- readers


def _need_stats(skip_bad: bool, stats: ReadStats | None) -> ReadStats:
    if skip_bad and stats is None:
        raise TypeError("skip_bad=True needs stats=ReadStats(), so that the skipped rows can be reported")
    return stats if stats is not None else ReadStats()


def read_table(path, family: str, *, skip_bad: bool = False, stats: ReadStats | None = None,
               decode_images: bool = False, dedupe_captions: bool = True) -> Iterator[dict]:
    """The examples of one .arrow file of `family`, in row order (see the module docstring for the records).

    The file and its columns are checked at once (a SpecError names the file); rows are read lazily.
    """
    spec = family_spec(family)
    stats = _need_stats(skip_bad, stats)
    path = Path(path)
    if not path.is_file():
        parent = path.parent
        listing = _listing(parent) if parent.is_dir() else f"none ({parent} does not exist)"
        raise SpecError([Issue((), f"no table file {path}; files in {parent}: {listing}")],
                        title="Arrow table files are missing")
    return _read_all(_prepare([path], spec), spec, skip_bad, stats, decode_images, dedupe_captions)


def _prepare(files: Sequence[Path], spec: TableSpec) -> list:
    """Open every file and check its columns, reporting the problems of all files at once."""
    opened, issues = [], []
    for path in files:
        try:
            schema, batches = _open(path)
            opened.append((path, batches, check_schema(schema, spec, path)))
        except SpecError as err:
            issues += err.issues
    if issues:
        raise SpecError(issues, title=f"tables do not have the {spec.family} layout")
    return opened


def _read_all(opened, spec: TableSpec, skip_bad, stats, decode_images, dedupe) -> Iterator[dict]:
    for path, batches, use in opened:
        name = path.name[:-6] if path.name.endswith(".arrow") else path.name
        ctx = _RowContext(spec.task, name, dedupe)
        row_index = 0
        for batch in batches:
            batch = batch.select(use)
            for start in range(0, batch.num_rows, SLICE_ROWS):
                part = batch.slice(start, SLICE_ROWS)
                cols = {n: part.column(i).to_pylist() for i, n in enumerate(use)}
                for k in range(part.num_rows):
                    ctx.row, ctx.where = row_index, f"{path} row {row_index}"
                    row = {n: v[k] for n, v in cols.items()}
                    yield from expand_row(spec.task, row, ctx, spec.image_columns, decode_images=decode_images,
                                          skip_bad=skip_bad, stats=stats)
                    row_index += 1


def read_arrow(directory, family: str, split: str = "train", *, tables: Sequence[str] | None = None,
               skip_bad: bool = False, stats: ReadStats | None = None, decode_images: bool = False,
               dedupe_captions: bool = True) -> Iterator[dict]:
    """The examples of a split (or of the named `tables`) of a ViLT/METER/Renaissance Arrow directory.

    Missing files raise at once (naming the expected files and listing the directory);
    columns are checked as each file is opened. ``skip_bad`` skips (and counts in
    ``stats``, which it then requires) rows whose image does not read and malformed
    entries. ``decode_images`` yields RGB PIL images instead of bytes (and so also
    catches images whose header is fine but whose data is not). ``dedupe_captions``
    drops repeated captions of an image, as ViLT's caption datasets do.
    """
    spec = family_spec(family)
    stats = _need_stats(skip_bad, stats)
    files = table_files(directory, spec.family, split, tables)
    return _read_all(_prepare(files, spec), spec, skip_bad, stats, decode_images, dedupe_captions)


@dataclass(frozen=True)
class TableInfo:
    path: Path
    rows: int
    columns: dict  # name -> Arrow type (str)


def describe(directory, family: str, split: str = "train", tables: Sequence[str] | None = None) -> list[TableInfo]:
    """Check a split's files and columns without reading rows: one TableInfo per file (rows from the metadata)."""
    spec = family_spec(family)
    out = []
    for path, batches, _ in _prepare(table_files(directory, spec.family, split, tables), spec):
        schema, _ = _open(path)
        out.append(TableInfo(path, sum(b.num_rows for b in batches), {f.name: str(f.type) for f in schema}))
    return out


def check_arrow(directory, family: str, split: str = "train", *, tables: Sequence[str] | None = None,
                decode_images: bool = False, max_issues: int = MAX_MESSAGES) -> ReadStats:
    """Read a whole split and report *every* bad row at once (a SpecError listing them), else the stats."""
    stats = ReadStats()
    for _ in read_arrow(directory, family, split, tables=tables, skip_bad=True, stats=stats,
                        decode_images=decode_images):
        pass
    return raise_if_skipped(stats, max_issues)


def raise_if_skipped(stats: ReadStats, max_issues: int = MAX_MESSAGES) -> ReadStats:
    if stats.skipped:
        issues = [Issue((), m) for m in stats.messages[:max_issues]]
        more = stats.skipped - len(issues)
        title = f"{stats.skipped} bad rows or entries ({', '.join(f'{k}: {v}' for k, v in stats.reasons.items())})"
        if more > 0:
            title += f"; {more} more not shown"
        raise SpecError(issues, title=title)
    return stats


__all__ = [
    "TASKS", "SNLI_LABELS", "ReadStats", "BadData", "Column", "TableSpec", "TableInfo", "FAMILIES", "ALIASES",
    "family_spec", "table_files", "check_schema", "read_table", "read_arrow", "describe", "check_arrow",
    "decode_image", "check_image", "load_images", "expand_row", "raise_if_skipped",
]
